"""Pipeline parallelism with ``torch.distributed.pipelining``: GPipe, 1F1B and interleaved 1F1B [3.3.2].

Layers are split into ``pp * virtual_stages`` stages. With balancing on (the paper's fix for the memory and
computation imbalance of the first and last stages, which also hold the embedding and the output layer with
the loss), the first and the last stage each get one transformer layer fewer than the others. Interleaved
schedules give pipeline rank ``r`` the stages ``r, r + pp, r + 2 pp, ...`` (a loop over the ranks).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.pipelining import PipelineStage
from torch.distributed.pipelining.schedules import (
    PipelineScheduleMulti,
    PipelineScheduleSingle,
    Schedule1F1B,
    ScheduleGPipe,
    ScheduleInterleaved1F1B,
)

from hf_llama3 import Llama3ForCausalLM

from .dims import ParallelDims
from .stage import Llama3Stage


def stage_layer_counts(num_layers: int, num_stages: int, balance: bool = True) -> list[int]:
    """Decoder layers per stage. With ``balance`` the first and last stages count the embedding and the output
    layer as one layer each [3.3.2]: ``num_layers + 2`` slots are spread evenly (extra ones to middle stages),
    then the two end stages give one back. Every stage keeps at least one layer."""
    if num_stages == 1:
        return [num_layers]
    slots = num_layers + 2 if balance else num_layers
    base, extra = divmod(slots, num_stages)
    counts = [base] * num_stages
    # Extra slots go to the middle stages first, the end stages last.
    order = [*range(1, num_stages - 1), 0, num_stages - 1]
    for stage in order[:extra]:
        counts[stage] += 1
    if balance:
        counts[0] -= 1
        counts[-1] -= 1
    if min(counts) < 1:
        raise ValueError(
            f"Cannot give each of {num_stages} pipeline stages a layer of a {num_layers}-layer model"
            f"{' with first/last-stage balancing' if balance else ''}: use fewer stages or pp_balance=False."
        )
    return counts


def stage_ids_for_rank(pp_rank: int, dims: ParallelDims) -> list[int]:
    """Stage indices run by pipeline rank ``pp_rank`` (looped over ranks for interleaved schedules)."""
    return [pp_rank + v * dims.pp for v in range(dims.pp_virtual_stages)]


def split_into_stages(model: Llama3ForCausalLM, dims: ParallelDims, pp_rank: int) -> list[tuple[int, Llama3Stage]]:
    """This rank's ``(stage_index, Llama3Stage)`` pairs, all cut from ``model`` (no copy): each stage holds only its
    own layers, and the layers of other ranks' stages are never materialised when ``model`` is on the meta device."""
    counts = stage_layer_counts(model.config.num_hidden_layers, dims.num_stages, dims.pp_balance)
    starts = [sum(counts[:i]) for i in range(len(counts))]
    stages = []
    for stage_index in stage_ids_for_rank(pp_rank, dims):
        layer_ids = list(range(starts[stage_index], starts[stage_index] + counts[stage_index]))
        stage = Llama3Stage(model, layer_ids, is_first=stage_index == 0, is_last=stage_index == dims.num_stages - 1)
        stages.append((stage_index, stage))
    return stages


def build_schedule(
    stages: list[tuple[int, Llama3Stage]],
    dims: ParallelDims,
    pp_mesh: DeviceMesh,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    device: torch.device,
) -> PipelineScheduleSingle | PipelineScheduleMulti:
    """Wrap the stages in ``PipelineStage`` objects and build the configured schedule."""
    group = pp_mesh.get_group()
    pipeline_stages = [
        PipelineStage(module, stage_index, dims.num_stages, device, group=group) for stage_index, module in stages
    ]
    # The stage and kwarg inputs (position ids, masks) are split along the batch into microbatches. `loss_fn`
    # already normalises by the global token count, so the schedule must not divide by the microbatch count.
    kwargs = dict(n_microbatches=dims.pp_microbatches, loss_fn=loss_fn, scale_grads=False)
    if dims.pp_schedule == "interleaved_1f1b":
        return ScheduleInterleaved1F1B(pipeline_stages, **kwargs)
    schedule_cls = ScheduleGPipe if dims.pp_schedule == "gpipe" else Schedule1F1B
    return schedule_cls(pipeline_stages[0], **kwargs)
