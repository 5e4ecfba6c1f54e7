"""DCP checkpoints: save at one layout, resume at another (the loss curve continues as if never interrupted),
and export any layout's checkpoint to a Hugging Face folder that ``from_pretrained`` loads."""

from __future__ import annotations

import functools
import pickle
import tempfile
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from hf_llama3 import Llama3ForCausalLM
from tests.distributed.harness import OPTIMIZER, make_batch, reference_run, tiny_config
from training.parallel.checkpoint import export_hf, latest_checkpoint, load_checkpoint, save_checkpoint
from training.parallel.dims import ParallelDims
from training.parallel.engine import EngineConfig, ParallelTrainer
from training.parallel.safe_reader import load_metadata
from training.parallel.spawn import run_local

SAVE_AT, TOTAL = 3, 6
# (saved under, resumed under): pipeline + tensor parallel into plain FSDP, and FSDP into CP x TP.
RESHARDS = [
    ("TP2xPP2", dict(tp=2, pp=2, pp_microbatches=2), "FSDP4", dict(dp_shard=4)),
    ("FSDP4", dict(dp_shard=4), "CP2xTP2", dict(cp=2, tp=2)),
]


def _reshard(rank: int, world_size: int, out_dir: str) -> None:
    for name_a, dims_a, name_b, dims_b in RESHARDS:
        folder = Path(out_dir) / f"{name_a}-to-{name_b}"
        first = ParallelTrainer(tiny_config(), EngineConfig(parallel=ParallelDims(**dims_a), optimizer=OPTIMIZER))
        losses = [first.step(make_batch(step)) for step in range(SAVE_AT)]
        save_checkpoint(first, folder, extra={"data_step": SAVE_AT})
        saved_state = first.full_state_dict()
        del first
        # A different seed: every weight must come from the checkpoint.
        second = ParallelTrainer(
            tiny_config(), EngineConfig(parallel=ParallelDims(**dims_b), optimizer=OPTIMIZER, seed=123)
        )
        extra = load_checkpoint(second, latest_checkpoint(folder))
        assert extra == {"data_step": SAVE_AT} and second.step_count == SAVE_AT
        losses += [second.step(make_batch(step)) for step in range(extra["data_step"], TOTAL)]
        state = second.full_state_dict()
        if rank == 0:
            torch.save({"losses": losses, "state": state, "saved_state": saved_state}, folder / "result.pt")
        del second
        dist.barrier()


@functools.cache
def _results() -> str:
    out_dir = tempfile.mkdtemp(prefix="reshard_")
    run_local(4, _reshard, out_dir)
    return out_dir


@pytest.mark.timeout(600)
@pytest.mark.parametrize(("name_a", "name_b"), [(a, b) for a, _, b, _ in RESHARDS])
def test_resume_at_another_layout_continues_the_loss_curve(name_a: str, name_b: str) -> None:
    ref_losses, ref_state = reference_run(tiny_config(), steps=TOTAL)
    result = torch.load(Path(_results()) / f"{name_a}-to-{name_b}" / "result.pt")
    torch.testing.assert_close(torch.tensor(result["losses"]), torch.tensor(ref_losses), rtol=0, atol=1e-5)
    for key, ref in ref_state.items():
        torch.testing.assert_close(result["state"][key], ref, rtol=0, atol=1e-5, msg=lambda m, k=key: f"{k}: {m}")


@pytest.mark.timeout(600)
def test_export_hf_from_a_pipeline_and_tensor_parallel_checkpoint(tmp_path: Path) -> None:
    folder = Path(_results()) / "TP2xPP2-to-FSDP4"
    saved = torch.load(folder / "result.pt")["saved_state"]
    checkpoint = latest_checkpoint(folder)
    assert checkpoint is not None and checkpoint.name == f"step_{SAVE_AT:08d}"
    out = export_hf(checkpoint, tiny_config(), tmp_path / "hf")
    model = Llama3ForCausalLM.from_pretrained(out)
    state = model.state_dict()
    assert set(state) == set(saved)
    for key, tensor in saved.items():
        torch.testing.assert_close(state[key], tensor, rtol=0, atol=0, msg=lambda m, k=key: f"{k}: {m}")
    assert not list(tmp_path.glob("*.tmp"))


def test_missing_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    assert latest_checkpoint(tmp_path) is None
    with pytest.raises(FileNotFoundError, match="not a DCP checkpoint"):
        export_hf(tmp_path, tiny_config(), tmp_path / "out")
    (tmp_path / "latest").write_text("step_00000007\n")
    with pytest.raises(FileNotFoundError, match="not a complete DCP checkpoint"):
        latest_checkpoint(tmp_path)


class _Payload:
    """Unpickling this calls ``Path.touch(marker)``: what a crafted ``.metadata`` could do with any callable."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_malicious_metadata_is_refused_without_running(tmp_path: Path) -> None:
    """A DCP ``.metadata`` is a pickle: ours is read by an allow-list unpickler, so a payload never runs."""
    folder = Path(_results()) / "TP2xPP2-to-FSDP4"
    checkpoint = latest_checkpoint(folder)
    assert checkpoint is not None
    crafted = tmp_path / checkpoint.name
    crafted.mkdir()
    for item in checkpoint.iterdir():  # a real checkpoint whose metadata is replaced by the payload
        (crafted / item.name).symlink_to(item)
    (crafted / ".metadata").unlink()
    marker = tmp_path / "pwned"
    (crafted / ".metadata").write_bytes(pickle.dumps(_Payload(marker)))
    # DCP wraps the reader's UnpicklingError in its CheckpointException (a BaseException) naming the refused callable.
    with pytest.raises(BaseException, match=r"refers to pathlib\.Path\.touch.*refusing to load it"):
        export_hf(crafted, tiny_config(), tmp_path / "hf")
    assert not marker.exists()
    assert not (tmp_path / "hf").exists()
    # The same reader loads the real metadata: the legitimate checkpoints of every layout above resume through it.
    with open(checkpoint / ".metadata", "rb") as handle:
        metadata = load_metadata(handle, str(checkpoint / ".metadata"))
    assert any(key.startswith("model.") for key in metadata.state_dict_metadata)
