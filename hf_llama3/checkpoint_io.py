"""Reading, checking and atomically writing checkpoint folders.

Every writer in the project goes through :func:`atomic_output_dir` so that an interrupted or failed job never
leaves a half-written folder where a good one is expected. Readers check a folder before trusting it: a shard
listed in the index but absent, a safetensors file cut short, tensors whose shapes do not fit the config each
get an error that names the file and the fix.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import struct
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from safetensors.torch import load_file

from .durable import apply_umask_mode, apply_umask_modes, fsync_path, fsync_tree
from .output_folder import check_replaceable, write_marker
from .output_lock import output_lock

SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
# Files that travel with the weights when a folder is converted.
COMPANION_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "generation_config.json",
    "tokenizer.model",
)


class CheckpointError(ValueError):
    """A checkpoint folder that cannot be used as it is; the message says what is wrong and how to fix it."""


@contextlib.contextmanager
def atomic_output_dir(
    dst: str | os.PathLike,
    overwrite: bool = False,
    inputs: Iterable[str | os.PathLike] = (),
    command: str | None = None,
) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``dst`` and rename it to ``dst`` only when the block succeeds.

    On any error (in the block, the checks or the rename) the temporary folder is removed and ``dst`` is left as it
    was. With ``overwrite`` an existing ``dst`` is replaced (moved aside first, deleted after the rename), but only
    a folder this project wrote, and never one holding ``inputs``, the working directory or the home folder
    (:func:`hf_llama3.output_folder.check_replaceable`). The run holds ``dst``'s lock throughout, so a second run
    into the same folder is refused at once. The result carries the ownership marker (``command`` names the
    writer), its safetensors files are checked complete, its modes follow the umask, and everything is fsynced
    before the rename.
    """
    dst = Path(dst)
    inputs = list(inputs)
    with output_lock(dst):
        if dst.exists() or dst.is_symlink():
            if not overwrite:
                raise FileExistsError(
                    f"Output folder {dst} already exists: choose a new path or pass overwrite=True (--overwrite)."
                )
            # Refused before the block runs, so a long conversion never ends in a refusal.
            check_replaceable(dst, inputs)
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.parent / f".{dst.name}.tmp-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        # Marked from the start: a nested writer asked to overwrite the staging folder must see it as ours.
        write_marker(tmp, command)
        try:
            yield tmp
            _install(tmp, dst, inputs, command)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def install_output_dir(
    staged: str | os.PathLike,
    dst: str | os.PathLike,
    inputs: Iterable[str | os.PathLike] = (),
    command: str | None = None,
) -> Path:
    """Rename the finished folder ``staged`` onto ``dst`` the way :func:`atomic_output_dir` does (ownership check,
    marker, safetensors check, umask modes, fsync, old output restored if the rename fails), for writers that build their
    staging folder over several steps. Holds ``dst``'s lock; ``staged`` is left in place if this raises."""
    with output_lock(dst):
        _install(Path(staged), Path(dst), list(inputs), command)
    return Path(dst)


