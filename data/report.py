"""The curation report: a JSON summary and a PNG plot (the funnel of documents per step, the mix).

Everything in it is computed from the stage outputs, so a resumed run writes the same report. Documents and
characters are exact at every step; tokens are exact per mix category (available and in the shards) and
estimated elsewhere (``*_tokens_est``: characters times the curated corpus's tokens per character).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from datatrove.data import Document

from data.mix import MixConfig, category_of
from hf_llama3.checkpoint_io import atomic_output_file


def _merge_steps(parts: Iterable[dict]) -> list[dict]:
    """Sum per-task step statistics, keeping the pipeline order of the steps."""
    merged: dict[str, dict] = {}
    for steps in parts:
        for entry in steps:
            name = entry["step"]
            slot = merged.setdefault(
                name, {"step": name, "in_docs": 0, "in_chars": 0, "out_docs": 0, "out_chars": 0, "dropped": {}}
            )
            for key in ("in_docs", "in_chars", "out_docs", "out_chars"):
                slot[key] += entry[key]
            for reason, counts in entry["dropped"].items():
                dst = slot["dropped"].setdefault(reason, {"docs": 0, "chars": 0})
                dst["docs"] += counts["docs"]
                dst["chars"] += counts["chars"]
            if "removed_lines" in entry:
                slot["removed_lines"] = slot.get("removed_lines", 0) + entry["removed_lines"]
    return list(merged.values())


def build_report(
    stage1: list[dict], stage2: dict, manifest: dict, final_docs: Iterable[Document], mix: MixConfig
) -> dict:
    """Assemble the report from the stage statistics, the final documents and the shard manifest."""
    reader_skipped: dict[str, int] = {}
    for part in stage1:
        for reason, n in part["reader_skipped"].items():
            reader_skipped[reason] = reader_skipped.get(reason, 0) + n
    languages: dict[str, dict] = {}
    categories: dict[str, dict] = {}
    topics: dict[str, int] = {}
    for doc in final_docs:
        if "topic" in doc.metadata:
            topics[doc.metadata["topic"]] = topics.get(doc.metadata["topic"], 0) + 1
        lang = languages.setdefault(str(doc.metadata.get("lang", "unknown")), {"docs": 0, "chars": 0})
        lang["docs"] += 1
        lang["chars"] += len(doc.text)
        cat = categories.setdefault(category_of(doc.metadata, mix), {"docs": 0, "chars": 0})
        cat["docs"] += 1
        cat["chars"] += len(doc.text)
    total_tokens = sum(manifest["tokens_per_category"].values())
    # Tokens per character of the curated text (Llama 3 tokenizer): turns the character counts of every step
    # into token estimates without tokenizing what was dropped (much of it raw HTML).
    kept_chars = sum(c["chars"] for c in categories.values())
    tokens_per_char = sum(manifest["available_tokens"].values()) / max(1, kept_chars)
    steps = _merge_steps(p["steps"] for p in stage1) + _merge_steps([stage2["steps"]])
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
        "input_files": [part["input"] for part in stage1],
        "reader_skipped": dict(sorted(reader_skipped.items())),
        "tokens_per_char": round(tokens_per_char, 6),
        "steps": steps,
        "kept_documents": stage2["kept"],
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
