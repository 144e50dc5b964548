"""NRRD (3D Slicer's format): volumes read with their geometry, masks written back in it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from mtl.infer.command import infer
from mtl.infer.predict import Predictor
from mtl.infer.readers import InputError, InputItem, discover, load_case
from test_infer_support import (  # noqa: F401 - tiny_model_path is a fixture
    TUMOR,
    fake_forward,
    head_volume,
    tiny_model_path,
)

nrrd = pytest.importorskip("nrrd")

#: LPS space: tilted 10 degrees about x, anisotropic 0.9 x 1.1 x 2.5 mm, shifted origin
_T = np.deg2rad(10)
DIRECTIONS = (np.array([[1, 0, 0], [0, np.cos(_T), np.sin(_T)], [0, -np.sin(_T), np.cos(_T)]])
              * np.array([0.9, 1.1, 2.5])[:, None])
ORIGIN = np.array([-31.5, 40.2, 12.0])


@pytest.fixture
def perfect_network(monkeypatch):
    monkeypatch.setattr(Predictor, "_model_forward", lambda self, x: fake_forward(x))


def _volume():
    vol = head_volume((48, 64, 8))
    vol[30:38, 20:30, 2:5] = TUMOR
    truth = np.zeros(vol.shape, np.uint8)
    truth[30:38, 20:30, 2:5] = 1
    return vol.astype(np.int16), truth


def _write(path, data, **fields):
    header = {"space": "left-posterior-superior", "space directions": DIRECTIONS,
              "space origin": ORIGIN, "kinds": ["domain"] * 3, "encoding": "gzip", **fields}
    nrrd.write(str(path), data, header, index_order="F")
    return path


def test_nrrd_geometry_becomes_a_ras_affine(tmp_path):
    data, _ = _volume()
    path = _write(tmp_path / "v.nrrd", data)
    items, failures = discover([tmp_path])
    assert not failures and [(i.name, i.kind) for i in items] == [("v", "nrrd")]
    case = load_case(items[0], upright=False)
    assert case.kind == "nrrd" and case.is_volume and case.orientation_known
    # LPS -> RAS: x and y negated; columns of the affine are the space directions
    expected = np.eye(4)
    expected[:3, :3] = np.diag([-1.0, -1.0, 1.0]) @ DIRECTIONS.T
    expected[:3, 3] = [31.5, -40.2, 12.0]
    assert np.allclose(case.affine, expected)
    assert case.slice_axis == 2 and case.slices.shape == (8, 48, 64)
    assert case.spacing == pytest.approx((0.9, 1.1))
    assert np.array_equal(case.to_native(case.slices), data)
    assert path.is_file()


@pytest.mark.parametrize("suffix", [".nrrd", ".nhdr"])
def test_infer_writes_a_nrrd_mask_with_the_input_geometry(tiny_model_path, tmp_path,
                                                          perfect_network, suffix):
    data, truth = _volume()
    source = _write(tmp_path / f"brain{suffix}", data)
    if suffix == ".nhdr":  # detached header: the data file lies beside it
        assert (tmp_path / "brain.raw.gz").is_file()
    out = tmp_path / "out"
    result = CliRunner().invoke(infer, [str(tiny_model_path), str(source), "--out", str(out),
                                        "--no-progress"])
    assert result.exit_code == 0, result.output
    mask, header = nrrd.read(str(out / "brain" / "mask.nrrd"), index_order="F")
    _, src = nrrd.read_header(str(source)), nrrd.read_header(str(source))
    assert header["space"] == src["space"] == "left-posterior-superior"
    assert np.allclose(header["space directions"], src["space directions"])
    assert np.allclose(header["space origin"], src["space origin"])
    assert list(header["sizes"]) == list(src["sizes"]) == [48, 64, 8]
    assert header["kinds"] == src["kinds"] and header["type"] == "uint8"
    assert "data file" not in header  # the mask holds its own data
    assert np.array_equal(mask, truth)
    record = json.loads((out / "brain" / "findings.json").read_text())
    assert record["kind"] == "nrrd" and record["outputs"][0] == "mask.nrrd"
    t = record["findings"]["tumor"]
    assert t["pixels"] == truth.sum() and t["slices"] == [2, 3, 4]
    assert t["volume_ml"] == pytest.approx(truth.sum() * 0.9 * 1.1 * 2.5 / 1000)
    # the array's i axis runs to the patient's left (LPS +x): i = 30..37 > midline = left
    assert t["hemisphere"]["side"] == "left"


def test_nrrd_also_as_nifti_and_nifti_as_nrrd(tiny_model_path, tmp_path, perfect_network):
    import nibabel as nib

    data, truth = _volume()
    source = _write(tmp_path / "brain.nrrd", data)
    out = tmp_path / "out"
    result = CliRunner().invoke(infer, [str(tiny_model_path), str(source), "--out", str(out),
                                        "--format", "nrrd,nifti", "--no-progress"])
    assert result.exit_code == 0, result.output
    nifti = nib.load(out / "brain" / "mask.nii.gz")
    case = load_case(InputItem("b", "nrrd", source, (source,)))
    assert np.allclose(nifti.affine, case.affine)
    assert np.array_equal(np.asarray(nifti.dataobj), truth)
    # and back: the NIfTI mask written as NRRD keeps the geometry (in LPS)
    from mtl.infer.writers import write_mask_nrrd_affine

    write_mask_nrrd_affine(tmp_path / "again.nrrd", truth, nifti.affine)
    mask, header = nrrd.read(str(tmp_path / "again.nrrd"), index_order="F")
    assert np.allclose(header["space directions"], DIRECTIONS)
    assert np.allclose(header["space origin"], ORIGIN) and np.array_equal(mask, truth)


def test_nrrd_with_a_singleton_list_axis_and_a_2d_nrrd(tmp_path):
    data, _ = _volume()
    directions = np.vstack([np.full((1, 3), np.nan), DIRECTIONS])
    path = tmp_path / "listed.nrrd"
    nrrd.write(str(path), data[None], {"space": "LPS", "space directions": directions,
                                       "space origin": ORIGIN,
                                       "kinds": ["list", "domain", "domain", "domain"]},
               index_order="F")
    case = load_case(InputItem("l", "nrrd", path, (path,)))
    assert case.native_shape == (48, 64, 8) and any("dropped" in w for w in case.warnings)
    assert len(case.nrrd["space directions"]) == 3 and case.nrrd["kinds"] == ["domain"] * 3
    flat = tmp_path / "flat.nrrd"
    nrrd.write(str(flat), data[:, :, 3], {"space": "right-anterior-superior",
                                          "space directions": DIRECTIONS[:2],
                                          "space origin": ORIGIN}, index_order="F")
    case = load_case(InputItem("f", "nrrd", flat, (flat,)), upright=False)
    assert case.slices.shape == (1, 48, 64) and case.to_native(case.slices).shape == (48, 64)
    assert np.allclose(case.affine[:3, :2], DIRECTIONS[:2].T)  # RAS: no sign change


def test_nrrd_without_anatomical_space_is_read_with_a_warning(tmp_path):
    data, _ = _volume()
    path = tmp_path / "plain.nrrd"
    nrrd.write(str(path), data, {"spacings": [0.5, 0.5, 2.0]}, index_order="F")
    case = load_case(InputItem("p", "nrrd", path, (path,)))
    assert not case.orientation_known and case.spacing == (0.5, 0.5)
    assert any("not an anatomical" in w for w in case.warnings)


def test_corrupt_nrrd_inputs_give_one_line_naming_the_file(tiny_model_path, tmp_path,
                                                           perfect_network):
    data, _ = _volume()
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "garbage.nrrd").write_bytes(b"not a nrrd at all\n" * 20)
    good = _write(tmp_path / "good.nrrd", data).read_bytes()
    (bad / "truncated.nrrd").write_bytes(good[: len(good) // 2])
    _write(bad / "lost.nhdr", data)
    (bad / "lost.raw.gz").unlink()  # detached data file missing
    nrrd.write(str(bad / "rgb.nrrd"), np.zeros((3, 16, 16, 4), np.uint8),
               {"kinds": ["RGB-color", "domain", "domain", "domain"]}, index_order="F")
    _write(bad / "constant.nrrd", np.zeros((16, 16, 4), np.int16))
    for path in sorted(bad.glob("*.n*")):
        with pytest.raises(InputError) as err:
            load_case(InputItem(path.stem, "nrrd", path, (path,)))
        message = str(err.value)
        assert message.startswith(str(path)) and "\n" not in message, message
    out = tmp_path / "out"
    result = CliRunner().invoke(infer, [str(tiny_model_path), str(bad), "--out", str(out),
                                        "--no-progress"])
    assert result.exit_code == 1
    assert "5 of 5 input(s) failed" in result.output
    assert "Traceback" not in result.output
    for name in ("garbage.nrrd", "truncated.nrrd", "lost.nhdr", "rgb.nrrd", "constant.nrrd"):
        line = next(ln for ln in result.output.splitlines() if str(bad / name) in ln)
        assert line.strip().startswith(str(bad / name))
