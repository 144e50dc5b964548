"""Synthetic inputs and a fake network for the ``mtl infer`` tests (no tests in this file).

The fake ``forward`` is a perfect segmenter for the synthetic scans. Every synthetic head has a
bright skull rim (the brightest thing, so it sets the model's upper intensity percentile on every
slice), tissue far darker, and tumors in between: after the model's percentile scaling, tumor
pixels are the only ones between 0.3 and 0.75. Where the network input is the padded slice
itself (slice side == network side), the predicted mask is exactly the tumor, so geometry and
numbers can be checked to the pixel.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("SM_FRAMEWORK", "tf.keras")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

CLASSES = ["no_tumor", "glioma", "meningioma", "pituitary"]
PREPROCESSING = {"image_size": 64, "channels": 1, "intensity": "percentile",
                 "intensity_percentiles": [0.5, 99.5], "geometry": "letterbox"}
SKULL, TUMOR, TISSUE = 2000.0, 1000.0, 100.0
LOW, HIGH = 0.3, 0.75


def fake_forward(x: np.ndarray) -> dict[str, np.ndarray]:
    """Tumor = input in (LOW, HIGH); presence 0.9/0.1; type glioma 0.7 when a tumor is seen."""
    x = np.asarray(x)[..., :1]
    mask = ((x > LOW) & (x < HIGH)).astype(np.float32)
    has = mask.reshape(len(x), -1).max(axis=1)
    presence = np.where(has > 0, 0.9, 0.1).astype(np.float32)[:, None]
    tumor = np.array([0.1, 0.7, 0.1, 0.1], np.float32)
    clean = np.array([0.85, 0.05, 0.05, 0.05], np.float32)
    type_probs = np.where(has[:, None] > 0, tumor, clean).astype(np.float32)
    return {"presence": presence, "type": type_probs, "mask": mask}


def _head(grid: list[np.ndarray], shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    radius = sum(((g - (n - 1) / 2) / (n * 0.47)) ** 2 for g, n in zip(grid, shape))
    tissue = TISSUE + rng.normal(0, 5, shape)
    return np.where(radius <= 0.75, tissue, np.where(radius <= 1, SKULL, 0.0)).astype(np.float32)


def head_slice(rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    """An elliptic 'head': noisy tissue inside a bright skull rim, on a zero background."""
    return _head(list(np.mgrid[:rows, :cols]), (rows, cols), rng)


def head_volume(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """A 3-D ellipsoid head (noisy tissue, bright skull shell, zero background)."""
    return _head(list(np.mgrid[tuple(slice(0, s) for s in shape)]), shape,
                 np.random.default_rng(seed))


def oblique_las_affine() -> np.ndarray:
    """L-A-S oriented, anisotropic (0.9 x 1.1 x 2.5 mm), tilted 10 degrees about x, shifted."""
    t = np.deg2rad(10)
    linear = np.array([[-1, 0, 0], [0, np.cos(t), -np.sin(t)], [0, np.sin(t), np.cos(t)]])
    affine = np.eye(4)
    affine[:3, :3] = linear @ np.diag([0.9, 1.1, 2.5])
    affine[:3, 3] = [31.5, -40.2, 12.0]
    return affine


def save_nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    import nibabel as nib

    img = nib.Nifti1Image(data, affine)
    img.header.set_qform(affine, code=1)
    img.header.set_sform(affine, code=2)
    img.header.set_xyzt_units("mm")
    nib.save(img, str(path))
    return path


def save_png(path: Path, array: np.ndarray) -> Path:
    from PIL import Image

    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)
    return path


def tumor_image(rows: int, cols: int, box: tuple[int, int, int, int], seed: int = 0) -> np.ndarray:
    """uint8 image: head (tissue 20, skull 255) with a tumor box of 130 (r0, r1, c0, c1)."""
    image = head_slice(rows, cols, np.random.default_rng(seed)) * (255 / SKULL)
    r0, r1, c0, c1 = box
    image[r0:r1, c0:c1] = 130
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def make_dicom_series(folder: Path, *, n: int = 4, rows: int = 48, cols: int = 64,
                      spacing: tuple[float, float] = (0.9, 0.8), thickness: float = 3.0,
                      tumor_slices: tuple[int, ...] = (1, 2),
                      tumor_box: tuple[int, int, int, int] = (10, 20, 40, 52),
                      shuffle: bool = True) -> list[Path]:
    """A tiny axial MR series (IOP 1,0,0,0,1,0) with a bright box on some slices.

    Files are written in shuffled order (names and instance numbers) to test sorting by
    position. Returns the paths in *spatial* order (slice 0 first).
    """
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    order = list(rng.permutation(n)) if shuffle else list(range(n))
    paths: dict[int, Path] = {}
    for file_index, k in enumerate(order):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        sop = generate_uid()
        meta.MediaStorageSOPInstanceUID = sop
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, sop
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Test^Phantom", "P1", "", "O"
        ds.StudyDate, ds.StudyTime, ds.AccessionNumber = "20240101", "120000", ""
        ds.ReferringPhysicianName, ds.StudyID = "", "1"
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "MR", 3, int(file_index + 1)
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.ImagePositionPatient = [-25.0, -18.0, 10.0 + thickness * int(k)]
        ds.PixelSpacing = [spacing[0], spacing[1]]
        ds.SliceThickness = thickness
        ds.Rows, ds.Columns = rows, cols
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        image = head_slice(rows, cols, rng)
        if int(k) in tumor_slices:
            r0, r1, c0, c1 = tumor_box
            image[r0:r1, c0:c1] = TUMOR
        ds.PixelData = image.astype(np.uint16).tobytes()
        path = folder / f"IM{file_index:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths[int(k)] = path
    return [paths[k] for k in range(n)]


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real (untrained) mtl model with a 64x64 input and a small decoder, saved once."""
    from mtl.config import load_config
    from mtl.train import build_model

    model = build_model(load_config(overrides=[
        "data.image_size=64", "model.decoder_filters=[16,16,8,8,8]", "model.head_units=8"]))
    path = tmp_path_factory.mktemp("model") / "m.keras"
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not yet been built.*")
        model.save(path)
    return path


