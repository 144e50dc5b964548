"""DICOM case identity (names, grouping errors) and SEGs that validate when their source does not."""

from __future__ import annotations

import json
import shutil
import subprocess
import warnings

import numpy as np
import pytest
from click.testing import CliRunner

from mtl.infer.command import infer
from mtl.infer.predict import Predictor
from mtl.infer.readers import InputError, discover, load_case
from mtl.infer.writers import dicom_segmentation, write_dicom_seg
from test_infer_support import (  # noqa: F401 - tiny_model_path is a fixture
    fake_forward,
    make_dicom_series,
    tiny_model_path,
)


def _one_file_series(folder, name):
    """A one-image series of its own (own SeriesInstanceUID) saved as ``folder/name``."""
    path = make_dicom_series(folder / f"_{name}", n=1)[0]
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / name
    path.rename(target)
    (folder / f"_{name}").rmdir()
    return target


def test_a_single_dicom_file_is_named_after_the_file_not_its_folder(tmp_path):
    a = _one_file_series(tmp_path / "single", "knee_a.dcm")
    b = _one_file_series(tmp_path / "single", "1.2.840.99")  # no suffix: the whole name
    items, failures = discover([a, b])
    assert not failures and [i.name for i in items] == ["knee_a", "1.2.840.99"]
    # found by walking the folder (two one-file series there): named the same way
    items, _ = discover([tmp_path / "single"])
    assert sorted(i.name for i in items) == ["1.2.840.99", "knee_a"]
    # a real series keeps its folder's name
    make_dicom_series(tmp_path / "series", n=3)
    items, _ = discover([tmp_path / "series"])
    assert [i.name for i in items] == ["series"]


def test_same_position_error_names_the_files_and_the_folders(tmp_path):
    root = tmp_path / "root"
    paths = make_dicom_series(root / "a", n=3)
    shutil.copytree(root / "a", root / "b")  # the same series copied: same UID, same positions
    items, failures = discover([root])
    assert not failures and len(items) == 1 and len(items[0].paths) == 6
    with pytest.raises(InputError) as err:
        load_case(items[0])
    message = str(err.value)
    assert "\n" not in message and "same position" in message
    for path in paths:  # every duplicated file is named, with its twin
        assert str(path) in message and str(root / "b" / path.name) in message
    assert "2 folders" in message and "give each folder separately" in message
    # each folder given on its own: two good cases
    items, _ = discover([root / "a", root / "b"])
    assert [load_case(i).n_slices for i in items] == [3, 3]


def _source_with(folder, n=3, **values):
    import pydicom

    paths = make_dicom_series(folder, n=n)
    datasets = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the invalid values set here
        for path in paths:
            ds = pydicom.dcmread(path)
            for keyword, value in values.items():
                setattr(ds, keyword, value)
            ds.save_as(path)
            datasets.append(pydicom.dcmread(path))
    return paths, datasets


def test_seg_repairs_invalid_inherited_values_and_says_which(tmp_path):
    _, datasets = _source_with(tmp_path / "s", PatientAge="42", StudyDate="2024.01.31",
                               StudyTime="12:30:05", PatientBirthDate="19800231",
                               PatientSex="m", ReferringPhysicianName="Doe^" + "J" * 70)
    notes: list[str] = []
    mask = np.zeros((3, 48, 64), np.uint8)
    mask[1, 10:20, 40:52] = 1
    seg = dicom_segmentation(mask, datasets, notes=notes)
    assert seg.PatientAge == "042Y"  # AS needs three digits and a unit
    assert seg.StudyDate == "20240131" and seg.StudyTime == "123005"
    assert seg.PatientBirthDate == ""  # no 31 February: Type 2, so written empty
    assert seg.PatientSex == "M"
    assert str(seg.ReferringPhysicianName) == ("Doe^" + "J" * 70)[:64]  # PN: 64 per group
    text = "\n".join(notes)
    for name in ("Patient's Age", "Study Date", "Study Time", "Patient's Birth Date",
                 "Patient's Sex", "Referring Physician's Name"):
        assert name in text, text
    assert "'42'" in text and "'042Y'" in text
    assert datasets[0].PatientAge == "42"  # the source itself is left alone


def test_seg_leaves_out_an_unrepairable_optional_value(tmp_path):
    _, datasets = _source_with(tmp_path / "s", PatientAge="forty-two")
    notes: list[str] = []
    seg = dicom_segmentation(np.zeros((3, 48, 64), np.uint8), datasets, notes=notes)
    assert "PatientAge" not in seg
    assert any("Patient's Age" in n and "left out" in n for n in notes)


def test_valid_sources_give_no_notes(tmp_path):
    _, datasets = _source_with(tmp_path / "s", PatientAge="042Y")
    notes: list[str] = []
    seg = dicom_segmentation(np.zeros((3, 48, 64), np.uint8), datasets, notes=notes)
    assert notes == [] and seg.PatientAge == "042Y"


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) not installed")
def test_seg_of_an_invalid_source_passes_dciodvfy(tmp_path):
    _, datasets = _source_with(tmp_path / "s", PatientAge="42", StudyDate="2024.01.31")
    write_dicom_seg(tmp_path / "seg.dcm", np.zeros((3, 48, 64), np.uint8), datasets)
    report = subprocess.run(["dciodvfy", str(tmp_path / "seg.dcm")], capture_output=True,
                            text=True).stderr
    assert "Error" not in report, report


def test_infer_says_which_seg_attribute_it_repaired(tiny_model_path, tmp_path, monkeypatch):
    monkeypatch.setattr(Predictor, "_model_forward", lambda self, x: fake_forward(x))
    _source_with(tmp_path / "series", PatientAge="42")
    out = tmp_path / "out"
    result = CliRunner().invoke(infer, [str(tiny_model_path), str(tmp_path / "series"),
                                        "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "warning: series: DICOM SEG: the source's Patient's Age '42'" in result.output
    record = json.loads((out / "series" / "findings.json").read_text())
    assert any("Patient's Age" in w and "042Y" in w for w in record["warnings"])
    import pydicom

    assert pydicom.dcmread(out / "series" / "seg.dcm").PatientAge == "042Y"
