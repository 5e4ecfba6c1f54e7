"""``hf-llama3 post-data curate``: data processing and quality control of SFT dialogs [4.2.3].

Reads SFT rows (``messages`` dialogs or ``prompt``/``completion``), tags each with its topic (coarse and fine
bucket), quality (reward-model score and judge rubric) and difficulty (intention tags and judged difficulty), keeps
the rows that the reward model or the judge flags as high quality, deduplicates them semantically, and writes the
kept rows, each with a ``curation`` column whose tags name the model that produced them, plus a report of what was
kept and what was dropped and why. The SFT stage reads the output as it is (it keeps only the dialog columns).

    hf-llama3 post-data curate --config recipes/tiny/curate.yaml
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from hf_llama3.recipe_loader import bounds
from training.post_data.difficulty import DEFAULT_INTENTIONS, score_difficulty
from training.post_data.judge import LogLikelihoodJudge
from training.post_data.quality_scores import judge_rubric, reward_scores, top_fraction_flags
from training.post_data.semantic_dedup import load_encoder, semantic_dedup
from training.post_data.topic_tags import DEFAULT_TOPICS, classify_topic


@dataclasses.dataclass
class CurateConfig:
    """Args:
    input_path: SFT rows to curate (``.jsonl``/``.json``/``.parquet``).
    output_path: where the kept rows go (``.jsonl``); the report goes beside it as ``<name>.report.json``.
    judge_model_path: causal LM that tags topics, rates the rubric and judges difficulty (the policy or a judge).
    tokenizer_path: tokenizer folder; None: the judge's folder, else the real Llama 3 tokenizer.
    reward_model_path: reward model whose top-quartile scores flag high quality; None: the judge's rubric alone.
    embedding_model_path: sentence-transformers folder for semantic dedup; None: the packaged MiniLM.
    topics: coarse bucket -> its fine buckets.
    intentions: the intention tags the judge chooses from.
    intention_tag_share: an intention is tagged when its probability is at least this many uniform shares.
    reward_top_fraction: share of the best reward scores flagged high quality.
    coding_topics: coarse buckets rated on the coding rubric (two-point scale) instead of the general one.
    dedup_threshold: a dialog is dropped when its cosine similarity to a kept one in its cluster reaches this.
    num_clusters: k-means clusters of the dialog embeddings (capped at the row count).
    seed: k-means seed.
    device: where the judge and reward model run: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
    """

    input_path: str = ""
    output_path: str = ""
    judge_model_path: str = ""
    tokenizer_path: str | None = None
    reward_model_path: str | None = None
    embedding_model_path: str | None = None
    topics: dict[str, list[str]] = dataclasses.field(default_factory=lambda: dict(DEFAULT_TOPICS))
    intentions: list[str] = dataclasses.field(default_factory=lambda: list(DEFAULT_INTENTIONS))
    intention_tag_share: float = dataclasses.field(default=1.5, metadata=bounds("", gt=0))
    # [4.2.3] "we consider data that is in the top quartile of RM scores as high quality".
    reward_top_fraction: float = dataclasses.field(default=0.25, metadata=bounds("", gt=0, max=1))
    # [4.2.3] "a two-point scale for coding data".
    coding_topics: list[str] = dataclasses.field(default_factory=lambda: ["coding"])
    # [4.2.3] names a threshold without its value; see training.post_data.semantic_dedup.
    dedup_threshold: float = dataclasses.field(default=0.9, metadata=bounds("", gt=0, max=1))
    num_clusters: int = dataclasses.field(default=8, metadata=bounds("", min=1))
    seed: int = dataclasses.field(default=0, metadata=bounds("", min=0))
    device: Literal["auto", "cpu", "cuda"] = "auto"

    def __post_init__(self) -> None:
        for key in ("input_path", "output_path", "judge_model_path"):
            if not getattr(self, key):
                raise ValueError(f"curate: {key} is not set; give it in the recipe or with --set {key}=...")
        if len(self.topics) < 2:
            raise ValueError("curate: topics needs at least two coarse buckets to choose between.")
        if len(self.intentions) < 2:
            raise ValueError("curate: intentions needs at least two intention tags to choose between.")


def report_path(output_path: str | Path) -> Path:
    """The report written beside ``output_path``."""
    output = Path(output_path)
    return output.with_name(output.stem + ".report.json")


def dialog_parts(row: dict[str, Any]) -> tuple[list[dict], str, str]:
    """The prompt messages, the final response text and the whole dialog as text (what gets embedded)."""
    if row.get("messages"):
        messages = [m for m in row["messages"] if isinstance(m, dict)]
        last = max(i for i, m in enumerate(messages) if m.get("role") == "assistant")
        prompt, response = messages[:last], str(messages[last].get("content") or "")
    else:
        prompt, response = [{"role": "user", "content": str(row["prompt"])}], str(row["completion"])
    dialog = "\n".join(
        f"{m.get('role')}: {m.get('content') or ''}" for m in [*prompt, {"role": "assistant", "content": response}]
    )
    return prompt, response, dialog


def user_text(prompt: list[dict]) -> str:
    """The user turns of a prompt (what topic and difficulty are judged on)."""
    return "\n".join(str(m.get("content") or "") for m in prompt if m.get("role") == "user")


def read_sft_rows(path: str) -> list[dict[str, Any]]:
    """The rows of an SFT file, refused with file, row and field when one is not an SFT row."""
    from training.post_rows import load_rows
    from training.sft import check_sft_rows

    dataset = load_rows(path)
    check_sft_rows(dataset, name=str(path))
    return dataset.to_list()


def curate_rows(
    rows: list[dict[str, Any]],
    config: CurateConfig,
    judge: LogLikelihoodJudge,
    encoder: Any,
    encoder_name: str,
    reward_model: Any = None,
    reward_name: str | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Tag, filter and deduplicate ``rows``: the kept rows (with ``curation``) and the report."""
    parts = [dialog_parts(row) for row in rows]
    tags: list[dict[str, Any]] = []
    for prompt, response, _ in parts:
        topic = classify_topic(judge, user_text(prompt), config.topics)
        rubric = judge_rubric(judge, user_text(prompt), response, coding=topic["coarse"] in config.coding_topics)
        difficulty = score_difficulty(judge, user_text(prompt), config.intentions, config.intention_tag_share)
        tags.append({"topic": topic, "quality": {**rubric, "model": judge.name}, "difficulty": difficulty})
    reward_high = [False] * len(rows)
    if reward_model is not None:
        rewards = reward_scores(reward_model, judge.tokenizer, [p for p, _, _ in parts], [r for _, r, _ in parts])
        reward_high = top_fraction_flags(rewards, config.reward_top_fraction)
        for tag, reward, high in zip(tags, rewards, reward_high):
            tag["reward"] = {"score": reward, "high": high, "model": reward_name}
    # [4.2.3] "select examples that are marked as high quality by either the RM or the Llama-based filter".
    high = [tag["quality"]["high"] or flag for tag, flag in zip(tags, reward_high)]
    candidates = [i for i, keep in enumerate(high) if keep]
    report: dict[str, Any] = {
        "input": config.input_path,
        "rows_read": len(rows),
        "models": {"judge": judge.name, "reward": reward_name, "embedding": encoder_name},
        "dropped": {
            "low_quality": [
                {"row": i, "judge_level": tags[i]["quality"]["level"], "reward_high": reward_high[i]}
                for i, keep in enumerate(high)
                if not keep
            ],
            "semantic_duplicate": [],
        },
    }
    kept: list[int] = []
    if candidates:
        embeddings = encoder.encode(
            [parts[i][2] for i in candidates], batch_size=32, show_progress_bar=False, normalize_embeddings=True
        )
        # [4.2.3] "sort them by quality score x difficulty score": quality is the rubric's expected score over its
        # maximum, raised to 1 when the reward model flags the row.
        quality = [
            1.0 if reward_high[i] else tags[i]["quality"]["score"] / tags[i]["quality"]["scale"] for i in candidates
        ]
        scores = [q * tags[i]["difficulty"]["score"] for q, i in zip(quality, candidates)]
        result = semantic_dedup(embeddings, scores, config.dedup_threshold, config.num_clusters, config.seed)
        kept = [candidates[k] for k in result.kept]
        for k, cluster in enumerate(result.clusters):
            tags[candidates[k]]["dedup"] = {"cluster": cluster, "score": scores[k], "model": encoder_name}
        report["dropped"]["semantic_duplicate"] = [
            {"row": candidates[d["row"]], "duplicate_of": candidates[d["duplicate_of"]], "cosine": d["cosine"]}
            for d in result.dropped
        ]
    report["rows_kept"] = len(kept)
    report["kept"] = kept
    return [{**rows[i], "curation": tags[i]} for i in kept], report


