"""Healthy-volume check: how often a model calls slices of a tumor-free brain volume "tumor".

Every slice with brain content of a NIfTI volume is run through the model, in each of the
three planes, and the share of slices called tumor is reported per plane and overall. The
volume is read by :func:`mtl.infer.readers.load_nifti_case` (as ``mtl infer`` reads it) and run
through :class:`mtl.infer.predict.Predictor` (the model's stored preprocessing).

Orientation: the training images are upright 2-D slices (JPEG/MAT datasets), so by default the
check shows the network each slice upright, as ``mtl infer`` does (:func:`mtl.infer.readers.
turn_upright`; axial: anterior up, patient's right on the left; coronal: superior up; sagittal:
superior up, anterior on the left). ``orientation="native"`` runs the file's array-order slices
instead (what ``mtl infer`` did before it turned slices upright). Volumes without qform/sform
orientation are cut along the three array axes, in array order.

Slices checked: a slice has brain content when at least ``min_fraction`` (default 5 %, as the
BraTS adapter's ``min_brain_fraction``) of its pixels are above ``level`` (default 0.1) times
the volume's reference intensity, the 99th percentile of its non-zero voxels (a robust maximum:
one hot voxel does not raise it). Constant slices are never checked.

``mni152`` names the MNI152 2009a T1 template that ships inside nilearn's wheel; it is found in
the installed package, never downloaded (``pip install nilearn`` or ``pip install -e .[test]``).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mtl.data.preprocess import context_slices, sequence_names
from mtl.infer.predict import Predictor, is_constant, load_model
from mtl.infer.readers import Case, InputItem, kind_of, load_nifti_case, turn_upright
from mtl.model.inference import jit_for_batches

PLANES = ("axial", "coronal", "sagittal")
MNI152 = "mni152"
#: the template inside the nilearn package folder
MNI152_FILE = Path("datasets", "data", "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz")


class HealthyVolumeError(ValueError):
    """A healthy volume that cannot be found or used; the message says why."""


def mni152_path() -> Path:
    """The MNI152 T1 template in the installed nilearn package (nilearn is not imported)."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise HealthyVolumeError("mni152: the MNI152 template ships with nilearn, which is not "
                                 "installed; run `pip install nilearn` or `pip install -e .[test]`")
    path = Path(list(spec.submodule_search_locations)[0]) / MNI152_FILE
    if not path.is_file():
        raise HealthyVolumeError(f"mni152: {path} is missing from the installed nilearn "
                                 "package; reinstall it with `pip install nilearn`")
    return path


def check_grey_model(model: Any) -> None:
    """Refuse a model that reads named MR sequences: a healthy volume is one grey volume, and a
    grey copy in every channel is never made (:mod:`mtl.data.preprocess`). ``model`` is a
    loaded mtl model or a :class:`~mtl.infer.predict.Predictor`."""
    spec = getattr(model, "preprocessing", None) or {}
    names = sequence_names(spec) or []
    if context_slices(spec):
        raise HealthyVolumeError(
            f"--healthy-volume: this model reads each slice with {context_slices(spec)} "
            "neighbouring slice(s) per side (data.context_slices); the check runs only on "
            "models of one grey slice")
    if len(names) > 1:
        raise HealthyVolumeError(
            f"--healthy-volume: this model reads {len(names)} MR sequences ({', '.join(names)}) "
            "and a healthy volume is one grey volume; the check runs only on models with one "
            "grey input channel")


def resolve_healthy_volume(spec: str | Path) -> Path:
    """``mni152`` -> the template in nilearn; otherwise an existing NIfTI file."""
    if str(spec).strip().lower() == MNI152:
        return mni152_path()
    path = Path(spec).expanduser()
    if not path.is_file():
        raise HealthyVolumeError(f"--healthy-volume {spec}: no such file (give a NIfTI volume "
                                 f"or {MNI152!r})")
    if kind_of(path) != "nifti":
        raise HealthyVolumeError(f"--healthy-volume {spec}: not a NIfTI .nii/.nii.gz volume")
    return path


