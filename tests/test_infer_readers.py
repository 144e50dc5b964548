"""mtl.infer.readers: inputs -> cases, geometry, and a clear error for every bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mtl.infer.readers import (
    InputError,
    InputItem,
    axis_from_option,
    discover,
    load_case,
)
from test_infer_support import (
    TUMOR,
    head_volume,
    make_dicom_series,
    oblique_las_affine,
    save_nifti,
    save_png,
    tumor_image,
    write_bad_inputs,
)


def _item(path: Path, kind: str) -> InputItem:
    return InputItem(path.name, kind, path, (path,))


def test_discover_expands_folders_names_cases_uniquely_and_reports_bad_paths(tmp_path):
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    save_png(root / "a.png", tumor_image(48, 64, (5, 9, 5, 9)))
    save_png(root / "sub" / "a.png", tumor_image(48, 64, (5, 9, 5, 9)))
    save_nifti(root / "vol.nii.gz", head_volume((16, 16, 4)), np.eye(4))
    (root / "notes.txt").write_text("ignored")
    (root / ".hidden.png").write_bytes(b"ignored")
    make_dicom_series(root / "series", n=3)
    (tmp_path / "empty").mkdir()
    (tmp_path / "odd.xyz").write_text("?")
    items, failures = discover([root, tmp_path / "missing.png", tmp_path / "empty",
                                tmp_path / "odd.xyz"])
    by_name = {i.name: i for i in items}
    assert set(by_name) == {"a", "sub_a", "vol", "series"}
    assert by_name["vol"].kind == "nifti" and by_name["a"].kind == "image"
    assert by_name["series"].kind == "dicom" and len(by_name["series"].paths) == 3
    reasons = dict(failures)
    assert "no such file" in reasons[str(tmp_path / "missing.png")]
    assert "no images" in reasons[str(tmp_path / "empty")]
    assert "unsupported file type" in reasons[str(tmp_path / "odd.xyz")]
    # the same stem twice -> unique names
    items, _ = discover([root / "a.png", root / "sub" / "a.png"])
    assert [i.name for i in items] == ["a", "a-2"]


def test_images_are_read_grey_like_training_and_16_bit_values_are_kept(tmp_path):
    from PIL import Image

    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[..., 0] = 200
    rgb[5, 5] = 10
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    case = load_case(_item(tmp_path / "rgb.png", "image"))
    assert case.slices.shape == (1, 20, 30)
    assert case.slices[0, 0, 0] == round(0.299 * 200)  # ITU-R 601 luma, as the adapters
    deep = (np.arange(20 * 30).reshape(20, 30) * 100).astype(np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    case = load_case(_item(tmp_path / "deep.png", "image"), pixel_spacing=(0.5, 0.4))
    assert case.slices.max() == deep.max() and case.spacing == (0.5, 0.4)
    assert case.affine is None and not case.is_volume


def test_nifti_slices_along_the_axial_axis_and_back_to_native_order(tmp_path):
    vol = head_volume((20, 24, 10))
    # array axis 0 runs inferior->superior here: axial slicing must cut along axis 0
    affine = np.array([[0, 1.0, 0, 0], [0, 0, 1.0, 0], [2.0, 0, 0, 0], [0, 0, 0, 1]])
    path = save_nifti(tmp_path / "v.nii.gz", vol, affine)
    case = load_case(_item(path, "nifti"))
    # turned upright: rows run along y (anterior up), columns along x
    assert case.slice_axis == 0 and case.slices.shape == (20, 10, 24)
    assert np.allclose(case.to_native(case.slices), vol)
    kept = load_case(_item(path, "nifti"), upright=False)
    assert kept.slices.shape == (20, 24, 10) and np.allclose(kept.to_native(kept.slices), vol)
    assert case.spacing == (1.0, 1.0) and case.orientation_known
    assert load_case(_item(path, "nifti"), axis=2).slice_axis == 2
    assert load_case(_item(path, "nifti"), axis="sagittal").slice_axis == 1
    assert axis_from_option("coronal", affine) == 2
    assert axis_from_option("axial", None) == 2  # orientation unknown: array axis 2


def test_nifti_4d_singleton_and_missing_orientation(tmp_path):
    import nibabel as nib

    vol = head_volume((16, 16, 4))[..., None]
    img = nib.Nifti1Image(vol, None)  # no affine: qform and sform codes stay 0
    img.header.set_zooms((0.5, 0.5, 3.0, 1.0))
    nib.save(img, tmp_path / "v4.nii")
    case = load_case(_item(tmp_path / "v4.nii", "nifti"))
    assert case.native_shape == (16, 16, 4, 1) and case.slices.shape == (4, 16, 16)
    assert case.to_native(case.slices).shape == (16, 16, 4, 1)
    assert not case.orientation_known and any("orientation" in w for w in case.warnings)
    assert case.spacing == (0.5, 0.5) and case.slice_axis == 2


def test_dicom_series_is_sorted_by_position_and_gets_a_ras_affine(tmp_path):
    paths = make_dicom_series(tmp_path / "s", n=4, tumor_slices=(2,))
    items, failures = discover([tmp_path / "s"])
    assert not failures and len(items) == 1
    case = load_case(items[0])
    assert case.kind == "dicom" and case.slices.shape == (4, 48, 64)
    assert [ds.filename for ds in case.datasets] == [str(p) for p in paths]
    has_tumor = [bool((s == TUMOR).any()) for s in case.slices]
    assert has_tumor == [False, False, True, False]
    # (slice, row, col) -> RAS: LPS x, y negated; columns run along +x (patient left)
    a = case.affine
    assert np.allclose(a @ [0, 0, 0, 1], [25.0, 18.0, 10.0, 1])
    assert np.allclose(a[:3, 2], [-0.8, 0, 0]) and np.allclose(a[:3, 1], [0, -0.9, 0])
    assert np.allclose(a[:3, 0], [0, 0, 3.0])
    assert case.spacing == (0.9, 0.8) and case.orientation_known


def test_truncated_dicom_and_unreadable_dicom_name_the_file(tmp_path):
    paths = make_dicom_series(tmp_path / "s", n=3)
    data = paths[1].read_bytes()
    paths[1].write_bytes(data[: len(data) - 2000])  # pixel data cut short
    items, _ = discover([tmp_path / "s"])
    with pytest.raises(InputError, match="IM") as err:
        load_case(items[0])
    assert str(tmp_path / "s") in str(err.value)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x.dcm").write_bytes(b"\0" * 50)
    items, failures = discover([tmp_path / "junk"])
    assert not items and "cannot read DICOM header" in failures[0][1]


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad")
    return folder, write_bad_inputs(folder)


def test_every_bad_input_gets_a_clear_error_naming_the_file(bad_inputs):
    folder, expected = bad_inputs
    items, failures = discover([folder])
    assert not failures
    assert {i.source.name for i in items} == set(expected)
    for item in items:
        with pytest.raises(InputError) as err:
            load_case(item)
        message = str(err.value)
        assert message.startswith(str(item.source)), message
        assert expected[item.source.name] in message, message
        assert "\n" not in message


def test_nifti_with_repairable_header_problem_reads_with_a_warning(tmp_path):
    path = save_nifti(tmp_path / "v.nii", head_volume((16, 16, 4)), oblique_las_affine())
    raw = bytearray(path.read_bytes())
    raw[0:4] = np.int32(123).tobytes()  # sizeof_hdr
    path.write_bytes(bytes(raw))
    case = load_case(_item(path, "nifti"))
    assert any("sizeof_hdr" in w for w in case.warnings)
