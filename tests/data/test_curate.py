"""`hf-llama3 curate` end to end on the embedded sample corpus: report, mix, and kill-then-resume giving
byte-identical output."""

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hf_llama3.cli import main as cli_main
from tests.data.test_readers import SAMPLE

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "data" / "sample.yaml"


def curate_cmd(out: Path) -> list[str]:
    return [
        sys.executable, "-m", "hf_llama3.cli", "curate", "--config", str(RECIPE),
        "--set", f"output_dir={out}", "--set", f"reader.paths=[{SAMPLE}]", "--log-level", "WARNING",
    ]  # fmt: skip


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("full") / "run"
    result = subprocess.run(curate_cmd(out), capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return out, json.loads(result.stdout.strip().splitlines()[-1])


def test_report_counts_every_step_reason_language_and_category(uninterrupted):
    out, summary = uninterrupted
    report = json.loads((out / "report.json").read_text())
    assert (out / "report.png").stat().st_size > 10_000
    steps = {s["step"]: s for s in report["steps"]}
    assert list(steps)[:2] == ["UrlBlocklistFilter", "HtmlExtractor"]
    assert steps["UrlBlocklistFilter"]["dropped"]["blocked_domain"]["docs"] == 1
    assert steps["PiiFilter"]["dropped"]["pii_density"]["docs"] == 1
    assert steps["UrlDeduplicator"]["dropped"]["older_crawl_of_url"]["docs"] == 3
    assert steps["MinHashDeduplicator"]["dropped"]["minhash_duplicate"]["docs"] >= 1
    assert steps["LineDeduplicator"]["removed_lines"] > 0
    assert report["reader_skipped"] == {"empty_page": 1, "malformed_json": 2, "truncated_record": 1}
    for step in report["steps"]:  # the funnel adds up
        assert step["in_docs"] == step["out_docs"] + sum(d["docs"] for d in step["dropped"].values())
    assert {"en", "de", "ja", "ru"} <= set(report["languages"])
    assert 0.15 < report["tokens_per_char"] < 0.6  # Llama 3 tokens per character of the curated text
    assert steps["HeuristicFilter"]["in_tokens_est"] > steps["HeuristicFilter"]["out_tokens_est"] > 0
    for name, cat in report["categories"].items():
        assert abs(cat["actual_weight"] - cat["target_weight"]) <= 0.02, name
    assert summary["sequences"] == report["shards"]["sequences"] > 0


def test_kill_mid_run_then_resume_with_two_workers_gives_identical_output(uninterrupted, tmp_path):
    reference, _ = uninterrupted
    out = tmp_path / "run"
    proc = subprocess.Popen(curate_cmd(out), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first_task = out / "filtered" / "00000.stats.json"
    deadline = time.time() + 300
    while not first_task.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    assert proc.returncode != 0, "the run finished before it could be killed"
    assert not (out / "shards" / "manifest.json").exists()
    # Resume with two worker processes: neither the interruption nor the parallelism changes a byte.
    result = subprocess.run(
        [*curate_cmd(out), "--set", "workers=2"], capture_output=True, text=True, cwd=ROOT, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert tree_digest(out) == tree_digest(reference)


def test_a_document_that_breaks_a_step_is_counted_not_fatal(tmp_path, monkeypatch):
    """A step raising on one document (a bug or a pathological page) drops that document as ``step_error``."""
    from data import pipeline
    from data.config import load_config

    class RaisesOnOne:
        def filter(self, doc):
            if doc.id == "breaks":
                raise RuntimeError("pathological page")
            return True

    real_steps = pipeline.per_document_steps
    monkeypatch.setattr(pipeline, "per_document_steps", lambda cfg: [real_steps(cfg)[0], RaisesOnOne()])
    rows = [{"text": "fine text " * 40, "id": "ok"}, {"text": "x " * 100, "id": "breaks"}]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = load_config(RECIPE, [f"output_dir={tmp_path}/o", f"reader.paths=[{tmp_path}/in.jsonl]"])
    (tmp_path / "o").mkdir()
    stats = json.loads(
        Path(pipeline.run_file_task(config, 0, str(tmp_path / "in.jsonl"), str(tmp_path / "o"))).read_text()
    )
    assert stats["kept"] == 1
    assert stats["steps"][1]["dropped"] == {"step_error": {"docs": 1, "chars": 200}}


def test_rerun_with_other_settings_is_refused(uninterrupted, capsys):
    out, _ = uninterrupted
    args = ["curate", "--config", str(RECIPE), "--set", f"output_dir={out}", "--set", f"reader.paths=[{SAMPLE}]"]
    assert cli_main([*args, "--set", "minhash.bands=20"]) == 2
    assert "recipe.minhash.bands: 14 -> 20" in capsys.readouterr().err


def test_bad_configs_exit_2_with_a_clear_message(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"output_dir: {tmp_path}/o\nreader: {{paths: [{SAMPLE}]}}\nminhash: {{bandz: 3}}\n")
    assert cli_main(["curate", "--config", str(bad)]) == 2
    assert "unknown key(s) ['minhash.bandz']" in capsys.readouterr().err
    assert cli_main(["curate", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "not found" in capsys.readouterr().err
    assert cli_main(["curate", "--config", str(RECIPE), "--set", "reader.paths=[/nonexistent]"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli_main(["curate", "--config", str(RECIPE), "--set", "mix.weights={general: -1}"]) == 2
    assert "mix.weights.general: must be >= 0" in capsys.readouterr().err


def test_same_recipe_on_datatrove_executors_gives_the_same_shards(uninterrupted, tmp_path):
    """executor.kind=datatrove-local: the three stages as datatrove pipelines (what Slurm/Ray run) -> same tokens."""
    import numpy as np

    reference, _ = uninterrupted
    out = tmp_path / "dt"
    result = subprocess.run(
        [*curate_cmd(out), "--set", "executor.kind=datatrove-local"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ours = json.loads((reference / "shards" / "manifest.json").read_text())
    theirs = json.loads((out / "shards" / "manifest.json").read_text())
    assert theirs["tokens_per_category"] == ours["tokens_per_category"]
    for a, b in zip(ours["shards"], theirs["shards"]):
        assert (np.load(reference / "shards" / a["tokens"]) == np.load(out / "shards" / b["tokens"])).all()
    report = json.loads((out / "report.json").read_text())
    dropped = {reason: n for step in report["steps"] for reason, n in step["dropped"].items()}
    assert dropped["blocked_domain"] == 1 and dropped["older_crawl_of_url"] == 3 and dropped["pii_density"] == 1
    assert report["steps"][0]["skipped"] == {"empty_page": 1, "malformed_json": 2, "truncated_record": 1}
    from data.config import ExecutorConfig

    with pytest.raises(ValueError, match="partition"):
        ExecutorConfig(kind="slurm")
