"""``hf-llama3 post-data long-context``: synthetic long-context SFT rows [4.3.4].

From the paper: "Question answering: We carefully curate a set of long documents from our pre-training mix. We
split these documents into chunks of 8K tokens, and prompted an earlier version of Llama 3 model to generate QA
pairs conditional on randomly selected chunks. During training, the whole document is used as context.
Summarization: We applied hierarchical summarization of long-context documents by first summarizing the chunks of
8K input length ... and then summarizing the summaries. During training we provide the full document and prompt
the model to summarize the document while preserving all the important details. Long context code reasoning: We
parse Python files to identify import statements and determine their dependencies. From here, we select the most
commonly depended-upon files, specifically those referenced by at least five other files. We remove one of these
key files from a repository and prompt the model to identify which files depended on the missing file and to
generate the necessary missing code. ... mixing 0.1% of synthetically generated long-context data with the
original short-context data optimizes the performance across both short-context and long-context benchmarks."

Here the QA is extractive: the answer is a sentence of the chunk (its offset is recorded) and the model writes the
question it answers, so every answer is located in its source chunk. Summaries are the model's, through
``transformers``' ``generate``. The code target is the removed file itself and the files that import it, both read
from the repository. The rows are mixed into the SFT rows at ``mix_ratio`` of the written file.
"""

from __future__ import annotations

import ast
import dataclasses
import random
import re
from pathlib import Path
from typing import Any, Literal

from hf_llama3.recipe_loader import bounds
from training.post_data.curate import (
    load_causal_lm,
    read_jsonl,
    read_sft_rows,
    report_path,
    torch_device,
    write_jsonl,
    write_report,
)

_SENTENCE = re.compile(r"[^.!?\n]+[.!?]")
_QUESTION = (
    "Write one question about the passage below whose answer is exactly this sentence: {answer}\n\n"
    "Passage:\n{chunk}\n\nAnswer with the question only."
)
_CHUNK_SUMMARY = "Summarize this part of a document, preserving all the important details.\n\n{chunk}"
_SUMMARY_OF_SUMMARIES = (
    "These are summaries of consecutive parts of one document. Summarize the whole document from them, "
    "preserving all the important details.\n\n{summaries}"
)
_SUMMARIZE_DOCUMENT = "Summarize the document above, preserving all the important details."


@dataclasses.dataclass
class LongContextConfig:
    """Args:
    sft_path: the SFT rows the synthetic rows are mixed into (their count sets how many are made).
    output_path: the mixed SFT rows (``.jsonl``); the report goes beside it as ``<name>.report.json``.
    documents_path: long documents, one JSON row each with ``text`` (and optionally ``id``): user documents or
        texts taken from the curated corpus.
    code_repos: folders of Python repositories for the missing-file task.
    model_path: the causal LM that writes the questions and the summaries.
    tokenizer_path: tokenizer folder; None: the model's folder, else the real Llama 3 tokenizer.
    mix_ratio: share of long-context rows in the written file.
    chunk_tokens: chunk length for questions and summaries.
    min_dependents: a repository file becomes a missing-file target when at least this many files import it.
    min_answer_words: shortest sentence used as an extractive answer.
    max_new_tokens: longest generated question or summary.
    seed: the choice of chunks, answers and the shuffle of the mixed file.
    device: where the model generates: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
    """

    sft_path: str = ""
    output_path: str = ""
    documents_path: str | None = None
    code_repos: list[str] = dataclasses.field(default_factory=list)
    model_path: str = ""
    tokenizer_path: str | None = None
    # [4.3.4] "mixing 0.1% of synthetically generated long-context data with the original short-context data".
    mix_ratio: float = dataclasses.field(default=0.001, metadata=bounds("", gt=0, lt=1))
    # [4.3.4] "we split these documents into chunks of 8K tokens".
    chunk_tokens: int = dataclasses.field(default=8192, metadata=bounds("", min=16))
    # [4.3.4] "those referenced by at least five other files".
    min_dependents: int = dataclasses.field(default=5, metadata=bounds("", min=1))
    min_answer_words: int = dataclasses.field(default=4, metadata=bounds("", min=1))
    max_new_tokens: int = dataclasses.field(default=256, metadata=bounds("", min=1))
    seed: int = dataclasses.field(default=0, metadata=bounds("", min=0))
    device: Literal["auto", "cpu", "cuda"] = "auto"

    def __post_init__(self) -> None:
        for key in ("sft_path", "output_path", "model_path"):
            if not getattr(self, key):
                raise ValueError(f"long-context: {key} is not set; give it in the recipe or with --set {key}=...")
        if not self.documents_path and not self.code_repos:
            raise ValueError("long-context: give documents_path (long documents) or code_repos (Python folders).")


# ----------------------------------------------------------------------------------------------------------------
# Inputs


