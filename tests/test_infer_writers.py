"""mtl.infer.writers: atomic, non-clobbering writes; masks in the input's own geometry."""

from __future__ import annotations

import numpy as np
import pytest

from mtl.infer.writers import (
    OutputExistsError,
    atomic_write,
    dicom_segmentation,
    write_dicom_seg,
    write_json,
    write_mask_nifti,
    write_mask_png,
)
from test_infer_support import make_dicom_series, oblique_las_affine, save_nifti


def test_atomic_write_never_overwrites_without_force_and_leaves_nothing_on_failure(tmp_path):
    path = tmp_path / "out" / "f.json"
    write_json(path, {"a": 1})
    with pytest.raises(OutputExistsError, match="--force"):
        write_json(path, {"a": 2})
    assert path.read_text().strip() == '{\n "a": 1\n}'
    write_json(path, {"a": 3}, force=True)
    assert '"a": 3' in path.read_text()

    def crash(tmp):
        tmp.write_bytes(b"half a mask")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(tmp_path / "out" / "mask.png", crash)
    with pytest.raises(RuntimeError):
        atomic_write(path, crash, force=True)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["f.json"]
    assert '"a": 3' in path.read_text()


def test_png_mask_has_the_image_size_and_0_255_values(tmp_path):
    from PIL import Image

    mask = np.zeros((37, 53), np.uint8)
    mask[3:9, 4:7] = 1
    write_mask_png(tmp_path / "m.png", mask)
    back = np.asarray(Image.open(tmp_path / "m.png"))
    assert back.shape == (37, 53) and back.dtype == np.uint8
    assert set(np.unique(back)) == {0, 255} and np.array_equal(back > 0, mask > 0)


@pytest.mark.parametrize("shape", [(20, 24, 6), (20, 24, 6, 1)])
def test_nifti_label_volume_keeps_the_input_affine_header_and_voxels(tmp_path, shape):
    import nibabel as nib

    affine = oblique_las_affine()
    data = np.random.default_rng(0).random(shape).astype(np.float32) * 500
    src = nib.load(save_nifti(tmp_path / "in.nii.gz", data, affine))
    mask = np.zeros(shape, np.uint8)
    mask[3:7, 10:14, 2:4] = 1
    write_mask_nifti(tmp_path / "mask.nii.gz", mask, src)
    out = nib.load(tmp_path / "mask.nii.gz")
    assert out.shape == src.shape and np.allclose(out.affine, src.affine)
    assert out.get_data_dtype() == np.uint8
    assert int(out.header["qform_code"]) == 1 and int(out.header["sform_code"]) == 2
    assert np.allclose(out.header.get_qform(), src.header.get_qform(), atol=1e-5)
    assert np.allclose(out.header.get_zooms(), src.header.get_zooms())
    assert np.array_equal(np.asarray(out.dataobj), mask)
    with pytest.raises(ValueError, match="shape"):
        write_mask_nifti(tmp_path / "bad.nii.gz", mask[:-1], src)


def test_dicom_seg_references_the_source_series_and_holds_the_tumor_frames(tmp_path):
    import highdicom as hd
    import pydicom

    paths = make_dicom_series(tmp_path / "s", n=5)
    datasets = [pydicom.dcmread(p) for p in paths]
    mask = np.zeros((5, 48, 64), np.uint8)
    mask[1, 10:20, 40:52] = 1
    mask[3, 12:18, 41:50] = 1
    write_dicom_seg(tmp_path / "seg.dcm", mask, datasets)
    seg = hd.seg.segread(tmp_path / "seg.dcm")
    assert seg.Modality == "SEG" and seg.NumberOfFrames == 2
    assert seg.StudyInstanceUID == datasets[0].StudyInstanceUID
    assert seg.FrameOfReferenceUID == datasets[0].FrameOfReferenceUID
    referenced = {r.ReferencedSOPInstanceUID
                  for s in seg.ReferencedSeriesSequence for r in s.ReferencedInstanceSequence}
    assert referenced == {d.SOPInstanceUID for d in datasets}
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == datasets[0].SeriesInstanceUID
    frame_sources = {f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
                     for f in seg.PerFrameFunctionalGroupsSequence}
    assert frame_sources == {datasets[1].SOPInstanceUID, datasets[3].SOPInstanceUID}
    back = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[d.SOPInstanceUID for d in datasets], segment_numbers=[1])
    assert np.array_equal(back[..., 0], mask)
    with pytest.raises(OutputExistsError):
        write_dicom_seg(tmp_path / "seg.dcm", mask, datasets)


def test_dicom_seg_without_tumor_is_still_valid(tmp_path):
    import pydicom

    datasets = [pydicom.dcmread(p) for p in make_dicom_series(tmp_path / "s", n=3)]
    seg = dicom_segmentation(np.zeros((3, 48, 64), np.uint8), datasets)
    assert seg.Modality == "SEG" and int(seg.NumberOfFrames) >= 1
