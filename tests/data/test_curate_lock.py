"""Issue 12, build item 4: two `hf-llama3 curate` runs into one output folder: the second is refused at once.

The first run is stood in for by another process holding the folder's lock (what a running `curate` holds), so the
test needs no slow real run to overlap with.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from hf_llama3.cli import main as cli_main
from hf_llama3.output_lock import lock_path
from tests.data.test_readers import SAMPLE

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "data" / "sample.yaml"

HOLDER = """
import sys, time
from hf_llama3.output_lock import output_lock
with output_lock(sys.argv[1]):
    print("locked", flush=True)
    sys.stdin.read()  # hold until the test closes our stdin
"""


def test_second_curate_into_a_busy_folder_is_refused_immediately(tmp_path, capsys):
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(out)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = sorted(p.name for p in tmp_path.iterdir())
        start = time.perf_counter()
        args = ["curate", "--config", str(RECIPE), "--set", f"output_dir={out}", "--set", f"reader.paths=[{SAMPLE}]"]
        assert cli_main([*args, "--log-level", "WARNING"]) == 2
        assert time.perf_counter() - start < 30  # refused up front, not after (or while) curating
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "Traceback" not in err, err
        assert f"hf-llama3 curate: error: {out} is in use by another run" in err
        assert not out.exists()  # nothing written by the refused run
        assert sorted(p.name for p in tmp_path.iterdir()) == before
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    assert holder.returncode == 0
    assert not lock_path(out).exists()  # released and removed by the holder
