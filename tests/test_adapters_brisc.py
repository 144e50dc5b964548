"""BRISC 2025 adapter on a tiny copy of the on-disk layout (JPEG slices, PNG masks)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mtl.data.adapters import DataError, get_adapter
from mtl.data.adapters.brisc import BriscAdapter, parse_name

SIZE = 24
CLASS_FOLDER = {"gl": "glioma", "me": "meningioma", "pi": "pituitary", "no": "no_tumor"}


def _jpeg(path: Path, value: int = 90, size: int = SIZE) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.full((size, size), value, np.uint8)
    Image.fromarray(pixels).convert("RGB").save(path, quality=95)


def _mask_png(path: Path, size: int = SIZE) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    mask = np.zeros((size, size), np.uint8)
    mask[4:10, 5:12] = 255
    Image.fromarray(mask).save(path)


def _add(base: Path, split: str, index: int, code: str, plane: str = "ax") -> str:
    """Write one slice like the release does; tumor slices go to both tasks."""
    stem = f"brisc2025_{split}_{index:05d}_{code}_{plane}_t1"
    _jpeg(base / "classification_task" / split / CLASS_FOLDER[code] / f"{stem}.jpg")
    if code != "no":
        _jpeg(base / "segmentation_task" / split / "images" / f"{stem}.jpg")
        _mask_png(base / "segmentation_task" / split / "masks" / f"{stem}.png")
    return stem


@pytest.fixture()
def brisc_root(tmp_path: Path) -> Path:
    base = tmp_path / "brisc2025" / "brisc2025"  # nested like the Kaggle download
    _add(base, "train", 1, "gl", "ax")
    _add(base, "train", 2, "me", "co")
    _add(base, "train", 3, "no", "sa")
    _add(base, "test", 1, "pi", "ax")
    _add(base, "test", 2, "no", "ax")
    return tmp_path


def test_parse_name() -> None:
    parsed = parse_name("brisc2025_test_00010_gl_ax_t1")
    assert parsed is not None
    assert (parsed.subset, parsed.index, parsed.label) == ("test", 10, "glioma")
    assert parsed.plane == "axial" and parsed.sequence == "t1"
    for code in ("nt", "no"):  # the README says nt, the released files use no
        healthy = parse_name(f"brisc2025_train_00002_{code}_sa_t1")
        assert healthy is not None and healthy.label == "no_tumor"
    assert parse_name("brisc2025_train_00001_xx_ax_t1") is None
    assert parse_name("Tr-gl_0010") is None


def test_records_dedupe_and_labels(brisc_root: Path) -> None:
    adapter = get_adapter("brisc", brisc_root)
    assert isinstance(adapter, BriscAdapter)
    records = {r.case_id: r for r in adapter.records()}
    assert len(records) == 5  # tumor slices appear in both tasks but count once
    glioma = records["brisc2025_train_00001_gl_ax_t1"]
    assert (glioma.presence, glioma.label, glioma.has_mask) == (1, "glioma", True)
    assert glioma.extra["task"] == "segmentation"
    assert glioma.patient_id == glioma.case_id
    healthy = records["brisc2025_train_00003_no_sa_t1"]
    assert (healthy.presence, healthy.label, healthy.has_mask) == (0, "no_tumor", True)


def test_load_tumor_and_no_tumor(brisc_root: Path) -> None:
    adapter = BriscAdapter(brisc_root)
    records = {r.case_id: r for r in adapter.records()}
    sample = adapter.load(records["brisc2025_train_00002_me_co_t1"])
    assert sample["image"].shape == (SIZE, SIZE)
    assert sample["label"] == "meningioma" and sample["presence"] == 1
    assert sample["mask"] is not None and sample["mask"].sum() == 6 * 7
    assert sample["meta"]["plane"] == "coronal" and sample["meta"]["subset"] == "train"
    assert sample["meta"]["dataset"] == "brisc"
    empty = adapter.load(records["brisc2025_test_00002_no_ax_t1"])
    assert empty["mask"] is not None and empty["mask"].sum() == 0
    assert (empty["presence"], empty["label"]) == (0, "no_tumor")


def test_mask_values_zero_one(tmp_path: Path) -> None:
    base = tmp_path / "brisc2025"
    stem = _add(base, "train", 7, "pi")
    Image.fromarray(np.eye(SIZE, dtype=np.uint8)).save(
        base / "segmentation_task" / "train" / "masks" / f"{stem}.png"
    )
    adapter = BriscAdapter(tmp_path)
    assert adapter.load(adapter.records()[0])["mask"].sum() == SIZE  # type: ignore[union-attr]


def test_subset_option(brisc_root: Path) -> None:
    test = BriscAdapter(brisc_root, subset="test").records()
    assert {r.case_id for r in test} == {
        "brisc2025_test_00001_pi_ax_t1",
        "brisc2025_test_00002_no_ax_t1",
    }
    with pytest.raises(ValueError):
        BriscAdapter(brisc_root, subset="val")


def test_classification_only_tumor_has_no_mask(tmp_path: Path) -> None:
    stem = "brisc2025_train_00009_gl_ax_t1"
    _jpeg(tmp_path / "classification_task" / "glioma" / f"{stem}.jpg")  # flat, early layout
    adapter = BriscAdapter(tmp_path)
    (record,) = adapter.records()
    assert (record.presence, record.label, record.has_mask) == (1, "glioma", False)
    assert adapter.load(record)["mask"] is None


def test_missing_mask_raises_or_skips(brisc_root: Path) -> None:
    base = brisc_root / "brisc2025" / "brisc2025"
    (base / "segmentation_task" / "train" / "masks" / "brisc2025_train_00001_gl_ax_t1.png").unlink()
    with pytest.raises(DataError, match="brisc2025_train_00001_gl_ax_t1.jpg"):
        BriscAdapter(brisc_root).records()
    adapter = BriscAdapter(brisc_root, on_error="skip")
    records = {r.case_id: r for r in adapter.records()}
    assert len(adapter.skipped) == 1
    # the classification copy remains, labelled but without a mask
    assert records["brisc2025_train_00001_gl_ax_t1"].has_mask is False


def test_mask_size_mismatch(brisc_root: Path) -> None:
    base = brisc_root / "brisc2025" / "brisc2025"
    bad = base / "segmentation_task" / "test" / "masks" / "brisc2025_test_00001_pi_ax_t1.png"
    _mask_png(bad, size=SIZE + 8)
    with pytest.raises(DataError, match="brisc2025_test_00001_pi_ax_t1.png"):
        BriscAdapter(brisc_root).records()
    adapter = BriscAdapter(brisc_root, on_error="skip", subset="test")
    adapter.records()
    assert [Path(s).name for s, _ in adapter.skipped] == ["brisc2025_test_00001_pi_ax_t1.png"]


def test_corrupt_image(brisc_root: Path) -> None:
    base = brisc_root / "brisc2025" / "brisc2025"
    bad = base / "segmentation_task" / "train" / "images" / "brisc2025_train_00002_me_co_t1.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="brisc2025_train_00002_me_co_t1"):
        BriscAdapter(brisc_root).records()
    adapter = BriscAdapter(brisc_root, on_error="skip")
    adapter.records()
    assert len(adapter.skipped) == 1


def test_folder_and_name_disagree(tmp_path: Path) -> None:
    folder = tmp_path / "classification_task" / "train" / "pituitary"
    _jpeg(folder / "brisc2025_train_00004_gl_ax_t1.jpg")
    with pytest.raises(DataError, match="brisc2025_train_00004_gl_ax_t1.jpg"):
        BriscAdapter(tmp_path).records()


def test_empty_or_wrong_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError):
        BriscAdapter(tmp_path).records()
    (tmp_path / "segmentation_task" / "train" / "images").mkdir(parents=True)
    with pytest.raises(DataError, match="no usable items"):
        BriscAdapter(tmp_path).records()


def test_real_brisc_train_split(shared_data) -> None:
    """BRISC 2025's train split as prepared in ../shared/data: 3,900 slices, 2,853 masks."""
    root = shared_data / "brisc2025"
    if not root.is_dir():
        pytest.skip(f"real BRISC data not available at {root}")
    adapter = get_adapter("brisc", root, subset="train")
    records = adapter.records()
    labels = {lab: sum(r.label == lab for r in records)
              for lab in ("glioma", "meningioma", "pituitary", "no_tumor")}
    assert labels == {"glioma": 952, "meningioma": 943, "pituitary": 958, "no_tumor": 1047}
    assert sum(r.has_mask and r.presence == 1 for r in records) == 2853
    assert adapter.skipped == []
    tumor = next(r for r in records if r.presence == 1)
    sample = adapter.load(tumor)
    assert sample["mask"].shape == sample["image"].shape[:2] and sample["mask"].any()
    planes = {r.extra.get("plane") for r in records if r.presence == 0}
    assert planes == {"axial", "coronal", "sagittal"}  # tumor-free slices in all three planes
