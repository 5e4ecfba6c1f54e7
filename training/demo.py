"""`hf-llama3 demo` (what `make demo` runs): the recipe end to end on a tiny model, on CPU, in minutes.

Each step is a function ``step(ctx) -> str`` that reads and extends a shared context and returns a one-line
summary; the steps run in order and write under ``--output-dir`` (default ``demo_output/``). A failing step stops
the demo with its error and a non-zero exit.

Steps today:
1. model: a tiny Llama 3 (real 128256-token vocabulary, Llama 3.1 RoPE) and the real Llama 3 tokenizer, saved as
   one Hugging Face folder with a model card.
2. reload: a fresh Python process that cannot import ``hf_llama3`` loads the folder with ``AutoModelForCausalLM``
   (``trust_remote_code=True``) and ``AutoTokenizer``, and generates from a chat prompt.
3. export: the folder converted to stock transformers Llama format; ``LlamaForCausalLM`` gives the same logits.
4. curate: the embedded sample corpus curated into packed shards (``recipes/data/sample.yaml``).
5. pretrain: the tiny three-stage pre-training recipe on those shards (``recipes/tiny/pretrain.yaml``, 2 CPU ranks):
   ramps, gated long-context stages, annealing and the Polyak-averaged export.
6. post-train: one iterative post-training round on the pre-trained export (``recipes/tiny/rounds.yaml``): reward
   model, rejection sampling, SFT, DPO, averaging, and the round's mean reward and win rate.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
SAMPLE_CORPUS = Path(__file__).resolve().parents[1] / "data" / "sample"
DEMO_PROMPT = [{"role": "user", "content": "Name three prime numbers."}]


@dataclass
class DemoContext:
    """What the steps share: the output folder and the artifacts made so far."""

    output_dir: Path
    seed: int = 0
    artifacts: dict[str, Path] = field(default_factory=dict)


def step_model(ctx: DemoContext) -> str:
    from hf_llama3 import Llama3Config, Llama3ForCausalLM, load_tokenizer
    from hf_llama3.checkpoint_io import atomic_output_dir
    from hf_llama3.model_card import write_model_card

    torch.manual_seed(ctx.seed)
    config = Llama3Config.from_preset("tiny")
    model = Llama3ForCausalLM(config)
    tokenizer = load_tokenizer()
    folder = ctx.output_dir / "tiny-model"
    with atomic_output_dir(folder, overwrite=True) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_model_card(
            tmp,
            model.config,
            title="hf-llama3 demo: tiny Llama 3",
            remote_code=True,
            sections={"Provenance": "Randomly initialised by `hf-llama3 demo`."},
        )
    ctx.artifacts["model"] = folder
    params = sum(p.numel() for p in model.parameters())
    return f"tiny Llama 3 ({params / 1e6:.1f}M parameters, vocab {config.vocab_size}) + tokenizer saved to {folder}"


RELOAD_SCRIPT = """
import json, sys
sys.modules["hf_llama3"] = None  # prove the folder stands alone: our package cannot be imported here
from transformers import AutoModelForCausalLM, AutoTokenizer
folder, prompt = sys.argv[1], json.loads(sys.argv[2])
tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)  # it reads the remote-code config
model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
inputs = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, return_tensors="pt", return_dict=True)
out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
new = out[0, inputs["input_ids"].shape[1]:]
print("DEMO-RESULT " + json.dumps({"class": type(model).__name__, "prompt_tokens": int(inputs["input_ids"].shape[1]),
                  "new_tokens": new.tolist(), "text": tokenizer.decode(new)}))
