"""Writing inference outputs atomically, never over an existing file unless forced.

Every file is written to a hidden temporary name in its destination folder and then moved into
place in one step, so a crash never leaves a half-written mask or record. Without ``force`` the
move is a hard link that fails if the destination exists (no race between check and write).

Masks go out in the input's own geometry:

- PNG: 8-bit grey, 0 = background, 255 = tumor, at the image's own size;
- NIfTI: a uint8 label volume (0/1) with the input's affine and header (same shape, qform/sform
  codes, voxel sizes), so it overlays exactly in ITK-SNAP or 3D Slicer;
- DICOM SEG (highdicom): a binary segmentation referencing the source series' images.
"""

from __future__ import annotations

import csv
import io
import json
import os
import uuid
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np


class OutputExistsError(FileExistsError):
    """An output file exists and overwriting was not allowed."""


def atomic_write(path: str | Path, write: Callable[[Path], None], *, force: bool = False) -> Path:
    """Call ``write(tmp)`` on a temporary path next to ``path``, then move it into place.

    The temporary name keeps the file's suffixes (so writers that infer the format from the
    name work) and is removed if writing fails. Raises OutputExistsError if ``path`` exists and
    ``force`` is false.
    """
    path = Path(path)
    if path.exists() and not force:
        raise OutputExistsError(f"{path}: exists; use --force to overwrite")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex[:12]}-{path.name}")
    try:
        write(tmp)
        if force:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # fails if path appeared meanwhile
            except FileExistsError:
                raise OutputExistsError(f"{path}: exists; use --force to overwrite") from None
            except OSError:  # file systems without hard links
                if path.exists():
                    raise OutputExistsError(f"{path}: exists; use --force to overwrite") from None
                os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def write_bytes(path: str | Path, data: bytes, *, force: bool = False) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data), force=force)


def write_json(path: str | Path, obj: Any, *, force: bool = False) -> Path:
    text = json.dumps(obj, indent=1, default=json_default, allow_nan=False) + "\n"
    return write_bytes(path, text.encode("utf-8"), force=force)


def json_default(value: Any) -> Any:
    """``json.dumps(default=...)`` for NumPy scalars and arrays and paths."""
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def write_csv(path: str | Path, rows: Sequence[dict[str, Any]], *, force: bool = False) -> Path:
    fields = list(dict.fromkeys(k for row in rows for k in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return write_bytes(path, buffer.getvalue().encode("utf-8"), force=force)


def write_mask_png(path: str | Path, mask: np.ndarray, *, force: bool = False) -> Path:
    """(H, W) 0/1 mask -> 8-bit PNG with 0 / 255 at the same size."""
    from PIL import Image

    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"PNG mask must be 2-D, got shape {mask.shape}")
    image = Image.fromarray(np.where(mask > 0, 255, 0).astype(np.uint8), mode="L")
    return atomic_write(path, lambda tmp: image.save(tmp, format="PNG"), force=force)


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


def write_mask_nifti(path: str | Path, mask: np.ndarray, reference: Any, *,
                     force: bool = False) -> Path:
    """Label volume (0/1 uint8) in the reference NIfTI's geometry, as ``.nii.gz``."""
    import nibabel as nib

    image = nifti_label_image(mask, reference)
    return atomic_write(path, lambda tmp: nib.save(image, str(tmp)), force=force)


def write_mask_nifti_affine(path: str | Path, mask: np.ndarray, affine: np.ndarray, *,
                            force: bool = False) -> Path:
    """Label volume with a given RAS+ affine (e.g. a DICOM series' geometry)."""
    import nibabel as nib

    image = nib.Nifti1Image((np.asarray(mask) > 0).astype(np.uint8), affine)
    image.set_data_dtype(np.uint8)
    image.header.set_xyzt_units("mm")
    image.header.set_intent("label")
    image.header.set_qform(affine, code=1)
    image.header.set_sform(affine, code=1)
    return atomic_write(path, lambda tmp: nib.save(image, str(tmp)), force=force)


def dicom_segmentation(mask: np.ndarray, datasets: Sequence[Any], *, label: str = "Tumor",
                       description: str | None = None) -> Any:
    """A highdicom binary Segmentation of ``mask`` (N, rows, cols) over ``datasets`` (same order).

    Frames without tumor are left out (highdicom's default); a case without any tumor still
    gets a valid SEG with one empty frame.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    import mtl

    mask = (np.asarray(mask) > 0).astype(np.uint8)
    if mask.shape[0] != len(datasets):
        raise ValueError(f"mask has {mask.shape[0]} frames for {len(datasets)} source images")
    algorithm = hd.AlgorithmIdentificationSequence(
        name="mtl", version=mtl.__version__, family=codes.cid7162.ArtificialIntelligence)
    segment = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=label,
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Neoplasm,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
    )
    series_number = int(getattr(datasets[0], "SeriesNumber", 0) or 0) + 1000
    return hd.seg.Segmentation(
        source_images=list(datasets),
        pixel_array=mask,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment],
        series_instance_uid=hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="mtl",
        manufacturer_model_name="mtl multi-task network",
        software_versions=mtl.__version__,
        device_serial_number="0",
        content_description=(description or "mtl tumor mask (research use, not a diagnosis)")[:64],
        series_description="mtl tumor segmentation",
    )


def write_dicom_seg(path: str | Path, mask: np.ndarray, datasets: Sequence[Any], *,
                    force: bool = False, **options: Any) -> Path:
    seg = dicom_segmentation(mask, datasets, **options)
    return atomic_write(path, lambda tmp: seg.save_as(str(tmp)), force=force)


__all__ = ["OutputExistsError", "atomic_write", "dicom_segmentation", "nifti_label_image",
           "write_bytes", "write_csv", "write_dicom_seg", "write_json", "write_mask_nifti",
           "write_mask_nifti_affine", "write_mask_png"]
