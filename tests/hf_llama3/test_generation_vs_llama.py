"""Generation through every path transformers offers a causal LM, ours against stock `LlamaForCausalLM`.

What transformers' common generation tests check for a Llama-like model, on our classes with the same weights as the
stock model: every cache kind (dynamic, static, the paged cache of continuous batching), beam search, assisted
decoding, compiled decoding, continuing from a returned cache, and the rope types transformers implements. The
stock model is the reference; "equal" means token for token (logits within 1e-5 where logits are compared).
"""

from __future__ import annotations

import pytest
import torch
from transformers import CompileConfig, GenerationConfig
from transformers.generation.configuration_utils import ContinuousBatchingConfig

from hf_llama3 import Llama3Config, Llama3ForCausalLM, Llama3ForSequenceClassification
from tests.conftest import stock_llama_like, tiny_config

PAD, BOS, EOS = 0, 1, 2
PROMPTS = [[BOS, 96, 17, 74], [BOS, 40, 93], [BOS, 91, 62, 198, 399, 308, 27]]


def build_pair(attn_implementation: str = "sdpa", **overrides) -> tuple[Llama3ForCausalLM, torch.nn.Module]:
    """Ours and stock Llama with the same weights; a larger init makes greedy choices far from ties."""
    torch.manual_seed(0)
    config = tiny_config(num_attention_heads=8, num_key_value_heads=2, initializer_range=0.3, **overrides)
    config._attn_implementation = attn_implementation
    ours = Llama3ForCausalLM(config).eval()
    return ours, stock_llama_like(ours).eval()


def left_padded(prompts: list[list[int]]) -> dict[str, torch.Tensor]:
    width = max(map(len, prompts))
    input_ids = torch.tensor([[PAD] * (width - len(p)) + p for p in prompts])
    attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def generate_both(ours, reference, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    settings = dict(max_new_tokens=8, do_sample=False, pad_token_id=PAD, eos_token_id=None, **kwargs)
    with torch.no_grad():
        return ours.generate(**left_padded(PROMPTS), **settings), reference.generate(
            **left_padded(PROMPTS), **settings
        )


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_static_cache_generation_equals_stock_llama(attn_implementation):
    ours, reference = build_pair(attn_implementation)
    got, want = generate_both(ours, reference, cache_implementation="static")
    assert torch.equal(got, want)
    # ... and the static cache gives the same tokens as the dynamic one.
    dynamic, _ = generate_both(ours, reference)
    assert torch.equal(got, dynamic)


def test_beam_search_equals_stock_llama():
    ours, reference = build_pair()
    got, want = generate_both(ours, reference, num_beams=3, num_return_sequences=2)
    assert got.shape[0] == 2 * len(PROMPTS)
    assert torch.equal(got, want)


def test_assisted_decoding_equals_stock_greedy():
    """Greedy assisted decoding (a draft model proposes, ours verifies) must give exactly the greedy tokens."""
    ours, reference = build_pair()
    torch.manual_seed(1)
    draft = Llama3ForCausalLM(tiny_config(num_hidden_layers=1, initializer_range=0.3)).eval()
    settings = dict(max_new_tokens=8, do_sample=False, pad_token_id=PAD, eos_token_id=None)
    for prompt in PROMPTS:  # assisted decoding takes one sequence at a time
        input_ids = torch.tensor([prompt])
        with torch.no_grad():
            got = ours.generate(input_ids, assistant_model=draft, **settings)
            want = reference.generate(input_ids, **settings)
        assert torch.equal(got, want), prompt


def test_continuing_from_a_returned_cache_equals_one_long_generation():
    ours, reference = build_pair()
    settings = dict(do_sample=False, pad_token_id=PAD, eos_token_id=None, return_dict_in_generate=True)
    input_ids = torch.tensor([PROMPTS[2]])
    with torch.no_grad():
        first = ours.generate(input_ids, max_new_tokens=4, **settings)
        cache = first.cache if "cache" in first else first.past_key_values
        assert cache is not None and cache.get_seq_length() == input_ids.shape[1] + 3
        continued = ours.generate(first.sequences, max_new_tokens=4, cache=cache, **settings).sequences
        whole = reference.generate(input_ids, max_new_tokens=8, **settings).sequences
    assert torch.equal(continued, whole)


def test_compiled_static_cache_decoding_equals_stock_llama():
    """Decoding through `torch.compile(fullgraph=True)` of the forward with a static cache (transformers' compiled
    generation, enabled on CPU with `_compile_all_devices`)."""
    ours, reference = build_pair()
    compile_config = CompileConfig(fullgraph=True, dynamic=False)
    compile_config._compile_all_devices = True
    settings = dict(max_new_tokens=6, do_sample=False, pad_token_id=PAD, eos_token_id=None)
    input_ids = torch.tensor([PROMPTS[0]])
    with torch.no_grad():
        got = ours.generate(input_ids, cache_implementation="static", compile_config=compile_config, **settings)
        want = reference.generate(input_ids, **settings)
    assert torch.equal(got, want)
    # The compiled forward really ran: generate keeps it on the model.
    assert getattr(ours, "_compiled_call", None) is not None


def test_generate_batch_paged_cache_equals_stock_llama_with_several_samples_per_prompt():
    """Continuous batching (`generate_batch`, paged KV cache, a prompt's blocks shared by its samples). Greedy is
    sampling with top_k=1 here: transformers refuses num_return_sequences > 1 for plain greedy decoding."""
    ours, reference = build_pair()
    config = GenerationConfig(
        max_new_tokens=8, do_sample=True, top_k=1, num_return_sequences=2, eos_token_id=EOS, pad_token_id=PAD
    )
    paging = ContinuousBatchingConfig(page_size=16, num_blocks=32, max_batch_tokens=64, use_cuda_graph=False)
    results = {}
    for name, model in (("ours", ours), ("stock", reference)):
        out = model.generate_batch(
            PROMPTS, generation_config=config, continuous_batching_config=paging, progress_bar=False, warmup=False
        )
        results[name] = {request: output.generated_tokens for request, output in out.items()}
    assert len(results["ours"]) == len(PROMPTS) * 2
    assert results["ours"] == results["stock"]
    # And the paged path gives what plain greedy `generate` gives, prompt by prompt.
    for index, prompt in enumerate(PROMPTS):
        with torch.no_grad():
            greedy = reference.generate(
                torch.tensor([prompt]), max_new_tokens=8, do_sample=False, pad_token_id=PAD, eos_token_id=EOS
            )
        assert results["ours"][f"req_{index}"] == greedy[0, len(prompt) :].tolist()


ROPE_VARIANTS = {
    "linear": {"rope_type": "linear", "factor": 4.0},
    "dynamic": {"rope_type": "dynamic", "factor": 4.0},
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64},
    "llama3": {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64,
    },
}


