"""Reading DCP checkpoints without running code from them.

torch's ``FileSystemReader`` reads a checkpoint's ``.metadata`` with ``pickle.load``: a crafted ``.metadata`` (in a
downloaded run folder, a ``checkpoints/latest`` pointing anywhere, a probe's ``checkpoint:``) runs arbitrary code
the moment it is opened. ``SafeFileSystemReader`` reads the same file through an unpickler that resolves only
the classes DCP's own metadata is made of (the dataclasses of ``torch.distributed.checkpoint.metadata``, the
filesystem's ``_StorageInfo``, ``torch.Size``, dtypes, layouts and paths), so a payload fails to load with an error
that names the class it asked for. The tensor data files themselves are raw bytes read by offset, never unpickled.
Every ``dcp.load`` in the project goes through this reader.
"""

from __future__ import annotations

import dataclasses
import enum
import pathlib
import pickle
from typing import Any

import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint import filesystem as dcp_filesystem
from torch.distributed.checkpoint import metadata as dcp_metadata
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta

# (module, name) pairs a legitimate .metadata refers to, beyond the metadata dataclasses and enums themselves.
_ALLOWED_GLOBALS = {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),  # rebuilds torch.strided & co. from their names
    ("pathlib", "PosixPath"),
    ("pathlib", "PurePosixPath"),
    ("pathlib", "WindowsPath"),
    ("pathlib", "PureWindowsPath"),
    ("collections", "OrderedDict"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
}


def _is_metadata_class(name: str) -> bool:
    value = getattr(dcp_metadata, name, None)
    return isinstance(value, type) and (dataclasses.is_dataclass(value) or issubclass(value, enum.Enum))


class MetadataUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals DCP metadata is made of."""

    def __init__(self, file, source: str) -> None:
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        if module == dcp_metadata.__name__ and _is_metadata_class(name):
            return getattr(dcp_metadata, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if (module, name) in _ALLOWED_GLOBALS:
            if module == dcp_filesystem.__name__:
                return getattr(dcp_filesystem, name)
            if module == "pathlib":
                return getattr(pathlib, name)
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"{self.source}: refers to {module}.{name}, which DCP checkpoint metadata never contains; refusing to "
            "load it (a pickle can run code). Use a checkpoint written by hf-llama3 / torch.distributed.checkpoint."
        )


def load_metadata(handle, source: str) -> Metadata:
    """Unpickle an open DCP ``.metadata`` file through `MetadataUnpickler`."""
    try:
        metadata = MetadataUnpickler(handle, source).load()
    except (EOFError, pickle.UnpicklingError) as err:
        if isinstance(err, pickle.UnpicklingError) and str(err).startswith(source):
            raise
        raise ValueError(f"{source}: truncated or not DCP checkpoint metadata ({err}).") from err
    if not isinstance(metadata, Metadata):
        raise ValueError(f"{source}: not DCP checkpoint metadata (found {type(metadata).__name__}).")
    return metadata


class SafeFileSystemReader(FileSystemReader):
    """``FileSystemReader`` whose metadata is read through `MetadataUnpickler` (nothing else changes)."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        path = self._get_metadata_path(kwargs.get("rank"))
        with self.fs.create_stream(path, "rb") as handle:
            metadata = load_metadata(handle, str(path))
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata
