"""The `hf-llama3` dispatcher: help, unknown commands, user errors as one line and exit status 2."""

from __future__ import annotations

import subprocess
import sys

from hf_llama3.cli import COMMANDS, main


def test_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in COMMANDS)


def test_no_command_and_unknown_command_exit_2(capsys):
    assert main([]) == 2
    assert main(["pretrian"]) == 2
    assert "unknown command 'pretrian'" in capsys.readouterr().err


def test_every_command_target_is_importable_lazily():
    """Names in the dispatch table point at real functions (imported only here, as the CLI would)."""
    import importlib

    for name, (target, _) in COMMANDS.items():
        module_name, _, function_name = target.partition(":")
        assert callable(getattr(importlib.import_module(module_name), function_name)), name


def test_importing_hf_llama3_does_not_import_the_other_packages():
    code = "import sys, hf_llama3; print(sorted(m for m in sys.modules if m.split('.')[0] in {'training', 'data', 'evaluation'}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_console_script_reports_user_errors_without_traceback(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "hf_llama3.cli",
            "convert",
            str(tmp_path / "nowhere"),
            str(tmp_path / "out"),
            "--to",
            "llama",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "does not exist" in result.stderr and "Traceback" not in result.stderr