@pytest.mark.parametrize("variant", sorted(ROPE_VARIANTS))
def test_rope_types_follow_transformers_rope_functions(variant):
    """Each rope type is transformers' own function (not the Llama 3.1 rule under another name): logits equal stock
    Llama's at positions past `max_position_embeddings` (where dynamic scaling kicks in), and differ from plain RoPE."""
    rope = {"rope_theta": 10000.0, **ROPE_VARIANTS[variant]}
    ours, reference = build_pair(max_position_embeddings=64, rope_parameters=rope)
    plain, _ = build_pair(max_position_embeddings=64, rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    input_ids = torch.randint(3, 512, (1, 96))
    with torch.no_grad():
        got = ours(input_ids).logits
        want = reference(input_ids).logits
        unscaled = plain(input_ids).logits
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    assert (got - unscaled).abs().max() > 1e-3


def test_unsupported_rope_type_is_an_error():
    with pytest.raises(Exception, match="rope_type must be one of"):  # ValueError inside @strict's validation error
        Llama3Config.from_preset("tiny", rope_parameters={"rope_type": "ntk-by-parts", "rope_theta": 10000.0})


def test_sequence_classification_forward_with_a_cache_equals_without():
    """The reward head also takes and returns transformers' cache (under the installed version's field name)."""
    torch.manual_seed(0)
    model = Llama3ForSequenceClassification(tiny_config(num_labels=1)).eval()
    batch = left_padded(PROMPTS)
    with torch.no_grad():
        cached = model(**batch, use_cache=True)
        plain = model(**batch, use_cache=False)
    cache = cached.cache if "cache" in cached else cached.past_key_values
    assert cache is not None and cache.get_seq_length() == batch["input_ids"].shape[1]
    torch.testing.assert_close(cached.logits, plain.logits)


def test_deprecated_past_key_values_name_still_reaches_the_cache():
    """transformers 5.24 renamed `past_key_values` to `cache` and accepts the old name until 5.40: so do we."""
    from transformers import DynamicCache

    ours, _ = build_pair()
    input_ids = torch.tensor([PROMPTS[2]])
    with torch.no_grad():
        new_cache, old_cache = DynamicCache(config=ours.config), DynamicCache(config=ours.config)
        by_new_name = ours(input_ids, cache=new_cache, use_cache=True).logits
        by_old_name = ours(input_ids, past_key_values=old_cache, use_cache=True).logits
    assert new_cache.get_seq_length() == old_cache.get_seq_length() == input_ids.shape[1]
    torch.testing.assert_close(by_new_name, by_old_name, rtol=0, atol=0)
