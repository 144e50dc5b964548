"""Writing inference outputs atomically, never over an existing file unless forced.

Every file is written to a hidden temporary name in its destination folder and then moved into
place in one step, so a crash never leaves a half-written mask or record. Without ``force`` the
move is a hard link that fails if the destination exists (no race between check and write).

Masks go out in the input's own geometry:

- PNG: 8-bit grey, 0 = background, 255 = tumor, at the image's own size;
- NIfTI: a uint8 label volume (0/1) with the input's affine and header (same shape, qform/sform
  codes, voxel sizes), so it overlays exactly in ITK-SNAP or 3D Slicer;
- NRRD (pynrrd): a uint8 label volume (0/1) with the input NRRD's geometry fields (``space``,
  ``space directions``, ``space origin``, ``kinds``, ...) and sizes, gzip-encoded, for 3D Slicer;
- DICOM SEG (highdicom): a binary segmentation referencing the source series' images.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

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


#: patient/study attributes highdicom passes to every SEG (Type 2 there: written empty, never
#: left out, when the source's value cannot be used)
_SEG_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber",
              "StudyID", "StudyDate", "StudyTime", "ReferringPhysicianName")
#: value representations whose inherited values are checked (and repaired where possible)
_CHECKED_VRS = frozenset({"AE", "AS", "CS", "DA", "DT", "LO", "LT", "PN", "SH", "ST", "TM"})


def _valid(vr: str, value: str) -> bool:
    from pydicom import config
    from pydicom.valuerep import validate_value

    try:
        validate_value(vr, value, config.RAISE)
        if value and vr in ("DA", "DT", "TM"):  # the pattern fits; is it a real date/time?
            from pydicom import valuerep

            getattr(valuerep, vr)(value)
    except (ValueError, TypeError):
        return False
    return True


def _repair_value(vr: str, value: str) -> str | None:
    """A valid value of ``vr`` for an invalid ``value`` where its meaning is clear, else None."""
    import re

    from pydicom.valuerep import MAX_VALUE_LEN

    text = value.strip()
    fixed: str | None = None
    if vr == "AS":  # "42", "42Y", "42 y" -> "042Y" (no unit: years)
        m = re.fullmatch(r"0*(\d{1,3})\s*([DWMYdwmy]?)", text)
        fixed = f"{int(m.group(1)):03d}{(m.group(2) or 'Y').upper()}" if m else None
    elif vr == "DA":  # "2024.01.31", "2024-01-31", "2024/01/31" -> "20240131"
        m = re.fullmatch(r"(\d{4})[.\-/](\d{2})[.\-/](\d{2})", text)
        fixed = "".join(m.groups()) if m else None
    elif vr == "TM":  # "12:30", "12:30:05.123" -> "1230", "123005.123"
        m = re.fullmatch(r"(\d{2}):(\d{2})(?::(\d{2})(\.\d{1,6})?)?", text)
        fixed = "".join(g for g in m.groups() if g) if m else None
    elif vr == "CS":
        fixed = text.upper()[:16]
    elif vr == "PN":  # each component group at most 64 characters
        fixed = "=".join(group[:64] for group in text.split("="))
    elif vr in MAX_VALUE_LEN or vr in ("LT", "ST"):
        limit = MAX_VALUE_LEN.get(vr, {"LT": 10240, "ST": 1024}.get(vr, 64))
        fixed = "".join(c for c in text if c >= " " or c in "\r\n\t\f\x1b")[:limit]
    return fixed if fixed is not None and _valid(vr, fixed) else None


def _fix_element(ds: Any, keyword_or_tag: Any, required: bool) -> str | None:
    """Check one element of ``ds``; repair it in place, or empty it (``required``) or remove it.

    Returns a warning naming the attribute, or None if the value was valid."""
    from pydicom.datadict import dictionary_description
    from pydicom.multival import MultiValue

    elem = ds[keyword_or_tag]
    if elem.VR not in _CHECKED_VRS or elem.value is None or elem.value == "":
        return None
    values = list(elem.value) if isinstance(elem.value, MultiValue) else [elem.value]
    texts = [str(v) for v in values]
    if all(_valid(elem.VR, t) for t in texts):
        return None
    repaired = [t if _valid(elem.VR, t) else _repair_value(elem.VR, t) for t in texts]
    try:
        name = dictionary_description(elem.tag)
    except KeyError:
        name = str(elem.tag)
    shown = "\\".join(texts)
    shown = shown if len(shown) <= 40 else shown[:37] + "..."
    what = f"DICOM SEG: the source's {name} {shown!r} is not a valid {elem.VR} value"
    if all(r is not None for r in repaired):
        elem.value = repaired if len(repaired) > 1 else repaired[0]
        return f"{what}; written as {chr(92).join(repaired)!r}"
    if required:
        elem.value = ""
        return f"{what}; written empty"
    del ds[elem.tag]
    return f"{what}; left out"


@contextlib.contextmanager
def _pydicom_value_warnings_muted() -> Iterator[None]:
    """pydicom warns when it meets an invalid value; those are reported as notes instead."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module=r"pydicom\.")
        yield


