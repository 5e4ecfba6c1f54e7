"""Run a function on N local CPU processes joined by a gloo process group (tests, benchmarks, notebooks).

The processes are forked from the caller, so they share its already-imported torch and transformers and a
16-process world starts in about a second; each joins the group through a file store in a temporary folder.
Production runs use ``torchrun`` (see ``training.pretrain.cli``) instead.

A rank that raises records its error in the temporary folder before it dies; the parent then raises
:class:`~hf_llama3.cli_errors.RankFailedError` for the rank that failed first, so the user reads one line
(``rank 1 failed: ValueError: ...``) instead of torch.multiprocessing's stack of the child's stack. A rank killed by
a signal (the OOM killer's SIGKILL) records nothing: :class:`~hf_llama3.cli_errors.RankKilledError` names it.
"""

from __future__ import annotations

import datetime
import gc
import json
import logging
import os
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.tensor._redistribute import clear_redistribute_planner_cache
from torch.distributed.tensor.debug import _clear_sharding_prop_cache

from hf_llama3.cli_errors import RankFailedError, RankKilledError, describe_error, one_line


def _record_failure(error_dir: str, rank: int, err: BaseException) -> None:
    """Write the rank's error (time, type, one-line message, traceback) where the parent finds it."""
    record = {
        "time": time.time(),
        "rank": rank,
        "error_type": type(err).__name__,
        "message": describe_error(err) or one_line(str(err)),
        "traceback_text": traceback.format_exc(),
    }
    path = Path(error_dir) / f"rank{rank}.json"
    path.write_text(json.dumps(record), encoding="utf-8")


def first_failure(error_dir: str) -> RankFailedError | None:
    """The error of the rank that failed first (the others often fail only because a peer left)."""
    records = [json.loads(p.read_text(encoding="utf-8")) for p in sorted(Path(error_dir).glob("rank*.json"))]
    if not records:
        return None
    first = min(records, key=lambda r: (r["time"], r["rank"]))
    return RankFailedError(first["rank"], first["error_type"], first["message"], first["traceback_text"])


def _worker(rank: int, world_size: int, store_path: str, fn: Callable, args: tuple) -> None:
    torch.set_num_threads(1)
    # The fork copied the parent's DTensor caches, keyed by device mesh: a mesh of the parent's (an earlier world,
    # fake or real) equal to one of this world's would be found there and name groups this process does not have.
    _clear_sharding_prop_cache()
    clear_redistribute_planner_cache()
    error_dir = os.path.dirname(store_path)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{store_path}",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=180),
    )
    try:
        fn(rank, world_size, *args)
    except KeyboardInterrupt:
        raise
    except BaseException as err:  # DCP's CheckpointException is a BaseException
        _record_failure(error_dir, rank, err)
        if not isinstance(err, Exception):
            # torch.multiprocessing forwards only Exceptions; anything else would print a traceback in the child.
            raise SystemExit(1) from None
        raise
    finally:
        dist.destroy_process_group()


def run_local(world_size: int, fn: Callable, *args) -> None:
    """Run ``fn(rank, world_size, *args)`` on ``world_size`` forked processes.

    A child's exception reaches the caller as :class:`RankFailedError` naming the first rank that failed.

    The caller must not hold a process group itself. Garbage is collected before the fork: a child that
    garbage-collects a process group left over from an earlier run in the parent (e.g. an in-process
    ``hf-llama3 pretrain``) blocks forever in its destructor, waiting for worker threads that fork did not copy.
    Threads are limited to one per process.
    """
    gc.collect()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        store = os.path.join(tmp, "store")
        # torch logs a warning per surviving rank it stops after a failure: noise around the one line that matters.
        spawn_logger = logging.getLogger("torch.multiprocessing.spawn")
        level = spawn_logger.level
        spawn_logger.setLevel(logging.ERROR)
        try:
            mp.start_processes(_worker, args=(world_size, store, fn, args), nprocs=world_size, start_method="fork")
        except (mp.ProcessRaisedException, mp.ProcessExitedException) as err:
            failure = first_failure(tmp)
            signal_name = getattr(err, "signal_name", None)
            if isinstance(err, mp.ProcessExitedException) and (signal_name or failure is None):
                # A rank killed by a signal (SIGKILL from the OOM killer, say) records nothing, and its peers may
                # record only the fallout: name the killed rank and the signal in one line.
                raise RankKilledError(err.error_index, signal_name, err.exit_code) from None
            if failure is None:
                raise
            raise failure from None
        finally:
            spawn_logger.setLevel(level)