def content_slices(slices: np.ndarray, reference: float, level: float = 0.1,
                   min_fraction: float = 0.05) -> np.ndarray:
    """Bool (N,): slices with at least ``min_fraction`` of pixels above ``level * reference``."""
    flat = np.asarray(slices, dtype=np.float32).reshape(len(slices), -1)
    above = np.count_nonzero(flat > level * reference, axis=1) / flat.shape[1]
    return (above >= min_fraction) & np.array([not is_constant(s) for s in slices], dtype=bool)


def reference_intensity(volume: np.ndarray) -> float:
    """The 99th percentile of the volume's finite non-zero voxels (0 if there are none)."""
    values = volume[np.isfinite(volume) & (volume != 0)]
    return float(np.percentile(values, 99)) if values.size else 0.0


def summarize(presence: np.ndarray, type_probs: np.ndarray, mask_px: np.ndarray,
              slice_px: np.ndarray, classes: Sequence[str], threshold: float) -> dict[str, Any]:
    """Shares and counts over checked slices (arrays aligned by slice)."""
    n = len(presence)
    called = presence >= threshold
    has_mask = mask_px > 0
    labels = np.argmax(type_probs, axis=1) if n else np.zeros(0, int)
    counts = {c: int(np.count_nonzero(labels[called] == k)) for k, c in enumerate(classes)}

    def share(flags: np.ndarray) -> float | None:
        return float(np.mean(flags)) if n else None

    return {
        "slices_checked": int(n),
        "called_tumor": int(np.count_nonzero(called)),
        "share_called_tumor": share(called),
        "share_mask_nonempty": share(has_mask),
        "share_called_tumor_with_mask": share(called & has_mask),
        "mean_presence": float(np.mean(presence)) if n else None,
        "max_presence": float(np.max(presence)) if n else None,
        "mean_mask_fraction": float(np.mean(mask_px / slice_px)) if n else None,
        "type_counts_called_tumor": counts,
    }


def _planes(path: Path, orientation: str) -> list[tuple[str, Case]]:
    """(plane name, case cut along it, turned upright unless orientation is "native")."""
    item = InputItem(path.name, "nifti", path, (path,))
    first = load_nifti_case(item, PLANES[0])
    if first.orientation_known:
        named = [(p, first if p == PLANES[0] else load_nifti_case(item, p)) for p in PLANES]
    else:  # no orientation: the three array axes
        named = [(f"axis{a}", load_nifti_case(item, a)) for a in range(3)]
    return [(name, turn_upright(case) if orientation == "upright" else case)
            for name, case in named]


def _predict_slices(predictor: Predictor, slices: list[np.ndarray], bar: Any) -> dict[str, Any]:
    """Presence, type probabilities and mask pixel counts for slices, in chunks."""
    presence, types, mask_px = [], [], []
    step = predictor.batch_size
    for start in range(0, len(slices), step):
        pred = predictor.predict(slices[start : start + step])
        presence.append(pred.presence)
        types.append(pred.type_probs)
        mask_px.append(pred.mask.reshape(len(pred.mask), -1).sum(axis=1))
        bar.update(len(pred.presence))
    k = len(predictor.classes)
    return {
        "presence": np.concatenate(presence) if presence else np.zeros(0, np.float32),
        "type": np.concatenate(types) if types else np.zeros((0, k), np.float32),
        "mask_px": np.concatenate(mask_px) if mask_px else np.zeros(0),
    }