def read_documents(path: str) -> list[dict[str, str]]:
    """``{"id", "text"}`` of every row of a JSON-lines file; a row without text is refused with file, row, field."""
    documents = []
    for number, row in read_jsonl(path):
        text = row.get("text") if isinstance(row, dict) else None
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"{path}: row {number}: field 'text' must be the document's non-empty text.")
        documents.append({"id": str(row.get("id", number)), "text": text})
    if not documents:
        raise ValueError(f"{path}: no documents; give one JSON row with 'text' per line.")
    return documents


def chunk_spans(text: str, tokenizer: Any, chunk_tokens: int) -> list[tuple[int, int]]:
    """Character spans of consecutive chunks of whole sentences, each at most ``chunk_tokens`` tokens (a longer
    sentence is a chunk of its own); every chunk is an exact substring of ``text``."""
    spans: list[tuple[int, int]] = []
    start = end = used = None
    for match in _SENTENCE.finditer(text):
        length = len(tokenizer(match.group(), add_special_tokens=False).input_ids)
        if start is not None and used + length > chunk_tokens:
            spans.append((start, end))
            start = None
        if start is None:
            start, used = match.start(), 0
        end, used = match.end(), used + length
    if start is not None:
        spans.append((start, end))
    return spans


def module_name(path: Path) -> str:
    """Dotted module name of ``path`` as Python imports it: from the folder above its outermost package (so a
    package inside ``src/`` or a sub-package of the repository gets the name its importers use)."""
    base = path.parent
    while (base / "__init__.py").is_file() and base.parent != base:
        base = base.parent
    parts = list(path.resolve().relative_to(base.resolve()).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, name: str, is_package: bool) -> set[str]:
    """Every module name an import statement of ``source`` (module ``name``) may refer to."""
    names: set[str] = set()
    package = name.split(".") if is_package else name.split(".")[:-1]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *(node.module.split(".") if node.module else [])])
            names.add(module)
            names.update(f"{module}.{alias.name}" if module else alias.name for alias in node.names)
    return names


def dependents(root: Path) -> dict[Path, list[Path]]:
    """For every non-``__init__`` Python file of the repository, the files that import it [4.3.4]."""
    files = sorted(root.rglob("*.py"))
    names = {path: module_name(path) for path in files}
    imports = {
        path: imported_modules(path.read_text(encoding="utf-8"), names[path], path.name == "__init__.py")
        for path in files
    }
    return {
        target: [path for path in files if path != target and names[target] in imports[path]]
        for target in files
        if target.name != "__init__.py"
    }


# ----------------------------------------------------------------------------------------------------------------
# Generation


def generate_reply(model: Any, tokenizer: Any, request: str, max_new_tokens: int) -> str:
    """The model's greedy reply to one user message, through ``transformers``' ``generate``."""
    import torch

    from hf_llama3 import encode_dialog
    from hf_llama3.chat_format import stop_token_ids

    ids = encode_dialog(tokenizer, [{"role": "user", "content": request}], add_generation_prompt=True).input_ids
    prompt = torch.tensor([ids], device=next(model.parameters()).device)
    with torch.no_grad():
        output = model.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=stop_token_ids(tokenizer),
            pad_token_id=tokenizer.pad_token_id or 0,
        )
    return tokenizer.decode(output[0, len(ids) :], skip_special_tokens=True).strip()


def dialog(request: str, answer: str, meta: dict[str, Any]) -> dict[str, Any]:
    """An SFT row: one user turn and the target assistant turn, with where it came from (``long_context``)."""
    messages = [{"role": "user", "content": request}, {"role": "assistant", "content": answer}]
    return {"messages": messages, "long_context": meta}


def qa_row(model, tokenizer, document: dict[str, str], spans, rng: random.Random, config) -> dict[str, Any] | None:
    """A question about a random chunk whose answer is one of its sentences; None when the chunk has no sentence
    long enough or the model wrote no question."""
    chunk_index = rng.randrange(len(spans))
    start, end = spans[chunk_index]
    chunk = document["text"][start:end]
    answers = [m for m in _SENTENCE.finditer(chunk) if len(m.group().split()) >= config.min_answer_words]
    if not answers:
        return None
    answer = rng.choice(answers)
    question = generate_reply(
        model, tokenizer, _QUESTION.format(answer=answer.group().strip(), chunk=chunk), config.max_new_tokens
    )
    if not question:
        return None
    offset = answer.start() + (len(answer.group()) - len(answer.group().lstrip()))
    meta = {"kind": "qa", "source": document["id"], "chunk": chunk_index, "answer_start": offset}
    return dialog(f"{document['text']}\n\nQuestion: {question}", answer.group().strip(), meta)


def summary_row(model, tokenizer, document: dict[str, str], spans, config) -> dict[str, Any] | None:
    """Hierarchical summary [4.3.4]: each chunk summarized, then the summaries; None when the model wrote none."""
    summaries = [
        generate_reply(model, tokenizer, _CHUNK_SUMMARY.format(chunk=document["text"][a:b]), config.max_new_tokens)
        for a, b in spans
    ]
    summaries = [s for s in summaries if s]
    if not summaries:
        return None
    joined = "\n\n".join(summaries)
    summary = generate_reply(model, tokenizer, _SUMMARY_OF_SUMMARIES.format(summaries=joined), config.max_new_tokens)
    if not summary:
        return None
    meta = {"kind": "summary", "source": document["id"], "chunk": None, "answer_start": None}
    return dialog(f"{document['text']}\n\n{_SUMMARIZE_DOCUMENT}", summary, meta)


