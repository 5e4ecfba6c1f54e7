"""Rejection-sampling throughput [paper 4.2.2]: shared prompt KV cache vs plain ``generate(num_return_sequences=K)``.

Both sides get the same model, the same chat prompts (real Llama 3 tokenizer, Llama 3.1 dialog format), the same
length-sorted batches, K, sampling settings, stop tokens and max_new_tokens. Ours prefills each prompt once and
repeats its cache to the K samples, and drops samples from the batch when they stop; the anchor is transformers'
``generate``, which prefills K copies of each prompt. Prints one JSON line (samples per second, ratio ours/anchor).

    .venv/bin/python benchmarks/rejection_sampling.py [--preset small --num-prompts 8 --samples 10 ...]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from hf_llama3 import Llama3Config, Llama3ForCausalLM, encode_dialog, load_tokenizer, stop_token_ids
from training.rejection_sampling import length_batches, sample_responses

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
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
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
    # Sampling over the 128256-token vocabulary costs both sides the same; with random weights the next-token
    # distribution is near uniform, so top-p would sort almost the whole vocabulary every step on both sides.
    # Plain temperature sampling (top_p 1) keeps the comparison on what differs: the prompt prefill.
    parser.add_argument("--temperature", type=float, default=0.6)
    parser.add_argument("--top-p", type=float, default=1.0)
    args = parser.parse_args()

    torch.manual_seed(0)
    tokenizer = load_tokenizer()
    model = Llama3ForCausalLM(Llama3Config.from_preset(args.preset)).eval()
    prompts = make_prompts(tokenizer, args.num_prompts, args.min_prompt_tokens, args.max_prompt_tokens)
    stops, pad_id = stop_token_ids(tokenizer), tokenizer.pad_token_id
    batches = length_batches([len(p) for p in prompts], args.samples, args.max_new_tokens, args.max_batch_tokens)
    settings = dict(temperature=args.temperature, top_p=args.top_p)

    ours_times, anchor_times = [], []
    for repeat in range(args.repeats):  # interleaved, so both sides see the same machine state
        start = time.perf_counter()
        samples = sample_responses(
            model,
            prompts,
            args.samples,
            args.max_new_tokens,
            seed=repeat,
            stop_ids=stops,
            max_batch_tokens=args.max_batch_tokens,
            pad_id=pad_id,
            **settings,
        )
        ours_times.append(time.perf_counter() - start)
        ours_count = sum(len(s) for s in samples)
        start = time.perf_counter()
        anchor_count = plain_generate(
            model, prompts, batches, args.samples, args.max_new_tokens, stops=stops, pad_id=pad_id, **settings
        )
        anchor_times.append(time.perf_counter() - start)
    assert ours_count == anchor_count == args.num_prompts * args.samples
    ours = ours_count / min(ours_times)
    anchor = anchor_count / min(anchor_times)
    print(
        json.dumps(
            {
                "benchmark": "rejection_sampling",
                "metric": "samples_per_second",
                "ours": round(ours, 3),
                "anchor": round(anchor, 3),
                "ratio": round(ours / anchor, 3),
                "goal": ">= 2.0",
                "setup": {
                    "preset": args.preset,
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
