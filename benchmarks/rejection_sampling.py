"""Rejection-sampling throughput [paper 4.2.2]: our default engine vs plain ``generate(num_return_sequences=K)``.

Every side gets the same model, the same chat prompts (real Llama 3 tokenizer, Llama 3.1 dialog format), K,
sampling settings, stop tokens and max_new_tokens. "ours" is the default backend of rejection sampling on this
device (``training.generation``: the prefix-sharing sampler on CPU, transformers' continuous batching on CUDA);
the anchor is transformers' ``generate`` on the same length-sorted batches, which prefills K copies of each prompt.
Also measured: continuous batching when it is not the default, and vLLM when a GPU and vLLM are present. Sides
alternate within one process; the best of ``--repeats`` is kept. Prints one JSON line (samples per second).

    .venv/bin/python benchmarks/rejection_sampling.py [--preset small --num-prompts 8 --samples 10 --device auto ...]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import tempfile
import time

import torch

from hf_llama3 import Llama3Config, Llama3ForCausalLM, encode_dialog, load_tokenizer, stop_token_ids
from training.generation.engine import DEVICES, make_engine, resolve_backend, resolve_device
from training.generation.prefix_sharing import length_batches
from training.rejection_sampling import sample_responses

PARAGRAPH = (
    "The reward model scores every sample, the best one becomes supervised fine-tuning data, and the worst one "
    "pairs with it for preference optimisation. Long prompts with several turns and a system prompt are common. "
)


def make_prompts(tokenizer, num_prompts: int, min_tokens: int, max_tokens: int) -> list[list[int]]:
    """Chat prompts whose lengths spread evenly between ``min_tokens`` and ``max_tokens``."""
    prompts = []
    for i in range(num_prompts):
        target = min_tokens + (max_tokens - min_tokens) * i // max(num_prompts - 1, 1)
        words = PARAGRAPH.split()
        text, k = "", 0
        while len(tokenizer(text).input_ids) < target:
            text += words[k % len(words)] + " "
            k += 1
        dialog = [{"role": "system", "content": "Answer carefully."}, {"role": "user", "content": text}]
        prompts.append(encode_dialog(tokenizer, dialog, add_generation_prompt=True).input_ids)
    return prompts


@torch.no_grad()
def plain_generate(model, prompts, batches, num_samples, max_new_tokens, temperature, top_p, stops, pad_id) -> int:
    """The anchor: ``generate`` with ``num_return_sequences=K`` on left-padded batches; returns samples drawn."""
    drawn = 0
    for batch in batches:
        width = max(len(prompts[i]) for i in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long, device=model.device)
        mask = torch.zeros_like(ids)
        for row, i in enumerate(batch):
            ids[row, width - len(prompts[i]) :] = torch.tensor(prompts[i])
            mask[row, width - len(prompts[i]) :] = 1
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            do_sample=True,
            temperature=temperature,
            top_p=top_p,
            top_k=None,
            num_return_sequences=num_samples,
            max_new_tokens=max_new_tokens,
            eos_token_id=stops,
            pad_token_id=pad_id,
        )
        drawn += out.shape[0]
    return drawn


def engines_to_measure(model, device: torch.device, max_batch_tokens: int, workdir: str) -> dict:
    """The default backend first, continuous batching when it is not the default, vLLM with a GPU and vLLM."""
    default = resolve_backend("auto", device)
    names = [default] + (["continuous_batching"] if default != "continuous_batching" else [])
    if device.type == "cuda" and importlib.util.find_spec("vllm") is not None:
        model.save_pretrained(workdir)
        names.append("vllm")
    vllm = {"gpu_memory_utilization": 0.4}  # the HF model stays on the same GPU for the other sides
    return {
        name: make_engine(name, model, device=device, max_batch_tokens=max_batch_tokens, model_path=workdir, vllm=vllm)
        for name in names
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--num-prompts", type=int, default=4)
    parser.add_argument("--samples", type=int, default=10, help="K [4.2.2: 10-30]")
    parser.add_argument("--min-prompt-tokens", type=int, default=512)
    parser.add_argument("--max-prompt-tokens", type=int, default=1536)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--max-batch-tokens", type=int, default=32768)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="auto", choices=DEVICES)
    # Sampling over the 128256-token vocabulary costs both sides the same; with random weights the next-token
    # distribution is near uniform, so top-p would sort almost the whole vocabulary every step on both sides.
    # Plain temperature sampling (top_p 1) keeps the comparison on what differs: the prompt prefill.
    parser.add_argument("--temperature", type=float, default=0.6)
    parser.add_argument("--top-p", type=float, default=1.0)
    args = parser.parse_args()

    torch.manual_seed(0)
    device = resolve_device(args.device)
    tokenizer = load_tokenizer()
    model = Llama3ForCausalLM(Llama3Config.from_preset(args.preset)).to(device).eval()
    prompts = make_prompts(tokenizer, args.num_prompts, args.min_prompt_tokens, args.max_prompt_tokens)
    stops, pad_id = stop_token_ids(tokenizer), tokenizer.pad_token_id
    batches = length_batches([len(p) for p in prompts], args.samples, args.max_new_tokens, args.max_batch_tokens)
    settings = dict(temperature=args.temperature, top_p=args.top_p)

    with tempfile.TemporaryDirectory() as workdir:
        engines = engines_to_measure(model, device, args.max_batch_tokens, workdir)
        times: dict[str, list[float]] = {name: [] for name in [*engines, "generate"]}
        for repeat in range(args.repeats):  # interleaved, so every side sees the same machine state
            for name, engine in engines.items():
                start = time.perf_counter()
                samples = sample_responses(
                    None,
                    prompts,
                    args.samples,
                    args.max_new_tokens,
                    seed=repeat,
                    stop_ids=stops,
                    pad_id=pad_id,
                    engine=engine,
                    **settings,
                )
                times[name].append(time.perf_counter() - start)
                assert sum(len(s) for s in samples) == args.num_prompts * args.samples, name
            start = time.perf_counter()
            anchor_count = plain_generate(
                model, prompts, batches, args.samples, args.max_new_tokens, stops=stops, pad_id=pad_id, **settings
            )
            times["generate"].append(time.perf_counter() - start)
    assert anchor_count == args.num_prompts * args.samples
    rates = {name: round(args.num_prompts * args.samples / min(t), 3) for name, t in times.items()}
    default = next(iter(engines))
    ours, anchor = rates[default], rates["generate"]
    print(
        json.dumps(
            {
                "benchmark": "rejection_sampling",
                "metric": "samples_per_second",
                "ours": ours,
                "anchor": anchor,
                "ratio": round(ours / anchor, 3),
                "goal": ">= 3.0",
                "default_backend": default,
                "samples_per_second": rates,
                "setup": {
                    "preset": args.preset,
                    "device": str(device),
                    "prompts": args.num_prompts,
                    "prompt_tokens": [min(map(len, prompts)), max(map(len, prompts))],
                    "K": args.samples,
                    "temperature": args.temperature,
                    "top_p": args.top_p,
                    "max_new_tokens": args.max_new_tokens,
                    "batches": len(batches),
                    "threads": torch.get_num_threads(),
                },
            }
        )
    )


if __name__ == "__main__":
    main()