def write_bad_inputs(folder: Path) -> dict[str, str]:
    """Every kind of bad input the issue lists; returns file name -> expected message part."""
    import gzip

    import tifffile
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    expected: dict[str, str] = {}
    # unreadable and empty files
    (folder / "garbage.png").write_bytes(b"this is not an image" * 10)
    expected["garbage.png"] = "cannot read image"
    (folder / "empty.png").write_bytes(b"")
    expected["empty.png"] = "cannot read image"
    # truncated image
    good = folder / "_full.png"
    save_png(good, tumor_image(48, 64, (10, 20, 30, 45)))
    data = good.read_bytes()
    good.unlink()
    (folder / "truncated.png").write_bytes(data[: len(data) // 2])
    expected["truncated.png"] = "cannot read image"
    # wrong dimensions
    save_png(folder / "tiny.png", np.arange(16).reshape(4, 4) * 10)
    expected["tiny.png"] = "too small"
    tifffile.imwrite(folder / "stack.tif", np.random.default_rng(0).random((3, 32, 32)).astype(np.float32))
    expected["stack.tif"] = "not a 2-D image"
    # constant and NaN images
    Image.fromarray(np.full((40, 40), 77, np.uint8)).save(folder / "flat.png")
    expected["flat.png"] = "constant"
    nan_image = np.random.default_rng(0).random((32, 32)).astype(np.float32)
    nan_image[5, 5] = np.nan
    tifffile.imwrite(folder / "nan.tif", nan_image)
    expected["nan.tif"] = "NaN"
    # NIfTI: NaNs, constant, 4-D, truncated, broken headers
    rng = np.random.default_rng(0)
    vol = rng.random((16, 16, 4)).astype(np.float32)
    with_nan = vol.copy()
    with_nan[3, 3, 1] = np.nan
    save_nifti(folder / "nan_volume.nii.gz", with_nan, np.eye(4))
    expected["nan_volume.nii.gz"] = "NaN"
    save_nifti(folder / "constant.nii.gz", np.zeros((16, 16, 4), np.float32), np.eye(4))
    expected["constant.nii.gz"] = "constant"
    save_nifti(folder / "fourd.nii.gz", rng.random((16, 16, 4, 3)).astype(np.float32), np.eye(4))
    expected["fourd.nii.gz"] = "not a 3-D volume"
    plain = folder / "_plain.nii"
    save_nifti(plain, vol, np.diag([1.0, 1.0, 2.0, 1.0]))
    raw = bytearray(plain.read_bytes())
    plain.unlink()
    (folder / "truncated.nii").write_bytes(bytes(raw[: len(raw) // 2]))
    expected["truncated.nii"] = "truncated"
    packed = gzip.compress(bytes(raw))
    (folder / "truncated.nii.gz").write_bytes(packed[: len(packed) // 2])
    expected["truncated.nii.gz"] = "truncated"
    (folder / "garbage.nii").write_bytes(b"not a nifti header" * 5)
    expected["garbage.nii"] = "cannot read NIfTI header"
    zero = bytearray(raw)
    zero[80:92] = b"\0" * 12  # pixdim[1:4] = 0
    (folder / "zero_pixdim.nii").write_bytes(bytes(zero))
    expected["zero_pixdim.nii"] = "broken NIfTI header"
    nan_affine = bytearray(raw)
    nan_affine[280:284] = np.float32(np.nan).tobytes()  # srow_x[0]
    (folder / "nan_affine.nii").write_bytes(bytes(nan_affine))
    expected["nan_affine.nii"] = "broken NIfTI header"
    negative = bytearray(raw)
    negative[42:44] = np.int16(-5).tobytes()  # dim[1]
    (folder / "negative_dim.nii").write_bytes(bytes(negative))
    expected["negative_dim.nii"] = "broken NIfTI header"
    return expected


def invoke_infer(*args: object):
    """``mtl infer ARGS`` through click's CliRunner; an exception other than the exit is raised
    (so a test sees its traceback), the result returned otherwise."""
    from click.testing import CliRunner

    from mtl.infer.command import infer

    result = CliRunner().invoke(infer, [str(a) for a in args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def nifti_header(dims: tuple[int, ...], bitpix: int = 32, datatype: int = 16) -> bytearray:
    """A little-endian single-file NIfTI-1 header (348 bytes) + 4-byte extension flag, for
    volumes that are only a header: 1 mm voxels, data from byte 352 (float32 by default)."""
    import struct

    head = bytearray(352)
    struct.pack_into("<i", head, 0, 348)
    struct.pack_into("<8h", head, 40, len(dims), *dims, *([1] * (7 - len(dims))))
    struct.pack_into("<hh", head, 70, datatype, bitpix)
    struct.pack_into("<8f", head, 76, 1, 1, 1, 1, 1, 1, 1, 1)
    struct.pack_into("<f", head, 108, 352.0)
    head[344:348] = b"n+1\x00"
    return head
