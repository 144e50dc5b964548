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


# --------------------------------------------------------------------------- one file per format


class _FakeFormat(Format):
    """A format mtl does not have: only in the registry patched by ``fake_format``."""

    kind, what, suffixes = "fake", "a fake volume", (".fk", ".fk.gz")
    mask_format, mask_name, media_type = "fake-mask", "mask.fk", "application/x-fake"
    mask_label, downloads, download_title = "fake mask", ("fake-mask",), "FAKE"
    link_key, file_types = "fake_mask", "FAKE .fk"

    def write_bytes(self, case, stack, native, notes) -> bytes:
        raise RuntimeError("no fake writer")


@pytest.fixture
def fake_format(monkeypatch):
    """The registry with a fake format first (what adding one module and one entry does)."""
    import mtl.infer.formats as formats

    fake = _FakeFormat()
    registry = (fake, *formats.REGISTRY)
    monkeypatch.setattr(formats, "REGISTRY", registry)
    monkeypatch.setattr(formats, "FORMATS", {f.kind: f for f in registry})
    monkeypatch.setattr(formats, "MASK_FORMATS", {f.mask_format: f for f in registry})
    return fake


def test_the_json_link_keys_are_the_registrys_and_the_api_schemas():
    from mtl.infer.formats import link_formats
    from mtl.serve.app import MaskLinks

    formats = link_formats()
    assert list(formats) == ["png", "nifti", "nrrd", "dicom_seg"]  # what the web page reads
    assert set(formats) == set(MaskLinks.model_fields)  # a new format needs its schema field
    assert [k for k, f in formats.items() if f.mask_link] == ["png", "nifti", "nrrd"]


def test_a_format_in_the_registry_reaches_runner_server_and_discovery(fake_format, tmp_path):
    """Nothing outside the format's class and its registry entry names its files, suffixes
    or link key."""
    from types import SimpleNamespace

    from mtl.infer.core import CaseAnalysis
    from mtl.infer.discovery import discover
    from mtl.infer.runner import case_files, earlier_outputs
    from mtl.serve.service import display_name, links

    # mtl infer --force: the format's mask is one of a case folder's known outputs
    assert {"mask.fk", "mask.png", "seg.dcm", "findings.json"} <= set(case_files())
    (tmp_path / "mask.fk").write_bytes(b"old")
    (tmp_path / "other.txt").write_text("kept")
    assert earlier_outputs(tmp_path) == [tmp_path / "mask.fk"]
    # discovery claims its suffix and names it among the supported files
    (tmp_path / "a.fk").write_bytes(b"?")
    (tmp_path / "b.xyz").write_text("?")
    items, failures = discover([tmp_path / "a.fk", tmp_path / "b.xyz"])
    assert [(i.name, i.kind) for i in items] == [("a", "fake")]
    assert "(expected FAKE .fk, PNG, JPEG" in dict(failures)[str(tmp_path / "b.xyz")]
    assert parse_formats("fake-mask,png") == ("fake-mask", "png")
    # the server: the upload's name loses the longest suffix; the result links its mask
    assert display_name("scan.FK.gz") == display_name("scan.fk") == "scan"
    assert display_name("brain.nii.gz") == display_name("x/brain.dicom") == "brain"
    got = links("r1", {"mask.fk": None, "mask.nii.gz": None})
    assert got["masks"] == {"fake_mask": "/results/r1/mask.fk", "png": None,
                            "nifti": "/results/r1/mask.nii.gz", "nrrd": None, "dicom_seg": None}
    assert got["mask"] == "/results/r1/mask.fk"  # first in the registry
    # a download that fails: an error, unless the format says it is optional (as the SEG)
    record = {"warnings": []}
    analysis = CaseAnalysis(SimpleNamespace(name="c"), SimpleNamespace(format=fake_format),
                            SimpleNamespace(mask=np.zeros((1, 2, 2), np.uint8)), 0.5,
                            np.zeros((2, 2), np.uint8), {}, record, None, 0)
    with pytest.raises(RuntimeError, match="no fake writer"):
        analysis.downloads()
    fake_format.optional_download = True  # an instance attribute: the class is left as it is
    assert analysis.downloads() == []
    assert record["warnings"] == ["no FAKE download: it could not be made (no fake writer)"]
