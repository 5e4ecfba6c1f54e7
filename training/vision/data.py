"""Image-text rows for adapter training [paper 7.3]: reading, checking, and a synthetic set made in code.

Sources:
- an image folder in the ``datasets`` ``imagefolder`` convention: ``metadata.jsonl`` rows
  ``{"file_name": "images/0001.png", "text": "two red circles"}`` beside the images;
- a ``datasets`` dataset (a ``Dataset`` object or a ``save_to_disk`` folder) with an image column and a text column;
- ``synthetic``: rendered shapes with their colour, kind and count as the caption (:func:`synthetic_rows`).

Every row is checked before training starts: a row without an image, an image mode the tiling processor cannot
turn into RGB, a missing image file or an empty caption each stop the run with the row and the fix named.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from hf_llama3.checkpoint_io import atomic_output_dir

METADATA = "metadata.jsonl"
# Modes the processor converts to RGB without losing meaning (`convert_rgb`); others (16-bit / float / CMYK /
# 1-bit) would be silently clipped or mis-coloured, so they are refused with a fix.
SUPPORTED_MODES = ("RGB", "RGBA", "L", "LA", "P")

COLOURS = {"red": (220, 30, 30), "green": (30, 170, 40), "blue": (30, 60, 220), "yellow": (230, 200, 20)}
SHAPES = ("circle", "square", "triangle")
COUNT_WORDS = {1: "one", 2: "two", 3: "three"}


@dataclass
class ImageTextRow:
    """One training example: an RGB image and its caption (the loss is on the caption only)."""

    image: Image.Image
    caption: str


def check_image(image: Any, where: str) -> Image.Image:
    """The row's image as RGB, or a ValueError naming ``where`` and the fix."""
    if image is None:
        raise ValueError(
            f"{where} has no image, and every row of an image-text set needs one: drop text-only rows or fill "
            "the image column."
        )
    if not isinstance(image, Image.Image):
        raise ValueError(f"{where}: expected a PIL image, got {type(image).__name__}; decode the column as Image().")
    if image.mode not in SUPPORTED_MODES:
        raise ValueError(
            f"{where}: image mode {image.mode!r} is not supported (use one of {', '.join(SUPPORTED_MODES)}); "
            "convert it first, e.g. PIL `image.convert('RGB')`."
        )
    if image.mode in ("RGBA", "LA", "P"):
        background = Image.new("RGB", image.size, (255, 255, 255))
        rgba = image.convert("RGBA")
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


def check_caption(caption: Any, where: str) -> str:
    if not isinstance(caption, str) or not caption.strip():
        raise ValueError(f"{where} has no caption text; every row needs a non-empty text column.")
    return caption.strip()


def rows_from_folder(folder: str | os.PathLike, text_column: str = "text") -> list[ImageTextRow]:
    """Rows of an ``imagefolder``-style folder (``metadata.jsonl`` with ``file_name`` and a text column)."""
    folder = Path(folder)
    meta = folder / METADATA
    if not meta.is_file():
        raise FileNotFoundError(
            f"{meta} not found: an image-text folder needs {METADATA} lines "
            '{"file_name": "images/x.png", "text": "caption"} (the datasets imagefolder layout).'
        )
    rows = []
    for number, line in enumerate(meta.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"row {number} of {meta}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{where} is not valid JSON ({err}).") from err
        name = record.get("file_name")
        image = None
        if name:
            path = folder / name
            if not path.is_file():
                raise FileNotFoundError(f"{where}: image file {path} does not exist; fix file_name or add the file.")
            with Image.open(path) as opened:
                opened.load()
                image = opened
        rows.append(ImageTextRow(check_image(image, where), check_caption(record.get(text_column), where)))
    if not rows:
        raise ValueError(f"{meta} holds no rows.")
    return rows


def rows_from_dataset(dataset: Any, image_column: str = "image", text_column: str = "text", name: str = "dataset"):
    """Rows of a ``datasets.Dataset`` (or any sequence of dicts) with an image and a text column."""
    columns = getattr(dataset, "column_names", None)
    if columns is not None:
        for column in (image_column, text_column):
            if column not in columns:
                raise ValueError(
                    f"{name} has no column {column!r} (columns: {columns}); pass --image-column/--text-column."
                )
    rows = []
    for number, record in enumerate(dataset):
        where = f"row {number} of {name}"
        rows.append(
            ImageTextRow(check_image(record.get(image_column), where), check_caption(record.get(text_column), where))
        )
    if not rows:
        raise ValueError(f"{name} holds no rows.")
    return rows


def load_rows(source: str | os.PathLike, image_column: str = "image", text_column: str = "text") -> list[ImageTextRow]:
    """Rows from a folder (``metadata.jsonl``) or a ``datasets`` ``save_to_disk`` folder."""
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"Image-text data {path} does not exist.")
    if (path / METADATA).is_file():
        return rows_from_folder(path, text_column)
    if (path / "dataset_info.json").is_file() or (path / "state.json").is_file():
        import datasets

        dataset = datasets.load_from_disk(str(path))
        if isinstance(dataset, datasets.DatasetDict):
            dataset = dataset["train"] if "train" in dataset else next(iter(dataset.values()))
        return rows_from_dataset(dataset, image_column, text_column, name=str(path))
    raise ValueError(
        f"{path} is neither an image folder (with {METADATA}) nor a datasets `save_to_disk` folder; "
        "see `hf-llama3 vision make-data` for the folder layout."
    )


# --- the synthetic shapes set --------------------------------------------------------------------------------------


def _draw(draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], colour: tuple[int, int, int]) -> None:
    x0, y0, x1, y1 = box
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    else:
        draw.polygon([((x0 + x1) // 2, y0), (x1, y1), (x0, y1)], fill=colour)


def render_example(rng: random.Random, sizes: Iterable[tuple[int, int]] = ((32, 32), (64, 32), (32, 64))):
    """One rendered image (1-3 shapes of one kind and colour on white) and its caption, e.g. "two red circles"."""
    width, height = rng.choice(list(sizes))
    colour_name = rng.choice(list(COLOURS))
    shape = rng.choice(SHAPES)
    count = rng.randint(1, 3)
    image = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    cell = min(width, height) // 2
    cells = [(x, y) for x in range(0, width - cell + 1, cell) for y in range(0, height - cell + 1, cell)]
    for x, y in rng.sample(cells, count):
        margin = rng.randint(1, max(1, cell // 6))
        _draw(
            draw, shape, (x + margin, y + margin, x + cell - margin - 1, y + cell - margin - 1), COLOURS[colour_name]
        )
    noun = shape if count == 1 else shape + "s"
    return image, f"{COUNT_WORDS[count]} {colour_name} {noun}"


def synthetic_rows(n: int, seed: int = 0) -> list[ImageTextRow]:
    """``n`` rendered shapes/colours/counts examples with their captions (36 distinct captions)."""
    rng = random.Random(seed)
    return [ImageTextRow(*render_example(rng)) for _ in range(n)]


def write_image_folder(rows: list[ImageTextRow], dst: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write rows as an ``imagefolder`` (``images/NNNNN.png`` + ``metadata.jsonl``), atomically."""
    with atomic_output_dir(dst, overwrite=overwrite) as tmp:
        (tmp / "images").mkdir()
        lines = []
        for i, row in enumerate(rows):
            name = f"images/{i:05d}.png"
            row.image.save(tmp / name)
            lines.append(json.dumps({"file_name": name, "text": row.caption}))
        (tmp / METADATA).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return Path(dst)
