"""FP8 [6.2] on a GPU: our fbgemm_fp8 export loaded by transformers + fbgemm-gpu, and by our reference path, vs bf16.

Needs a GPU with compute capability >= 9.0 (H100/H200) and ``fbgemm-gpu`` (``pip install fbgemm-gpu-genai`` or the
fbgemm-gpu wheel matching the installed torch). Not run yet: no GPU was available when it was written.

    python benchmarks/fp8_gpu.py --model path/to/Llama-3.1-8B-bf16          # real weights (recommended)
    python benchmarks/fp8_gpu.py --preset llama3-8b --layers 8              # random weights, shapes of 8B
    python benchmarks/fp8_gpu.py --device cpu --preset tiny-deep --batch 2 --new-tokens 4 --prompt-len 16
        (CPU smoke run of the script itself: bf16 and the reference path only, no memory figures)

Steps: (1) quantize the bf16 folder with ``hf_llama3.quantize.quantize_fp8_checkpoint``; (2) load bf16 with
``AutoModelForCausalLM``; (3) load the FP8 folder with ``AutoModelForCausalLM.from_pretrained`` (transformers'
``fbgemm_fp8`` quantizer, fbgemm kernels) and check that exactly the paper's modules became ``FbgemmFp8Linear``;
(4) load it with ``hf_llama3.fp8_loader.load_fp8_model`` (dequantizing reference). For each: weight memory,
peak memory of a generation, decode tokens/s (batch x new tokens, best of ``--repeats``), next-token logits on
the prompts (max |diff|, KL vs bf16, top-1 agreement) and greedy-generation agreement with bf16.
Ends with one JSON line per metric: {"benchmark", "metric", "ours", "anchor", "ratio", "goal"}.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F


def environment_problem() -> str | None:
    """Why FP8 kernels cannot run here, or None."""
    if not torch.cuda.is_available():
        return "no CUDA device"
    if torch.cuda.get_device_capability()[0] < 9:
        return f"compute capability {torch.cuda.get_device_capability()} < 9.0 (FP8 needs H100-class GPUs)"
    try:
        import fbgemm_gpu.experimental.gen_ai  # noqa: F401
    except ImportError as err:
        return f"fbgemm-gpu is not importable ({err})"
    return None


def _cuda(args: argparse.Namespace) -> bool:
    return args.device == "cuda"


def _sync(args: argparse.Namespace) -> None:
    if _cuda(args):
        torch.cuda.synchronize()


def _allocated(args: argparse.Namespace) -> int:
    return torch.cuda.memory_allocated() if _cuda(args) else 0


def make_source(args: argparse.Namespace, work: Path) -> Path:
    """The bf16 folder: --model as given, or a random model of --preset's shapes (stock llama format)."""
    if args.model:
        return Path(args.model)
    from transformers import LlamaForCausalLM

    from hf_llama3 import Llama3Config
    from hf_llama3.convert import llama_config_from_ours

    config = llama_config_from_ours(Llama3Config.from_preset(args.preset, num_hidden_layers=args.layers))
    config.architectures = ["LlamaForCausalLM"]
    torch.manual_seed(0)
    with torch.device(args.device):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(work / "bf16")
    del model
    return work / "bf16"


