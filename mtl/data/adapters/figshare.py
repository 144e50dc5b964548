"""Cheng et al. figshare brain tumor dataset: glioma / meningioma / pituitary, two layouts.

Cheng J., "brain tumor dataset", figshare (2017), doi:10.6084/m9.figshare.1512427. T1-weighted
contrast-enhanced slices of 233 patients, every slice holding a tumor. The layout is detected
from the files (or forced with the ``layout`` option, "jpeg" or "mat").

JPEG + YOLO box layout (as in ``shared/data/figshare-cheng``), class folders directly under the
root or one level down::

    root/
      glioma/      1841.jpg  1841.txt  1842.jpg  1842.txt ...
      meningioma/  1.jpg     1.txt ...
      pituitary/   ...

``N.txt`` holds one line ``class x_center y_center width height``, coordinates normalised to
[0, 1] (YOLO); the class digit (0 pituitary, 1 meningioma, 2 glioma) must agree with the folder.
Where a ``masks/`` folder sits next to the class folders (``masks/N.png``, 0 = background,
non-zero = tumor, the size of ``N.jpg``: Cheng's own outline, as ``cjdata.tumorMask``), a slice
with such a file carries that mask, and ``meta["box"]`` still holds the YOLO box for the box
metrics. A mask whose size differs from its image is a :class:`DataError` naming both files.
Without ``masks/`` (or for a slice with no mask file) the slice labels a box only:
``mask=None``, ``meta["box"]``. The layout has no patient ids: they are guessed from runs of
slices, see :meth:`FigshareAdapter.jpeg_patient_groups`.

Original MATLAB v7.3 release: ``N.mat`` files anywhere under the root (the release ships as four
zip parts; ``cvind.mat``, the authors' cross-validation folds, is ignored), each an HDF5 file
(after a 512-byte MATLAB header) with group ``cjdata`` (shapes as h5py shows them)::

    image        int16 (512, 512)   the slice, transposed
    label        float64 (1, 1)     1 meningioma, 2 glioma, 3 pituitary
    PID          uint16 (n, 1)      patient id as character codes (MATLAB char)
    tumorBorder  float64 (k, 1)     outline points (not used: the mask says the same)
    tumorMask    0/1 (512, 512)     tumor mask, transposed

MATLAB writes arrays column-major, so through h5py every 2-D array appears transposed: image and
mask are transposed back here (rows = image rows), and must then agree in shape. This layout
labels the real mask, the box around it and the patient.

``meta["box"]`` is ``(x0, y0, x1, y1)`` in pixel-edge coordinates, floats: (x0, y0) is the top-left
corner and (x1, y1) the bottom-right corner, so a box over pixel columns c0..c1 has x0=c0,
x1=c1+1. Images load as stored: uint8 grayscale for JPEG, int16 for .mat.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import h5py
import numpy as np

from mtl.data.adapters.base import (
    Adapter,
    DataError,
    Record,
    image_files,
    natural_key,
    visible_dirs,
)
from mtl.data.grouping.slice_runs import DEFAULT_TARGET_SIZE, consecutive_similarity, patient_blocks
from mtl.data.sample import Sample

#: YOLO class digit of the JPEG layout, by class folder
JPEG_CLASS_DIGIT = {"pituitary": 0, "meningioma": 1, "glioma": 2}
#: ``cjdata.label`` of the MATLAB release
MAT_LABELS = {1: "meningioma", 2: "glioma", 3: "pituitary"}
#: how far (as a fraction of the image) a YOLO box may poke out of [0, 1] before it is an error
BOX_TOLERANCE = 0.01
DEFAULT_BLOCK_SIZE = DEFAULT_TARGET_SIZE
#: companion files of the .mat release that hold no slice (cvind.mat: the authors' 5 folds)
MAT_COMPANIONS = frozenset({"cvind.mat"})

Box = tuple[float, float, float, float]


def _plain_number(stem: str) -> bool:
    """True for a file name like "17" (ASCII digits, no leading zero)."""
    return stem.isascii() and stem.isdigit() and str(int(stem)) == stem


def box_from_mask(mask: np.ndarray) -> Box | None:
    """Bounding box (x0, y0, x1, y1) of the non-zero pixels, in pixel-edge coordinates."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return (float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1))


