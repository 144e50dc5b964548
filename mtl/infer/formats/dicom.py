"""DICOM: the single-frame images of one series in, the mask out as a DICOM SEG.

A series may be spread over a folder (one folder may hold several series, grouped by
SeriesInstanceUID, :func:`group_series`); its images are sorted along the slice normal, the
modality LUT (rescale slope/intercept) applied. Native order is (slice, row, column). The SEG
(highdicom) is a binary segmentation referencing the source series' images; patient and study
attributes are inherited from the source, invalid inherited values repaired or left out (and
said so).
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from mtl.data.imageio import describe_error
from mtl.infer.case import Case, InputError, InputItem, check_pixels, check_side
from mtl.infer.formats.base import Format

DICOM_SUFFIXES = frozenset({".dcm", ".dicom", ".ima"})


def is_dicom_file(path: Path) -> bool:
    """DICOM Part 10 magic ("DICM" at byte 128) or a DICOM suffix."""
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with path.open("rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"

def dicom_stem(path: Path) -> str:
    """A DICOM file's name without a DICOM suffix (names like ``1.2.840.5`` are kept whole)."""
    return path.stem if path.suffix.lower() in DICOM_SUFFIXES else path.name


def series_name(folder: Path, uid: str, n_in_folder: int, files: Sequence[Path] = ()) -> str:
    if n_in_folder <= 1:
        return folder.name or "dicom"
    number = ""
    if files:
        try:
            import pydicom

            ds = pydicom.dcmread(files[0], stop_before_pixels=True)
            number = str(getattr(ds, "SeriesNumber", "") or "")
        except Exception:  # noqa: BLE001 - the name is cosmetic; reading errors surface later
            number = ""
    return f"{folder.name}_series{number or uid[-8:]}"


def group_series(files: Iterable[Path]) -> tuple[list[tuple[str, tuple[Path, ...]]],
                                                 list[tuple[str, str]]]:
    """Group DICOM files by SeriesInstanceUID (header only); unreadable files are failures."""
    import pydicom

    groups: dict[str, list[Path]] = {}
    failures: list[tuple[str, str]] = []
    for file in files:
        try:
            ds = pydicom.dcmread(file, stop_before_pixels=True)
            uid = str(ds.SeriesInstanceUID)
        except Exception as exc:  # noqa: BLE001 - pydicom raises many types on bad files
            failures.append((str(file), f"cannot read DICOM header ({describe_error(exc)})"))
            continue
        groups.setdefault(uid, []).append(file)
    return [(uid, tuple(paths)) for uid, paths in groups.items()], failures