"""


def step_reload(ctx: DemoContext) -> str:
    folder = ctx.artifacts["model"]
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(RELOAD_SCRIPT), str(folder), json.dumps(DEMO_PROMPT)],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=600,
    )
    if result.returncode != 0:
        raise RuntimeError(f"reloading {folder} in a fresh process failed:\n{result.stderr[-3000:]}")
    out = json.loads(next(line for line in result.stdout.splitlines() if line.startswith("DEMO-RESULT "))[12:])
    if len(out["new_tokens"]) == 0:
        raise RuntimeError("generation in the fresh process produced no tokens")
    return (
        f"fresh process loaded {out['class']} via AutoModelForCausalLM (no hf_llama3), prompt "
        f"{out['prompt_tokens']} tokens -> generated {len(out['new_tokens'])} tokens {out['new_tokens']} "
        f"({out['text']!r}; random weights)"
    )


def step_export(ctx: DemoContext) -> str:
    from transformers import LlamaForCausalLM

    from hf_llama3 import Llama3ForCausalLM, load_tokenizer
    from hf_llama3.convert import convert_checkpoint

    src = ctx.artifacts["model"]
    dst = ctx.output_dir / "tiny-model-llama"
    convert_checkpoint(src, dst, "llama", overwrite=True)
    ours = Llama3ForCausalLM.from_pretrained(src).eval()
    stock = LlamaForCausalLM.from_pretrained(dst).eval()
    ids = load_tokenizer()("Llama 3 exports load as stock Llama.", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        difference = (ours(ids).logits - stock(ids).logits).abs().max().item()
    if difference > 1e-5:
        raise RuntimeError(f"stock Llama export disagrees with ours: max |logit difference| = {difference:.3g}")
    ctx.artifacts["llama_export"] = dst
    return f"stock Llama export at {dst}: LlamaForCausalLM logits equal ours (max |diff| {difference:.1e})"


def step_curate(ctx: DemoContext) -> str:
    from data.cli import main as curate_main

    out = ctx.output_dir / "curated"
    if (
        curate_main(
            [
                "--config",
                str(RECIPES / "data" / "sample.yaml"),
                "--set",
                f"output_dir={out}",
                "--set",
                f"reader.paths=[{json.dumps(str(SAMPLE_CORPUS))}]",
            ]
        )
        != 0
    ):
        raise RuntimeError("curating the embedded sample failed")
    ctx.artifacts["shards"] = out / "shards"
    manifest = json.loads((out / "shards" / "manifest.json").read_text())
    return f"embedded sample curated into {manifest['sequences']} packed {manifest['seq_len']}-token sequences"


def step_pretrain(ctx: DemoContext) -> str:
    from training.pretrain.cli import main as pretrain_main

    out = ctx.output_dir / "pretrain"
    categories = ("general", "math_reasoning", "code", "multilingual")
    sources = json.dumps({c: {"path": str(ctx.artifacts["shards"]), "category": c} for c in categories})
    argv = [
        "--config",
        str(RECIPES / "tiny" / "pretrain.yaml"),
        "--set",
        f"output_dir={out}",
        "--set",
        f"sources={sources}",
    ]
    if pretrain_main(argv) != 0:
        raise RuntimeError("the tiny three-stage pre-training failed")
    ctx.artifacts["pretrained"] = out / "hf"
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    gates = [json.loads(line) for line in (out / "gates.jsonl").read_text().splitlines()]
    return (
        f"3 stages, {len(steps)} steps on 2 ranks: loss {steps[0]['loss']:.2f} -> {steps[-1]['loss']:.2f}, "
        f"{sum(g['passed'] for g in gates)}/{len(gates)} long-context gate checks passed (see gates.jsonl), "
        f"Polyak-averaged export at {out / 'hf'}"
    )


def step_post_training(ctx: DemoContext) -> str:
    from training.rounds import demo_round

    out = ctx.output_dir / "post_training"
    row = demo_round(ctx.artifacts["pretrained"], out)[-1]
    return (
        f"1 post-training round (reward model, rejection sampling, SFT, DPO, averaging): mean reward "
        f"{row['mean_reward']:.3f}, win rate vs the pre-trained policy {row['win_rate_vs_previous']:.2f}; see {out}"
    )


STEPS: list[tuple[str, Callable[[DemoContext], str]]] = [
    ("model", step_model),
    ("reload", step_reload),
    ("export", step_export),
    ("curate", step_curate),
    ("pretrain", step_pretrain),
    ("post-train", step_post_training),
]


def run_demo(output_dir: str | Path = "demo_output", seed: int = 0, clean: bool = False) -> DemoContext:
    """Run every demo step in order; returns the context with the artifacts' paths."""
    from hf_llama3.output_folder import create_output_dir, remove_output_dir
    from hf_llama3.output_lock import output_lock

    output_dir = Path(output_dir)
    # One demo per folder at a time; --clean deletes only a folder an earlier demo created (its marker), never
    # the home folder, the working directory or anything above them.
    with output_lock(output_dir):
        if clean:
            remove_output_dir(output_dir, option="--clean")
        create_output_dir(output_dir, command="hf-llama3 demo")
        ctx = DemoContext(output_dir=output_dir, seed=seed)
        for index, (name, step) in enumerate(STEPS, start=1):
            start = time.perf_counter()
            summary = step(ctx)
            print(f"[{index}/{len(STEPS)}] {name} ({time.perf_counter() - start:.1f}s): {summary}", flush=True)
    return ctx


def main(argv: list[str] | None = None) -> int:
    """``hf-llama3 demo [--output-dir DIR] [--clean]``."""
    parser = argparse.ArgumentParser(prog="hf-llama3 demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", default="demo_output", help="where the demo writes its artifacts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--clean", action="store_true", help="delete the output folder first (only one an earlier demo created)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    run_demo(args.output_dir, seed=args.seed, clean=args.clean)
    print(f"demo finished: artifacts under {args.output_dir}/")
    return 0
