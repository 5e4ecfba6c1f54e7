"""Load a Hugging Face folder straight into the sharded model: continued pre-training of a released checkpoint.

torch DCP reads a ``save_pretrained`` folder (``*.safetensors``, one file or sharded with
``model.safetensors.index.json``) through its ``HuggingFaceStorageReader``: every rank asks only for the slices of
the shards its pipeline stages hold (the stage state dicts are DTensors under TP and FSDP), and the reader takes each
slice from the memory-mapped file with safetensors' ``get_slice``. No rank reads or holds the whole model, and no
rank-0 broadcast is needed. Stock ``LlamaForCausalLM`` and ``Llama3ForCausalLM`` name their tensors key for key;
stored weights are cast to the parameters' dtype (a bf16 release into fp32 master weights).

Before any weight is read the folder's tensor names and shapes are compared with the model's (all ranks together),
so a folder of another size fails with one line instead of loading a prefix of it.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import HuggingFaceStorageReader
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, set_model_state_dict

from hf_llama3.modeling_llama3 import Llama3PreTrainedModel

from .checkpoint_match import shape_problems, wanted_shapes
from .stage import Llama3Stage

# Tensors a released folder may carry that are recomputed, never loaded (stale RoPE tables).
_IGNORED = [re.compile(pattern) for pattern in Llama3PreTrainedModel._keys_to_ignore_on_load_unexpected]
_TIED_HEAD = "lm_head.weight"


def check_hf_folder(path: str | Path) -> Path:
    """``path`` as a folder holding ``*.safetensors`` weights, else a one-line ``ValueError`` naming it."""
    folder = Path(path)
    if not folder.is_dir() or not any(folder.glob("*.safetensors")):
        raise ValueError(
            f"init_from={path}: not a Hugging Face folder with *.safetensors weights; point it at a "
            "save_pretrained folder (safetensors, the default of save_pretrained)."
        )
    return folder


def hf_folder_shapes(reader: HuggingFaceStorageReader) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor in the folder (read from the safetensors headers), recomputed buffers left out."""
    return {
        name: tuple(item.size)
        for name, item in reader.read_metadata().state_dict_metadata.items()
        if not any(pattern.search(name) for pattern in _IGNORED)
    }


def load_hf_folder(stages: list[tuple[int, Llama3Stage]], path: str | Path) -> None:
    """Fill this rank's shards of ``stages`` from the Hugging Face folder ``path`` (collective over all ranks)."""
    folder = check_hf_folder(path)
    reader = HuggingFaceStorageReader(str(folder))
    saved = hf_folder_shapes(reader)
    state: dict = {}
    for _, stage in stages:
        state.update(get_model_state_dict(stage))
    tied = stages[0][1].config.tie_word_embeddings
    if tied and _TIED_HEAD not in saved:
        # A tied model's head is its embedding, which the folder stores once (as save_pretrained does).
        state.pop(_TIED_HEAD, None)
    problems = shape_problems(saved, wanted_shapes(state, distributed=True))
    if problems:
        raise ValueError(
            f"init_from={folder} does not fit the model: {'; '.join(problems)}. Set the recipe's model and "
            "model_overrides to the folder's config.json."
        )
    dcp.load(state, storage_reader=reader)
    for _, stage in stages:
        # Not strict: with several pipeline stages per rank, ``state`` also holds the other stages' tensors.
        set_model_state_dict(stage, state, options=StateDictOptions(strict=False))
