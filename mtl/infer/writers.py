"""Writing inference outputs atomically, never over an existing file unless forced.

Every file is written to a hidden temporary name in its destination folder and then moved into
place in one step, so a crash never leaves a half-written mask or record. Without ``force`` the
move is a hard link that fails if the destination exists (no race between check and write).

Masks go out in the input's own geometry; their bytes are made by the format classes of
:mod:`mtl.infer.formats` (PNG, NIfTI, NRRD, DICOM SEG), and the ``write_mask_*`` functions here
write them to a path:

- PNG: 8-bit grey, 0 = background, 255 = tumor, at the image's own size;
- NIfTI: a uint8 label volume (0/1) with the input's affine and header (same shape, qform/sform
  codes, voxel sizes), so it overlays exactly in ITK-SNAP or 3D Slicer;
- NRRD (pynrrd): a uint8 label volume (0/1) with the input NRRD's geometry fields (``space``,
  ``space directions``, ``space origin``, ``kinds``, ...) and sizes, gzip-encoded, for 3D Slicer;
- DICOM SEG (highdicom): a binary segmentation referencing the source series' images.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mtl.files import (  # noqa: F401 - re-exported for older imports
    OutputExistsError, atomic_write, json_default, write_bytes, write_json,
)
from mtl.infer.formats.dicom import dicom_segmentation, write_seg_bytes
from mtl.infer.formats.image import png_mask_bytes
from mtl.infer.formats.nifti import affine_label_image, nifti_gz_bytes, nifti_label_image
from mtl.infer.formats.nrrd import affine_geometry, nrrd_label_header, nrrd_mask_bytes


def write_csv(path: str | Path, rows: Sequence[dict[str, Any]], *, force: bool = False) -> Path:
    fields = list(dict.fromkeys(k for row in rows for k in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return write_bytes(path, buffer.getvalue().encode("utf-8"), force=force)


def _named(path: str | Path, suffix: str) -> str | Path:
    """``path`` when it ends with ``suffix`` (the bytes written are that format's), else a
    ValueError: a ``.nii`` or ``.nhdr`` name would promise a layout these writers do not make."""
    if not str(path).lower().endswith(suffix):
        raise ValueError(f"{path}: these mask bytes are {suffix}; name the file *{suffix}")
    return path


def write_mask_png(path: str | Path, mask: np.ndarray, *, force: bool = False) -> Path:
    """(H, W) 0/1 mask -> 8-bit PNG with 0 / 255 at the same size."""
    return write_bytes(path, png_mask_bytes(mask), force=force)


def write_mask_nifti(path: str | Path, mask: np.ndarray, reference: Any, *,
                     force: bool = False) -> Path:
    """Label volume (0/1 uint8) in the reference NIfTI's geometry, as ``.nii.gz``."""
    return write_bytes(_named(path, ".nii.gz"), nifti_gz_bytes(nifti_label_image(mask, reference)),
                       force=force)


def write_mask_nifti_affine(path: str | Path, mask: np.ndarray, affine: np.ndarray, *,
                            force: bool = False) -> Path:
    """Label volume with a given RAS+ affine (e.g. a DICOM series' geometry)."""
    return write_bytes(_named(path, ".nii.gz"), nifti_gz_bytes(affine_label_image(mask, affine)),
                       force=force)


def write_mask_nrrd(path: str | Path, mask: np.ndarray, geometry: dict[str, Any], *,
                    force: bool = False) -> Path:
    """Label volume (0/1 uint8) as an attached ``.nrrd`` in the input NRRD's geometry; ``mask``
    is in the input's axis order (fastest axis first)."""
    return write_bytes(_named(path, ".nrrd"), nrrd_mask_bytes(mask, geometry), force=force)


def write_mask_nrrd_affine(path: str | Path, mask: np.ndarray, affine: np.ndarray, *,
                           force: bool = False) -> Path:
    """Label volume with a given RAS+ affine (a NIfTI or DICOM input), in LPS as Slicer writes."""
    return write_bytes(_named(path, ".nrrd"), nrrd_mask_bytes(*affine_geometry(mask, affine)),
                       force=force)


def write_dicom_seg(path: str | Path, mask: np.ndarray, datasets: Sequence[Any], *,
                    force: bool = False, **options: Any) -> Path:
    """The SEG of :func:`dicom_segmentation`; ``notes=`` (a list) receives its repair lines."""
    return write_bytes(path, write_seg_bytes(mask, datasets, **options), force=force)


__all__ = ["OutputExistsError", "atomic_write", "dicom_segmentation", "nifti_label_image",
           "write_bytes", "write_csv", "write_dicom_seg", "write_json", "write_mask_nifti",
           "write_mask_nifti_affine", "write_mask_nrrd", "write_mask_nrrd_affine",
           "write_mask_png", "nrrd_label_header"]
