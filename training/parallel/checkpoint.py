"""Distributed checkpoints with torch DCP: save and resume any layout, reshard across layouts, export to HF.

Every tensor is saved under its Hugging Face parameter name (``Llama3Stage`` keeps them), optimizer state is
flattened to ``state.<param name>.<key>``, so a checkpoint written at TP2 x PP2 loads at FSDP4 or on one
process: DCP reads each rank's shards of whatever layout asks. A checkpoint holds the model, the optimizer,
the LR-schedule step, the caller's data-loader state and each rank's RNG state.

Atomicity: a step is written to ``step_<n>.tmp/``, renamed to ``step_<n>/`` once every rank has finished, and
only then is ``latest`` (a one-line file, replaced with ``os.replace``) pointed at it. A process killed during
a save leaves a ``.tmp`` folder that is never read and is removed by the next save; ``latest`` always names a
complete checkpoint. The folder must be shared by all ranks (one file system).

Asynchronous saves (:class:`CheckpointSaver` with ``asynchronous=True``, the pretrain recipe's
``async_checkpoint``) stage a host copy of the rank's shards and write it with ``dcp.async_save`` while training
goes on; the rename and ``latest`` wait until every rank's write has completed, so the rule above still holds.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import warnings
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.staging import DefaultStager, StagingOptions
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.tensor import DTensor

from hf_llama3 import Llama3Config, Llama3ForCausalLM
from hf_llama3.checkpoint_io import atomic_output_dir

from .checkpoint_match import check_model_matches
from .engine import ParallelTrainer
from .safe_reader import SafeFileSystemReader

logger = logging.getLogger(__name__)

LATEST = "latest"
_OPTIM_OPTIONS = StateDictOptions(flatten_optimizer_state_dict=True)
# Fault injection for the crash tests: "<point>:<step>:<rank>" makes that rank SIGKILL itself at that point.
FAULT_ENV = "HF_LLAMA3_FAULT_INJECT"


def maybe_inject_fault(point: str, step: int) -> None:
    """SIGKILL this process if ``FAULT_ENV`` names ``point`` at ``step`` for this rank (crash tests only)."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    want_point, want_step, want_rank = spec.split(":")
    if want_point == point and int(want_step) == step and int(want_rank) == dist.get_rank():
        logger.warning("Fault injection: killing rank %d at %s step %d", dist.get_rank(), point, step)
        os.kill(os.getpid(), signal.SIGKILL)


def _step_dir(folder: Path, step: int) -> Path:
    return folder / f"step_{step:08d}"


def _app_state(trainer: ParallelTrainer) -> dict[str, Any]:
    """This rank's share of model and optimizer state, keyed by HF parameter names."""
    model: dict[str, Any] = {}
    optimizer: dict[str, Any] = {}
    for (_, stage), optim in zip(trainer.stages, trainer.optimizers):
        model.update(get_model_state_dict(stage))
        optimizer.update(get_optimizer_state_dict(stage, optim, options=_OPTIM_OPTIONS))
    return {"model": model, "optimizer": optimizer}


def latest_checkpoint(folder: str | Path) -> Path | None:
    """The complete checkpoint ``latest`` points to, or ``None`` when there is none yet."""
    pointer = Path(folder) / LATEST
    if not pointer.is_file():
        return None
    path = Path(folder) / pointer.read_text().strip()
    if not (path / ".metadata").is_file():
        raise FileNotFoundError(f"{pointer} names {path}, which is not a complete DCP checkpoint.")
    return path


