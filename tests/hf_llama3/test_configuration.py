"""Llama3Config: the paper's shapes as presets [Table 3], and validation errors that name the fix."""

from __future__ import annotations

import pytest

from hf_llama3 import PRESETS, Llama3Config, Llama3ForCausalLM

# The paper's Table 3 (8B/70B/405B) and the Llama 3.2 text models.
TABLE_3 = {
    "llama3-8b": (32, 4096, 14336, 32, 8),
    "llama3-70b": (80, 8192, 28672, 64, 8),
    "llama3-405b": (126, 16384, 53248, 128, 8),
    "llama3.2-1b": (16, 2048, 8192, 32, 8),
    "llama3.2-3b": (28, 3072, 8192, 24, 8),
}


@pytest.mark.parametrize("name", sorted(TABLE_3))
def test_presets_carry_the_published_shapes(name):
    config = Llama3Config.from_preset(name)
    layers, dim, ffn, heads, kv_heads = TABLE_3[name]
    assert (config.num_hidden_layers, config.hidden_size, config.intermediate_size) == (layers, dim, ffn)
    assert (config.num_attention_heads, config.num_key_value_heads) == (heads, kv_heads)
    assert config.vocab_size == 128256 and config.rms_norm_eps == 1e-5
    assert config.max_position_embeddings == 131072
    assert config.rope_parameters["rope_type"] == "llama3" and config.rope_parameters["rope_theta"] == 500000.0
    assert config.tie_word_embeddings == name.startswith("llama3.2")


def test_8b_parameter_count_is_about_8_billion():
    import torch

    with torch.device("meta"):
        model = Llama3ForCausalLM(Llama3Config.from_preset("llama3-8b"))
    assert sum(p.numel() for p in model.parameters()) == 8_030_261_248


def test_defaults_are_llama31_rope_and_special_tokens():
    config = Llama3Config()
    assert config.rope_parameters == {
        "rope_type": "llama3",
        "rope_theta": 500000.0,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    assert (config.bos_token_id, config.eos_token_id, config.pad_token_id) == (128000, 128001, 128004)
    assert config.auto_map == {}


def test_overrides_and_save_load_round_trip(tmp_path):
    config = Llama3Config.from_preset("tiny", num_hidden_layers=3, loss_chunk_size=64)
    config.save_pretrained(tmp_path)
    loaded = Llama3Config.from_pretrained(tmp_path)
    assert loaded.num_hidden_layers == 3 and loaded.loss_chunk_size == 64
    assert loaded.rope_parameters == config.rope_parameters


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(num_attention_heads=3), "does not divide hidden_size"),
        (dict(num_key_value_heads=3), "must be a multiple of num_key_value_heads"),
        (dict(vocab_size=1000), "vocab_size >= 128256"),
        (dict(rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0}), "needs rope_parameters"),
        (dict(rope_parameters={"rope_type": "ntk-by-parts", "rope_theta": 5.0}), "rope_type must be one of"),
        (dict(rope_parameters={"rope_type": "yarn", "rope_theta": 5.0}), "factor"),
        (dict(rope_parameters={"rope_type": "default", "rope_theta": -1.0}), "must be a positive number"),
        (
            dict(rope_parameters={**Llama3Config().rope_parameters, "low_freq_factor": 4.0, "high_freq_factor": 1.0}),
            "low_freq_factor < high_freq_factor",
        ),
        (dict(loss_chunk_size=-1), "loss_chunk_size must be >= 0"),
    ],
)
def test_bad_configs_raise_errors_that_name_the_problem(overrides, message):
    with pytest.raises(Exception, match=message):
        Llama3Config.from_preset("tiny", **overrides)


def test_unknown_preset_lists_the_choices():
    with pytest.raises(ValueError, match="llama3-8b"):
        Llama3Config.from_preset("llama3-9b")
    assert {"tiny", "llama3-8b", "llama3-70b", "llama3-405b", "llama3.2-1b", "llama3.2-3b"} <= set(PRESETS)