def missing_file_rows(root: Path, min_dependents: int) -> list[dict[str, Any]]:
    """One row per file imported by at least ``min_dependents`` others: the repository without it in the prompt,
    its dependents and its code as the target [4.3.4]."""
    rows = []
    graph = dependents(root)
    for target, users in graph.items():
        if len(users) < min_dependents:
            continue
        listing = "\n\n".join(
            f"### {path.relative_to(root)}\n```python\n{path.read_text(encoding='utf-8')}\n```"
            for path in sorted(root.rglob("*.py"))
            if path != target
        )
        missing = target.relative_to(root)
        request = (
            f"This Python repository is missing the file {missing}.\n\n{listing}\n\n"
            f"Which files depend on {missing}? Write the missing file."
        )
        answer = (
            f"Files that import {missing}: {', '.join(str(p.relative_to(root)) for p in users)}.\n\n"
            f"```python\n{target.read_text(encoding='utf-8')}\n```"
        )
        meta = {"kind": "code", "source": f"{root.name}/{missing}", "chunk": None, "answer_start": None}
        rows.append(dialog(request, answer, meta))
    return rows


# ----------------------------------------------------------------------------------------------------------------
# The step


def needed_rows(sft_rows: int, ratio: float) -> int:
    """How many long-context rows make ``ratio`` of the mixed file: n / (sft_rows + n) = ratio."""
    return max(1, round(ratio * sft_rows / (1.0 - ratio)))


def synthesize(
    config: LongContextConfig,
    model: Any,
    tokenizer: Any,
    sft_rows: list[dict[str, Any]],
    documents: list[dict[str, str]],
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The mixed rows (SFT rows and long-context rows, shuffled) and the report of what was made and dropped."""
    rng = random.Random(config.seed)
    needed = needed_rows(len(sft_rows), config.mix_ratio)
    made: list[dict[str, Any]] = []
    dropped: list[dict[str, Any]] = []
    for repo in config.code_repos:
        made += missing_file_rows(Path(repo), config.min_dependents)
    spans = {d["id"]: chunk_spans(d["text"], tokenizer, config.chunk_tokens) for d in documents}
    documents = [d for d in documents if spans[d["id"]]]
    for document in documents:
        if len(made) >= needed:
            break
        row = summary_row(model, tokenizer, document, spans[document["id"]], config)
        if row is None:
            dropped.append({"kind": "summary", "source": document["id"], "why": "the model wrote no summary"})
        else:
            made.append(row)
    # Questions fill what the summaries and code rows leave, cycling over the documents; a try that yields no row
    # still counts, so a model that writes nothing ends the loop.
    tries = 0
    while documents and len(made) < needed and tries < 4 * needed:
        document = documents[tries % len(documents)]
        tries += 1
        row = qa_row(model, tokenizer, document, spans[document["id"]], rng, config)
        if row is None:
            dropped.append({"kind": "qa", "source": document["id"], "why": "no answer sentence or no question"})
        else:
            made.append(row)
    made = made[:needed]
    mixed = [*sft_rows, *made]
    rng.shuffle(mixed)
    kinds = {kind: sum(r["long_context"]["kind"] == kind for r in made) for kind in ("qa", "summary", "code")}
    report = {
        "sft_rows": len(sft_rows),
        "long_context_rows": len(made),
        "needed": needed,
        "mix_ratio": config.mix_ratio,
        "share": len(made) / len(mixed),
        "kinds": kinds,
        "dropped": dropped,
    }
    if len(made) < needed:
        report["shortfall"] = f"made {len(made)} of {needed} rows: give more documents or repositories"
    return mixed, report


def run(config: LongContextConfig) -> dict[str, Any]:
    """Run the step from its config: read, load the model, synthesize, write the mixed rows and the report."""
    sft_rows = read_sft_rows(config.sft_path)
    documents = read_documents(config.documents_path) if config.documents_path else []  # before the model loads
    model, tokenizer = load_causal_lm(config.model_path, config.tokenizer_path, torch_device(config.device))
    mixed, report = synthesize(config, model.eval(), tokenizer, sft_rows, documents)
    write_jsonl(config.output_path, mixed)
    write_report(report_path(config.output_path), report)
    return report


def summary(report: dict[str, Any]) -> str:
    """The line ``hf-llama3 post-data long-context`` prints: what was made."""
    return (
        f"long-context: {report['long_context_rows']} rows ({report['kinds']}) mixed into {report['sft_rows']} SFT "
        f"rows, share {report['share']:.4%}" + (f"; {report['shortfall']}" if "shortfall" in report else "")
    )