def _rng_state() -> dict[str, Any]:
    rng = {"world_size": dist.get_world_size(), "cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    return rng


def _staging_options(device: torch.device) -> StagingOptions:
    """One host copy of the rank's shards, staged before ``async_save`` returns; pinned for fast copies on CUDA.

    Staging is synchronous (the copy ends before training goes on, so the next optimizer step cannot change what
    is written); only the write to storage overlaps training. No shared memory: the writer is a thread.
    """
    cuda = device.type == "cuda"
    return StagingOptions(
        use_pinned_memory=cuda, use_shared_memory=False, use_async_staging=False, use_non_blocking_copy=cuda
    )


class CheckpointSaver:
    """Saves a trainer's checkpoints into ``folder``, synchronously or asynchronously (collective calls).

    Asynchronous (``asynchronous=True``): :meth:`save` copies this rank's shards of model and optimizer state to
    host memory (``dcp.async_save`` staging: one host copy, pinned on CUDA, kept and reused by every save; its
    size is :attr:`staging_bytes`, 12 bytes per parameter of the rank's shards (fp32 weights and AdamW's two
    moments): at 405B on 16,384 GPUs, 405e9 x 12 B / 16,384 = 0.3 GB per GPU, 2.4 GB of pinned memory per 8-GPU
    node) and returns while a thread writes ``step_<n>.tmp/``; training goes on. The next save first waits for
    this write (the staging buffers are reused). The atomic rule is kept:
    ``step_<n>.tmp/`` becomes ``step_<n>/`` and ``latest`` points at it only after the write has completed on every
    rank, which :meth:`poll` checks at step boundaries (one all-reduce of a flag while a save is in flight),
    and :meth:`save`, :meth:`wait` and :meth:`close` wait for. A process killed meanwhile leaves ``latest`` at the
    previous complete checkpoint.

    torch 2.13 runs the asynchronous write's collectives from the writer thread and asserts that their process
    group has a CPU backend: the saver creates its own gloo group (``dist.new_group(backend="gloo")``, by every
    rank at construction), so those collectives never interleave with the training's collectives on the default
    group (NCCL on GPUs) issued meanwhile by the main thread.
    """

    def __init__(self, folder: str | Path, keep_last: int = 2, asynchronous: bool = False):
        self.folder = Path(folder)
        self.keep_last = keep_last
        self.asynchronous = asynchronous
        self.staging_bytes = 0
        self._group = dist.new_group(backend="gloo") if asynchronous else None
        self._stager: DefaultStager | None = None
        self._pending: tuple[Future, Path, torch.device] | None = None

    def save(self, trainer: ParallelTrainer, extra: dict[str, Any] | None = None) -> Path:
        """Save ``trainer`` at its current step; ``extra`` is the caller's JSON-serialisable state (e.g. the data
        loader's position). Returns the checkpoint folder, complete on return unless the save is asynchronous
        (then complete after the next :meth:`poll` that finds it written, or :meth:`wait`)."""
        self.wait()
        step = trainer.step_count
        final = _step_dir(self.folder, step)
        tmp = Path(f"{final}.tmp")
        rank = dist.get_rank()
        if rank == 0:
            self.folder.mkdir(parents=True, exist_ok=True)
            for stale in self.folder.glob("step_*.tmp"):
                shutil.rmtree(stale)
        dist.barrier()
        state = _app_state(trainer)
        # The caller's state is stored as one JSON string (DCP would flatten a dict, and drop an empty one).
        state["train"] = {"step": step, "extra": json.dumps(extra or {})}
        tmp.mkdir(parents=True, exist_ok=True)
        torch.save(_rng_state(), tmp / f"rng_rank{rank}.pt")
        if not self.asynchronous:
            dcp.save(state, checkpoint_id=str(tmp))
            maybe_inject_fault("save", step)
            self._finalise(final)
            return final
        if self._stager is None:
            self._stager = DefaultStager(_staging_options(trainer.device))
            self.staging_bytes = _local_bytes(state)
            logger.info("Asynchronous checkpoints stage %.1f MiB of host memory", self.staging_bytes / 2**20)
        future = dcp.async_save(state, checkpoint_id=str(tmp), process_group=self._group, async_stager=self._stager)
        self._pending = (future, final, trainer.device)
        maybe_inject_fault("async_save", step)  # staged, written in the background, not finalised
        return final

    def poll(self) -> Path | None:
        """At a step boundary: finalise the in-flight save if every rank has written it (collective); returns the
        checkpoint it finalised, if any."""
        if self._pending is None:
            return None
        future, _, device = self._pending
        written = torch.tensor([int(future.done())], device=device)
        dist.all_reduce(written, op=dist.ReduceOp.MIN)
        return self.wait() if written.item() else None

    def wait(self) -> Path | None:
        """Wait for the in-flight save, if any, and finalise it (collective); returns the checkpoint it finalised."""
        if self._pending is None:
            return None
        future, final, _ = self._pending
        self._pending = None
        future.result()  # raises the writer's error, if any
        self._finalise(final)
        return final

    def close(self) -> None:
        """Finalise the in-flight save and release the staging memory (collective)."""
        self.wait()
        if self._stager is not None:
            self._stager.close()
            self._stager = None

    def _finalise(self, final: Path) -> None:
        """Every rank has written ``<final>.tmp``: rename it to ``final``, point ``latest`` at it, prune old ones."""
        dist.barrier()
        if dist.get_rank() == 0:
            if final.exists():
                shutil.rmtree(final)
            os.replace(f"{final}.tmp", final)
            pointer_tmp = self.folder / f"{LATEST}.tmp"
            pointer_tmp.write_text(final.name + "\n")
            os.replace(pointer_tmp, self.folder / LATEST)
            if self.keep_last > 0:
                for old in sorted(self.folder.glob("step_????????"))[: -self.keep_last]:
                    shutil.rmtree(old)
        dist.barrier()
        logger.info("Saved checkpoint %s", final)


def _local_bytes(state: Any) -> int:
    """Bytes of this rank's tensors (a DTensor counts its local shard) in a nested state dict."""
    if isinstance(state, dict):
        return sum(_local_bytes(value) for value in state.values())
    if isinstance(state, DTensor):
        state = state.to_local()
    return state.numel() * state.element_size() if isinstance(state, torch.Tensor) else 0


def save_checkpoint(
    trainer: ParallelTrainer, folder: str | Path, extra: dict[str, Any] | None = None, keep_last: int = 2
) -> Path:
    """Save the trainer at its current step, synchronously (collective); ``extra`` is the caller's
    JSON-serialisable state (e.g. the data loader's position).

    Returns the checkpoint folder. Keeps the newest ``keep_last`` checkpoints (0 keeps all).
    """
    return CheckpointSaver(folder, keep_last).save(trainer, extra)


def load_checkpoint(trainer: ParallelTrainer, path: str | Path) -> dict[str, Any]:
    """Load a checkpoint saved under any layout into ``trainer`` (collective); returns the saved ``extra``."""
    path = Path(path)
    if not (path / ".metadata").is_file():
        raise FileNotFoundError(f"{path} is not a DCP checkpoint folder (no .metadata file).")
    state = _app_state(trainer)
    check_model_matches(path, state["model"], distributed=True)  # DCP alone would load a prefix of a larger model
    state["train"] = {"step": 0, "extra": ""}
    dcp.load(state, storage_reader=SafeFileSystemReader(str(path)))
    for (_, stage), optim, scheduler in zip(trainer.stages, trainer.optimizers, trainer.lr_schedulers):
        # Not strict: with several pipeline stages per rank, state["model"] also holds the other stages' keys;
        # check_model_matches above already proved the checkpoint and the whole model have the same tensors.
        set_model_state_dict(stage, state["model"], options=StateDictOptions(strict=False))
        set_optimizer_state_dict(stage, optim, state["optimizer"], options=_OPTIM_OPTIONS)
        # The LR follows the step; the loaded param-group LR already equals it.
        scheduler.last_epoch = state["train"]["step"]
        scheduler._last_lr = [group["lr"] for group in optim.param_groups]
    trainer.step_count = state["train"]["step"]
    rng_file = path / f"rng_rank{dist.get_rank()}.pt"
    if rng_file.is_file():
        rng = torch.load(rng_file, weights_only=True)
        if rng["world_size"] == dist.get_world_size():
            torch.set_rng_state(rng["cpu"])
            if "cuda" in rng and torch.cuda.is_available():
                torch.cuda.set_rng_state(rng["cuda"])
        else:
            logger.warning(
                "RNG state saved with %d ranks, not restored at %d.", rng["world_size"], dist.get_world_size()
            )
    logger.info("Loaded checkpoint %s at step %d", path, trainer.step_count)
    return json.loads(state["train"]["extra"])


def export_hf(checkpoint: str | Path, model_config: Llama3Config, output_dir: str | Path) -> Path:
    """Write a ``save_pretrained`` folder from a DCP checkpoint of any layout (one process, no process group).

    The folder is written next to ``output_dir`` and renamed into place, so a crash never leaves a partial export
    (``hf_llama3.checkpoint_io.atomic_output_dir``).
    """
    checkpoint, output_dir = Path(checkpoint), Path(output_dir)
    if not (checkpoint / ".metadata").is_file():
        raise FileNotFoundError(f"{checkpoint} is not a DCP checkpoint folder (no .metadata file).")
    model = Llama3ForCausalLM(model_config)
    state = {"model": model.state_dict()}
    check_model_matches(checkpoint, state["model"])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(state, storage_reader=SafeFileSystemReader(str(checkpoint)), no_dist=True)
    model.load_state_dict(state["model"])
    # Replaces only an export hf-llama3 wrote (ownership marker), never a folder holding the checkpoint itself.
    with atomic_output_dir(output_dir, overwrite=True, inputs=[checkpoint]) as tmp:
        model.save_pretrained(tmp)
    logger.info("Exported %s to %s", checkpoint, output_dir)
    return output_dir
