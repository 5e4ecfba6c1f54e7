"""Model cards (`README.md` with Hub metadata) for every folder the project exports, ready for `push_to_hub`."""

from __future__ import annotations

import os
from pathlib import Path

from .configuration_llama3 import PRESETS


def describe_architecture(config) -> str:
    """One markdown table of the shape of a Llama 3 config (ours or transformers' `LlamaConfig`)."""
    rope = config.rope_parameters or {}
    preset = next(
        (
            name
            for name, values in PRESETS.items()
            if all(getattr(config, k, None) == v for k, v in values.items() if k != "rope_parameters")
        ),
        "custom",
    )
    rows = [
        ("preset", preset),
        ("layers", config.num_hidden_layers),
        ("model dim", config.hidden_size),
        ("FFN dim", config.intermediate_size),
        ("heads / KV heads", f"{config.num_attention_heads} / {config.num_key_value_heads}"),
        ("vocabulary", config.vocab_size),
        ("context", config.max_position_embeddings),
        (
            "RoPE",
            f"{rope.get('rope_type', 'default')}, theta {rope.get('rope_theta')}, factor {rope.get('factor', 1)}",
        ),
        ("tied embeddings", config.tie_word_embeddings),
    ]
    return "| | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)


def write_model_card(
    folder: str | os.PathLike,
    config,
    *,
    title: str,
    remote_code: bool,
    sections: dict[str, str] | None = None,
    tags: list[str] | None = None,
) -> Path:
    """Write ``folder/README.md``: Hub metadata, architecture table, usage snippet and extra sections.

    ``remote_code`` says whether the folder needs ``trust_remote_code=True`` (our ``llama3`` model type) or is a
    stock ``llama`` folder.
    """
    auto_class = (
        "AutoModelForSequenceClassification"
        if any("SequenceClassification" in a for a in (config.architectures or []))
        else "AutoModelForCausalLM"
    )
    all_tags = ["llama", "llama-3", "hf-llama3", *(tags or [])]
    front_matter = "\n".join(
        [
            "---",
            "library_name: transformers",
            "license: llama3.1",
            f"pipeline_tag: {'text-classification' if auto_class.endswith('Classification') else 'text-generation'}",
            "tags:",
            *[f"- {tag}" for tag in all_tags],
            "---",
        ]
    )
    load_kwargs = ", trust_remote_code=True" if remote_code else ""
    usage = (
        "```python\n"
        f"from transformers import AutoTokenizer, {auto_class}\n\n"
        f'model = {auto_class}.from_pretrained("path/or/repo"{load_kwargs})\n'
        'tokenizer = AutoTokenizer.from_pretrained("path/or/repo")\n'
        "```"
    )
    note = (
        "This folder uses the `llama3` model type of hf-llama3 (document masking, chunked loss); it loads with "
        "`trust_remote_code=True`, or without it once `import hf_llama3` has run."
        if remote_code
        else "This folder uses transformers' stock `llama` model type and loads without remote code."
    )
    body = [front_matter, f"# {title}", "", note, "", "## Architecture", "", describe_architecture(config), ""]
    body += ["## Usage", "", usage, ""]
    for heading, text in (sections or {}).items():
        body += [f"## {heading}", "", text.strip(), ""]
    path = Path(folder) / "README.md"
    path.write_text("\n".join(body))
    return path
