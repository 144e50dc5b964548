"""LGG segmentation dataset (Buda et al. 2019): TCGA lower-grade glioma slices with FLAIR masks.

Kaggle "lgg-mri-segmentation" (mateuszbuda), 110 TCGA-LGG patients, 3929 slices. On disk
(the download holds ``kaggle_3m/`` and a duplicate ``lgg-mri-segmentation/kaggle_3m/``; the
first folder found with patient folders is used, so slices are never counted twice)::

    kaggle_3m/
    ├─ data.csv                                   Patient, ..., neoplasm_histologic_grade, ...
    ├─ TCGA_CS_4941_19960909/
    │  ├─ TCGA_CS_4941_19960909_1.tif        256x256x3 uint8: pre-contrast, FLAIR, post-contrast
    │  ├─ TCGA_CS_4941_19960909_1_mask.tif   256x256 uint8, 0 background / 255 abnormality
    │  └─ ...
    └─ ...

``data.csv`` gives one row per patient (``Patient`` = ``TCGA_CS_4941``); its
``neoplasm_histologic_grade`` 1 or 2 means WHO grade II or III, reported here as "G2"/"G3".
The grade belongs to the patient; a slice whose mask is empty holds no tumor and is labelled
``no_tumor`` with presence 0, a slice with tumor gets the grade (None when the grade is missing,
or when ``label_from="none"``).
"""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from mtl.data.adapters.base import Adapter, DataError, Record
from mtl.data.context import channel_name, clamped_index, offsets
from mtl.data.sample import NO_TUMOR, Sample

CHANNELS = ("pre-contrast", "flair", "post-contrast")
GRADES = {1: "G2", 2: "G3"}
LABEL_FROM = ("grade", "none")
KEEP = ("all", "tumor", "tumor-free")
_SLICE = re.compile(r"^(?P<case>.+)_(?P<index>\d+)$")


def patient_of(folder_name: str) -> str:
    """``TCGA_CS_4941_19960909`` -> ``TCGA_CS_4941`` (the first three underscore parts)."""
    return "_".join(folder_name.split("_")[:3])


def find_data_dir(root: Path) -> Path:
    """The folder whose sub-folders hold ``*_mask.tif``: root, root/kaggle_3m or one level more."""
    candidates = [root, root / "kaggle_3m", root / "lgg-mri-segmentation" / "kaggle_3m"]
    candidates += sorted(p / "kaggle_3m" for p in root.iterdir() if p.is_dir())
    for folder in candidates:
        if folder.is_dir() and any(folder.glob("*/*_mask.tif")):
            return folder
    raise DataError(f"lgg: no patient folders with *_mask.tif files under {root}")


def parse_grade(value: str | None) -> str | None:
    """``"1"``/``"1.0"`` -> "G2", ``"2"`` -> "G3"; empty, NA or anything else -> None."""
    try:
        number = float(value) if value not in (None, "") else math.nan
    except ValueError:
        return None
    if math.isnan(number) or not number.is_integer():
        return None
    return GRADES.get(int(number))


def read_grades(path: Path) -> dict[str, str | None]:
    """Patient -> grade from ``data.csv``; {} when the file is absent."""
    if not path.is_file():
        return {}
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        fields = set(reader.fieldnames or ())
        if not {"Patient", "neoplasm_histologic_grade"} <= fields:
            raise DataError(f"{path}: needs columns Patient and neoplasm_histologic_grade")
        return {
            row["Patient"].strip(): parse_grade(row["neoplasm_histologic_grade"].strip())
            for row in reader
            if row.get("Patient")
        }


def _read_tif(path: Path) -> np.ndarray:
    try:
        return np.asarray(tifffile.imread(path))
    except Exception as exc:  # tifffile raises several types on corrupt files
        raise DataError(f"{path}: cannot read TIFF ({exc})") from exc


def _tif_shape(path: Path) -> tuple[int, ...]:
    """The array shape from the TIFF header, without decoding pixels."""
    with tifffile.TiffFile(path) as tif:
        return tuple(tif.pages[0].shape)


