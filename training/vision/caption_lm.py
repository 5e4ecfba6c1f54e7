"""A tiny Llama 3 that knows the synthetic captions' language: the frozen text model of the demo and the tests.

[7] composes a vision adapter with an already trained language model. On CPU the stand-in is a tiny Llama 3
(``tiny`` preset, real 128256-token vocabulary and tokenizer) trained for a few hundred steps on the captions
alone, ``<|begin_of_text|>caption<|end_of_text|>``, no images. It learns everything text can tell about a
caption (the grammar, the word distribution), so its held-out caption loss is the text-only baseline: a vision
adapter that goes clearly below it must be reading the image.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import torch

from hf_llama3 import Llama3Config, Llama3ForCausalLM
from hf_llama3.checkpoint_io import atomic_output_dir
from hf_llama3.tokenization_llama3 import load_tokenizer

from .data import ImageTextRow, synthetic_rows

IGNORE_INDEX = -100


def caption_batch(tokenizer, captions: list[str]) -> dict[str, torch.Tensor]:
    """``<|begin_of_text|>caption<|end_of_text|>`` rows, right-padded, labels on caption + end token."""
    batch = tokenizer([f"{c}{tokenizer.eos_token}" for c in captions], padding=True, return_tensors="pt")
    labels = batch["input_ids"].clone()
    labels[batch["attention_mask"] == 0] = IGNORE_INDEX
    labels[:, 0] = IGNORE_INDEX  # <|begin_of_text|>
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "labels": labels}


@torch.no_grad()
def text_caption_loss(model: Llama3ForCausalLM, tokenizer, rows: list[ImageTextRow], batch_size: int = 32) -> float:
    """Mean loss per caption token (caption words + end token) of a text model: the text-only baseline."""
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(rows), batch_size):
        batch = caption_batch(tokenizer, [r.caption for r in rows[start : start + batch_size]])
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        targets = batch["labels"][:, 1:]
        total += torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(),
            targets.reshape(-1),
            ignore_index=IGNORE_INDEX,
            reduction="sum",
        ).item()
        count += int((targets != IGNORE_INDEX).sum())
    return total / count


def train_caption_language_model(
    dst: str | os.PathLike,
    *,
    steps: int = 80,
    batch_size: int = 16,
    learning_rate: float = 1e-2,
    rows: int = 512,
    preset: str = "tiny",
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Train a ``preset`` Llama 3 on synthetic captions (text only) and save it (our format) with its tokenizer."""
    tokenizer = load_tokenizer()
    torch.manual_seed(seed)
    model = Llama3ForCausalLM(Llama3Config.from_preset(preset))
    captions = [r.caption for r in synthetic_rows(rows, seed)]
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.0, fused=True)
    rng = random.Random(seed)
    model.train()
    for _ in range(steps):
        batch = caption_batch(tokenizer, [captions[rng.randrange(len(captions))] for _ in range(batch_size)])
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    with atomic_output_dir(dst, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return Path(dst)