def _install(tmp: Path, dst: Path, inputs: list[str | os.PathLike], command: str | None) -> None:
    """Mark, check and fsync ``tmp``, then rename it onto ``dst`` (the caller holds ``dst``'s lock)."""
    write_marker(tmp, command)  # (again) after the writer: it may have replaced the folder's contents
    for path in sorted(tmp.rglob("*.safetensors")):
        check_safetensors_file(path)
    apply_umask_modes(tmp)
    fsync_tree(tmp)
    old = None
    if dst.exists() or dst.is_symlink():
        check_replaceable(dst, inputs)  # (still) ours after the writer, which may have run for hours
        old = dst.parent / f".{dst.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(dst, old)
    try:
        os.replace(tmp, dst)
    except BaseException:
        if old is not None:
            os.replace(old, dst)  # put the previous output back
        raise
    fsync_path(dst.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_output_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it onto ``path`` only if the block succeeds.

    The single-file counterpart of :func:`atomic_output_dir`: a crash or an exception leaves no half-written file
    at ``path`` (and no temporary file beside it, except after a hard kill). The file is fsynced before the rename
    and gets the umask's mode (``mkstemp`` would leave it 0600).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        apply_umask_mode(tmp)
        fsync_path(tmp)
        os.replace(tmp, target)
        fsync_path(target.parent)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def check_safetensors_file(path: Path) -> None:
    """Check that ``path`` is a complete safetensors file (header parses, data section fully present)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw_len = f.read(8)
        if len(raw_len) < 8:
            raise CheckpointError(f"{path} is empty or truncated ({size} bytes): copy or download it again.")
        (header_len,) = struct.unpack("<Q", raw_len)
        if 8 + header_len > size:
            raise CheckpointError(f"{path} is truncated inside its header: copy or download it again.")
        try:
            header = json.loads(f.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise CheckpointError(f"{path} is not a safetensors file (unreadable header: {err}).") from err
    data_end = max((meta["data_offsets"][1] for key, meta in header.items() if key != "__metadata__"), default=0)
    if 8 + header_len + data_end > size:
        missing = 8 + header_len + data_end - size
        raise CheckpointError(
            f"{path} is truncated: {missing} bytes of tensor data are missing. Copy or download the file again."
        )


def weight_files(folder: str | os.PathLike) -> list[Path]:
    """The safetensors files of a Hugging Face folder (single file or index + shards), all checked present."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"Checkpoint folder {folder} does not exist.")
    index = folder / SAFE_WEIGHTS_INDEX_NAME
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as err:
            raise CheckpointError(f"{index} is not a valid safetensors index ({err}).") from err
        files = [folder / name for name in sorted(set(weight_map.values()))]
        missing = [f.name for f in files if not f.exists()]
        if missing:
            raise CheckpointError(
                f"{folder} is incomplete: shard(s) {', '.join(missing)} listed in {index.name} are missing. "
                "Copy or download the missing shard files."
            )
        return files
    single = folder / SAFE_WEIGHTS_NAME
    if single.exists():
        return [single]
    if list(folder.glob("*.bin")) or list(folder.glob("*.pth")):
        raise CheckpointError(
            f"{folder} has PyTorch pickle weights only; hf-llama3 reads safetensors. Load it with transformers and "
            "`save_pretrained` it again, or convert a Meta folder with `hf-llama3 convert --to ours`."
        )
    raise FileNotFoundError(f"No {SAFE_WEIGHTS_NAME} or {SAFE_WEIGHTS_INDEX_NAME} in {folder}.")


def read_state_dict(folder: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load every tensor of a safetensors folder after checking that no shard is missing or truncated."""
    state_dict: dict[str, torch.Tensor] = {}
    for path in weight_files(folder):
        check_safetensors_file(path)
        state_dict.update(load_file(path))
    return state_dict


def read_config_dict(folder: str | os.PathLike) -> dict:
    """``config.json`` of a folder as a dict, with a clear error when it is absent or malformed."""
    path = Path(folder) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: a Hugging Face checkpoint folder needs its config.json.")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path} is not valid JSON ({err}).") from err


def check_state_dict_shapes(state_dict: dict[str, torch.Tensor], expected: dict[str, torch.Size], source: str) -> None:
    """Compare a checkpoint's tensors with the shapes a model built from its config expects."""
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong = [
        f"{name}: checkpoint {tuple(state_dict[name].shape)} vs config {tuple(shape)}"
        for name, shape in expected.items()
        if name in state_dict and state_dict[name].shape != shape
    ]
    problems = []
    if missing:
        problems.append(f"missing tensors {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    if unexpected:
        problems.append(f"unexpected tensors {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
    if wrong:
        problems.append("wrong shapes: " + "; ".join(wrong[:5]) + (" ..." if len(wrong) > 5 else ""))
    if problems:
        raise CheckpointError(
            f"{source} does not match its config: " + " | ".join(problems) + ". The weights and config.json come "
            "from different models, or a shard is from another checkpoint."
        )


def copy_companion_files(
    src: str | os.PathLike, dst: str | os.PathLike, names: tuple[str, ...] | None = None
) -> list[str]:
    """Copy tokenizer and generation files (``names``, default :data:`COMPANION_FILES`) that exist in ``src`` to
    ``dst``; returns the names copied."""
    copied = []
    for name in names or COMPANION_FILES:
        if (Path(src) / name).exists():
            shutil.copy2(Path(src) / name, Path(dst) / name)
            copied.append(name)
    return copied
