"""Export the sharded model (or any sharded state with its names) to a Hugging Face folder, every rank writing.

torch DCP's ``HuggingFaceStorageWriter`` (``save_distributed``) has each rank write the slices it holds (DTensor
shards under FSDP/TP, whole tensors of its own pipeline stages) as safetensors files; then
``consolidate_safetensors_files_on_every_rank`` joins the slices into the final ``model-0000i-of-0000n.safetensors``
files, the ranks writing the output files in parallel (one file per pipeline stage's worth of decoder layers), plus
``model.safetensors.index.json``. No rank gathers the model. Rank 0 adds ``config.json`` and
``generation_config.json``. The folder is staged beside
``output_dir`` and renamed when every rank has finished (``hf_llama3.checkpoint_io.atomic_output_dir``), so it is
only ever complete.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import HuggingFaceStorageWriter
from torch.distributed.checkpoint._consolidate_hf_safetensors import consolidate_safetensors_files_on_every_rank
from transformers import GenerationConfig

from hf_llama3 import Llama3Config
from hf_llama3.checkpoint_io import atomic_output_dir

_TIED_HEAD = "lm_head.weight"
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
_PARTS = ".parts"


def output_file_index(names: list[str], files: int) -> dict[str, int]:
    """Tensor name -> 1-based output file: the decoder layers split into ``files`` contiguous groups; the embedding
    goes with the first, the final norm and the head with the last."""
    layers = sorted({int(name.split(".")[2]) for name in names if name.startswith("model.layers.")})
    per_file = max(1, -(-len(layers) // files)) if layers else 1
    group = {layer: position // per_file + 1 for position, layer in enumerate(layers)}
    last = max(group.values(), default=1)
    index = {}
    for name in names:
        if name.startswith("model.layers."):
            index[name] = group[int(name.split(".")[2])]
        else:
            index[name] = 1 if name.startswith("model.embed_tokens") else last
    return index


@contextlib.contextmanager
def collective_output_dir(output_dir: str | Path) -> Iterator[Path]:
    """``hf_llama3.checkpoint_io.atomic_output_dir`` for a folder every rank writes into (collective): rank 0
    stages it and renames it into place only after every rank has left the block without error."""
    with contextlib.ExitStack() as stack:
        staged = [None]
        if dist.get_rank() == 0:
            staged[0] = str(stack.enter_context(atomic_output_dir(output_dir, overwrite=True)))
        dist.broadcast_object_list(staged, src=0)
        yield Path(staged[0])
        dist.barrier()
    dist.barrier()  # every rank returns once the folder is in place


def export_sharded_hf(
    state: dict[str, torch.Tensor],
    model_config: Llama3Config,
    output_dir: str | Path,
    files: int = 1,
) -> Path:
    """Write ``state`` (this rank's part: DTensors or the tensors of its pipeline stages, under Hugging Face names)
    as a ``save_pretrained``-style folder at ``output_dir`` in ``files`` safetensors files (the engine passes its
    pipeline degree), replacing an export hf-llama3 wrote there (collective: every rank calls it). One file is
    named ``model.safetensors`` without an index, as ``save_pretrained`` names it."""
    output_dir = Path(output_dir)
    state = {name: tensor.detach() for name, tensor in state.items()}
    if model_config.tie_word_embeddings:
        state.pop(_TIED_HEAD, None)  # the head is the embedding: stored once, as save_pretrained does
    names: list[list[str] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(names, sorted(state))
    all_names = sorted({name for part in names for name in part})
    with collective_output_dir(output_dir) as tmp:
        parts = tmp / _PARTS
        writer = HuggingFaceStorageWriter(str(parts), save_distributed=True, enable_consolidation=False)
        dcp.save(state, storage_writer=writer)
        consolidate_safetensors_files_on_every_rank(str(parts), str(tmp), output_file_index(all_names, files))
        dist.barrier()
        if dist.get_rank() == 0:
            shutil.rmtree(parts)
            if files == 1:
                (tmp / "model-00001-of-00001.safetensors").rename(tmp / SINGLE_FILE)
                (tmp / INDEX_FILE).unlink()
            model_config.save_pretrained(tmp)
            GenerationConfig.from_model_config(model_config).save_pretrained(tmp)
    return output_dir
