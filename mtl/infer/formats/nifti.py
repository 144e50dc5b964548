"""NIfTI volumes: ``.nii`` / ``.nii.gz`` in, the mask out as a uint8 label volume (0/1).

A volume is cut into 2-D slices along one array axis (:mod:`mtl.infer.axes`); where the header
gives the orientation, the slices are turned upright as the training pictures are
(:func:`mtl.infer.readers.turn_upright`) and results are turned back into the file's array order.
The mask keeps the input's affine and header (same shape, qform/sform codes, voxel sizes), so it
overlays exactly in ITK-SNAP or 3D Slicer. A volume of another format with a known affine (a
DICOM series, a NRRD) gets a NIfTI mask with that affine (qform and sform code 1).
"""

from __future__ import annotations

import contextlib
import gzip
import io
import logging
from pathlib import Path
from typing import Any

import numpy as np

from mtl.data.imageio import describe_error
from mtl.infer.axes import axis_from_option, cut_slices
from mtl.infer.case import Case, InputError, InputItem, check_pixels
from mtl.infer.formats.base import LabelVolumeFormat

NIFTI_SUFFIXES = (".nii.gz", ".nii")
#: NIfTI spatial units -> millimetres
_UNIT_TO_MM = {"mm": 1.0, "meter": 1000.0, "micron": 0.001, "unknown": 1.0}


def nifti_stem(name: str) -> str | None:
    """The name without its NIfTI suffix, or None when it has none."""
    lower = name.lower()
    for suffix in NIFTI_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return None


@contextlib.contextmanager
def _quiet_nibabel():
    """nibabel logs the header fixes it makes through Python's last-resort handler; mute that."""
    from nibabel.imageglobals import logger

    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _header_problems(path: Path, img: Any) -> list[str]:
    """Problems nibabel silently repairs, as warnings; zero/non-finite voxel sizes are errors."""
    from nibabel.openers import ImageOpener

    header_class = type(img.header)
    try:
        with ImageOpener(str(path)) as fh:
            raw = fh.read(header_class.template_dtype.itemsize)
        problems = header_class.diagnose_binaryblock(raw)
        raw_header = header_class(raw, check=False)
        ndim = int(np.clip(raw_header["dim"][0], 1, 7))
        pixdim = np.asarray(raw_header["pixdim"][1 : 1 + min(3, ndim)], dtype=np.float64)
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"{path}: cannot read NIfTI header ({describe_error(exc)})") from exc
    if not np.all(np.isfinite(pixdim)) or np.any(pixdim == 0):
        raise InputError(f"{path}: broken NIfTI header: voxel sizes (pixdim) {pixdim.tolist()} "
                         "must be non-zero numbers")
    return [f"NIfTI header repaired on reading: {line}" for line in problems.splitlines() if line]


def load_nifti_case(item: InputItem, axis: int | str = "axial") -> Case:
    """A NIfTI volume -> slices along ``axis``; broken headers and data raise InputError."""
    import nibabel as nib

    path = item.paths[0]
    try:
        with _quiet_nibabel():  # header problems are reported below, not printed
            img = nib.load(str(path))
    except Exception as exc:  # noqa: BLE001 - nibabel raises many types on bad headers
        raise InputError(f"{path}: cannot read NIfTI header ({describe_error(exc)})") from exc
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise InputError(f"{path}: not a NIfTI-1/2 image ({type(img).__name__})")
    warnings = _header_problems(path, img)
    shape = tuple(int(s) for s in img.shape)
    if not shape or min(shape) <= 0:
        raise InputError(f"{path}: broken NIfTI header: dimensions {shape} must be positive")
    if len(shape) == 4 and shape[3] == 1:
        volume_shape = shape[:3]
    elif len(shape) == 3:
        volume_shape = shape
    elif len(shape) == 2:
        volume_shape = shape + (1,)
    else:
        raise InputError(f"{path}: NIfTI of shape {shape} is not a 3-D volume "
                         "(a single 2-D or 3-D image is expected)")
    affine = np.asarray(img.affine, dtype=np.float64)
    zooms = np.asarray(img.header.get_zooms()[:3], dtype=np.float64)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise InputError(f"{path}: broken NIfTI header: the affine is not finite and invertible "
                         f"({np.round(affine, 4).tolist()})")
    if not np.all(np.isfinite(zooms)) or np.any(zooms <= 0):
        raise InputError(f"{path}: broken NIfTI header: voxel sizes {zooms.tolist()} must be > 0")
    try:
        data = np.asarray(img.dataobj)
    except Exception as exc:  # noqa: BLE001 - truncated or corrupt data
        raise InputError(f"{path}: cannot read NIfTI data, the file may be truncated "
                         f"({describe_error(exc)})") from exc
    if data.dtype.kind not in "biuf":
        raise InputError(f"{path}: NIfTI pixel type {data.dtype} is not supported (grey only)")
    check_pixels(path, data, "volume")
    data = data.reshape(volume_shape)
    codes_known = int(img.header["sform_code"]) > 0 or int(img.header["qform_code"]) > 0
    unit = img.header.get_xyzt_units()[0] or "unknown"
    scale = _UNIT_TO_MM.get(unit, 1.0)
    affine_mm = affine.copy()
    affine_mm[:3, :] *= scale
    try:
        slice_axis = 2 if len(shape) == 2 else axis_from_option(
            axis, affine_mm if codes_known else None)
    except ValueError as exc:
        raise InputError(f"{path}: {exc}") from exc
    if not codes_known:
        warnings.append("NIfTI has no qform/sform orientation: hemisphere not reported"
                        + ("" if axis in (0, 1, 2) else f"; sliced along array axis {slice_axis}"))
    spacing, slices = cut_slices(path, data, affine_mm, slice_axis)
    return Case(item.name, "nifti", item.source, np.ascontiguousarray(slices), shape,
                slice_axis=slice_axis, affine=affine_mm, orientation_known=codes_known,
                spacing=spacing, nifti=img, warnings=warnings)


