"""TRL's SFTTrainer(assistant_only_loss=True) with our tokenizer and template trains only on assistant tokens."""

from __future__ import annotations

import json
import math

import torch
from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from hf_llama3 import Llama3Config, Llama3ForCausalLM
from hf_llama3.chat_format import IGNORE_INDEX, encode_dialog

from .llama3_reference import hf_tokenizer

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]},
    },
}
OPTIONS = {"builtin_tools": ["brave_search", "code_interpreter"], "date_string": "26 July 2024"}


def _rows() -> list[dict]:
    """Conversations with system prompts, tool calls (built-in and custom), tool results and multi-turn."""
    rows = [
        [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": f"What is {a} + {b}?"},
            {"role": "assistant", "content": f"{a} + {b} = {a + b}."},
            {"role": "user", "content": "And times two?"},
            {"role": "assistant", "content": f"{2 * (a + b)}."},
        ]
        for a, b in [(1, 2), (3, 4), (10, 20)]
    ]
    rows.append(
        [
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "tool_calls": [
                    {"type": "function", "function": {"name": "get_weather", "arguments": {"query": "Paris"}}}
                ],
            },
            {"role": "tool", "content": '{"temperature_c": 21}'},
            {"role": "assistant", "content": "21°C and sunny in Paris."},
        ]
    )
    rows.append(
        [
            {"role": "user", "content": "Search for the Llama 3 paper."},
            {
                "role": "assistant",
                "tool_calls": [
                    {"type": "function", "function": {"name": "brave_search", "arguments": {"query": "Llama 3 Herd"}}}
                ],
            },
            {"role": "ipython", "content": "arXiv:2407.21783"},
            {"role": "assistant", "content": "It is arXiv 2407.21783."},
        ]
    )
    return rows


def _dataset_rows() -> list[dict]:
    # Tools travel as a JSON string (TRL decodes it) and dialog options as chat_template_kwargs. Every tool call
    # takes the same argument ("query"), so Arrow stores the arguments as one struct without null-filled keys.
    return [{"messages": m, "tools": json.dumps([WEATHER]), "chat_template_kwargs": OPTIONS} for m in _rows()]


def _expected(messages) -> tuple[list[int], list[int]]:
    """The same dialog through our Python encoder."""
    encoded = encode_dialog(hf_tokenizer(), messages, tools=[WEATHER], **OPTIONS)
    return encoded.input_ids, encoded.labels


def test_sft_assistant_only_loss_trains_on_assistant_tokens_only(tmp_path):
    tok = hf_tokenizer()
    torch.manual_seed(0)
    model = Llama3ForCausalLM(Llama3Config.from_preset("tiny"))
    args = SFTConfig(
        output_dir=str(tmp_path),
        assistant_only_loss=True,
        max_length=1024,
        per_device_train_batch_size=len(_rows()),
        max_steps=1,  # one optimizer step: the 128256-token head makes each step costly on CPU
        learning_rate=1e-3,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        dataloader_num_workers=0,
        seed=0,
    )
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=Dataset.from_list(_dataset_rows()), processing_class=tok
    )
    assert trainer.chat_template is None  # our template already has {% generation %} markers: TRL keeps it

    batch = next(iter(trainer.get_train_dataloader()))
    expected = {tuple(ids): labels for ids, labels in map(_expected, _rows())}
    assert len(batch["input_ids"]) == len(expected)
    seen = set()
    for ids, labels, attention in zip(batch["input_ids"], batch["labels"], batch["attention_mask"]):
        length = int(attention.sum())
        key = tuple(ids[:length].tolist())
        assert key in expected, "TRL tokenized a dialog differently from encode_dialog"
        seen.add(key)
        assert labels[:length].tolist() == expected[key]
        assert (labels[length:] == IGNORE_INDEX).all() and (ids[length:] == tok.pad_token_id).all()
        # Every labelled token is assistant text or its eot/eom; no header, user, system or tool token.
        labelled = ids[:length][labels[:length] != IGNORE_INDEX]
        assert not set(labelled.tolist()) & {128000, 128006, 128007}
        assert set(labelled.tolist()) & {128008, 128009}
    assert seen == set(expected)

    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    result = trainer.train()
    assert math.isfinite(result.training_loss)
    changed = [name for name, p in model.named_parameters() if not torch.equal(before[name], p.detach())]
    assert "lm_head.weight" in changed and any("layers.0" in name for name in changed)