def healthy_volume_check(
    model: Any,
    path: str | Path,
    *,
    threshold: float = 0.5,
    orientation: str = "upright",
    level: float = 0.1,
    min_fraction: float = 0.05,
    batch_size: int = 16,
    progress: bool | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    """Run the model over every slice with brain content of a healthy NIfTI volume.

    ``model`` is a loaded mtl model or a :class:`~mtl.infer.predict.Predictor` (its own
    threshold and batch size are then used for the mask). A slice is called tumor when its
    presence probability is >= ``threshold``. Returns per-plane and overall summaries
    (:func:`summarize`) plus how the slices were chosen and oriented. ``progress`` None: a bar
    only when stderr is a terminal.
    """
    from tqdm import tqdm

    if orientation not in ("upright", "native"):
        raise ValueError(f"orientation must be 'upright' or 'native', got {orientation!r}")
    check_grey_model(model)
    predictor = model if isinstance(model, Predictor) else Predictor(
        model, threshold=threshold, batch_size=batch_size,
        jit_compile=jit_for_batches(batch_size))
    path = Path(path)
    planes = _planes(path, orientation)
    reference = reference_intensity(planes[0][1].slices)
    chosen = [(name_, case, np.flatnonzero(content_slices(case.slices, reference, level,
                                                          min_fraction)))
              for name_, case in planes]
    total = sum(len(idx) for *_, idx in chosen)
    disable = None if progress is None else not progress
    results: dict[str, Any] = {}
    parts: list[tuple[dict[str, Any], np.ndarray]] = []
    with tqdm(total=total, desc=f"healthy check {name or path.name}", unit="slice",
              file=sys.stderr, disable=disable, dynamic_ncols=True, leave=False) as bar:
        for plane, case, idx in chosen:
            slices = [case.slices[i] for i in idx]
            out = _predict_slices(predictor, slices, bar)
            px = np.array([s.size for s in slices], dtype=np.float64)
            results[plane] = {"slice_axis": case.slice_axis, "n_slices": case.n_slices,
                              **summarize(out["presence"], out["type"], out["mask_px"], px,
                                          predictor.classes, threshold)}
            parts.append((out, px))
    overall = summarize(*(np.concatenate([o[k] for o, _ in parts])
                          for k in ("presence", "type", "mask_px")),
                        np.concatenate([px for _, px in parts]), predictor.classes, threshold)
    first = planes[0][1]
    return {
        "volume": name or str(path),
        "path": str(path),
        "shape": list(first.native_shape),
        "threshold": threshold,
        "mask_threshold": predictor.threshold,
        "orientation": orientation if first.orientation_known else "native (orientation unknown)",
        "content_rule": {"level": level, "min_fraction": min_fraction,
                         "reference_intensity": reference},
        "planes": results,
        "overall": overall,
        "warnings": list(first.warnings),
    }


def check_healthy_volumes(model: Any, volumes: Sequence[str | Path], **options: Any
                          ) -> list[dict[str, Any]]:
    """:func:`healthy_volume_check` for each volume (``mni152`` or a NIfTI path), in order."""
    paths = [resolve_healthy_volume(v) for v in volumes]  # every spec checked before any work
    return [healthy_volume_check(model, p, name=str(v), **options) for v, p in zip(volumes, paths)]


def check_model_file(model_path: str | Path, volumes: Sequence[str | Path] = (MNI152,),
                     **options: Any) -> list[dict[str, Any]]:
    """Load a ``.keras`` model and check it on healthy volumes; no dataset needed."""
    return check_healthy_volumes(load_model(model_path), volumes, **options)


def format_summary(result: dict[str, Any]) -> str:
    """One line: share of checked slices called tumor, overall and per plane."""

    def pct(entry: dict[str, Any]) -> str:
        share = entry["share_called_tumor"]
        return "n/a" if share is None else f"{100 * share:.1f}%"

    planes = ", ".join(f"{p} {pct(e)}" for p, e in result["planes"].items())
    overall = result["overall"]
    return (f"{result['volume']} ({result['orientation']}): {pct(overall)} of "
            f"{overall['slices_checked']} slices called tumor ({planes})")


__all__ = ["MNI152", "HealthyVolumeError", "PLANES", "check_grey_model", "check_healthy_volumes",
           "check_model_file", "content_slices", "format_summary", "healthy_volume_check", "mni152_path",
           "reference_intensity", "resolve_healthy_volume", "summarize"]
