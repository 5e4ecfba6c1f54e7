"""``hf-llama3 pretrain``: the paper's three-stage pre-training recipe [3.4], or the annealing data probe [3.1.3].

    hf-llama3 pretrain --config recipes/tiny/pretrain.yaml                         # one process
    hf-llama3 pretrain --config recipes/tiny/pretrain_parallel.yaml                # stage 1 only, on the 4D engine
    torchrun --nproc-per-node 2 -m training.pretrain.cli --config recipes/tiny/pretrain.yaml
    accelerate launch --multi_gpu --num_processes 2 -m training.pretrain.cli --config ...   # gloo on CPU
    hf-llama3 pretrain --config ... --set initial.tokens=65536 --set output_dir=run2   # dotted keys reach sections
    hf-llama3 pretrain --config recipes/llama3-405b/pretrain.yaml --dry-run   # bytes per GPU, nothing trained

Rerunning the same command resumes from ``<output_dir>/checkpoints/latest``; a rerun with another recipe, model
shape or inputs is refused and a finished run is never extended (:mod:`training.pretrain.fingerprint`).
The end product is ``<output_dir>/hf``: the Polyak average of the annealing snapshots (without an ``anneal`` stage: the
last checkpoint) with the tokenizer and a model card listing the recipe, written by every rank from its shards.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch.distributed as dist
import yaml

from hf_llama3.checkpoint_io import install_output_dir
from hf_llama3.cli_errors import run_entry_point
from hf_llama3.cli_types import positive_float, positive_int
from hf_llama3.model_card import write_model_card
from hf_llama3.output_lock import output_lock
from hf_llama3.recipe_loader import load_recipe
from training.parallel.dims import ParallelDims
from training.parallel.distributed import init_distributed
from training.parallel.hf_export import export_sharded_hf
from training.parallel.simulated_launch import H100_HBM_BYTES, MASK_KINDS
from training.parallel.spawn import run_local
from training.post_cli import is_launcher_process, stage_parser

from .anneal import AnnealStage
from .config import PretrainRecipe
from .dry_run import print_dry_run
from .fingerprint import check_pretrain_run
from .initial import InitialStage
from .long_context import LongContextStage
from .probe import run_probe
from .runner import RelaunchNeeded, Runner, load_tokenizer_setting
from .state import RunState

logger = logging.getLogger(__name__)


def recipe_from_args(args: argparse.Namespace) -> PretrainRecipe:
    """The recipe from ``--config`` and ``--set`` overrides; ``--set a.b=v`` sets key ``b`` of section ``a``."""
    return load_recipe(PretrainRecipe, args.config, args.overrides)


def check_sources(recipe: PretrainRecipe) -> None:
    """Every source folder must hold curated shards (checked before any process starts)."""
    for name, source in recipe.sources.items():
        path = Path(source if isinstance(source, str) else source["path"])
        if not (path / "manifest.json").is_file():
            raise FileNotFoundError(
                f"sources.{name}: {path} holds no packed shards (no manifest.json): run `hf-llama3 curate` first "
                "(e.g. --config recipes/data/sample.yaml) or point the source at a curated shards folder."
            )


def build_stages(recipe: PretrainRecipe) -> list:
    """Stage 1, the K long-context stages, annealing (the last two when the recipe has them)."""
    stages: list = [InitialStage(recipe.initial)]
    if recipe.long_context is not None:
        stages += [LongContextStage(recipe.long_context, k) for k in range(len(recipe.long_context.seq_lens))]
    if recipe.anneal is not None:
        stages.append(AnnealStage(recipe.anneal))
    return stages


def export_final(runner: Runner, state: RunState, tokenizer: Any) -> Path:
    """``<output_dir>/hf``: the Polyak average of the annealing snapshots (without annealing: the final weights),
    the tokenizer and a model card (collective: every rank writes its shards of the weights, rank 0 the rest).

    Built in ``hf.partial`` and renamed, so ``hf`` is only ever a complete export.
    """
    recipe = runner.recipe
    output_dir = Path(recipe.output_dir)
    final, partial = output_dir / "hf", output_dir / "hf.partial"
    if dist.get_rank() == 0:
        shutil.rmtree(partial, ignore_errors=True)  # left by a run killed mid-export: ours, never a complete export
    dist.barrier()
    try:
        anneal = runner.stages[-1] if recipe.anneal is not None else None
        weights = anneal.averaged_state(runner) if anneal is not None else runner.trainer.model_state()
        export_sharded_hf(weights, recipe.model_config(), partial, files=runner.trainer.dims.pp)
        if dist.get_rank() == 0:
            _write_export(recipe, state, tokenizer, partial)
            install_output_dir(partial, final)  # replaces only an hf/ that hf-llama3 wrote (ownership marker)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)  # a failed export (full disk, ...) leaves no hf.partial behind
        raise
    logger.info("Exported the final model to %s", final)
    return final


def _write_export(recipe: PretrainRecipe, state: RunState, tokenizer: Any, partial: Path) -> None:
    """Tokenizer and model card of the final export, into ``partial`` (which holds the weights)."""
    if recipe.anneal is not None:
        weights = f"annealing with the LR linearly to 0. The weights are the Polyak average of {len(state.snapshots)} "
        weights += "annealing checkpoints."
    else:
        weights = "no annealing. The weights are those of the last checkpoint."
    if tokenizer is not None:
        tokenizer.save_pretrained(partial)
    gates = [
        f"| {g['stage']} | {g['step']} | {g['short_loss']:.4f} / {g['baseline_loss']:.4f} | "
        f"{'passed' if g['passed'] else 'not passed: ' + '; '.join(g['reasons'])} |"
        for g in state.gates
    ]
    recipe_yaml = yaml.safe_dump(dataclasses.asdict(recipe), sort_keys=False)
    write_model_card(
        partial,
        recipe.model_config(),
        title=f"hf-llama3 pre-trained {recipe.model}",
        remote_code=True,
        sections={
            "Training": (
                f"Pre-trained with `hf-llama3 pretrain` on {state.tokens:,} tokens in three stages [Llama 3, 3.4]: "
                f"initial pre-training, {len(recipe.long_context.seq_lens) if recipe.long_context else 0} "
                f"long-context stages, {weights}"
            ),
            "Long-context gates": "\n".join(
                ["| stage | step | short loss / before | gate |", "|---|---|---|---|", *gates]
                if gates
                else ["No long-context stage."]
            ),
            "Recipe": f"```yaml\n{recipe_yaml}```",
        },
        tags=["pretraining"],
    )


def run_recipe(recipe: PretrainRecipe) -> dict[str, Any]:
    """Run the recipe in an initialised process group; returns a JSON-able summary (same on every rank)."""
    needs_tokenizer = recipe.long_context is not None and recipe.long_context.needle
    tokenizer = load_tokenizer_setting(recipe.tokenizer) if (needs_tokenizer or recipe.mode == "pretrain") else None
    if needs_tokenizer and tokenizer is None:
        raise ValueError("long_context.needle needs a tokenizer: set tokenizer (e.g. llama3) or needle: false.")
    if recipe.mode == "probe":
        return {"probe": run_probe(recipe, tokenizer)}
    runner = Runner(recipe, build_stages(recipe), recipe.output_dir, tokenizer=tokenizer)
    state = runner.run()
    export = export_final(runner, state, tokenizer)
    dist.barrier()
    return {"tokens": state.tokens, "gates": state.gates, "snapshots": state.snapshots, "export": str(export)}


def _print_summary(summary: dict[str, Any]) -> None:
    print(json.dumps({k: v for k, v in summary.items() if k != "gates"} | {"gates": len(summary.get("gates", []))}))


def _spawned(rank: int, world_size: int, recipe: PretrainRecipe) -> None:
    """One of the local CPU processes ``main`` starts when not launched by torchrun."""
    if rank != 0:
        logging.getLogger().setLevel(logging.WARNING)
    summary = run_recipe(recipe)
    if rank == 0:
        _print_summary(summary)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``hf-llama3 pretrain`` and ``python -m training.pretrain.cli`` (torchrun/accelerate).

    Without torchrun, a CPU recipe whose layout needs N processes runs on N local gloo processes started here.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = stage_parser(
        "pretrain",
        "Pre-train Llama 3 with the paper's three-stage recipe [3.4] (TP/CP/PP/FSDP). Rerunning the same command "
        "resumes from <output_dir>/checkpoints/latest. <output_dir>/fingerprint.json records the recipe, model shape "
        "and inputs at the first start: a rerun with other ones there is refused (set another output_dir to start "
        "afresh). A finished run is never extended: rerunning it says it is finished and keeps hf/; to train more "
        "tokens, use another output_dir.",
        PretrainRecipe,
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print bytes per GPU (params, grads, AdamW, gathered bf16 params, activations) of every stage on a "
        "simulated launch (one rank of the full world on CPU, meta tensors) and exit: 0 if all fit, 2 if not",
    )
    parser.add_argument(
        "--hbm-gb", type=positive_float, default=H100_HBM_BYTES / 1e9, help="GPU memory for --dry-run (GB, 10^9)"
    )
    parser.add_argument(
        "--microbatch-rows",
        type=positive_int,
        default=None,
        help="sequences per forward for --dry-run (default: the layout's micro_batch_size)",
    )
    parser.add_argument(
        "--attention-mask",
        choices=MASK_KINDS,
        default="block",
        help="mask --dry-run counts: the engine's flex block mask, or a dense [rows, 1, s/cp, s] one",
    )
    args = parser.parse_args(argv)
    recipe = recipe_from_args(args)
    if args.dry_run:
        return print_dry_run(recipe, int(args.hbm_gb * 1e9), args.microbatch_rows, args.attention_mask)
    check_sources(recipe)
    # One run per output folder: the launching process (rank 0 under torchrun, the parent of locally forked ranks)
    # holds the folder's lock for the whole run, so a second run into it is refused at once.
    lock = output_lock(recipe.output_dir) if is_launcher_process() else contextlib.nullcontext()
    with lock:
        return _run(recipe)


def _run(recipe: PretrainRecipe) -> int:
    """Check the run folder, then train (locally forked ranks, or this rank of a torchrun launch) and export."""
    finished = check_pretrain_run(recipe, len(build_stages(recipe)))
    if finished is not None and (Path(recipe.output_dir) / "hf").is_dir():
        if int(os.environ.get("RANK", 0)) == 0:
            print(json.dumps({"tokens": finished.get("tokens", 0), "export": str(Path(recipe.output_dir) / "hf")}))
            print(f"{recipe.output_dir} holds this run, already finished: nothing to train.", file=sys.stderr)
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    worlds = sorted({ParallelDims(**layout).world_size for *_, layout in recipe.batch_shapes()})
    launched = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    if not launched and recipe.device == "cpu" and worlds[-1] > 1:
        if len(worlds) > 1:
            raise ValueError(f"the stages' layouts need {worlds} processes: launch each part with torchrun.")
        run_local(worlds[0], _spawned, recipe)
        return 0
    init_distributed(recipe.device, recipe.process_group_timeout_s)
    if dist.get_rank() != 0:
        logging.getLogger().setLevel(logging.WARNING)
    try:
        summary = run_recipe(recipe)
    except RelaunchNeeded as error:
        logger.error("%s", error)
        return 3
    finally:
        dist.destroy_process_group()
    if int(os.environ.get("RANK", 0)) == 0:
        _print_summary(summary)
    return 0


if __name__ == "__main__":  # under torchrun: one line per failing rank, as `hf-llama3` prints it, not a traceback
    raise SystemExit(run_entry_point(f"training.pretrain.cli (rank {os.environ.get('RANK', 0)})", main))
