"""The curation report: a JSON summary and a PNG plot (the funnel of documents per step, the mix).

Everything in it comes from datatrove's per-task statistics (``logs/<stage>/stats/NNNNN.json``, one per finished
task, summed here so a resumed run counts every task once), the curated documents and the shard manifest, so a
resumed run writes the same report. Documents and characters are exact at every step (recorded by
:class:`data.stage_io.CountedFilter`); tokens are exact per mix category (available and in the shards) and estimated
elsewhere (``*_tokens_est``: characters times the curated corpus's tokens per character).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from data.config import CurateConfig
from data.mix import category_of
from data.readers import list_input_files
from data.stage_io import parts, read_jsonl_gz
from hf_llama3.checkpoint_io import atomic_output_file

# The stages whose counted steps make the funnel, in pipeline order (the others only replay dedup decisions).
FUNNEL_STAGES = ("filter", "dedup", "tokenize")


def _total(value) -> int:
    return int(value["total"] if isinstance(value, dict) else value)


def _task_stats(root: Path, stage: str) -> list[list[dict]]:
    return [json.loads(p.read_text()) for p in sorted((root / "logs" / stage / "stats").glob("*.json"))]


def stage_steps(root: str | os.PathLike, stage: str) -> list[dict]:
    """The counted steps of a stage, summed over its tasks: documents and characters in, out and dropped per reason."""
    merged: dict[str, dict] = {}
    for task in _task_stats(Path(root), stage):
        for entry in task:
            counts = {k: _total(v) for k, v in entry["stats"].items()}
            if "chars_in" not in counts:  # not a counted filter, or one that saw no document in this task
                continue
            slot = merged.setdefault(
                entry["name"],
                {"step": entry["name"], "in_docs": 0, "in_chars": 0, "out_docs": 0, "out_chars": 0, "dropped": {}},
            )
            slot["in_docs"] += counts.get("total", 0)
            slot["in_chars"] += counts.get("chars_in", 0)
            slot["out_docs"] += counts.get("forwarded", 0)
            slot["out_chars"] += counts.get("chars_out", 0)
            for key, n in counts.items():
                if key.startswith("dropped_"):
                    reason = key.removeprefix("dropped_")
                    dst = slot["dropped"].setdefault(reason, {"docs": 0, "chars": 0})
                    dst["docs"] += n
                    dst["chars"] += counts.get(f"chars_dropped_{reason}", 0)
            if "removed_lines" in counts:
                slot["removed_lines"] = slot.get("removed_lines", 0) + counts["removed_lines"]
    return list(merged.values())


def stage_written(root: str | os.PathLike, stage: str) -> int:
    """Documents the stage's tasks wrote (its ``PartWriter``)."""
    return sum(
        _total(e["stats"].get("written", 0))
        for t in _task_stats(Path(root), stage)
        for e in t
        if e["name"].endswith("PartWriter")
    )


def _reader_skipped(root: Path) -> dict[str, int]:
    skipped: dict[str, int] = {}
    for task in _task_stats(root, "filter"):
        for key, value in task[0]["stats"].items():
            if key.startswith("skipped_"):
                reason = key.removeprefix("skipped_")
                skipped[reason] = skipped.get(reason, 0) + _total(value)
    return dict(sorted(skipped.items()))


