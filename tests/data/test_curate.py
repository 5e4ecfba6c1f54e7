"""`hf-llama3 curate` end to end on the embedded sample corpus: report, mix, kill-then-resume giving byte-identical
output, the Ray executor on a local Ray cluster giving the same output, and the Slurm / Ray executors built from the
same recipe."""

import hashlib
import json
import os
import signal
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
    """Every output file's hash; ``logs/`` (datatrove's timed logs and statistics) aside."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.relative_to(root).parts[0] != "logs"
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
    assert steps["UrlDedupFilter"]["dropped"]["older_crawl_of_url"]["docs"] == 3
    assert steps["MinHashDedupFilter"]["dropped"]["minhash_duplicate"]["docs"] >= 1
    assert steps["LineDedupFilter"]["removed_lines"] > 0
    assert report["kept_documents"] == steps["QualityFilter"]["out_docs"] == summary["kept_documents"]
    assert report["reader_skipped"] == {"empty_page": 1, "malformed_json": 2, "truncated_record": 1}
    for step in report["steps"]:  # the funnel adds up
        assert step["in_docs"] == step["out_docs"] + sum(d["docs"] for d in step["dropped"].values())
    assert {"en", "de", "ja", "ru"} <= set(report["languages"])
    assert 0.15 < report["tokens_per_char"] < 0.6  # Llama 3 tokens per character of the curated text
    assert steps["HtmlExtractor"]["in_tokens_est"] > steps["HtmlExtractor"]["out_tokens_est"] > 0
    for name, cat in report["categories"].items():
        assert abs(cat["actual_weight"] - cat["target_weight"]) <= 0.02, name
    assert summary["sequences"] == report["shards"]["sequences"] > 0


def test_kill_mid_run_then_resume_with_two_workers_gives_identical_output(uninterrupted, tmp_path):
    reference, _ = uninterrupted
    out = tmp_path / "run"
    # Its own process group: the kill takes the run with datatrove's worker and manager processes, as a cluster would.
    proc = subprocess.Popen(
        curate_cmd(out), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    first_task = out / "logs" / "filter" / "completions" / "00000"  # datatrove's marker of a finished task
    deadline = time.time() + 300
    while not first_task.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode != 0, "the run finished before it could be killed"
    assert not (out / "shards" / "manifest.json").exists()
    # Resume with two worker processes: neither the interruption nor the parallelism changes a byte.
    result = subprocess.run(
        [*curate_cmd(out), "--set", "workers=2"], capture_output=True, text=True, cwd=ROOT, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert tree_digest(out) == tree_digest(reference)


def test_ray_executor_runs_the_same_recipe_to_the_same_output(tmp_path):
    """executor.kind=ray on Ray's local cluster (started by the first task, as on a laptop): every stage runs as Ray
    tasks chained by dependency, and the output equals the local executor's byte for byte. One task per stage keeps
    it short: each Ray task starts a worker that imports the pipeline (torch, transformers, fastText)."""
    pytest.importorskip("ray")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    digests = []
    for kind in ("local", "ray"):
        out = tmp_path / kind
        command = [*curate_cmd(out), "--set", "tasks=1", "--set", f"executor.kind={kind}"]
        if kind == "ray":
            command += ["--set", "executor.options={cpus_per_task: 1, mem_per_cpu_gb: 0.5}"]
        result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=900, env=env)
        assert result.returncode == 0, result.stderr[-3000:]
        assert json.loads(result.stdout.strip().splitlines()[-1]).get("executor", "local") == kind
        digest = tree_digest(out)
        digest.pop("fingerprint.json")  # it records the executor (a how-key)
        digests.append(digest)
    assert digests[0] == digests[1]


def test_a_document_that_breaks_a_step_is_counted_not_fatal():
    """A step raising on one document (a bug or a pathological page) drops that document as ``step_error``."""
    from datatrove.data import Document

    from data.stage_io import CountedFilter

    class RaisesOnOne:
        def filter(self, doc):
            if doc.id == "breaks":
                raise RuntimeError("pathological page")
            return True

    step = CountedFilter(RaisesOnOne())
    docs = [Document(text="fine text " * 40, id="ok"), Document(text="x " * 100, id="breaks")]
    assert [d.id for d in step.run(iter(docs))] == ["ok"]
    assert step.stats["dropped_step_error"].total == 1 and step.stats["chars_dropped_step_error"].total == 200


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


def test_slurm_and_ray_executors_come_from_the_same_recipe(tmp_path):
    """executor.kind=slurm / ray build one executor per stage, each depending on the one before (nothing is submitted
    here: that needs a Slurm or Ray cluster)."""
    from data.config import ExecutorConfig, load_config
    from data.executors import make_executor
    from data.pipeline import curate_stages

    sets = [f"output_dir={tmp_path}/o", f"reader.paths=[{SAMPLE}]"]
    slurm_options = "{partition: cpu, time: '01:00:00', cpus_per_task: 2}"
    for kind, options in (("slurm", slurm_options), ("ray", "{cpus_per_task: 2}")):
        config = load_config(RECIPE, [*sets, f"executor.kind={kind}", f"executor.options={options}"])
        stages = curate_stages(config)
        previous = None
        for stage in stages:
            executor = make_executor(config, stage, previous)
            assert type(executor).__name__ == f"{kind.capitalize()}PipelineExecutor"
            assert executor.depends is previous and executor.world_size == stage.tasks
            assert executor.pipeline is stage.pipeline
            previous = executor
        assert stages[0].name == "filter" and stages[-1].name == "report"
    assert previous.cpus_per_task == 2
    with pytest.raises(ValueError, match="partition"):
        ExecutorConfig(kind="slurm")
