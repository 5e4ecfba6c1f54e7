"""The ``long-context`` step [4.3.4]: valid SFT rows, answers located in their chunk, the mix ratio, code targets."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import yaml

from tests.post_training.conftest import tiny_causal_lm
from training.post_data.cli import main
from training.post_data.curate import report_path
from training.post_data.long_context import chunk_spans, dependents, missing_file_rows, read_documents

CHUNK_TOKENS = 48


@pytest.fixture(scope="module")
def tokenizer():
    """The real Llama 3 tokenizer."""
    from hf_llama3 import load_tokenizer

    return load_tokenizer()


def long_document(seed: int, sentences: int = 12) -> str:
    """A document of varied factual sentences (seeded), long enough for several chunks."""
    rng = random.Random(seed)
    towns = ["Arden", "Belmont", "Corvale", "Dunmore", "Elston", "Fairholm"]
    things = ["library", "bridge", "harbour", "observatory", "market", "school"]
    return " ".join(
        f"The {rng.choice(things)} of {rng.choice(towns)} was rebuilt in {rng.randint(1700, 1990)} by "
        f"{rng.randint(2, 90)} workers."
        for _ in range(sentences)
    )


def write_repo(root):
    """A package whose core.py four modules import, each in another spelling of import."""
    package = root / "pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "core.py").write_text("def add(a, b):\n    return a + b\n")
    (package / "util.py").write_text("from .core import add\n\n\ndef twice(x):\n    return add(x, x)\n")
    (package / "b.py").write_text("from pkg import core\n\nTHREE = core.add(1, 2)\n")
    (package / "c.py").write_text("import pkg.core as c\n\nFOUR = c.add(2, 2)\n")
    (package / "d.py").write_text("from pkg.core import add\nfrom . import util\n\nSIX = util.twice(add(1, 2))\n")
    return package


def test_missing_file_rows_target_the_file_most_imported(tmp_path):
    package = write_repo(tmp_path)
    graph = dependents(package)
    assert sorted(p.name for p in graph[package / "core.py"]) == ["b.py", "c.py", "d.py", "util.py"]
    assert [p.name for p in graph[package / "util.py"]] == ["d.py"]
    (row,) = missing_file_rows(package, min_dependents=3)
    request, answer = row["messages"][0]["content"], row["messages"][1]["content"]
    assert "def add(a, b)" not in request and "def add(a, b):\n    return a + b\n" in answer
    assert "missing the file core.py" in request and "util.py, b.py" not in answer  # listed in file order
    assert answer.startswith("Files that import core.py: b.py, c.py, d.py, util.py.")


def test_long_context_rows_are_sft_rows_supported_by_their_chunk_at_the_mix_ratio(tmp_path, tokenizer):
    from training.post_rows import load_rows
    from training.sft import check_sft_rows

    model_dir = tmp_path / "model"
    tiny_causal_lm(0).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    documents = {f"doc{k}": long_document(k) for k in range(2)}
    docs_path = tmp_path / "docs.jsonl"
    docs_path.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in documents.items()))
    sft_path = tmp_path / "sft.jsonl"
    short = [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi!"}]
    sft_path.write_text((json.dumps({"messages": short}) + "\n") * 380)
    out = tmp_path / "mixed.jsonl"
    recipe = tmp_path / "long_context.yaml"
    settings = {
        "sft_path": str(sft_path), "output_path": str(out), "documents_path": str(docs_path),
        "code_repos": [str(write_repo(tmp_path))], "model_path": str(model_dir), "mix_ratio": 0.05,
        "chunk_tokens": CHUNK_TOKENS, "min_dependents": 3, "max_new_tokens": 6,
    }  # fmt: skip
    recipe.write_text(yaml.safe_dump(settings))
    assert main(["long-context", "--config", str(recipe)]) == 0

    mixed = load_rows(out)  # how the SFT stage reads it
    check_sft_rows(mixed, name=str(out))
    long_rows = [row for row in mixed if row["long_context"] is not None]
    share = len(long_rows) / len(mixed)
    assert abs(share - 0.05) <= 0.1 * 0.05, share  # [4.3.4] the mix ratio, within 10% relative
    report = json.loads(report_path(out).read_text())
    assert report["long_context_rows"] == len(long_rows) and "shortfall" not in report
    kinds = {row["long_context"]["kind"] for row in long_rows}
    assert kinds == {"qa", "summary", "code"}
    for row in long_rows:
        meta, (user, assistant) = row["long_context"], row["messages"]
        if meta["kind"] != "qa":
            continue
        document = documents[meta["source"]]
        assert user["content"].startswith(document)  # the whole document is the context [4.3.4]
        start, end = chunk_spans(document, tokenizer, CHUNK_TOKENS)[meta["chunk"]]
        chunk = document[start:end]
        assert len(tokenizer(chunk, add_special_tokens=False).input_ids) <= CHUNK_TOKENS
        answer = assistant["content"]
        assert chunk[meta["answer_start"] : meta["answer_start"] + len(answer)] == answer  # located in its chunk


def test_a_document_without_text_is_refused_with_file_row_and_field(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text(json.dumps({"text": "A fine document."}) + "\n" + json.dumps({"id": "x", "body": "oops"}) + "\n")
    with pytest.raises(ValueError, match=r"docs.jsonl: row 1: field 'text'"):
        read_documents(str(path))


@pytest.mark.parametrize("step", ["curate", "long_context"])
def test_tiny_recipes_build_their_configs(step):
    from hf_llama3.recipe_loader import load_recipe
    from training.post_data.curate import CurateConfig
    from training.post_data.long_context import LongContextConfig

    config_class = {"curate": CurateConfig, "long_context": LongContextConfig}[step]
    config = load_recipe(config_class, Path(__file__).resolve().parents[2] / "recipes" / "tiny" / f"{step}.yaml")
    assert isinstance(config, config_class)
