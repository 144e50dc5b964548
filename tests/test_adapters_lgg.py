"""LGG (Kaggle lgg-mri-segmentation) adapter on tiny TIFF slices and a data.csv."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from mtl.data.adapters import DataError, get_adapter
from mtl.data.adapters.lgg import LggAdapter, parse_grade, patient_of

SIZE = 16
CSV = (
    "Patient,RNASeqCluster,MethylationCluster,histological_type,neoplasm_histologic_grade,gender\n"
    "TCGA_CS_4941,2,4,1,2,2\n"
    "TCGA_DU_5849,1,,1,1.0,1\n"
    "TCGA_HT_7692,,,1,,1\n"
)


def _write_slice(folder: Path, index: int, tumor: bool, mask_size: int = SIZE) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rgb = np.zeros((SIZE, SIZE, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 10, 20 + index, 30
    tifffile.imwrite(folder / f"{folder.name}_{index}.tif", rgb, photometric="rgb")
    mask = np.zeros((mask_size, mask_size), np.uint8)
    if tumor:
        mask[3:7, 4:9] = 255
    tifffile.imwrite(folder / f"{folder.name}_{index}_mask.tif", mask)


@pytest.fixture()
def lgg_root(tmp_path: Path) -> Path:
    data = tmp_path / "kaggle_3m"
    data.mkdir()
    (data / "data.csv").write_text(CSV)
    for case, tumor_slices in [
        ("TCGA_CS_4941_19960909", {2, 3}),  # grade 2 -> G3
        ("TCGA_DU_5849_19950405", {1}),  # grade 1.0 -> G2
        ("TCGA_HT_7692_19960724", {2}),  # no grade
    ]:
        for index in (1, 2, 3, 10):
            _write_slice(data / case, index, index in tumor_slices)
    return tmp_path


def test_helpers() -> None:
    assert patient_of("TCGA_CS_4941_19960909") == "TCGA_CS_4941"
    assert parse_grade("1") == "G2" and parse_grade("2.0") == "G3"
    assert parse_grade("") is None and parse_grade("NA") is None and parse_grade("3") is None


def test_records_presence_and_grade(lgg_root: Path) -> None:
    adapter = get_adapter("lgg", lgg_root)
    assert isinstance(adapter, LggAdapter)
    records = {r.case_id: r for r in adapter.records()}
    assert len(records) == 12
    tumor = records["TCGA_CS_4941_19960909_2"]
    assert (tumor.presence, tumor.label, tumor.patient_id) == (1, "G3", "TCGA_CS_4941")
    empty = records["TCGA_CS_4941_19960909_1"]
    assert (empty.presence, empty.label, empty.has_mask) == (0, "no_tumor", True)
    assert records["TCGA_DU_5849_19950405_1"].label == "G2"
    assert records["TCGA_HT_7692_19960724_2"].label is None  # grade missing in data.csv
    assert records["TCGA_HT_7692_19960724_2"].presence == 1
    # slices sort numerically, not as text (10 after 3)
    order = [r.extra["slice"] for r in adapter.records() if r.patient_id == "TCGA_CS_4941"]
    assert order == [1, 2, 3, 10]


def test_load_sample(lgg_root: Path) -> None:
    adapter = LggAdapter(lgg_root / "kaggle_3m")  # the data folder itself also works
    record = next(r for r in adapter.records() if r.case_id == "TCGA_CS_4941_19960909_3")
    sample = adapter.load(record)
    assert sample["image"].shape == (SIZE, SIZE, 3)
    assert sample["image"][0, 0].tolist() == [10, 23, 30]
    assert sample["mask"] is not None and sample["mask"].sum() == 4 * 5
    assert sample["mask"].max() == 1
    meta = sample["meta"]
    assert meta["slice"] == 3 and meta["grade"] == "G3" and meta["patient_id"] == "TCGA_CS_4941"
    assert meta["channels"] == ["pre-contrast", "flair", "post-contrast"]
    empty = adapter.load(next(r for r in adapter.records() if r.presence == 0))
    assert empty["mask"] is not None and empty["mask"].sum() == 0 and empty["label"] == "no_tumor"


def test_label_from_none(lgg_root: Path) -> None:
    records = LggAdapter(lgg_root, label_from="none").records()
    assert {r.label for r in records if r.presence == 1} == {None}
    assert {r.label for r in records if r.presence == 0} == {"no_tumor"}
    with pytest.raises(ValueError):
        LggAdapter(lgg_root, label_from="type")


def test_one_channel_tumor_free_every_second_slice(lgg_root: Path) -> None:
    """The options the reference model uses: post-contrast alone, tumor-free slices, step 2."""
    adapter = get_adapter(
        "lgg", lgg_root, channel="post-contrast", keep="tumor-free", slice_step=2)
    records = adapter.records()
    assert {r.presence for r in records} == {0}
    # tumor-free slices per patient: CS_4941 [1, 10], DU_5849 [2, 3, 10], HT_7692 [1, 3, 10]
    assert [r.case_id for r in records] == [
        "TCGA_CS_4941_19960909_1",
        "TCGA_DU_5849_19950405_2", "TCGA_DU_5849_19950405_10",
        "TCGA_HT_7692_19960724_1", "TCGA_HT_7692_19960724_10",
    ]
    sample = adapter.load(records[0])
    assert sample["image"].shape == (SIZE, SIZE) and int(sample["image"][0, 0]) == 30
    assert sample["meta"]["channels"] == ["post-contrast"]
    tumor = LggAdapter(lgg_root, keep="tumor").records()
    assert len(tumor) == 4 and {r.presence for r in tumor} == {1}
    for bad in ({"channel": "t2"}, {"keep": "some"}, {"slice_step": 0}, {"slice_step": 1.5}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            LggAdapter(lgg_root, **bad)


def test_without_csv_grades_are_none(lgg_root: Path) -> None:
    (lgg_root / "kaggle_3m" / "data.csv").unlink()
    records = LggAdapter(lgg_root).records()
    assert {r.label for r in records if r.presence == 1} == {None}


def test_mask_shape_mismatch(lgg_root: Path) -> None:
    folder = lgg_root / "kaggle_3m" / "TCGA_CS_4941_19960909"
    _write_slice(folder, 2, True, mask_size=SIZE * 2)
    with pytest.raises(DataError, match="TCGA_CS_4941_19960909_2_mask.tif"):
        LggAdapter(lgg_root).records()
    adapter = LggAdapter(lgg_root, on_error="skip")
    assert len(adapter.records()) == 11
    assert [Path(s).name for s, _ in adapter.skipped] == ["TCGA_CS_4941_19960909_2_mask.tif"]


def test_corrupt_and_missing_files(lgg_root: Path) -> None:
    folder = lgg_root / "kaggle_3m" / "TCGA_DU_5849_19950405"
    (folder / "TCGA_DU_5849_19950405_3_mask.tif").write_bytes(b"garbage")
    (folder / "TCGA_DU_5849_19950405_10_mask.tif").unlink()
    (folder / "TCGA_DU_5849_19950405_1.tif").write_bytes(b"")
    with pytest.raises(DataError, match="TCGA_DU_5849_19950405_10.tif"):
        LggAdapter(lgg_root).records()
    adapter = LggAdapter(lgg_root, on_error="skip")
    assert len(adapter.records()) == 9
    assert sorted(Path(s).name for s, _ in adapter.skipped) == [
        "TCGA_DU_5849_19950405_1.tif",
        "TCGA_DU_5849_19950405_10.tif",
        "TCGA_DU_5849_19950405_3_mask.tif",
    ]


def test_empty_folder(tmp_path: Path, lgg_root: Path) -> None:
    empty = tmp_path / "empty" / "kaggle_3m" / "TCGA_CS_4941_19960909"
    empty.mkdir(parents=True)
    with pytest.raises(DataError, match="mask"):
        LggAdapter(tmp_path / "empty").records()
    (lgg_root / "kaggle_3m" / "TCGA_EZ_7264_20010816").mkdir()
    with pytest.raises(DataError, match="TCGA_EZ_7264_20010816"):
        LggAdapter(lgg_root).records()
    adapter = LggAdapter(lgg_root, on_error="skip")
    assert len(adapter.records()) == 12 and len(adapter.skipped) == 1