def yolo_to_pixels(box_norm: Box, width: int, height: int) -> Box:
    """Normalised (x0, y0, x1, y1) -> pixel-edge coordinates clipped to the image."""
    x0, y0, x1, y1 = box_norm
    return (
        float(np.clip(x0 * width, 0, width)),
        float(np.clip(y0 * height, 0, height)),
        float(np.clip(x1 * width, 0, width)),
        float(np.clip(y1 * height, 0, height)),
    )


def parse_yolo_text(text: str, expected_digit: int) -> Box:
    """Parse a YOLO box file into one normalised (x0, y0, x1, y1) box (the union of its lines).

    Raises ValueError with a reason on a malformed line, a class digit other than
    ``expected_digit``, or coordinates outside the image.
    """
    lines = [line.split() for line in text.splitlines() if line.strip()]
    if not lines:
        raise ValueError("box file is empty")
    boxes = []
    for fields in lines:
        if len(fields) != 5:
            raise ValueError(f"expected 'class xc yc w h', got {' '.join(fields)!r}")
        try:
            digit = int(fields[0])
            xc, yc, w, h = (float(v) for v in fields[1:])
        except ValueError:
            raise ValueError(f"non-numeric box line {' '.join(fields)!r}") from None
        if digit != expected_digit:
            raise ValueError(
                f"box class digit {digit} disagrees with the folder (expected {expected_digit})"
            )
        box = (xc - w / 2, yc - h / 2, xc + w / 2, yc + h / 2)
        if w <= 0 or h <= 0 or min(box) < -BOX_TOLERANCE or max(box) > 1 + BOX_TOLERANCE:
            raise ValueError(f"box {' '.join(fields[1:])} lies outside the image")
        boxes.append(box)
    x0s, y0s, x1s, y1s = zip(*boxes)
    return (max(min(x0s), 0.0), max(min(y0s), 0.0), min(max(x1s), 1.0), min(max(y1s), 1.0))


def read_matlab_string(dataset: h5py.Dataset) -> str:
    """A MATLAB char array stored in a v7.3 file (uint16 codes) as a Python string."""
    if dataset.attrs.get("MATLAB_empty"):
        return ""
    codes = np.asarray(dataset[()]).ravel()
    return "".join(chr(int(c)) for c in codes).strip("\x00 \t\r\n")


def read_matlab_scalar(dataset: h5py.Dataset) -> float:
    values = np.asarray(dataset[()]).ravel()
    if values.size != 1:
        raise ValueError(f"expected one value, got shape {dataset.shape}")
    return float(values[0])


