"""``hf-llama3 pretrain --dry-run``: bytes per GPU of every stage of a recipe, before any GPU is touched.

Each (sequence length, batch, layout) the recipe trains with is simulated with
:mod:`training.parallel.simulated_launch` (one rank per pipeline rank in a fake process group, meta tensors); the
table shows the rank with the largest total. A stage whose total exceeds the HBM is refused with one line naming
the shortfall. Nothing is written.
"""

from __future__ import annotations

from hf_llama3.cli_errors import CLIError
from training.parallel.dims import ParallelDims
from training.parallel.fsdp import FSDPConfig
from training.parallel.simulated_launch import (
    TABLE_HEADER,
    RankMemory,
    forward_rows,
    shortfall,
    simulate_launch,
    simulate_ranks,
    table_row,
    worst,
)

from .config import PretrainRecipe


def stage_names(recipe: PretrainRecipe) -> list[str]:
    """Names of ``recipe.batch_shapes()`` entries, in the same order."""
    names = [f"initial.ramp[{i}]" for i in range(len(recipe.initial.ramp))]
    if recipe.long_context is not None:
        names += [f"long_context[{k}]" for k in range(len(recipe.long_context.seq_lens))]
    if recipe.anneal is not None:
        names.append("anneal")
    return names


def dry_run(
    recipe: PretrainRecipe, microbatch_rows: int | None = None, mask: str = "block"
) -> list[tuple[str, int, int, RankMemory]]:
    """The worst rank of every stage shape of ``recipe``: ``(stage name, seq_len, rows per forward, RankMemory)``.

    ``microbatch_rows`` overrides the rows per forward the recipe's layout gives (``simulated_launch.forward_rows``).
    """
    model_config = recipe.model_config()
    fsdp = FSDPConfig(**dict(recipe.fsdp))
    built: dict[tuple, list] = {}
    rows = []
    for name, (seq_len, batch_tokens, layout) in zip(stage_names(recipe), recipe.batch_shapes()):
        dims = ParallelDims(**layout)
        key = tuple(sorted(layout.items()))
        if key not in built:
            built[key] = simulate_ranks(model_config, dims, fsdp, recipe.activation_checkpointing)
        local_rows = batch_tokens // seq_len // dims.dp
        rows_per_forward = microbatch_rows or forward_rows(dims, local_rows)
        reports = simulate_launch(
            model_config,
            dims,
            seq_len,
            local_rows,
            rows_per_forward,
            fsdp=fsdp,
            activation_checkpointing=recipe.activation_checkpointing,
            mask=mask,
            states=built[key],
        )
        rows.append((name, seq_len, rows_per_forward, worst(reports)))
    return rows


def print_dry_run(
    recipe: PretrainRecipe, hbm_bytes: int, microbatch_rows: int | None = None, mask: str = "block"
) -> int:
    """Print the table; raise ``CLIError`` (exit 2) naming the first stage that does not fit in ``hbm_bytes``."""
    rows = dry_run(recipe, microbatch_rows, mask)
    print(
        f"{recipe.model}: GB per GPU (10^9 bytes), worst pipeline rank, {mask} attention mask, "
        f"HBM {hbm_bytes / 1e9:.0f} GB"
    )
    print(TABLE_HEADER)
    for name, seq_len, rows_per_forward, report in rows:
        print(table_row(name, seq_len, rows_per_forward, report))
    for name, _, _, report in rows:
        error = shortfall(report, hbm_bytes, name)
        if error is not None:
            raise CLIError(error)
    return 0