def _checked_source(source: Any, notes: list[str]) -> Any:
    """A copy of ``source`` whose patient/study attributes highdicom reads are present and valid."""
    import copy

    fixed = copy.deepcopy(source)
    for keyword in _SEG_TYPE2:
        if keyword not in fixed:
            setattr(fixed, keyword, "")  # Type 2: present, possibly empty
            continue
        note = _fix_element(fixed, keyword, True)
        if keyword == "PatientSex" and fixed.PatientSex not in ("", "M", "F", "O"):
            note = (f"DICOM SEG: the source's Patient's Sex {str(fixed.PatientSex)!r} is not M, F "
                    "or O; written empty")
            fixed.PatientSex = ""
        if note:
            notes.append(note)
    return fixed


def _check_inherited(seg: Any, source: Any, notes: list[str]) -> None:
    """Repair or remove invalid values the SEG copied from ``source`` (patient, study, specimen
    modules); highdicom copies them as they are."""
    for elem in list(seg):
        if elem.VR in ("SQ", "UI") or elem.tag.group in (0x0002,) or elem.tag not in source:
            continue
        if source[elem.tag].value != elem.value:  # written by highdicom/mtl, not inherited
            continue
        note = _fix_element(seg, elem.tag, elem.keyword in _SEG_TYPE2)
        if note:
            notes.append(note)


def nrrd_label_header(mask: np.ndarray, geometry: dict[str, Any]) -> dict[str, Any]:
    """The header of a uint8 label NRRD in ``geometry`` (a NRRD's geometry fields)."""
    header = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in geometry.items()}
    directions = header.get("space directions")
    if directions is not None and len(directions) != np.ndim(mask):
        raise ValueError(f"mask of {np.ndim(mask)} axes for {len(directions)} space directions")
    header["type"] = "uint8"
    header["encoding"] = "gzip"
    header["content"] = "mtl tumor mask (1 = tumor)"
    return header


def write_mask_nrrd(path: str | Path, mask: np.ndarray, geometry: dict[str, Any], *,
                    force: bool = False) -> Path:
    """Label volume (0/1 uint8) as an attached ``.nrrd`` in the input NRRD's geometry; ``mask``
    is in the input's axis order (fastest axis first)."""
    import nrrd

    data = (np.asarray(mask) > 0).astype(np.uint8)
    header = nrrd_label_header(data, geometry)
    return atomic_write(path, lambda tmp: nrrd.write(str(tmp), data, header, index_order="F"),
                        force=force)


def write_mask_nrrd_affine(path: str | Path, mask: np.ndarray, affine: np.ndarray, *,
                           force: bool = False) -> Path:
    """Label volume with a given RAS+ affine (a NIfTI or DICOM input), in LPS as Slicer writes."""
    mask = np.asarray(mask)
    if mask.ndim > 3:  # trailing singleton axes of a NIfTI
        mask = mask.reshape(mask.shape[:3])
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(affine, dtype=np.float64)
    geometry = {"space": "left-posterior-superior",
                "space directions": lps[:3, : mask.ndim].T.copy(),
                "space origin": lps[:3, 3].copy(), "kinds": ["domain"] * mask.ndim}
    return write_mask_nrrd(path, mask, geometry, force=force)


def dicom_segmentation(mask: np.ndarray, datasets: Sequence[Any], *, label: str = "Tumor",
                       description: str | None = None, notes: list[str] | None = None) -> Any:
    """A highdicom binary Segmentation of ``mask`` (N, rows, cols) over ``datasets`` (same order).

    Frames without tumor are left out (highdicom's default); a case without any tumor still
    gets a valid SEG with one empty frame.

    Patient and study attributes are inherited from the source series. Inherited values that are
    not valid for their value representation (e.g. a Patient's Age of "42" where AS needs
    "042Y", a date "2024.01.31") are repaired where the meaning is clear, else written empty
    (attributes the SEG requires) or left out, so the SEG validates even when its source does
    not; each change is appended to ``notes`` as a line naming the attribute.
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
    notes = [] if notes is None else notes
    with _pydicom_value_warnings_muted():  # reported in ``notes`` instead
        first = _checked_source(datasets[0], notes)
    seg = hd.seg.Segmentation(
        source_images=[first, *datasets[1:]],
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
    with _pydicom_value_warnings_muted():
        _check_inherited(seg, first, notes)
    return seg


def write_dicom_seg(path: str | Path, mask: np.ndarray, datasets: Sequence[Any], *,
                    force: bool = False, **options: Any) -> Path:
    """The SEG of :func:`dicom_segmentation`; ``notes=`` (a list) receives its repair lines."""
    seg = dicom_segmentation(mask, datasets, **options)
    return atomic_write(path, lambda tmp: seg.save_as(str(tmp)), force=force)


__all__ = ["OutputExistsError", "atomic_write", "dicom_segmentation", "nifti_label_image",
           "write_bytes", "write_csv", "write_dicom_seg", "write_json", "write_mask_nifti",
           "write_mask_nifti_affine", "write_mask_nrrd", "write_mask_nrrd_affine",
           "write_mask_png", "nrrd_label_header"]
