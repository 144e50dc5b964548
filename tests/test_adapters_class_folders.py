"""ClassFoldersAdapter: Training/Testing class folders and yes/no folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mtl.data.adapters import get_adapter
from mtl.data.adapters.base import DataError, read_gray_image
from mtl.data.adapters.class_folders import ClassFoldersAdapter


def write_image(path: Path, size: tuple[int, int] = (32, 24), mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    width, height = size
    gray = (np.arange(width * height).reshape(height, width) % 200).astype(np.uint8)
    Image.fromarray(gray, mode="L").convert(mode).save(path)
    return path


@pytest.fixture
def four_class_root(tmp_path: Path) -> Path:
    """The 4-class Kaggle layout; file names repeat across folders as in some releases."""
    root = tmp_path / "kaggle4"
    for subset in ("Training", "Testing"):
        for folder in ("glioma", "meningioma", "pituitary", "notumor"):
            for i in (1, 2):
                write_image(root / subset / folder / f"{i}.jpg")
    return root


def test_four_class_records(four_class_root: Path) -> None:
    adapter = get_adapter("class_folders", four_class_root)
    records = adapter.records()
    assert len(records) == 16
    by_id = {r.case_id: r for r in records}
    assert len(by_id) == 16  # repeated stems still give unique case ids
    glioma = by_id["Training/glioma/1"]
    assert (glioma.label, glioma.presence, glioma.has_mask) == ("glioma", 1, False)
    healthy = by_id["Testing/notumor/2"]
    assert (healthy.label, healthy.presence, healthy.has_mask) == ("no_tumor", 0, True)
    assert healthy.extra["subset"] == "Testing"
    assert len({r.patient_id for r in records}) == 16


def test_subset_option(four_class_root: Path) -> None:
    records = ClassFoldersAdapter(four_class_root, subset="testing").records()
    assert len(records) == 8 and {r.extra["subset"] for r in records} == {"Testing"}
    assert len(ClassFoldersAdapter(four_class_root, subset=["Training", "Testing"]).records()) == 16
    with pytest.raises(DataError, match="'Validation' not found; subsets here: Testing, Training"):
        ClassFoldersAdapter(four_class_root, subset="Validation").records()


def test_load(four_class_root: Path) -> None:
    adapter = ClassFoldersAdapter(four_class_root, subset="Training")
    records = {r.case_id: r for r in adapter.records()}
    healthy = adapter.load(records["Training/notumor/1"])
    assert healthy["image"].shape == (24, 32) and healthy["image"].dtype == np.uint8
    assert healthy["mask"] is not None and not healthy["mask"].any()
    assert healthy["presence"] == 0 and healthy["label"] == "no_tumor"
    assert healthy["meta"]["subset"] == "Training"
    tumor = adapter.load(records["Training/pituitary/2"])
    assert tumor["mask"] is None and tumor["label"] == "pituitary" and tumor["presence"] == 1


def test_yes_no_layout_and_old_kaggle_names(tmp_path: Path) -> None:
    write_image(tmp_path / "yes" / "Y1.jpg")
    write_image(tmp_path / "no" / "1 no.jpeg", mode="L")
    write_image(tmp_path / "glioma_tumor" / "g.png")
    write_image(tmp_path / "Meningioma Tumor" / "m.bmp")
    records = {r.case_id: r for r in ClassFoldersAdapter(tmp_path).records()}
    assert (records["yes/Y1"].label, records["yes/Y1"].presence) == (None, 1)
    assert (records["no/1 no"].label, records["no/1 no"].presence) == ("no_tumor", 0)
    assert records["glioma_tumor/g"].label == "glioma"
    assert records["Meningioma Tumor/m"].label == "meningioma"
    assert records["yes/Y1"].extra["subset"] is None


def test_label_map_option_and_unknown_folder(tmp_path: Path) -> None:
    write_image(tmp_path / "glioma" / "1.jpg")
    write_image(tmp_path / "schwannoma" / "1.jpg")
    write_image(tmp_path / "control" / "1.jpg")
    with pytest.raises(DataError, match=r"control: class folder 'control' is not in label_map"):
        ClassFoldersAdapter(tmp_path).records()
    skipping = ClassFoldersAdapter(tmp_path, on_error="skip")
    assert len(skipping.records()) == 1 and len(skipping.skipped) == 2
    mapped = ClassFoldersAdapter(
        tmp_path, label_map={"Schwannoma": "schwannoma", "control": "no_tumor"}
    ).records()
    labels = {r.case_id: (r.label, r.presence) for r in mapped}
    assert labels == {
        "control/1": ("no_tumor", 0),
        "glioma/1": ("glioma", 1),
        "schwannoma/1": ("schwannoma", 1),
    }


def test_hidden_and_non_image_files_ignored(tmp_path: Path) -> None:
    write_image(tmp_path / "glioma" / "1.jpg")
    (tmp_path / "glioma" / "notes.txt").write_text("x")
    (tmp_path / "glioma" / ".DS_Store").write_bytes(b"\0")
    write_image(tmp_path / "__MACOSX" / "glioma" / "1.jpg")
    assert [r.case_id for r in ClassFoldersAdapter(tmp_path).records()] == ["glioma/1"]


def test_unreadable_image(tmp_path: Path) -> None:
    write_image(tmp_path / "glioma" / "1.jpg")
    (tmp_path / "glioma" / "2.jpg").write_bytes(b"garbage bytes, not an image")
    adapter = ClassFoldersAdapter(tmp_path, on_error="skip")
    bad = next(r for r in adapter.records() if r.case_id == "glioma/2")
    for _ in range(2):  # e.g. once per epoch: counted once
        with pytest.raises(DataError, match=r"glioma/2\.jpg: cannot read image"):
            adapter.load(bad)
    assert len(adapter.skipped) == 1


def test_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no usable items"):
        ClassFoldersAdapter(tmp_path).records()
    (tmp_path / "Training" / "glioma").mkdir(parents=True)
    with pytest.raises(DataError, match=str(tmp_path)):
        ClassFoldersAdapter(tmp_path).records()


def test_read_gray_image_modes(tmp_path: Path) -> None:
    rgba = Image.new("RGBA", (4, 3), (200, 100, 50, 0))
    rgba.save(tmp_path / "a.png")
    assert read_gray_image(tmp_path / "a.png").tolist() == [[0] * 4] * 3  # transparent -> black
    Image.new("RGB", (5, 2), (255, 255, 255)).save(tmp_path / "png_named.jpg", format="PNG")
    gray = read_gray_image(tmp_path / "png_named.jpg")
    assert gray.shape == (2, 5) and gray.dtype == np.uint8 and (gray == 255).all()


def test_real_br35h_as_yes_no_folders(shared_data: Path) -> None:
    root = shared_data / "br35h"
    if not root.is_dir():
        pytest.skip(f"real Br35H data not available at {root}")
    records = ClassFoldersAdapter(root).records()
    assert sum(r.presence == 1 for r in records) == 500
    assert sum(r.label == "no_tumor" for r in records) == 1275