def measure(name: str, load, prompts: torch.Tensor, args: argparse.Namespace, reference: dict | None) -> dict:
    """Load a model, then weight memory, logits, greedy tokens, decode throughput and peak memory."""
    gc.collect()
    if _cuda(args):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    base = _allocated(args)
    model = load()
    result: dict = {"name": name, "weight_gb": (_allocated(args) - base) / 1e9}
    with torch.no_grad():
        result["logits"] = model(prompts).logits[:, -args.compare_positions :].float().cpu()
        n = args.compare_tokens  # fixed length (no early EOS) so the token-by-token comparison lines up
        greedy = model.generate(prompts, max_new_tokens=n, min_new_tokens=n, do_sample=False)
    result["greedy"] = greedy[:, prompts.shape[1] :].cpu()
    batch = prompts[:1].repeat(args.batch, 1)
    best = float("inf")
    for _ in range(args.repeats):
        _sync(args)
        start = time.perf_counter()
        with torch.no_grad():
            model.generate(batch, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False)
        _sync(args)
        best = min(best, time.perf_counter() - start)
    result["tokens_per_s"] = args.batch * args.new_tokens / best
    result["peak_gb"] = (torch.cuda.max_memory_allocated() - base) / 1e9 if _cuda(args) else 0.0
    if reference is not None:
        log_p = F.log_softmax(reference["logits"], -1)
        log_q = F.log_softmax(result["logits"], -1)
        result["max_abs_logit_diff"] = float((reference["logits"] - result["logits"]).abs().max())
        result["kl_vs_bf16"] = float((log_p.exp() * (log_p - log_q)).sum(-1).mean())
        result["top1_vs_bf16"] = float((log_p.argmax(-1) == log_q.argmax(-1)).float().mean())
        result["greedy_agreement_vs_bf16"] = float((reference["greedy"] == result["greedy"]).float().mean())
    if name == "fp8-transformers":
        from transformers.integrations.fbgemm_fp8 import FbgemmFp8Linear

        from hf_llama3.fp8 import fp8_module_names

        converted = [n for n, m in model.named_modules() if isinstance(m, FbgemmFp8Linear)]
        result["fbgemm_modules_match_paper_rule"] = converted == fp8_module_names(model.config.num_hidden_layers)
    del model
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="bf16 Llama 3 folder (ours or stock llama)")
    parser.add_argument("--preset", default="llama3-8b", help="random model of this size when --model is absent")
    parser.add_argument("--layers", type=int, default=8, help="layers of the random model")
    parser.add_argument("--work-dir", help="where the exports go (a temporary folder by default)")
    parser.add_argument("--prompt-len", type=int, default=256)
    parser.add_argument("--num-prompts", type=int, default=8)
    parser.add_argument("--compare-positions", type=int, default=64, help="last positions whose logits are compared")
    parser.add_argument("--compare-tokens", type=int, default=32, help="greedy tokens compared with bf16")
    parser.add_argument("--batch", type=int, default=16, help="decode batch for tokens/s")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cpu: smoke run, no fbgemm")
    args = parser.parse_args(argv)
    problem = environment_problem() if _cuda(args) else None
    if problem:
        print(f"fp8_gpu: cannot run: {problem}.", file=sys.stderr)
        return 1
    from transformers import AutoModelForCausalLM

    import hf_llama3  # noqa: F401  (registers the llama3 Auto classes)
    from hf_llama3.fp8_loader import load_fp8_model
    from hf_llama3.quantize import quantize_fp8_checkpoint

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="fp8_gpu_"))
    src = make_source(args, work)
    start = time.perf_counter()
    report = quantize_fp8_checkpoint(src, work / "fp8", overwrite=True)
    print(
        f"quantized in {time.perf_counter() - start:.1f} s: {report['bytes_before'] / 1e9:.2f} GB -> "
        f"{report['bytes_after'] / 1e9:.2f} GB on disk"
    )
    g = torch.Generator().manual_seed(0)
    prompts = torch.randint(0, 128000, (args.num_prompts, args.prompt_len), generator=g).to(args.device)
    results = {}
    results["bf16"] = measure(
        "bf16",
        lambda: AutoModelForCausalLM.from_pretrained(src, dtype=torch.bfloat16, device_map=args.device).eval(),
        prompts,
        args,
        None,
    )
    if _cuda(args):  # transformers' fbgemm_fp8 quantizer refuses CPU
        results["fp8-transformers"] = measure(
            "fp8-transformers",
            lambda: AutoModelForCausalLM.from_pretrained(work / "fp8", device_map="cuda").eval(),
            prompts,
            args,
            results["bf16"],
        )
    results["fp8-reference"] = measure(
        "fp8-reference",
        lambda: load_fp8_model(work / "fp8", activations="fp8", dtype=torch.bfloat16, device=args.device),
        prompts,
        args,
        results["bf16"],
    )
    summary = {name: {k: v for k, v in r.items() if k not in ("logits", "greedy")} for name, r in results.items()}
    if "fp8-transformers" in results:
        kernel, ref = results["fp8-transformers"]["logits"], results["fp8-reference"]["logits"]
        summary["fbgemm_vs_reference_max_abs_logit_diff"] = float((kernel - ref).abs().max())
    print(json.dumps(summary, indent=2))
    bf16, fp8 = results["bf16"], results.get("fp8-transformers", results["fp8-reference"])
    lines = [
        ("decode tokens/s, fp8 (fbgemm) vs bf16", fp8["tokens_per_s"], bf16["tokens_per_s"], ">= 1.0"),
        ("weight memory GB, fp8 (fbgemm) vs bf16", fp8["weight_gb"], bf16["weight_gb"], "<= 0.7"),
        ("peak generation memory GB, fp8 vs bf16", fp8["peak_gb"], bf16["peak_gb"], "< 1.0"),
    ]
    if not _cuda(args):  # smoke run: no kernels, no memory figures
        lines = [("decode tokens/s, fp8 (CPU reference) vs bf16", fp8["tokens_per_s"], bf16["tokens_per_s"], "n/a")]
    for metric, ours, anchor, goal in lines:
        print(
            json.dumps(
                {
                    "benchmark": "fp8_gpu",
                    "metric": metric,
                    "ours": round(ours, 3),
                    "anchor": round(anchor, 3),
                    "ratio": round(ours / anchor, 3) if anchor else None,
                    "goal": goal,
                }
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
