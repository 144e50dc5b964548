"""A dataset's slices stacked back into volumes, one NIfTI file per sequence plus the mask
(``mtl data to-nifti``), for ``mtl infer`` and ``mtl serve``, which read volumes.

Datasets such as TCGA-LGG (``kaggle_3m``) ship each patient as numbered 2-D slices, pictures in
the usual radiological orientation (anterior up, the patient's right on the viewer's left). A
model that reads neighbouring slices (``data.context_slices``) needs the whole volume at
inference, and ``mtl infer`` takes volumes as one NIfTI file per sequence (``--input
NAME=FILE``). The volumes are written with an RAS+ affine, the layout a DICOM-to-NIfTI converter
writes, so ``mtl infer`` turns each slice back upright into exactly the picture the dataset
holds (:func:`picture_to_ras` is the inverse of that turn). The voxel size is not in such data
sets: the affine says 1 mm unless the samples carry a pixel spacing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from mtl.data.adapters.base import Adapter, DataError, Record
from mtl.files import safe_file_name


def picture_to_ras(stack: np.ndarray) -> np.ndarray:
    """(S, H, W[, C]) radiological pictures -> (W, H, S[, C]) RAS+ array:
    ``data[i, j, k] = picture_k[H-1-j, W-1-i]`` (x to the patient's right, y anterior)."""
    flipped = stack[:, ::-1, ::-1]
    axes = (2, 1, 0) + tuple(range(3, stack.ndim))
    return np.ascontiguousarray(np.transpose(flipped, axes))


@dataclass(frozen=True)
class WrittenVolume:
    """One volume written: its name, slice count and files by sequence (and ``mask``)."""

    name: str
    slices: int
    files: dict[str, Path]
    #: whether the samples gave a pixel spacing (else the affine says 1 mm)
    spacing_known: bool = False

    def infer_inputs(self) -> str:
        """The ``--input NAME=FILE`` options that give this volume to ``mtl infer``."""
        return " ".join(f"--input {n}={p}" for n, p in self.files.items() if n != "mask")


def volumes_of(adapter: Adapter, only: Iterable[str] = ()) -> dict[str, list[tuple[int, Record]]]:
    """The adapter's records grouped by volume (:meth:`Adapter.volume_slice`), each in slice
    order; ``only``: keep the volumes whose name or patient id is listed. A dataset of single
    images has no volumes: refused."""
    wanted = set(only)
    groups: dict[str, list[tuple[int, Record]]] = {}
    for record in adapter.records():
        where = adapter.volume_slice(record)
        if where is None:
            raise DataError(f"{adapter.name}: its items are single images, not slices of volumes")
        if wanted and where[0] not in wanted and record.patient_id not in wanted:
            continue
        groups.setdefault(where[0], []).append((where[1], record))
    unknown = sorted(w for w in wanted if w not in groups
                     and not any(r.patient_id == w for rows in groups.values() for _, r in rows))
    if unknown:
        raise DataError(f"{adapter.name}: no volume named {', '.join(unknown)} in {adapter.root}")
    return {name: sorted(rows, key=lambda r: r[0]) for name, rows in sorted(groups.items())}


def write_volume(adapter: Adapter, name: str, rows: list[tuple[int, Record]], out: Path
                 ) -> WrittenVolume:
    """Stack one volume's slices and write ``<out>/<name>/<name>_<sequence>.nii.gz`` per channel
    and ``<name>_mask.nii.gz`` (0/1); ``mtl infer`` names the case after the common start,
    ``<name>``. Every slice number between the first and the last must be there."""
    import nibabel as nib

    numbers = [n for n, _ in rows]
    missing = sorted(set(range(numbers[0], numbers[-1] + 1)) - set(numbers))
    if missing:
        raise DataError(f"{name}: slice(s) {', '.join(map(str, missing[:8]))} missing between "
                        f"{numbers[0]} and {numbers[-1]}; a volume needs every slice (drop "
                        "adapter options that leave slices out, such as keep or slice_step)")
    samples = [adapter.load(record) for _, record in rows]
    images = [np.asarray(s["image"]) for s in samples]
    shapes = {i.shape for i in images}
    if len(shapes) != 1:
        raise DataError(f"{name}: its slices differ in shape ({sorted(shapes)})")
    stack = np.stack([i if i.ndim == 3 else i[..., None] for i in images])  # (S, H, W, C)
    meta = samples[0]["meta"]
    channels = (meta.get("channels") or meta.get("modalities")
                or [f"channel{c}" for c in range(stack.shape[-1])])
    spacing = meta.get("spacing")
    affine = np.eye(4)
    known = spacing is not None and bool(np.all(np.isfinite(spacing[:2]))
                                         and np.all(np.asarray(spacing[:2]) > 0))
    if known:
        # rows of a picture run posterior (y), columns the patient's left (x): RAS x <- columns
        affine[0, 0], affine[1, 1] = float(spacing[1]), float(spacing[0])
    stem = safe_file_name(name, "volume")
    folder = out / stem
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    for c, channel in enumerate(channels):
        path = folder / f"{stem}_{safe_file_name(str(channel), 'volume')}.nii.gz"
        files[str(channel)] = _save(nib, picture_to_ras(stack[..., c]), affine, path)
    masks = [s["mask"] for s in samples]
    if all(m is not None for m in masks):
        truth = picture_to_ras(np.stack([np.asarray(m) > 0 for m in masks]).astype(np.uint8))
        files["mask"] = _save(nib, truth, affine, folder / f"{stem}_mask.nii.gz")
    return WrittenVolume(name, len(rows), files, known)


def write_volumes(adapter: Adapter, out: Path, only: Iterable[str] = (),
                  progress: Callable[[Iterable[Any]], Iterable[Any]] = iter) -> list[WrittenVolume]:
    """Every volume of the adapter (or those in ``only``) as :func:`write_volume` writes it."""
    groups = volumes_of(adapter, only)
    return [write_volume(adapter, name, groups[name], out) for name in progress(list(groups))]


def _save(nib: Any, data: np.ndarray, affine: np.ndarray, path: Path) -> Path:
    image = nib.Nifti1Image(data, affine)
    image.header.set_sform(affine, code=1)  # scanner coordinates: the orientation is known
    image.header.set_qform(affine, code=1)
    nib.save(image, str(path))
    return path
