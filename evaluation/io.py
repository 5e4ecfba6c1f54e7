"""JSON output shared by the evaluation modules, written atomically (hf_llama3.checkpoint_io.atomic_output_file)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from hf_llama3.checkpoint_io import atomic_output_file


def write_json(path: str | os.PathLike, payload: Any) -> Path:
    """Write ``payload`` as indented JSON atomically and return the path."""
    with atomic_output_file(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return Path(path)