def read_jsonl(path: str | Path) -> Iterator[tuple[int, Any]]:
    """``(row number, value)`` of every non-blank line of a JSON-lines file (numbered as the file's lines, from 0);
    a line that is no JSON is refused naming the file and row."""
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(
                    f"{path}: row {number}: malformed JSON ({err.msg}); fix or remove that line."
                ) from None


def write_jsonl(path: str | Path, rows: list[dict[str, Any]]) -> None:
    """Write ``rows`` as JSON lines, atomically (no half-written file on failure)."""
    from hf_llama3.checkpoint_io import atomic_output_file

    with atomic_output_file(path) as tmp, tmp.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def write_report(path: str | Path, report: dict[str, Any]) -> None:
    """Write a step's report as indented JSON, atomically."""
    from hf_llama3.checkpoint_io import atomic_output_file

    with atomic_output_file(path) as tmp:
        tmp.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def torch_device(name: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; other names as given."""
    import torch

    return ("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name


def load_causal_lm(path: str, tokenizer_path: str | None, device: str = "cpu") -> tuple[Any, Any]:
    """A causal LM from a folder on ``device`` and its tokenizer (the folder's, ``tokenizer_path``, or the real
    Llama 3 one)."""
    from transformers import AutoModelForCausalLM

    import hf_llama3

    model = AutoModelForCausalLM.from_pretrained(path).to(device)
    tokenizer_folder = tokenizer_path or (path if (Path(path) / "tokenizer_config.json").is_file() else None)
    if tokenizer_folder is None:
        return model, hf_llama3.load_tokenizer()
    from transformers import AutoTokenizer

    return model, AutoTokenizer.from_pretrained(tokenizer_folder)


def curate(config: CurateConfig) -> dict[str, Any]:
    """Run the step from its config: read, load the models, curate, write the rows and the report."""
    from transformers import AutoModelForSequenceClassification

    rows = read_sft_rows(config.input_path)
    device = torch_device(config.device)
    model, tokenizer = load_causal_lm(config.judge_model_path, config.tokenizer_path, device)
    judge = LogLikelihoodJudge(model, tokenizer, config.judge_model_path)
    reward_model = None
    if config.reward_model_path:
        reward_model = AutoModelForSequenceClassification.from_pretrained(config.reward_model_path).to(device).eval()
    encoder, encoder_name = load_encoder(config.embedding_model_path)
    kept, report = curate_rows(rows, config, judge, encoder, encoder_name, reward_model, config.reward_model_path)
    write_jsonl(config.output_path, kept)
    write_report(report_path(config.output_path), report)
    return report


def summary(report: dict[str, Any]) -> str:
    """The line ``hf-llama3 post-data curate`` prints: the kept and dropped counts."""
    dropped = {reason: len(rows) for reason, rows in report["dropped"].items()}
    return f"curate: kept {report['rows_kept']} of {report['rows_read']} rows, dropped {dropped}"