class FigshareAdapter(Adapter):
    """Cheng et al. figshare set, JPEG+YOLO box layout or original MATLAB v7.3 .mat files.

    The .mat layout carries real patient ids (``cjdata.PID``). The JPEG layout lost them; its
    ids run patient by patient, so patient groups are guessed from runs of consecutive ids with
    :func:`mtl.data.grouping.patient_blocks`: a change of tumor class or a gap in the ids always
    starts a new group; inside a run of one class, a group ends only where the tumor box jumps
    (moves or changes size clearly) and the image does not look like the previous one, and the
    strongest such jumps are taken first, no closer than ``block_size`` slices to another cut.
    Groups are named ``ids-<first>-<last>``; a non-numeric file name gets ``file-<stem>``.

    Options:
        layout: "jpeg", "mat" or None (detect).
        block_size: smallest group, in slices, that the JPEG grouping aims for (default 20):
            larger is safer against patients split across groups, smaller gives finer splits.
        image_similarity: compare neighbouring images too (default True): JPEG scans then read
            small thumbnails once (a few seconds for 2,600 images) and cache them under
            ``$MTL_CACHE_DIR`` or ``~/.cache/mtl``; False uses the box files only.
        cache_dir: cache folder for the thumbnails instead of the default.
    """

    name = "figshare"
    option_names = frozenset({"layout", "block_size", "image_similarity", "cache_dir"})
    summary = "Cheng et al. figshare: glioma/meningioma/pituitary; JPEG+YOLO boxes or .mat masks"

    # --- layout ---------------------------------------------------------------------------------

    def _class_root(self) -> Path | None:
        """The folder holding the class folders (root or one level down), or None."""
        for candidate in [self.root, *visible_dirs(self.root)]:
            if any(d.name.lower() in JPEG_CLASS_DIGIT for d in visible_dirs(candidate)):
                return candidate
        return None

    def _layout(self) -> str:
        forced = self.options.get("layout")
        if forced is not None:
            if forced not in ("jpeg", "mat"):
                raise ValueError(f"figshare layout must be 'jpeg', 'mat' or None, got {forced!r}")
            return str(forced)
        if self._class_root() is not None:
            return "jpeg"
        if next(self.root.rglob("*.mat"), None) is not None:
            return "mat"
        raise DataError(
            f"{self.root}: neither glioma/ meningioma/ pituitary/ folders nor .mat files found"
        )

    def _block_size(self) -> int:
        size = int(self.options.get("block_size", DEFAULT_BLOCK_SIZE))
        if size < 1:
            raise ValueError(f"block_size must be >= 1, got {size}")
        return size

    def _scan(self) -> list[Record]:
        if self._layout() == "mat":
            return self.drop_duplicate_ids(self._scan_mat())
        return self._with_patient_groups(self.drop_duplicate_ids(self._scan_jpeg()))

    # --- JPEG + YOLO layout ---------------------------------------------------------------------

    def _scan_jpeg(self) -> list[Record]:
        class_root = self._class_root()
        if class_root is None:
            raise DataError(f"{self.root}: no glioma/ meningioma/ pituitary/ folders found")
        masks = self._mask_files(class_root)
        records: list[Record] = []
        for folder in visible_dirs(class_root):
            label = folder.name.lower()
            if label in JPEG_CLASS_DIGIT:
                records.extend(self._scan_class_folder(folder, label, masks))
        return records

    @staticmethod
    def _mask_files(class_root: Path) -> dict[str, Path]:
        """``masks/N.png`` next to the class folders, by stem (empty when there is no folder)."""
        folder = next((d for d in visible_dirs(class_root) if d.name.lower() == "masks"), None)
        if folder is None:
            return {}
        return {p.stem: p for p in folder.iterdir() if p.suffix.lower() == ".png" and p.is_file()}

    def _scan_class_folder(self, folder: Path, label: str, masks: dict[str, Path]) -> list[Record]:
        images = {p.stem: p for p in image_files(folder)}
        texts = {p.stem: p for p in folder.glob("*.txt")}
        for stem in sorted(texts.keys() - images.keys(), key=natural_key):
            self.skip_or_raise(texts[stem], "box file without an image")
        records = []
        for stem in sorted(images, key=natural_key):
            if stem not in texts:
                self.skip_or_raise(images[stem], f"no box file {stem}.txt next to the image")
                continue
            record = self._jpeg_record(images[stem], texts[stem], label, masks.get(stem))
            if record is not None:
                records.append(record)
        return records

    def _jpeg_record(
        self, image: Path, text: Path, label: str, mask: Path | None = None
    ) -> Record | None:
        try:
            box_norm = parse_yolo_text(text.read_text(), JPEG_CLASS_DIGIT[label])
        except (OSError, UnicodeDecodeError, ValueError) as err:
            self.skip_or_raise(text, str(err))
            return None
        return Record(
            case_id=image.stem,
            patient_id=f"file-{image.stem}",  # replaced by _with_patient_groups
            presence=1,
            label=label,
            has_mask=mask is not None,
            source=str(image),
            extra={
                "layout": "jpeg",
                "has_box": True,
                "box_norm": box_norm,
                "box_file": str(text),
                "mask_file": str(mask) if mask is not None else None,
            },
        )

    def jpeg_patient_groups(self, records: list[Record]) -> dict[str, str]:
        """Patient group by case id for JPEG-layout records (see the class docstring).

        Only file names that are plain numbers take part; others keep ``file-<stem>``.
        """
        numbered = sorted(
            (r for r in records if _plain_number(r.case_id)),
            key=lambda r: int(r.case_id),
        )
        if not numbered:
            return {}
        similarity = None
        if self.options.get("image_similarity", True):
            similarity = consecutive_similarity(
                [r.source for r in numbered], cache=self.options.get("cache_dir")
            )
        groups = patient_blocks(
            [int(r.case_id) for r in numbered],
            [r.label for r in numbered],
            [r.extra["box_norm"] for r in numbered],
            self._block_size(),
            similarity=similarity,
        )
        return {r.case_id: group for r, group in zip(numbered, groups)}

    def _with_patient_groups(self, records: list[Record]) -> list[Record]:
        groups = self.jpeg_patient_groups(records)
        return [
            dataclasses.replace(r, patient_id=groups[r.case_id]) if r.case_id in groups else r
            for r in records
        ]

    def _load_jpeg(self, record: Record) -> Sample:
        image = self.read_image(Path(record.source))
        height, width = image.shape[:2]
        box = yolo_to_pixels(record.extra["box_norm"], width, height)
        mask = self._read_jpeg_mask(record, image.shape[:2])
        mask_file = {"mask_file": record.extra["mask_file"]} if mask is not None else {}
        return self.sample(record, image, mask, box=box, layout=record.extra["layout"],
                           box_file=record.extra["box_file"], **mask_file)

    def _read_jpeg_mask(self, record: Record, shape: tuple[int, ...]) -> np.ndarray | None:
        """The slice's ``masks/N.png`` as 0/1, or None when it has none; checked against the image."""
        mask_file = record.extra.get("mask_file")
        if mask_file is None:
            return None
        mask = self.read_image(Path(mask_file))
        if mask.shape != tuple(shape):
            self.load_failure(
                mask_file,
                f"mask size {mask.shape[1]}x{mask.shape[0]} differs from image "
                f"{record.source} ({shape[1]}x{shape[0]})",
            )
        # 0/255 as released; a 0/1 mask is accepted too
        binary = (mask > (127 if mask.max() > 1 else 0)).astype(np.uint8)
        if not binary.any():
            self.load_failure(mask_file, f"mask of {record.source} is empty although every "
                              "slice holds a tumor")
        return binary

    # --- MATLAB v7.3 layout ---------------------------------------------------------------------

    def _scan_mat(self) -> list[Record]:
        paths = [p for p in self.root.rglob("*.mat") if p.name.lower() not in MAT_COMPANIONS]
        paths.sort(key=lambda p: natural_key(p.name))
        records = []
        for path in paths:
            record = self._mat_record(path)
            if record is not None:
                records.append(record)
        return records

    def _mat_record(self, path: Path) -> Record | None:
        """Record from label and PID only; the image is not read."""
        try:
            with self._open_mat(path) as f:
                cjdata = f["cjdata"]
                code = read_matlab_scalar(cjdata["label"])
                pid = read_matlab_string(cjdata["PID"])
        except (OSError, KeyError, ValueError, TypeError) as err:
            self.skip_or_raise(path, f"cannot read cjdata label/PID ({type(err).__name__}: {err})")
            return None
        if code not in MAT_LABELS:
            self.skip_or_raise(path, f"cjdata.label is {code:g}, expected 1, 2 or 3")
            return None
        if not pid:
            self.skip_or_raise(path, "cjdata.PID is empty")
            return None
        return Record(
            case_id=path.stem,
            patient_id=pid,
            presence=1,
            label=MAT_LABELS[int(code)],
            has_mask=True,
            source=str(path),
            extra={"layout": "mat", "has_box": True},
        )

    @staticmethod
    def _open_mat(path: Path) -> h5py.File:
        if not h5py.is_hdf5(path):
            raise OSError("not a MATLAB v7.3 (HDF5) file; re-save it with save(..., '-v7.3')")
        return h5py.File(path, "r")

    def _read_mat_arrays(self, path: Path) -> tuple[np.ndarray, np.ndarray]:
        """(image, mask) with MATLAB's column-major transposition undone."""
        try:
            with self._open_mat(path) as f:
                image = np.asarray(f["cjdata/image"][()])
                mask = np.asarray(f["cjdata/tumorMask"][()])
        except (OSError, KeyError, ValueError, TypeError) as err:
            self.load_failure(path, f"cannot read cjdata image/mask ({type(err).__name__}: {err})")
        if image.ndim != 2 or mask.ndim != 2:
            self.load_failure(path, f"image {image.shape} and tumorMask {mask.shape} must be 2-D")
        return image.T, mask.T

    def _load_mat(self, record: Record) -> Sample:
        path = Path(record.source)
        image, mask = self._read_mat_arrays(path)
        if mask.shape != image.shape:
            self.load_failure(
                path, f"tumorMask shape {mask.shape} does not match image shape {image.shape}"
            )
        box = box_from_mask(mask)
        if box is None:
            self.load_failure(path, "tumorMask is empty although every slice holds a tumor")
        return self.sample(record, image, mask, box=box, layout=record.extra["layout"])

    # --- common ---------------------------------------------------------------------------------

    def load(self, record: Record) -> Sample:
        if record.extra.get("layout") == "mat":
            return self._load_mat(record)
        return self._load_jpeg(record)
