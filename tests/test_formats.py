"""mtl.infer.formats: one reader/writer class per file format, chosen once from the kind; each
format's reader and writer carry the geometry from the input to its mask."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from mtl.infer.case import InputError, InputItem
from mtl.infer.formats import FORMATS, MASK_FORMATS, REGISTRY, Format, format_of, kind_of
from mtl.infer.formats import parse_formats
from mtl.infer.readers import load_case
from test_infer_support import head_volume, make_dicom_series, oblique_las_affine
from test_infer_support import save_nifti, save_png, tumor_image


def _item(path: Path, kind: str) -> InputItem:
    return InputItem(path.stem, kind, path, (path,))


def test_every_kind_and_every_mask_format_maps_to_one_class():
    assert sorted(FORMATS) == ["dicom", "image", "nifti", "nrrd"]
    assert sorted(MASK_FORMATS) == ["dicom-seg", "nifti", "nrrd", "png"]
    classes = [type(f) for f in REGISTRY]
    assert len(set(classes)) == len(classes) == 4 and all(issubclass(c, Format) for c in classes)
    for fmt in REGISTRY:  # a format reads one kind and writes one mask format
        assert FORMATS[fmt.kind] is fmt and MASK_FORMATS[fmt.mask_format] is fmt
        assert set(fmt.downloads) <= set(MASK_FORMATS)
    with pytest.raises(InputError, match="unknown input kind"):
        format_of("gif")
    names = {"a.png": "image", "a.JPG": "image", "b.nii.gz": "nifti", "b.nii": "nifti",
             "c.nrrd": "nrrd", "c.nhdr": "nrrd", "d.dcm": "dicom", "e.txt": None}
    assert {n: kind_of(Path(n)) for n in names} == names
    assert parse_formats("nii,seg,nhdr,png") == ("nifti", "dicom-seg", "nrrd", "png")


def test_image_reader_and_png_writer_keep_the_size(tmp_path):
    from PIL import Image

    path = save_png(tmp_path / "a.png", tumor_image(37, 53, (5, 9, 5, 9)))
    case = load_case(_item(path, "image"))
    mask = np.zeros((1, 37, 53), np.uint8)
    mask[0, 5:9, 5:9] = 1
    [out] = case.format.write_mask(case, mask, case.to_native(mask))
    back = np.asarray(Image.open(io.BytesIO(out.data)))
    assert out.name == "mask.png" and back.shape == (37, 53)
    assert np.array_equal(back > 0, mask[0] > 0)


def test_nifti_reader_and_writer_round_trip_the_geometry(tmp_path):
    import gzip

    import nibabel as nib

    affine = oblique_las_affine()
    path = save_nifti(tmp_path / "v.nii.gz", head_volume((20, 24, 6)), affine)
    case = load_case(_item(path, "nifti"))
    stack = np.zeros(case.slices.shape[:3], np.uint8)
    stack[2, 3:7, 4:9] = 1
    native = case.to_native(stack)
    [out] = case.format.write_mask(case, stack, native)
    mask = nib.Nifti1Image.from_bytes(gzip.decompress(out.data))
    assert out.name == "mask.nii.gz" and mask.shape == (20, 24, 6)
    assert np.allclose(mask.affine, affine) and np.array_equal(np.asarray(mask.dataobj), native)
    assert load_case(_item(path, "nifti")).format is FORMATS["nifti"]


def test_nrrd_reader_and_writer_round_trip_the_geometry(tmp_path):
    nrrd = pytest.importorskip("nrrd")
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ oblique_las_affine()
    path = tmp_path / "v.nrrd"
    nrrd.write(str(path), head_volume((20, 24, 6)), {
        "space": "left-posterior-superior", "space directions": lps[:3, :3].T,
        "space origin": lps[:3, 3]}, index_order="F")
    case = load_case(_item(path, "nrrd"))
    assert np.allclose(case.affine, oblique_las_affine())
    stack = np.zeros(case.slices.shape[:3], np.uint8)
    stack[1, 2:6, 3:8] = 1
    native = case.to_native(stack)
    [out] = case.format.write_mask(case, stack, native)
    (tmp_path / "m.nrrd").write_bytes(out.data)
    data, header = nrrd.read(str(tmp_path / "m.nrrd"), index_order="F")
    assert np.allclose(header["space directions"], lps[:3, :3].T)
    assert np.allclose(header["space origin"], lps[:3, 3])
    assert np.array_equal(data, native)


def test_dicom_reader_and_seg_writer_reference_the_series(tmp_path):
    import pydicom

    paths = make_dicom_series(tmp_path / "s", n=3, tumor_slices=(1,))
    item = InputItem("s", "dicom", tmp_path / "s", tuple(paths))
    case = load_case(item)
    stack = np.zeros(case.slices.shape, np.uint8)
    stack[1, 10:20, 40:52] = 1
    notes: list[str] = []
    [out] = case.format.write_mask(case, stack, case.to_native(stack), notes)
    seg = pydicom.dcmread(io.BytesIO(out.data))
    source = pydicom.dcmread(paths[0])
    assert out.name == "seg.dcm" and seg.Modality == "SEG"
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    assert seg.FrameOfReferenceUID == source.FrameOfReferenceUID
    assert int((seg.pixel_array > 0).sum()) == 120
    # a case without position and orientation cannot give a SEG, and says why
    case.orientation_known = False
    assert "position and orientation" in case.format.cannot_write(case)


def test_path_mask_writers_refuse_a_name_of_another_layout(tmp_path):
    """The path writers write .nii.gz / attached .nrrd bytes: a .nii or .nhdr name is refused
    rather than given gzip data or no detached header."""
    import numpy as np
    import pytest

    from mtl.infer.writers import write_mask_nifti_affine, write_mask_nrrd_affine

    mask = np.zeros((2, 4, 4), np.uint8)
    with pytest.raises(ValueError, match=r"\.nii\.gz"):
        write_mask_nifti_affine(tmp_path / "m.nii", mask, np.eye(4))
    with pytest.raises(ValueError, match=r"\.nrrd"):
        write_mask_nrrd_affine(tmp_path / "m.nhdr", mask, np.eye(4))
    assert write_mask_nifti_affine(tmp_path / "m.nii.gz", mask, np.eye(4)).is_file()
