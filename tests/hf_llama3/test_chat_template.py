"""The Jinja chat template (through stock `apply_chat_template`) against `chat_format` and Meta's ChatFormat."""

from __future__ import annotations

from importlib import resources

import pytest
from hypothesis import HealthCheck, given, settings
from jinja2.exceptions import TemplateError

from hf_llama3.chat_format import IGNORE_INDEX, encode_dialog, render_dialog

from .llama3_reference import (
    TEMPLATE_TEXT,
    dialogs,
    hf_tokenizer,
    meta_encode_dialog,
    prompt_format_dialogs,
    prompt_format_examples,
)
from .test_chat_format import BAD_DIALOGS, DIALOGS

PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _apply(messages, options, **kwargs):
    """`apply_chat_template` with our dialog options; tools go through transformers' own `tools` argument."""
    options = dict(options)
    tools = options.pop("tools", None) or None
    return hf_tokenizer().apply_chat_template(messages, tools=tools, **options, **kwargs)


def _check_template_agrees(messages, options):
    """Template == chat_format in both python_tag styles, and == Meta's ChatFormat in the "chat_format" one."""
    tok = hf_tokenizer()
    for style in ("prompt_format", "chat_format"):
        styled = {**options, "python_tag_style": style}
        text = _apply(messages, styled, tokenize=False)
        assert text == render_dialog(messages, **styled)
        out = _apply(messages, styled, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
        ours = encode_dialog(tok, messages, **styled)
        assert out["input_ids"] == ours.input_ids
        if style == "chat_format":
            assert ours.input_ids == meta_encode_dialog(messages, **styled)
        assert out["assistant_masks"] == [int(label != IGNORE_INDEX) for label in ours.labels]


@pytest.mark.parametrize("name", sorted(DIALOGS))
def test_template_equals_chat_format_and_meta(name):
    messages, options = DIALOGS[name]
    _check_template_agrees(messages, options)
    if messages[-1]["role"] != "assistant":
        _check_template_agrees(messages, {**options, "add_generation_prompt": True})


@PROPERTY
@given(dialogs(text=TEMPLATE_TEXT))
def test_template_equals_chat_format_and_meta_on_random_dialogs(dialog):
    _check_template_agrees(*dialog)


@pytest.mark.parametrize("index", [1, 2, 3, 4, 6])
def test_template_reproduces_prompt_format_md(index):
    messages, options = prompt_format_dialogs()[index]
    assert _apply(messages, options, add_generation_prompt=True, tokenize=False) == prompt_format_examples()[index][0]


@pytest.mark.parametrize(("messages", "options", "error"), BAD_DIALOGS, ids=[e for _, _, e in BAD_DIALOGS])
def test_template_rejects_bad_dialogs(messages, options, error):
    # transformers itself refuses an empty conversation before the template runs, with its own clear message.
    with pytest.raises((TemplateError, ValueError), match=f"{error}|empty conversation"):
        _apply(messages, options, tokenize=False)


def test_known_limits_of_rendering_to_a_string():
    """Pinned, documented differences between tokenizing the rendered string and piecewise encoding:
    a message starting with a line break merges with the header's "\\n\\n", and special-token text inside
    a message becomes the special token. `encode_dialog` (like Meta's ChatFormat) keeps both as text."""
    tok = hf_tokenizer()
    newline = [{"role": "user", "content": "\nHi"}]
    piecewise = encode_dialog(tok, newline).input_ids
    assert _apply(newline, {}, tokenize=False) == render_dialog(newline)
    assert piecewise == meta_encode_dialog(newline)
    assert _apply(newline, {}, tokenize=True)["input_ids"] != piecewise
    assert tok.decode(_apply(newline, {}, tokenize=True)["input_ids"]) == tok.decode(piecewise)

    injected = [{"role": "user", "content": "a<|eot_id|>b"}]
    assert encode_dialog(tok, injected).input_ids.count(128009) == 1 == meta_encode_dialog(injected).count(128009)
    assert _apply(injected, {}, tokenize=True)["input_ids"].count(128009) == 2


def test_saved_tokenizer_ships_the_template(tmp_path):
    hf_tokenizer().save_pretrained(tmp_path)
    packaged = resources.files("hf_llama3").joinpath("chat_template.jinja").read_text(encoding="utf-8")
    assert (tmp_path / "chat_template.jinja").read_text(encoding="utf-8") == packaged
    assert "{%- generation -%}" in packaged and "{%- endgeneration -%}" in packaged