def load_dicom_case(item: InputItem) -> Case:
    """The single-frame images of one series, sorted along the slice normal."""
    import pydicom

    datasets = []
    for path in item.paths:
        try:
            ds = pydicom.dcmread(path)
        except Exception as exc:  # noqa: BLE001
            raise InputError(f"{path}: cannot read DICOM ({describe_error(exc)})") from exc
        if "PixelData" not in ds:
            raise InputError(f"{path}: DICOM object has no pixel data "
                             f"(SOP class {getattr(ds, 'SOPClassUID', '?')})")
        if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:
            raise InputError(f"{path}: multi-frame DICOM is not supported; "
                             "give a series of single-frame images")
        datasets.append(ds)
    first = datasets[0]
    iop = getattr(first, "ImageOrientationPatient", None)
    positions = [getattr(ds, "ImagePositionPatient", None) for ds in datasets]
    warnings: list[str] = []
    orientation_known = iop is not None and all(p is not None for p in positions)
    if orientation_known:
        iop = np.asarray(iop, dtype=np.float64)
        for ds in datasets[1:]:
            other = getattr(ds, "ImageOrientationPatient", None)
            if other is None or not np.allclose(np.asarray(other, float), iop, atol=1e-4):
                raise InputError(f"{ds.filename}: ImageOrientationPatient differs within the "
                                 "series; a series of parallel slices is expected")
        normal = np.cross(iop[:3], iop[3:])
        depth = [float(np.dot(np.asarray(p, float), normal)) for p in positions]
        order = np.argsort(depth, kind="stable")
        sorted_depth = np.asarray(depth)[order]
        if len(order) > 1 and np.min(np.diff(sorted_depth)) < 1e-4:
            raise InputError(_same_position_message(item, datasets, order, sorted_depth))
    else:
        order = np.argsort([int(getattr(ds, "InstanceNumber", 0) or 0) for ds in datasets],
                           kind="stable")
        warnings.append("no ImagePositionPatient/ImageOrientationPatient: slices ordered by "
                        "InstanceNumber, orientation unknown")
    datasets = [datasets[i] for i in order]
    arrays = []
    for ds in datasets:
        try:
            arr = np.asarray(ds.pixel_array)
            from pydicom.pixels import apply_modality_lut

            arr = np.asarray(apply_modality_lut(arr, ds), dtype=np.float32)
        except Exception as exc:  # noqa: BLE001
            raise InputError(f"{ds.filename}: cannot decode DICOM pixel data "
                             f"({describe_error(exc)})") from exc
        if arr.ndim != 2:
            raise InputError(f"{ds.filename}: pixel data of shape {arr.shape} is not a 2-D "
                             "grey image")
        if str(getattr(ds, "PhotometricInterpretation", "")) == "MONOCHROME1":
            arr = arr.max() - arr
        arrays.append(arr)
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise InputError(f"{item.source}: images of different sizes {sorted(shapes)} in one series")
    stack = np.stack(arrays)
    check_side(Path(datasets[0].filename), stack.shape[1:])
    check_pixels(item.source, stack, "series")
    spacing = None
    if getattr(first, "PixelSpacing", None) is not None:
        spacing = (float(first.PixelSpacing[0]), float(first.PixelSpacing[1]))
    affine = None
    if orientation_known and spacing is not None:
        affine = _dicom_affine(datasets, iop, spacing, warnings)
    elif orientation_known:
        warnings.append("no PixelSpacing: sizes in pixels only")
        orientation_known = False
    return Case(item.name, "dicom", item.source, stack, stack.shape, slice_axis=0,
                affine=affine, orientation_known=orientation_known and affine is not None,
                spacing=spacing, datasets=datasets, warnings=warnings)


def _same_position_message(item: InputItem, datasets: list[Any], order: np.ndarray,
                           sorted_depth: np.ndarray) -> str:
    """One line naming the files of a series that share a slice position (and its folders)."""
    groups: list[list[str]] = []
    for k in range(1, len(order)):
        if sorted_depth[k] - sorted_depth[k - 1] < 1e-4:
            a, b = str(datasets[order[k - 1]].filename), str(datasets[order[k]].filename)
            if groups and groups[-1][-1] == a:
                groups[-1].append(b)
            else:
                groups.append([a, b])
    shown = "; ".join(" = ".join(g) for g in groups[:3])
    more = f" (and {len(groups) - 3} more positions)" if len(groups) > 3 else ""
    folders = sorted({str(Path(p).parent) for p in item.paths})
    hint = ("is it a multi-echo, multi-phase or duplicated series?" if len(folders) == 1 else
            f"the series (one SeriesInstanceUID) has files in {len(folders)} folders "
            f"({', '.join(folders[:4])}{', ...' if len(folders) > 4 else ''}); "
            "a copy of the series? give each folder separately")
    return (f"{item.source}: images of the series at the same position: {shown}{more}; {hint}")