class LggAdapter(Adapter):
    """LGG (Kaggle lgg-mri-segmentation).

    Options:
    - ``label_from``: "grade" (default) or "none";
    - ``channel``: one of :data:`CHANNELS` to keep that sequence alone as a grey slice (e.g.
      "post-contrast", T1-weighted contrast-enhanced like figshare and BRISC); default all three;
    - ``keep``: "all" (default), "tumor" or "tumor-free" slices (by the mask);
    - ``slice_step``: keep every n-th slice of each patient (default 1): neighbouring slices are
      nearly the same image, so a step of 2-3 keeps most of the variety at a fraction of the cost.
    """

    name = "lgg"
    option_names = frozenset({"label_from", "channel", "keep", "slice_step"})
    summary = "LGG segmentation (Buda 2019): TCGA lower-grade glioma slices + masks, G2/G3"

    def __init__(self, root: str | Path, *, on_error: str = "raise", **options: Any) -> None:
        super().__init__(root, on_error=on_error, **options)
        self.label_from: str = options.get("label_from", "grade")
        if self.label_from not in LABEL_FROM:
            raise ValueError(f"lgg: label_from must be 'grade' or 'none', got {self.label_from!r}")
        self.channel: str | None = options.get("channel")
        if self.channel is not None and self.channel not in CHANNELS:
            raise ValueError(f"lgg: channel must be one of {', '.join(CHANNELS)}, got {self.channel!r}")
        self.keep: str = options.get("keep", "all")
        if self.keep not in KEEP:
            raise ValueError(f"lgg: keep must be one of {', '.join(KEEP)}, got {self.keep!r}")
        step = options.get("slice_step", 1)
        if isinstance(step, bool) or not isinstance(step, int) or step < 1:
            raise ValueError(f"lgg: slice_step must be a whole number >= 1, got {step!r}")
        self.slice_step: int = step

    # -- scanning -------------------------------------------------------------------------------

    def _scan(self) -> list[Record]:
        data_dir = find_data_dir(self.root)
        csv_path = next(
            (p / "data.csv" for p in (data_dir, self.root) if (p / "data.csv").is_file()),
            data_dir / "data.csv",
        )
        grades = read_grades(csv_path)
        records: list[Record] = []
        for folder in sorted(p for p in data_dir.iterdir() if p.is_dir()):
            records.extend(self._scan_patient(folder, grades.get(patient_of(folder.name))))
        return records

    def _scan_patient(self, folder: Path, grade: str | None) -> list[Record]:
        names = {p.name for p in folder.glob("*.tif")}
        if not names and folder.name.startswith("TCGA_"):
            self.skip_or_raise(folder, "patient folder holds no .tif slices")
        slices: list[tuple[int, Path, Path]] = []
        for name in sorted(names):
            path = folder / name
            if name.endswith("_mask.tif"):
                if name.replace("_mask.tif", ".tif") not in names:
                    self.skip_or_raise(path, "mask without its image")
                continue
            match = _SLICE.match(path.stem)
            mask = folder / f"{path.stem}_mask.tif"
            if match is None:
                self.skip_or_raise(path, "file name is not <case>_<slice>.tif")
            elif mask.name not in names:
                self.skip_or_raise(path, f"no mask {mask.name}")
            else:
                slices.append((int(match["index"]), path, mask))
        records = []
        for index, image, mask in sorted(slices):
            record = self._slice_record(folder, index, image, mask, grade)
            if record is not None and self._kept(record):
                records.append(record)
        return records[:: self.slice_step]

    def _kept(self, record: Record) -> bool:
        if self.keep == "tumor":
            return bool(record.presence)
        if self.keep == "tumor-free":
            return not record.presence
        return True

    def _slice_record(
        self, folder: Path, index: int, image: Path, mask: Path, grade: str | None
    ) -> Record | None:
        try:
            image_shape = _tif_shape(image)
        except (OSError, ValueError, tifffile.TiffFileError) as exc:
            self.skip_or_raise(image, f"cannot read TIFF ({exc})")
            return None
        try:
            mask_pixels = np.asarray(tifffile.imread(mask))
        except Exception as exc:  # tifffile raises several types on corrupt files
            self.skip_or_raise(mask, f"cannot read TIFF ({exc})")
            return None
        if mask_pixels.ndim == 3 and mask_pixels.shape[-1] == 1:
            mask_pixels = mask_pixels[..., 0]
        if mask_pixels.shape != image_shape[:2]:
            self.skip_or_raise(
                mask, f"mask shape {mask_pixels.shape} differs from image shape {image_shape[:2]}"
            )
            return None
        presence = int(bool(mask_pixels.any()))
        return Record(
            case_id=f"{folder.name}_{index}",
            patient_id=patient_of(folder.name),
            presence=presence,
            label=self._label(presence, grade),
            has_mask=True,
            source=str(image),
            extra={"mask": str(mask), "slice": index, "grade": grade, "folder": folder.name},
        )

    def _label(self, presence: int, grade: str | None) -> str | None:
        if not presence:
            return NO_TUMOR
        return grade if self.label_from == "grade" else None

    # -- loading --------------------------------------------------------------------------------

    def load(self, record: Record) -> Sample:
        image, channels = self._pixels(Path(record.source))
        mask = _read_tif(Path(record.extra["mask"]))
        return self.sample(record, image, mask, blame=record.extra["mask"],
                           slice=record.extra["slice"], grade=record.extra["grade"],
                           channels=channels)

    def volume_slice(self, record: Record) -> tuple[str, int]:
        """A patient folder is one volume; its slices are numbered by their file names."""
        return record.extra["folder"], int(record.extra["slice"])

    def load_context(self, record: Record, k: int) -> Sample:
        """The slice with the ``k`` slices on either side of it in the patient's volume as
        channels, offset ``-k`` first (:mod:`mtl.data.context`): every slice of the folder
        counts, whatever ``keep`` or ``slice_step`` leave out of the records, and a volume's
        end slice stands in for the neighbours beyond it."""
        path = Path(record.source)
        index = int(record.extra["slice"])
        case = _SLICE.match(path.stem)["case"]  # as the slice files are named
        available = self._slice_numbers(path.parent, case)
        mask = _read_tif(Path(record.extra["mask"]))
        parts, channels = [], []
        for offset in offsets(k):
            if offset == 0:
                neighbour = path
            else:
                number = clamped_index(index + offset, available)
                neighbour = path.with_name(f"{case}_{number}.tif")
            image, names = self._pixels(neighbour)
            if offset and image.shape[:2] != mask.shape[:2]:
                raise DataError(f"{neighbour}: slice shape {image.shape[:2]} differs from "
                                f"{path.name}'s {mask.shape[:2]} in the same volume")
            parts.append(image if image.ndim == 3 else image[..., None])
            channels.extend(channel_name(n, offset) for n in names)
        return self.sample(record, np.concatenate(parts, axis=-1), mask,
                           blame=record.extra["mask"], slice=index, grade=record.extra["grade"],
                           channels=channels, context_slices=k)

    def _pixels(self, path: Path) -> tuple[np.ndarray, list[str]]:
        """One slice's image (the ``channel`` option's sequence alone, if set) and the names
        of its channels."""
        image = _read_tif(path)
        if self.channel is None:
            return image, list(CHANNELS)
        if image.ndim != 3 or image.shape[-1] != len(CHANNELS):
            raise DataError(f"{path}: channel={self.channel!r} needs a {len(CHANNELS)}-channel "
                            f"slice, found shape {image.shape}")
        return image[..., CHANNELS.index(self.channel)], [self.channel]

    def _slice_numbers(self, folder: Path, case: str) -> list[int]:
        """The slice numbers of a patient's volume: its ``<case>_<n>.tif`` files (cached)."""
        cache = self.__dict__.setdefault("_slices_of", {})
        if (folder, case) not in cache:
            numbers = sorted(int(m["index"]) for p in folder.glob("*.tif")
                             if not p.name.endswith("_mask.tif")
                             and (m := _SLICE.match(p.stem)) is not None and m["case"] == case)
            if not numbers:
                raise DataError(f"{folder}: holds no {case}_<slice>.tif slices")
            cache[(folder, case)] = numbers
        return cache[(folder, case)]
