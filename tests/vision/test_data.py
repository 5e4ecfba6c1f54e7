"""Image-text rows: the synthetic set, caption-only labels, and the errors bad rows get."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from hf_llama3.cli import main as cli_main
from training.vision.data import COLOURS, load_rows, rows_from_dataset, synthetic_rows, write_image_folder


def test_synthetic_captions_describe_their_images():
    for row in synthetic_rows(40, seed=3):
        count, colour, shape = row.caption.split()
        pixels = np.asarray(row.image).reshape(-1, 3)
        coloured = (np.abs(pixels.astype(int) - COLOURS[colour]).sum(1) == 0).sum()
        assert coloured > 0, row.caption  # the named colour is drawn
        others = [c for c in COLOURS if c != colour]
        assert all((np.abs(pixels.astype(int) - COLOURS[c]).sum(1) == 0).sum() == 0 for c in others)
        assert shape.rstrip("s") in ("circle", "square", "triangle")
        assert (count == "one") == (not shape.endswith("s"))


def test_folder_round_trip(tmp_path):
    rows = synthetic_rows(5)
    write_image_folder(rows, tmp_path / "set")
    back = load_rows(tmp_path / "set")
    assert [r.caption for r in back] == [r.caption for r in rows]
    assert np.array_equal(np.asarray(back[2].image), np.asarray(rows[2].image))


def test_labels_cover_the_caption_only(mllama_folder):
    from transformers import AutoProcessor

    from training.vision.train import IGNORE_INDEX, collate

    processor = AutoProcessor.from_pretrained(mllama_folder)
    rows = synthetic_rows(3, seed=1)
    batch = collate(processor, rows)
    tokenizer = processor.tokenizer
    for i, row in enumerate(rows):
        ids = batch["input_ids"][i]
        assert ids[:2].tolist() == [128256, 128000]  # <|image|><|begin_of_text|>, no loss there
        labelled = batch["labels"][i][batch["labels"][i] != IGNORE_INDEX]
        assert tokenizer.decode(labelled) == row.caption + "<|end_of_text|>"
    assert batch["pixel_values"].shape[:3] == (3, 1, 4)


def _folder_with(tmp_path, image: Image.Image | None, caption: str = "one red circle"):
    folder = tmp_path / "bad"
    (folder / "images").mkdir(parents=True)
    record = {"text": caption}
    if image is not None:
        image.save(folder / "images" / "0.tiff")
        record["file_name"] = "images/0.tiff"
    good = {"file_name": "images/1.png", "text": "two blue squares"}
    synthetic_rows(1)[0].image.save(folder / "images" / "1.png")
    (folder / "metadata.jsonl").write_text(json.dumps(good) + "\n" + json.dumps(record) + "\n")
    return folder


def test_row_without_image_is_named(tmp_path):
    folder = _folder_with(tmp_path, None)
    with pytest.raises(ValueError, match=r"row 2 of .*metadata.jsonl has no image.*drop text-only rows"):
        load_rows(folder)


def test_unsupported_image_mode_is_named(tmp_path):
    folder = _folder_with(tmp_path, Image.new("F", (32, 32)))
    with pytest.raises(ValueError, match=r"row 2 of .*image mode 'F' is not supported.*convert\('RGB'\)"):
        load_rows(folder)


def test_dataset_rows_are_checked_too():
    rows = [{"image": synthetic_rows(1)[0].image, "text": "one red circle"}, {"image": None, "text": "x"}]
    with pytest.raises(ValueError, match=r"row 1 of dataset has no image"):
        rows_from_dataset(rows)
    with pytest.raises(ValueError, match=r"row 0 of dataset has no caption"):
        rows_from_dataset([{"image": synthetic_rows(1)[0].image, "text": " "}])


def test_train_cli_reports_a_bad_row_and_writes_nothing(mllama_folder, tmp_path, capsys):
    folder = _folder_with(tmp_path, None)
    code = cli_main(["vision", "train", str(mllama_folder), "--data", str(folder), "--output", str(tmp_path / "out")])
    assert code == 2
    err = capsys.readouterr().err
    assert "row 2 of" in err and "has no image" in err
    assert not (tmp_path / "out").exists()


def test_datasets_folder_with_an_image_column(tmp_path):
    import datasets

    rows = synthetic_rows(4, seed=2)
    features = datasets.Features({"picture": datasets.Image(), "caption": datasets.Value("string")})
    dataset = datasets.Dataset.from_dict(
        {"picture": [r.image for r in rows], "caption": [r.caption for r in rows]}, features=features
    )
    dataset.save_to_disk(str(tmp_path / "ds"))
    back = load_rows(tmp_path / "ds", image_column="picture", text_column="caption")
    assert [r.caption for r in back] == [r.caption for r in rows]
    assert np.array_equal(np.asarray(back[0].image), np.asarray(rows[0].image))
    with pytest.raises(ValueError, match=r"has no column 'image'.*--image-column"):
        load_rows(tmp_path / "ds")
