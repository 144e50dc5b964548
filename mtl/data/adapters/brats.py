"""BraTS glioma volumes (NIfTI), read as 2-D slices with a whole-tumor mask.

One folder per subject, one NIfTI file per modality plus the segmentation. The layouts read::

    BraTS 2018/2019 (grade from the folder)   BraTS 2020 (grade from name_mapping.csv)
    MICCAI_BraTS_2019_Data_Training/          MICCAI_BraTS2020_TrainingData/
    ├─ HGG/BraTS19_2013_2_1/                  ├─ name_mapping.csv  (Grade, BraTS_2020_subject_ID)
    │  ├─ BraTS19_2013_2_1_flair.nii.gz       ├─ survival_info.csv
    │  ├─ BraTS19_2013_2_1_t1.nii.gz          └─ BraTS20_Training_001/
    │  ├─ BraTS19_2013_2_1_t1ce.nii.gz           ├─ BraTS20_Training_001_flair.nii
    │  ├─ BraTS19_2013_2_1_t2.nii.gz             ├─ BraTS20_Training_001_t1.nii (t1ce, t2)
    │  └─ BraTS19_2013_2_1_seg.nii.gz            └─ BraTS20_Training_001_seg.nii
    └─ LGG/...

    BraTS 2021 (no grade)                     BraTS 2023+ (no grade)
    BraTS2021_00000/                          BraTS-GLI-00000-000/
    ├─ BraTS2021_00000_flair.nii.gz           ├─ BraTS-GLI-00000-000-t2f.nii.gz
    ├─ BraTS2021_00000_t1.nii.gz (t1ce, t2)   ├─ BraTS-GLI-00000-000-t1n.nii.gz (t1c, t2w)
    └─ BraTS2021_00000_seg.nii.gz             └─ BraTS-GLI-00000-000-seg.nii.gz

The modality is the last ``_``/``-`` token of the file name; aliases are merged: t1 = t1n,
t1ce = t1c = t1gd, t2 = t2w, flair = t2f. A file whose name holds no known token but contains
"seg" is taken as the segmentation (BraTS20_Training_355 ships ``W39_1998.09.19_Segm.nii``).

Slices are cut along ``axis`` and, where the header gives the orientation (qform/sform), turned
upright as a radiologist views them (:mod:`mtl.data.orientation`: transposed/mirrored, never
resampled), which is how ``mtl infer`` shows volume slices to the network; ``upright: false``
keeps the array order. ``meta["affine"]`` says how the array sits in space and
``meta["upright"]`` how the slice was turned. The mask is ``seg > 0`` (whole tumor). Labels: "HGG"/"LGG" on slices with
tumor when the subject's grade is known (else None), "no_tumor" on tumor-free slices.
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from mtl.data.adapters.base import Adapter, DataError, Record
from mtl.data.context import offsets
from mtl.data.orientation import View, upright_transform
from mtl.data.sample import NO_TUMOR, Sample

ALIASES = {
    "t1": "t1n", "t1n": "t1n", "t1native": "t1n",
    "t1ce": "t1c", "t1c": "t1c", "t1gd": "t1c",
    "t2": "t2w", "t2w": "t2w",
    "flair": "t2f", "t2f": "t2f", "t2flair": "t2f",
    "seg": "seg",
}  # fmt: skip
GRADES = ("HGG", "LGG")
GRADE_TABLES = ("name_mapping.csv", "survival_info.csv")
NIFTI_SUFFIXES = (".nii.gz", ".nii")
_TOKEN = re.compile(r"[_-]([A-Za-z0-9]+)$")

# (seg path, its mtime, first modality path, axis, step, min fraction) -> per-slice facts
_SLICE_CACHE: dict[tuple[Any, ...], list[tuple[int, bool]]] = {}


def canonical_modality(name: str) -> str:
    """Map a modality alias (``flair``, ``t1ce``, ``T2w`` ...) to t1n/t1c/t2w/t2f/seg."""
    try:
        return ALIASES[name.lower().replace("-", "").replace("_", "")]
    except KeyError:
        raise ValueError(f"brats: unknown modality {name!r}; known: {sorted(ALIASES)}") from None


def _strip_nifti(name: str) -> str | None:
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return None


def modality_of(filename: str) -> str | None:
    """The canonical modality a NIfTI file name ends with, or None."""
    stem = _strip_nifti(filename)
    if stem is None:
        return None
    match = _TOKEN.search(stem)
    if match and match[1].lower() in ALIASES:
        return ALIASES[match[1].lower()]
    return "seg" if "seg" in stem.lower() else None


@dataclass(frozen=True)
class Subject:
    """One subject folder: its name, grade and canonical modality -> file."""

    name: str
    folder: Path
    grade: str | None
    files: dict[str, Path]


def find_subjects(root: Path) -> list[tuple[Path, list[str]]]:
    """Folders (under root, any depth) that hold NIfTI files, with those file names."""
    found = []
    for folder, _dirs, files in os.walk(root):
        niftis = sorted(f for f in files if _strip_nifti(f) is not None)
        if niftis:
            found.append((Path(folder), niftis))
    return sorted(found)


def grade_from_folders(root: Path, folder: Path) -> str | None:
    """"HGG"/"LGG" when a folder between root and the subject is named so (BraTS 2018/2019)."""
    for part in folder.relative_to(root).parts[:-1]:
        if part.upper() in GRADES:
            return part.upper()
    return None


def read_grade_tables(root: Path) -> dict[str, str]:
    """Subject id -> HGG/LGG from name_mapping.csv / survival_info.csv with a Grade column."""
    grades: dict[str, str] = {}
    for table in sorted(p for name in GRADE_TABLES for p in root.rglob(name)):
        with table.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            fields = reader.fieldnames or ()
            column = next((c for c in fields if c.strip().lower() == "grade"), None)
            if column is None:
                continue
            for row in reader:
                grade = (row.get(column) or "").strip().upper()
                if grade in GRADES:
                    grades.update({v.strip(): grade for k, v in row.items() if k != column and v})
    return grades


def _nifti_header(path: Path) -> Any:
    try:
        return nib.load(str(path))
    except Exception as exc:  # nibabel raises several types on corrupt or truncated files
        raise DataError(f"{path}: cannot read NIfTI ({exc})") from exc


def _read_volume(path: Path) -> np.ndarray:
    try:
        return np.asarray(nib.load(str(path)).dataobj)
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{path}: cannot read NIfTI data ({exc})") from exc


def _slicer(axis: int, index: int) -> tuple[slice | int, ...]:
    return tuple(index if a == axis else slice(None) for a in range(3))


def _in_plane(axis: int) -> tuple[int, int]:
    """The two array axes that remain (rows, cols) after slicing along ``axis``."""
    rows, cols = (a for a in range(3) if a != axis)
    return rows, cols


class BratsAdapter(Adapter):
    """BraTS NIfTI volumes as slices.

    Options: ``modalities`` (default ["flair"], stacked as channels in that order), ``axis``
    (0-2, default 2), ``slice_step`` (default 1), ``min_brain_fraction`` (default 0.05: skip
    tumor-free slices whose first modality is nonzero on less than this fraction of pixels),
    ``include_empty`` (default True) or its inverse ``tumor_only`` (default False), ``upright``
    (default True: slices turned upright where the orientation is known).
    """

    name = "brats"
    option_names = frozenset({"modalities", "axis", "slice_step", "min_brain_fraction", "include_empty",
                                "tumor_only", "upright"})
    summary = "BraTS 2018-2023 glioma NIfTI volumes: multi-modal slices, whole-tumor mask, HGG/LGG"

    def __init__(self, root: str | Path, *, on_error: str = "raise", **options: Any) -> None:
        super().__init__(root, on_error=on_error, **options)
        names = options.get("modalities", ["flair"])
        if isinstance(names, str) or not names:
            raise ValueError(f"brats: modalities must be a non-empty list, got {names!r}")
        self.modalities: list[str] = [canonical_modality(m) for m in names]
        if "seg" in self.modalities:
            raise ValueError("brats: 'seg' is the label, not an input modality")
        self.axis = int(options.get("axis", 2))
        self.slice_step = int(options.get("slice_step", 1))
        self.min_brain_fraction = float(options.get("min_brain_fraction", 0.05))
        self.include_empty = self._include_empty(options)
        self.upright = bool(options.get("upright", True))
        if self.axis not in (0, 1, 2) or self.slice_step < 1:
            raise ValueError(f"brats: need axis in 0..2 and slice_step >= 1, got {options}")

    @staticmethod
    def _include_empty(options: dict[str, Any]) -> bool:
        include = options.get("include_empty")
        tumor_only = options.get("tumor_only")
        if include is not None and tumor_only is not None and bool(include) == bool(tumor_only):
            raise ValueError("brats: include_empty and tumor_only contradict each other")
        if include is not None:
            return bool(include)
        return not bool(tumor_only)

    # -- scanning -------------------------------------------------------------------------------

    def _scan(self) -> list[Record]:
        table_grades = read_grade_tables(self.root)
        records: list[Record] = []
        for folder, files in find_subjects(self.root):
            subject = self._subject(folder, files, table_grades)
            if subject is not None:
                records.extend(self._subject_records(subject))
        return records

    def _subject(
        self, folder: Path, files: list[str], table_grades: dict[str, str]
    ) -> Subject | None:
        by_modality: dict[str, Path] = {}
        for name in files:
            modality = modality_of(name)
            if modality is not None:
                by_modality.setdefault(modality, folder / name)
        missing = [m for m in (*self.modalities, "seg") if m not in by_modality]
        if missing:
            self.skip_or_raise(folder, f"missing {', '.join(missing)} (have {sorted(by_modality)})")
            return None
        grade = grade_from_folders(self.root, folder) or table_grades.get(folder.name)
        return Subject(folder.name, folder, grade, by_modality)

    def _subject_records(self, subject: Subject) -> list[Record]:
        try:
            header = self._check_headers(subject)
            slices = self._slice_facts(subject)
        except DataError as exc:
            self.skip_or_raise(subject.folder, str(exc))
            return []
        zooms = [float(z) for z in header.header.get_zooms()[:3]]
        rows, cols = _in_plane(self.axis)
        common = {
            "subject": subject.name,
            "grade": subject.grade,
            "files": [str(subject.files[m]) for m in self.modalities],
            "seg": str(subject.files["seg"]),
            "spacing": (zooms[rows], zooms[cols]),
            "affine": np.asarray(header.affine, float).tolist(),
            "shape": [int(s) for s in header.shape[:3]],
            "oriented": int(header.header["sform_code"]) > 0 or int(header.header["qform_code"]) > 0,
        }
        return [self._record(subject, index, tumor, common) for index, tumor in slices]

    def _record(self, subject: Subject, index: int, tumor: bool, common: dict[str, Any]) -> Record:
        return Record(
            case_id=f"{subject.name}_axis{self.axis}_{index:03d}",
            patient_id=subject.name,
            presence=int(tumor),
            label=subject.grade if tumor else NO_TUMOR,
            has_mask=True,
            source=str(subject.files[self.modalities[0]]),
            extra={**common, "slice": index},
        )

    def _check_headers(self, subject: Subject) -> Any:
        """Load every needed header; all must be 3-D with the seg's shape. Returns the seg image."""
        seg = _nifti_header(subject.files["seg"])
        if len(seg.shape) != 3:
            raise DataError(f"{subject.files['seg']}: expected a 3-D volume, got {seg.shape}")
        for modality in self.modalities:
            path = subject.files[modality]
            image = _nifti_header(path)
            if image.shape != seg.shape:
                raise DataError(f"{path}: shape {image.shape} differs from seg shape {seg.shape}")
        return seg

    def _slice_facts(self, subject: Subject) -> list[tuple[int, bool]]:
        """(slice index, has tumor) for the slices kept; cached per subject and options."""
        seg_path = subject.files["seg"]
        first = subject.files[self.modalities[0]]
        key = (
            str(seg_path), seg_path.stat().st_mtime_ns, str(first), first.stat().st_mtime_ns,
            self.axis, self.slice_step, self.min_brain_fraction, self.include_empty,
        )  # fmt: skip
        if key not in _SLICE_CACHE:
            _SLICE_CACHE[key] = self._compute_slice_facts(seg_path, first)
        return _SLICE_CACHE[key]

    def _compute_slice_facts(self, seg_path: Path, first: Path) -> list[tuple[int, bool]]:
        others = _in_plane(self.axis)
        tumor = (_read_volume(seg_path) > 0).any(axis=others)
        if self.min_brain_fraction > 0:
            volume = _read_volume(first)
            area = volume.shape[others[0]] * volume.shape[others[1]]
            brain_ok = np.count_nonzero(volume, axis=others) / area >= self.min_brain_fraction
        else:
            brain_ok = np.ones_like(tumor)
        kept = []
        for index in range(0, len(tumor), self.slice_step):
            has_tumor = bool(tumor[index])
            if has_tumor or (self.include_empty and brain_ok[index]):
                kept.append((index, has_tumor))
        return kept

    # -- loading --------------------------------------------------------------------------------

    def volume_slice(self, record: Record) -> tuple[str, int]:
        """A subject's volume, sliced along ``axis``."""
        return f"{record.extra['subject']}/axis{self.axis}", int(record.extra["slice"])

    def load(self, record: Record) -> Sample:
        return self._load(record, 0)

    def load_context(self, record: Record, k: int) -> Sample:
        """The slice with the ``k`` slices on either side of it along ``axis`` as channels,
        offset ``-k`` first, each with every modality (:mod:`mtl.data.context`); the volume's
        first and last slices stand in for neighbours beyond its ends."""
        return self._load(record, k)

    def _load(self, record: Record, k: int) -> Sample:
        extra = record.extra
        index = extra["slice"]
        last = int(extra["shape"][self.axis]) - 1
        channels = [self._read_slice(Path(p), min(max(index + o, 0), last))
                    for o in offsets(k) for p in extra["files"]]
        image = np.stack(channels, axis=-1)
        mask = self._read_slice(Path(extra["seg"]), index) > 0
        turn = View()
        if self.upright:
            turn = upright_transform("nifti", np.asarray(extra["affine"], float), self.axis,
                                     bool(extra.get("oriented", False)))
            image, mask = turn.apply(image), turn.apply(mask)
        return self.sample(
            record, image, mask, blame=extra["seg"],
            subject=extra["subject"],
            grade=extra["grade"],
            slice=index,
            axis=self.axis,
            spacing=tuple(extra["spacing"][::-1] if turn.transpose else extra["spacing"]),
            affine=extra["affine"],
            shape=extra["shape"],
            modalities=list(self.modalities),
            upright={"transpose": turn.transpose, "flip_rows": turn.flip_rows,
                     "flip_cols": turn.flip_cols},
            **({"context_slices": k} if k else {}),
        )

    def _read_slice(self, path: Path, index: int) -> np.ndarray:
        """One slice through the proxy: only that slice is decoded, never the whole volume."""
        try:
            data = np.asarray(nib.load(str(path)).dataobj[_slicer(self.axis, index)])
        except Exception as exc:
            raise DataError(f"{path}: cannot read slice {index} ({exc})") from exc
        return np.asarray(data, dtype=np.float32) if data.dtype.kind == "f" else data