def build_report(config: CurateConfig) -> dict:
    """Assemble the report from the stage statistics, the curated documents and the shard manifest."""
    from data.pipeline import DEDUPED, SHARDS

    root = Path(config.output_dir)
    manifest = json.loads((root / SHARDS / "manifest.json").read_text())
    languages: dict[str, dict] = {}
    categories: dict[str, dict] = {}
    topics: dict[str, int] = {}
    kept = 0
    for path in parts(root / DEDUPED):
        for doc in read_jsonl_gz(path):
            kept += 1
            if "topic" in doc.metadata:
                topics[doc.metadata["topic"]] = topics.get(doc.metadata["topic"], 0) + 1
            lang = languages.setdefault(str(doc.metadata.get("lang", "unknown")), {"docs": 0, "chars": 0})
            lang["docs"] += 1
            lang["chars"] += len(doc.text)
            cat = categories.setdefault(category_of(doc.metadata, config.mix), {"docs": 0, "chars": 0})
            cat["docs"] += 1
            cat["chars"] += len(doc.text)
    total_tokens = sum(manifest["tokens_per_category"].values())
    # Tokens per character of the curated text (Llama 3 tokenizer): turns the character counts of every step
    # into token estimates without tokenizing what was dropped (much of it raw HTML).
    kept_chars = sum(c["chars"] for c in categories.values())
    tokens_per_char = sum(manifest["available_tokens"].values()) / max(1, kept_chars)
    steps = [step for stage in FUNNEL_STAGES for step in stage_steps(root, stage)]
    for step in steps:
        step["in_tokens_est"] = round(step["in_chars"] * tokens_per_char)
        step["out_tokens_est"] = round(step["out_chars"] * tokens_per_char)
        for counts in step["dropped"].values():
            counts["tokens_est"] = round(counts["chars"] * tokens_per_char)
    for lang in languages.values():
        lang["tokens_est"] = round(lang["chars"] * tokens_per_char)
    for name, tokens in manifest["tokens_per_category"].items():
        slot = categories.setdefault(name, {"docs": 0, "chars": 0})
        slot["available_tokens"] = manifest["available_tokens"].get(name, 0)
        slot["tokens_in_shards"] = tokens
        slot["target_weight"] = manifest["target_weights"][name]
        slot["actual_weight"] = round(tokens / max(1, total_tokens), 6)
    return {
        "input_files": list_input_files(config.reader.paths),
        "tasks": config.tasks,
        "reader_skipped": _reader_skipped(root),
        "tokens_per_char": round(tokens_per_char, 6),
        "steps": steps,
        "kept_documents": kept,
        "languages": dict(sorted(languages.items(), key=lambda kv: -kv[1]["docs"])),
        "categories": dict(sorted(categories.items())),
        "topics": dict(sorted(topics.items())),
        "shards": {
            "sequences": manifest["sequences"],
            "seq_len": manifest["seq_len"],
            "tokens": total_tokens,
            "files": len(manifest["shards"]),
        },
    }


def write_report(report: dict, out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """``report.json`` and ``report.png`` in ``out_dir``, each written atomically."""
    from matplotlib.figure import Figure

    out = Path(out_dir)
    json_path, png_path = out / "report.json", out / "report.png"
    with atomic_output_file(json_path) as tmp:
        tmp.write_text(json.dumps(report, indent=2, sort_keys=True))

    fig = Figure(figsize=(12, 5))
    funnel, mix_ax = fig.subplots(1, 2, gridspec_kw={"width_ratios": [2, 1]})
    names = [s["step"] for s in report["steps"]]
    kept = [s["out_docs"] for s in report["steps"]]
    dropped = [s["in_docs"] - s["out_docs"] for s in report["steps"]]
    funnel.barh(names, kept, color="tab:green", label="kept")
    funnel.barh(names, dropped, left=kept, color="tab:red", label="dropped")
    funnel.invert_yaxis()
    funnel.set_xlabel("documents")
    funnel.set_title("Documents per pipeline step")
    funnel.legend()
    cats = [c for c in report["categories"] if "tokens_in_shards" in report["categories"][c]]
    actual = [report["categories"][c]["actual_weight"] for c in cats]
    target = [report["categories"][c]["target_weight"] for c in cats]
    x = range(len(cats))
    mix_ax.bar([i - 0.2 for i in x], target, width=0.4, label="target")
    mix_ax.bar([i + 0.2 for i in x], actual, width=0.4, label="in shards")
    mix_ax.set_xticks(list(x), cats, rotation=20)
    mix_ax.set_title("Token mix")
    mix_ax.legend()
    fig.tight_layout()
    with atomic_output_file(png_path) as tmp_png:
        fig.savefig(tmp_png, format="png", dpi=100, metadata={"Software": None})
    return json_path, png_path
