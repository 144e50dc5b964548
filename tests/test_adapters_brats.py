"""BraTS adapter on tiny NIfTI volumes in the 2019, 2020, 2021 and 2023 layouts."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mtl.data.adapters import DataError, get_adapter
from mtl.data.adapters import brats as brats_module
from mtl.data.adapters.brats import BratsAdapter, canonical_modality, modality_of

SHAPE = (32, 32, 8)
# 1 x 1 x 2 mm voxels, flipped and shifted: a non-trivial affine
AFFINE = np.array([[-1.0, 0, 0, 15], [0, -1.0, 0, 20], [0, 0, 2.0, -7], [0, 0, 0, 1]])
# value of each modality inside the brain, to check channel order
VALUES = {"t1n": 1, "t1c": 2, "t2w": 3, "t2f": 4}
TUMOR_SLICES = (3, 4)
BRAIN_SLICES = range(1, 7)  # slices 0 and 7 are empty background
NAMES_2020 = {"t1n": "t1", "t1c": "t1ce", "t2w": "t2", "t2f": "flair", "seg": "seg"}
NAMES_2023 = {"t1n": "t1n", "t1c": "t1c", "t2w": "t2w", "t2f": "t2f", "seg": "seg"}


def _volume(modality: str, shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    data = np.zeros(shape, np.int16)
    if modality == "seg":
        for k in TUMOR_SLICES:
            data[10:14, 12:18, k] = 2
        data[11, 13, TUMOR_SLICES[0]] = 4
    else:
        data[8:24, 8:24, BRAIN_SLICES.start : BRAIN_SLICES.stop] = VALUES[modality]
    return data


def _subject(
    folder: Path,
    names: dict[str, str],
    *,
    sep: str = "_",
    ext: str = ".nii.gz",
    skip: tuple[str, ...] = (),
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for modality, token in names.items():
        if modality in skip:
            continue
        image = nib.Nifti1Image(_volume(modality), AFFINE)
        nib.save(image, folder / f"{folder.name}{sep}{token}{ext}")
    return folder


@pytest.fixture(autouse=True)
def _clear_cache() -> None:
    brats_module._SLICE_CACHE.clear()


def test_modality_names() -> None:
    assert canonical_modality("FLAIR") == "t2f" and canonical_modality("t1ce") == "t1c"
    assert canonical_modality("t1") == "t1n" and canonical_modality("T2") == "t2w"
    assert modality_of("BraTS20_Training_001_t1ce.nii") == "t1c"
    assert modality_of("BraTS-GLI-00000-000-t2f.nii.gz") == "t2f"
    assert modality_of("W39_1998.09.19_Segm.nii") == "seg"
    assert modality_of("notes.txt") is None
    with pytest.raises(ValueError):
        canonical_modality("dwi")


def test_2023_names_aliases_and_stacking(tmp_path: Path) -> None:
    _subject(tmp_path / "BraTS-GLI-00000-000", NAMES_2023, sep="-")
    adapter = get_adapter("brats", tmp_path, modalities=["flair", "t1ce", "t1"])
    assert isinstance(adapter, BratsAdapter)
    records = adapter.records()
    assert [r.extra["slice"] for r in records] == list(BRAIN_SLICES)
    sample = adapter.load(records[2])  # slice 3, tumor
    assert sample["image"].shape == (32, 32, 3)
    assert sample["image"][16, 16].tolist() == [VALUES["t2f"], VALUES["t1c"], VALUES["t1n"]]
    assert sample["meta"]["modalities"] == ["t2f", "t1c", "t1n"]
    assert sample["meta"]["patient_id"] == "BraTS-GLI-00000-000"


def test_presence_labels_and_masks_per_slice(tmp_path: Path) -> None:
    _subject(tmp_path / "BraTS2021_00000", NAMES_2020)
    adapter = BratsAdapter(tmp_path)
    for record in adapter.records():
        tumor = record.extra["slice"] in TUMOR_SLICES
        assert record.presence == int(tumor)
        assert record.label == (None if tumor else "no_tumor")  # 2021 publishes no grade
        sample = adapter.load(record)
        assert sample["image"].shape == (32, 32, 1)
        assert sample["mask"] is not None
        assert sample["mask"].sum() == (4 * 6 if tumor else 0)
        assert sample["presence"] == record.presence


def test_meta_spacing_affine_shape(tmp_path: Path) -> None:
    _subject(tmp_path / "BraTS2021_00001", NAMES_2020)
    axial = BratsAdapter(tmp_path)
    sample = axial.load(axial.records()[0])
    meta = sample["meta"]
    assert meta["spacing"] == (1.0, 1.0)
    assert meta["affine"] == AFFINE.tolist()
    assert meta["shape"] == list(SHAPE)
    assert meta["axis"] == 2 and meta["subject"] == "BraTS2021_00001"
    assert meta["dataset"] == "brats" and meta["source"].endswith("_flair.nii.gz")
    sagittal = BratsAdapter(tmp_path, axis=0, min_brain_fraction=0, upright=False)
    records = sagittal.records()
    assert len(records) == SHAPE[0]
    sample = sagittal.load(records[11])  # x = 11 crosses the tumor
    assert sample["image"].shape == (32, 8, 1)
    assert sample["meta"]["spacing"] == (1.0, 2.0)
    assert sample["mask"] is not None
    expected = [[y, k] for y in range(12, 18) for k in TUMOR_SLICES]
    assert np.argwhere(sample["mask"]).tolist() == expected
    assert sample["label"] is None and not sagittal.load(records[16])["presence"]


def test_slices_are_turned_upright_as_infer_turns_them(tmp_path: Path) -> None:
    """A sagittal slice of an L-P-S array: superior up (rows = z reversed), anterior on the
    left (columns = y, which grows towards posterior) -- the orientation of the training pictures."""
    _subject(tmp_path / "BraTS2021_00001", NAMES_2020)
    sagittal = BratsAdapter(tmp_path, axis=0, min_brain_fraction=0)
    sample = sagittal.load(sagittal.records()[11])
    assert sample["image"].shape == (8, 32, 1)
    assert sample["meta"]["spacing"] == (2.0, 1.0)
    assert sample["meta"]["upright"] == {"transpose": True, "flip_rows": True, "flip_cols": False}
    expected = sorted([SHAPE[2] - 1 - k, y] for y in range(12, 18) for k in TUMOR_SLICES)
    assert np.argwhere(sample["mask"]).tolist() == expected
    # the same turn as `mtl infer` gives the network for this file
    from mtl.infer.readers import InputItem, load_case

    path = Path(sample["meta"]["source"])
    case = load_case(InputItem("x", "nifti", path, (path,)), axis=0)
    assert np.array_equal(case.slices[11], sample["image"][..., 0])


def test_hgg_lgg_folders(tmp_path: Path) -> None:
    _subject(tmp_path / "HGG" / "BraTS19_2013_2_1", NAMES_2020)
    _subject(tmp_path / "LGG" / "BraTS19_TCIA09_141_1", NAMES_2020)
    records = BratsAdapter(tmp_path, tumor_only=True).records()
    labels = {(r.patient_id, r.label) for r in records}
    assert labels == {("BraTS19_2013_2_1", "HGG"), ("BraTS19_TCIA09_141_1", "LGG")}
    assert all(r.presence == 1 for r in records) and len(records) == 4


def test_grade_from_name_mapping(tmp_path: Path) -> None:
    _subject(tmp_path / "BraTS20_Training_001", NAMES_2020, ext=".nii")
    _subject(tmp_path / "BraTS20_Training_002", NAMES_2020, ext=".nii")
    (tmp_path / "name_mapping.csv").write_text(
        "Grade,BraTS_2017_subject_ID,BraTS_2018_subject_ID,TCGA_TCIA_subject_ID,"
        "BraTS_2019_subject_ID,BraTS_2020_subject_ID\n"
        "HGG,Brats17_CBICA_AAB_1,Brats18_CBICA_AAB_1,NA,BraTS19_CBICA_AAB_1,BraTS20_Training_001\n"
        "LGG,Brats17_2013_0_1,Brats18_2013_0_1,NA,BraTS19_2013_0_1,BraTS20_Training_002\n"
    )
    (tmp_path / "survival_info.csv").write_text(
        "Brats20ID,Age,Survival_days,Extent_of_Resection\nBraTS20_Training_001,60.5,289,GTR\n"
    )
    records = BratsAdapter(tmp_path).records()
    grades = {r.patient_id: r.label for r in records if r.presence}
    assert grades == {"BraTS20_Training_001": "HGG", "BraTS20_Training_002": "LGG"}
    assert {r.label for r in records if not r.presence} == {"no_tumor"}


def test_slice_options(tmp_path: Path) -> None:
    _subject(tmp_path / "BraTS2021_00002", NAMES_2020)
    assert [r.extra["slice"] for r in BratsAdapter(tmp_path, slice_step=2).records()] == [2, 4, 6]
    tumor_only = BratsAdapter(tmp_path, include_empty=False).records()
    assert [r.extra["slice"] for r in tumor_only] == [3, 4]
    everything = BratsAdapter(tmp_path, min_brain_fraction=0).records()
    assert [r.extra["slice"] for r in everything] == list(range(SHAPE[2]))
    with pytest.raises(ValueError):
        BratsAdapter(tmp_path, include_empty=True, tumor_only=True)
    with pytest.raises(ValueError):
        BratsAdapter(tmp_path, modalities=["flair", "seg"])


def test_load_reads_slices_not_volumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _subject(tmp_path / "BraTS2021_00003", NAMES_2020)
    first = BratsAdapter(tmp_path).records()

    def _no_volumes(path: Path) -> np.ndarray:
        raise AssertionError(f"whole volume read: {path}")

    monkeypatch.setattr(brats_module, "_read_volume", _no_volumes)
    again = BratsAdapter(tmp_path)  # per-subject slice lists come from the cache
    assert [r.case_id for r in again.records()] == [r.case_id for r in first]
    assert again.load(again.records()[0])["image"].shape == (32, 32, 1)


def test_missing_modality(tmp_path: Path) -> None:
    _subject(tmp_path / "BraTS2021_00004", NAMES_2020)
    _subject(tmp_path / "BraTS2021_00005", NAMES_2020, skip=("t1c",))
    with pytest.raises(DataError, match=r"BraTS2021_00005.*missing t1c"):
        BratsAdapter(tmp_path, modalities=["flair", "t1ce"]).records()
    adapter = BratsAdapter(tmp_path, modalities=["flair", "t1ce"], on_error="skip")
    assert {r.patient_id for r in adapter.records()} == {"BraTS2021_00004"}
    assert len(adapter.skipped) == 1
    assert len(BratsAdapter(tmp_path, modalities=["flair"]).records()) == 2 * len(BRAIN_SLICES)


def test_missing_seg(tmp_path: Path) -> None:
    _subject(tmp_path / "BraTS2021_00006", NAMES_2020, skip=("seg",))
    with pytest.raises(DataError, match="missing seg"):
        BratsAdapter(tmp_path).records()


def test_corrupt_file(tmp_path: Path) -> None:
    folder = _subject(tmp_path / "BraTS2021_00007", NAMES_2020)
    (folder / "BraTS2021_00007_flair.nii.gz").write_bytes(b"\x1f\x8b broken")
    with pytest.raises(DataError, match="BraTS2021_00007_flair.nii.gz"):
        BratsAdapter(tmp_path).records()
    adapter = BratsAdapter(tmp_path, on_error="skip")
    with pytest.raises(DataError, match="no usable items"):
        adapter.records()
    assert len(adapter.skipped) == 1


def test_shape_mismatch(tmp_path: Path) -> None:
    folder = _subject(tmp_path / "BraTS2021_00008", NAMES_2020)
    small = nib.Nifti1Image(np.ones((16, 16, 8), np.int16), AFFINE)
    nib.save(small, folder / "BraTS2021_00008_t2.nii.gz")
    with pytest.raises(DataError, match="BraTS2021_00008_t2.nii.gz"):
        BratsAdapter(tmp_path, modalities=["flair", "t2"]).records()
    # a modality not asked for is never read
    assert BratsAdapter(tmp_path, modalities=["flair"]).records()


def test_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "BraTS2021_00009").mkdir()
    with pytest.raises(DataError, match="no usable items"):
        BratsAdapter(tmp_path).records()
    with pytest.raises(DataError, match="not found"):
        BratsAdapter(tmp_path / "absent").records()


def test_neighbouring_slices_as_channels(tmp_path: Path) -> None:
    """data.context_slices: each modality at offsets -1, 0, +1 along the slicing axis; the
    volume's end slice stands in beyond its end (slices 0 and 7 hold no brain)."""
    _subject(tmp_path / "BraTS2021_00001", NAMES_2020)
    adapter = BratsAdapter(tmp_path, min_brain_fraction=0)
    by_slice = {r.extra["slice"]: r for r in adapter.records()}
    values = [VALUES[m] for m in adapter.modalities]
    first = adapter.load_context(by_slice[1], 1)
    assert first["image"].shape == (32, 32, 3 * len(values))
    assert first["image"][16, 16].tolist() == [0] * len(values) + values + values
    assert np.array_equal(first["image"][..., len(values):2 * len(values)],
                          adapter.load(by_slice[1])["image"])
    assert np.array_equal(first["mask"], adapter.load(by_slice[1])["mask"])
    end = adapter.load_context(by_slice[7], 1)
    assert end["image"][16, 16].tolist() == values + [0] * (2 * len(values))
