"""Saving and loading fastText models so that a cut-short file is never reported or used as a good one.

fastText's C++ ``saveModel`` writes through an ``ofstream`` and never checks it: on a full disk (ENOSPC) or past a
file-size limit (EFBIG) it returns normally and leaves a truncated file, and ``load_model`` then reads that file
without complaint (the missing matrix rows are simply never filled). So a model is written to a temporary file in
the destination folder, fsynced, checked (the exact size its own header implies, then a reload that must predict the
same) and only then renamed over the destination; and a model is checked the same way before it is loaded.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import BinaryIO

from hf_llama3.checkpoint_io import atomic_output_file

_MAGIC = 793712314  # FASTTEXT_FILEFORMAT_MAGIC_INT32
_ARGS_INT32 = (
    12  # Args::save: dim, ws, epoch, minCount, neg, wordNgrams, loss, model, bucket, minn, maxn, lrUpdateRate
)


def _read(handle: BinaryIO, fmt: str) -> tuple:
    size = struct.calcsize(fmt)
    data = handle.read(size)
    if len(data) < size:
        raise EOFError
    return struct.unpack(fmt, data)


def _skip_dictionary(handle: BinaryIO) -> None:
    size, _, _, _, prune_size = _read(handle, "<iiiqq")
    for _ in range(size):
        while True:  # the entry's NUL-terminated word, read in chunks
            chunk = handle.read(64)
            if not chunk:
                raise EOFError
            nul = chunk.find(b"\0")
            if nul >= 0:
                handle.seek(nul + 1 - len(chunk), os.SEEK_CUR)
                break
        _read(handle, "<qb")  # count, entry type
    handle.seek(8 * max(prune_size, 0), os.SEEK_CUR)


def _skip_matrix(handle: BinaryIO) -> bool:
    """Skip a dense matrix; False when it is quantized (its size is not computed here)."""
    (quantized,) = _read(handle, "<?")
    if quantized:
        return False
    rows, cols = _read(handle, "<qq")
    handle.seek(4 * rows * cols, os.SEEK_CUR)
    return True


def check_file(path: str | os.PathLike) -> None:
    """Check that a fastText ``.bin`` is complete: its own header gives the matrices' shapes, hence the file's size.

    Reads only the header and the dictionary (not the matrices), so it is cheap enough to run when a config names
    the model. Raises ValueError naming the file and the fix. Quantized (``.ftz``) models are only parsed so far.
    """
    path = Path(path)
    size = path.stat().st_size
    fix = "train it again (hf-llama3 train-quality fasttext --overwrite) or copy it again"
    try:
        with open(path, "rb") as handle:
            magic, _ = _read(handle, "<ii")
            if magic != _MAGIC:
                raise ValueError(f"{path} is not a fastText model (wrong magic number): {fix}.")
            handle.seek(4 * _ARGS_INT32 + 8, os.SEEK_CUR)  # the ints and the sampling threshold t (double)
            _skip_dictionary(handle)
            if not _skip_matrix(handle) or not _skip_matrix(handle):  # input, then output matrix
                return
            end = handle.tell()
    except EOFError:  # also after a seek past the end: the next read finds nothing
        raise ValueError(f"{path} is truncated ({size} bytes): {fix}.") from None
    if end != size:
        state = "truncated" if end > size else "damaged (trailing bytes)"
        raise ValueError(f"{path} is {state}: {size} bytes, a complete model is {end}; {fix}.")


def _load(path: str | os.PathLike):
    import fasttext

    fasttext.FastText.eprint = lambda *args, **kwargs: None  # its deprecation banner on every load
    return fasttext.load_model(str(path))


def load_checked(path: str | os.PathLike):
    """Load a fastText model after :func:`check_file`; a damaged one raises ValueError naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"fastText model {path} does not exist.")
    check_file(path)
    return _load(path)


def check_destination(path: str | os.PathLike, overwrite: bool) -> Path:
    """Refuse a destination that is a folder, or an existing model without ``overwrite``; create the parent."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"--output {path} is a folder: give the model's file name, e.g. {path}/quality.bin.")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists: pass --overwrite to replace it, or choose another --output.")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def save_verified(model, path: str | os.PathLike, probes: list[str], overwrite: bool = False) -> Path:
    """Save ``model`` to ``path`` through a checked temporary file; return the path only when it is complete.

    ``probes`` are texts whose predictions the reloaded model must reproduce exactly.
    """
    from data.langid import fasttext_predict

    path = check_destination(path, overwrite)
    # atomic_output_file fsyncs before the rename, so a write failure surfaces while nothing has been replaced.
    with atomic_output_file(path) as tmp:
        model.save_model(str(tmp))
        try:
            check_file(tmp)
        except ValueError:
            # What a full disk or a file-size limit leaves behind: fastText's save reports nothing.
            raise OSError(
                f"could not write {path} completely ({tmp.stat().st_size} bytes written; disk full or file-size "
                "limit?): nothing was kept."
            ) from None
        reloaded = _load(tmp)
        if any(fasttext_predict(model, p, k=2) != fasttext_predict(reloaded, p, k=2) for p in probes):
            raise OSError(f"could not write {path}: the saved model predicts differently; nothing was kept.")
    return path
