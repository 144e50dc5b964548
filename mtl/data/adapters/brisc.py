"""BRISC 2025: T1 contrast-enhanced slices with tumor type and expert tumor masks.

Fateh et al., "BRISC: Annotated Dataset for Brain Tumor Segmentation and Classification" (2025),
https://www.kaggle.com/datasets/briscdataset/brisc2025 , CC BY 4.0.

On disk (the Kaggle download nests the folder once more: ``brisc2025/brisc2025/...``; the
adapter accepts the dataset folder itself or up to two parents of it)::

    brisc2025/
    ├─ classification_task/
    │  ├─ train/{glioma,meningioma,pituitary,no_tumor}/brisc2025_train_00001_gl_ax_t1.jpg
    │  └─ test/ ...                      (an early release had no train/test level here)
    └─ segmentation_task/
       ├─ train/images/brisc2025_train_00001_gl_ax_t1.jpg
       ├─ train/masks/brisc2025_train_00001_gl_ax_t1.png    (same stem, 0/255 or 0/1)
       └─ test/{images,masks}/ ...

File names are ``brisc2025_<split>_<index>_<tumor>_<plane>_<sequence>``: tumor ``gl`` glioma,
``me`` meningioma, ``pi`` pituitary, ``nt`` or ``no`` no tumor (the README says ``nt``, the
released files use ``no``); plane ``ax``/``co``/``sa``; sequence ``t1``.

Every tumor slice appears in both tasks; the segmentation copy carries the mask, so it is the one
used. No-tumor slices exist only under ``classification_task`` and get an all-background mask.
A classification slice with a tumor but no segmentation copy is kept with ``mask=None``.
No patient ids are published, so each slice is its own "patient" (its file stem).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from PIL import Image

from mtl.data.imageio import ImageReadError, read_gray
from mtl.data.adapters.base import Adapter, DataError, Record
from mtl.data.sample import NO_TUMOR, Sample

TUMOR_CODES = {
    "gl": "glioma",
    "me": "meningioma",
    "pi": "pituitary",
    "nt": NO_TUMOR,
    "no": NO_TUMOR,
}
PLANES = {"ax": "axial", "co": "coronal", "sa": "sagittal"}
CLASS_FOLDERS = {"glioma", "meningioma", "pituitary", NO_TUMOR, "notumor"}
SUBSETS = ("train", "test")
BAD_NAME = "file name is not brisc2025_<split>_<index>_<tumor>_<plane>_<sequence>"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass(frozen=True)
class BriscName:
    """The fields encoded in a BRISC file stem."""

    subset: str
    index: int
    label: str
    plane: str
    sequence: str


def parse_name(stem: str) -> BriscName | None:
    """Parse ``brisc2025_train_00001_gl_ax_t1``; None if the stem does not follow the scheme."""
    parts = stem.lower().split("_")
    if len(parts) != 6 or not parts[0].startswith("brisc") or not parts[2].isdigit():
        return None
    _, subset, index, tumor, plane, sequence = parts
    if subset not in SUBSETS or tumor not in TUMOR_CODES or plane not in PLANES:
        return None
    return BriscName(subset, int(index), TUMOR_CODES[tumor], PLANES[plane], sequence)


def find_dataset_dir(root: Path) -> Path:
    """The folder holding ``segmentation_task``/``classification_task``: root or <= 2 levels in."""
    frontier = [root]
    for _ in range(3):
        for folder in frontier:
            if (folder / "segmentation_task").is_dir() or (folder / "classification_task").is_dir():
                return folder
        frontier = [p for f in frontier for p in sorted(f.iterdir()) if p.is_dir()]
    raise DataError(f"brisc: no segmentation_task/ or classification_task/ folder under {root}")


def _image_size(path: Path) -> tuple[int, int]:
    """(height, width) from the file header, without decoding pixels."""
    with Image.open(path) as img:
        width, height = img.size
    return height, width


def _read_gray(path: Path) -> np.ndarray:
    try:
        return read_gray(path)
    except ImageReadError as exc:
        raise DataError(str(exc)) from exc


class BriscAdapter(Adapter):
    """BRISC 2025. Options: ``subset`` = "train", "test" or None (both, the default)."""

    name = "brisc"
    option_names = frozenset({"subset"})
    summary = "BRISC 2025: T1c slices, glioma/meningioma/pituitary/no_tumor + expert masks"

    def __init__(self, root: str | Path, *, on_error: str = "raise", **options: Any) -> None:
        super().__init__(root, on_error=on_error, **options)
        self.subset: str | None = options.get("subset")
        if self.subset not in (None, *SUBSETS):
            raise ValueError(f"brisc: subset must be 'train', 'test' or None, got {self.subset!r}")

    # -- scanning -------------------------------------------------------------------------------

    def _scan(self) -> list[Record]:
        base = find_dataset_dir(self.root)
        records: dict[str, Record] = {}
        for record in self._scan_segmentation(base / "segmentation_task"):
            records.setdefault(record.case_id, record)
        for record in self._scan_classification(base / "classification_task"):
            records.setdefault(record.case_id, record)
        return sorted(records.values(), key=lambda r: r.case_id)

    def _images(self, folder: Path) -> list[Path]:
        if not folder.is_dir():
            return []
        return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)

    def _wanted(self, parsed: BriscName) -> bool:
        return self.subset is None or parsed.subset == self.subset

    def _scan_segmentation(self, folder: Path) -> list[Record]:
        records = []
        for image in self._images(folder):
            if image.parent.name != "images":
                continue  # the masks themselves, or stray files
            parsed = parse_name(image.stem)
            if parsed is None:
                self.skip_or_raise(image, BAD_NAME)
                continue
            if not self._wanted(parsed):
                continue
            mask = image.parent.parent / "masks" / f"{image.stem}.png"
            if not mask.is_file():
                self.skip_or_raise(image, f"no mask {mask.name} in {mask.parent}")
                continue
            if not self._sizes_match(image, mask):
                continue
            records.append(self._record(image, parsed, mask=mask, task="segmentation"))
        return records

    def _scan_classification(self, folder: Path) -> list[Record]:
        records = []
        for image in self._images(folder):
            parsed = parse_name(image.stem)
            if parsed is None:
                self.skip_or_raise(image, BAD_NAME)
                continue
            folder_class = image.parent.name.lower()
            if folder_class == "notumor":
                folder_class = NO_TUMOR
            if folder_class in CLASS_FOLDERS and folder_class != parsed.label:
                self.skip_or_raise(
                    image, f"folder says {folder_class!r} but the file name says {parsed.label!r}"
                )
                continue
            if self._wanted(parsed):
                records.append(self._record(image, parsed, mask=None, task="classification"))
        return records

    def _sizes_match(self, image: Path, mask: Path) -> bool:
        try:
            image_size, mask_size = _image_size(image), _image_size(mask)
        except (OSError, ValueError) as exc:
            self.skip_or_raise(image, f"cannot read image or mask header ({exc})")
            return False
        if image_size != mask_size:
            self.skip_or_raise(mask, f"mask size {mask_size} differs from image size {image_size}")
            return False
        return True

    def _record(self, image: Path, parsed: BriscName, *, mask: Path | None, task: str) -> Record:
        tumor = parsed.label != NO_TUMOR
        return Record(
            case_id=image.stem,
            patient_id=image.stem,
            presence=int(tumor),
            label=parsed.label,
            has_mask=mask is not None or not tumor,
            source=str(image),
            extra={
                "mask": str(mask) if mask is not None else None,
                "plane": parsed.plane,
                "subset": parsed.subset,
                "sequence": parsed.sequence,
                "task": task,
            },
        )

    # -- loading --------------------------------------------------------------------------------

    def load(self, record: Record) -> Sample:
        image = _read_gray(Path(record.source))
        mask = self._load_mask(record, image.shape)
        return self.sample(record, image, mask, plane=record.extra["plane"],
                           subset=record.extra["subset"], sequence=record.extra["sequence"])

    def _load_mask(self, record: Record, shape: tuple[int, ...]) -> np.ndarray | None:
        mask_path = record.extra.get("mask")
        if mask_path is None:
            return np.zeros(shape[:2], np.uint8) if record.presence == 0 else None
        mask = _read_gray(Path(mask_path))
        if mask.shape != shape[:2]:
            raise DataError(f"{mask_path}: mask shape {mask.shape} differs from image {shape[:2]}")
        threshold = 127 if mask.max() > 1 else 0
        return (mask > threshold).astype(np.uint8)