def nifti_label_image(mask: np.ndarray, reference: Any) -> Any:
    """A uint8 label image with ``reference``'s affine and header (shape must match)."""
    mask = np.asarray(mask)
    if tuple(mask.shape) != tuple(reference.shape):
        raise ValueError(f"mask shape {mask.shape} differs from the input's {reference.shape}")
    header = reference.header.copy()
    image = type(reference)((mask > 0).astype(np.uint8), reference.affine, header)
    image.set_data_dtype(np.uint8)
    image.header.set_slope_inter(1.0, 0.0)
    image.header["cal_min"], image.header["cal_max"] = 0, 1
    image.header.set_intent("label")
    image.header["descrip"] = b"mtl tumor mask (1 = tumor)"
    # nibabel sets sform/qform from the affine with the reference header's codes
    image.header.set_qform(reference.header.get_qform(), code=int(reference.header["qform_code"]))
    image.header.set_sform(reference.header.get_sform(), code=int(reference.header["sform_code"]))
    return image


def affine_label_image(mask: np.ndarray, affine: np.ndarray) -> Any:
    """A uint8 label image with a given RAS+ affine (e.g. a DICOM series' geometry)."""
    import nibabel as nib

    image = nib.Nifti1Image((np.asarray(mask) > 0).astype(np.uint8), affine)
    image.set_data_dtype(np.uint8)
    image.header.set_xyzt_units("mm")
    image.header.set_intent("label")
    image.header.set_qform(affine, code=1)
    image.header.set_sform(affine, code=1)
    return image


def nifti_gz_bytes(image: Any) -> bytes:
    """A NIfTI image as the bytes of a ``.nii.gz`` file, exactly as ``nibabel.save`` writes one
    (its gzip level, no file name and time 0 in the gzip header)."""
    from nibabel.openers import ImageOpener

    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0,
                       compresslevel=ImageOpener.default_compresslevel) as gz:
        image.to_file_map(image.make_file_map({"image": gz, "header": gz}))
    return buffer.getvalue()


class NiftiFormat(LabelVolumeFormat):
    kind, mask_format, what = "nifti", "nifti", "a NIfTI volume"
    suffixes, aliases = NIFTI_SUFFIXES, ("nii", "nii.gz")
    index_order = "i, j, k (file array order)"
    mask_name, media_type, mask_label = "mask.nii.gz", "application/gzip", "nifti mask"
    downloads, download_title = ("nifti",), "NIfTI"
    file_types = "NIfTI .nii/.nii.gz"
    load = staticmethod(load_nifti_case)

    def named_like(self, path: Path) -> bool:
        return nifti_stem(path.name) is not None

    def stem(self, path: Path) -> str:
        return nifti_stem(path.name) or path.stem

    def write_bytes(self, case: Case, stack: np.ndarray, native: np.ndarray,
                    notes: list[str]) -> bytes:
        """In the input NIfTI's own geometry (header and affine), else with the case's affine."""
        if case.nifti is not None:
            return nifti_gz_bytes(nifti_label_image(native, case.nifti))
        return nifti_gz_bytes(affine_label_image(native, case.affine))


__all__ = ["NIFTI_SUFFIXES", "NiftiFormat", "affine_label_image", "load_nifti_case",
           "nifti_gz_bytes", "nifti_label_image", "nifti_stem"]