def _dicom_affine(datasets: list[Any], iop: np.ndarray, spacing: tuple[float, float],
                  warnings: list[str]) -> np.ndarray:
    """(slice, row, column) index -> RAS+ mm, from the DICOM patient (LPS) geometry."""
    row_dir, col_dir = iop[:3], iop[3:]  # direction of increasing column / increasing row
    ipp = np.asarray([np.asarray(ds.ImagePositionPatient, float) for ds in datasets])
    if len(ipp) > 1:
        step = (ipp[-1] - ipp[0]) / (len(ipp) - 1)
        gaps = np.linalg.norm(np.diff(ipp, axis=0), axis=1)
        if np.ptp(gaps) > 0.01 * max(float(np.median(gaps)), 1e-6):
            warnings.append(f"slice spacing is not uniform ({gaps.min():.3g}-{gaps.max():.3g} mm); "
                            "volumes use the mean spacing")
    else:
        thickness = float(getattr(datasets[0], "SpacingBetweenSlices", 0) or 0) or float(
            getattr(datasets[0], "SliceThickness", 0) or 0) or 1.0
        step = np.cross(row_dir, col_dir) * thickness
    lps = np.eye(4)
    lps[:3, 0] = step
    lps[:3, 1] = col_dir * spacing[0]
    lps[:3, 2] = row_dir * spacing[1]
    lps[:3, 3] = ipp[0]
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


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


def write_seg_bytes(mask: np.ndarray, datasets: Sequence[Any], **options: Any) -> bytes:
    """The bytes of the SEG of :func:`dicom_segmentation` (``notes=``: its repair lines)."""
    buffer = io.BytesIO()
    dicom_segmentation(mask, datasets, **options).save_as(buffer)
    return buffer.getvalue()


class DicomFormat(Format):
    kind = "dicom"
    what = "a DICOM series"
    suffixes = tuple(sorted(DICOM_SUFFIXES))
    index_order = "slice, row, col"
    mask_format = "dicom-seg"
    aliases = ("seg", "dicomseg", "dicom")
    mask_name = "seg.dcm"
    media_type = "application/dicom"
    mask_label = "dicom-seg"
    mask_kinds = ("dicom",)  # needs the source DICOM series
    mask_needs = "a DICOM series to reference"
    #: a one-file upload: its slice as PNG, a NIfTI volume where it has a position, the SEG
    downloads = ("png", "nifti", "dicom-seg")
    download_title = "DICOM SEG"
    missing_download = "the DICOM file has no position and orientation"
    optional_download = True  # a SEG that fails to build leaves the PNG and NIfTI downloads
    #: "dicom_seg" in ``links.masks``; never ``links.mask`` (a one-file upload's is its PNG)
    link_key, mask_link = "dicom_seg", False
    file_types = "DICOM"
    geometry_mask = "DICOM SEG"
    groups_series = True

    def claims(self, path: Path) -> bool:
        return is_dicom_file(path)

    def stem(self, path: Path) -> str:
        return dicom_stem(path)

    def read(self, item: InputItem, *, axis: int | str = "axial",
             pixel_spacing: tuple[float, float] | None = None) -> Case:
        return load_dicom_case(item)

    def to_native(self, case: Case, stack: np.ndarray) -> np.ndarray:
        return case.native_slices(stack)

    def no_geometry(self, case: Case) -> str:
        if case.datasets:
            first = case.datasets[0]
            lacking = [k for k in ("ImagePositionPatient", "ImageOrientationPatient",
                                   "PixelSpacing") if getattr(first, k, None) is None]
            if lacking:
                return f"the DICOM has no {'/'.join(lacking)}"
        return super().no_geometry(case)

    def cannot_write(self, case: Case) -> str | None:
        if not (case.datasets and case.orientation_known):
            return "it needs a DICOM series with position and orientation"
        return None

    def write_bytes(self, case: Case, stack: np.ndarray, native: np.ndarray,
                    notes: list[str]) -> bytes:
        """The SEG over the case's data sets; inherited values invalid in a SEG are repaired or
        left out, each said in ``notes``."""
        return write_seg_bytes(native, case.datasets, notes=notes)


__all__ = ["DICOM_SUFFIXES", "DicomFormat", "dicom_segmentation", "dicom_stem", "group_series",
           "is_dicom_file", "load_dicom_case", "series_name", "write_seg_bytes"]
