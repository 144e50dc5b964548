"""Running the model over a case's slices: batching, flip TTA, thresholds, post-processing.

A :class:`Predictor` holds the model (loaded once) and the preprocessing stored with it, and
turns a stack of 2-D slices into per-slice presence and type probabilities and a mask probability
map *at each slice's own size* (via :func:`mtl.data.preprocess.prepare_image` and
:func:`~mtl.data.preprocess.unletterbox`), then a binary mask.

The network call is one function, ``forward(x) -> {"presence": (B, 1), "type": (B, K),
"mask": (B, S, S, 1)}`` on NumPy batches of network inputs; by default it runs the model's
network as one TensorFlow graph (:func:`compiled_forward`), and tests or other runtimes may pass
their own.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mtl.data.preprocess import Letterbox, prepare_image, unletterbox
from mtl.model.inference import Forward, checked_jit_compile, compiled_forward, with_flip_tta

class ModelError(RuntimeError):
    """The model file cannot be loaded or is not an mtl multi-task model."""


@dataclass
class CasePrediction:
    """Per-slice results, slice order as in the case; arrays at each slice's own size.

    ``presence`` (N,) and ``type_probs`` (N, K) are NaN on slices that were not run (constant
    slices, e.g. empty slices at the edge of a volume); ``prob`` (N, H, W) is the tumor
    probability per pixel and ``mask`` (N, H, W) uint8 the final 0/1 mask (threshold, then
    optional keep-largest-component over the whole case, after the mask rule).
    """

    presence: np.ndarray
    type_probs: np.ndarray
    prob: np.ndarray
    mask: np.ndarray
    evaluated: np.ndarray
    letterboxes: list[Letterbox | None]
    #: (N,) mask pixels the mask rule removed from each slice (0 where none)
    withheld: np.ndarray | None = None


def load_model(path: str | Path) -> Any:
    """Load a saved mtl model (``.keras``); raises ModelError with the reason."""
    os.environ.setdefault("SM_FRAMEWORK", "tf.keras")
    import keras

    import mtl.model.multitask  # noqa: F401 - registers MultiTaskModel for deserialisation

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: model file not found")
    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as exc:  # noqa: BLE001 - keras raises many types on bad files
        raise ModelError(f"{path}: cannot load model ({type(exc).__name__}: {exc})") from exc
    if not getattr(model, "preprocessing", None) or not hasattr(model, "classes"):
        raise ModelError(f"{path}: not an mtl multi-task model (no stored preprocessing/classes)")
    return model


def keep_largest_component(mask: np.ndarray) -> np.ndarray:
    """Keep only the largest face-connected component of a 2-D or 3-D 0/1 mask."""
    from scipy import ndimage

    labels, n = ndimage.label(mask > 0)
    if n <= 1:
        return (labels > 0).astype(np.uint8)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return (labels == int(np.argmax(sizes))).astype(np.uint8)


#: what is reported where presence and mask disagree (see :class:`Predictor`)
MASK_RULES = ("presence", "independent")


def apply_mask_rule(mask: np.ndarray, presence: np.ndarray, rule: str,
                    presence_threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(masks after ``rule``, pixels withheld per slice) for (N, ...) 0/1 masks and (N,) presence
    probabilities (NaN: slice not run). ``"presence"`` empties the mask of every slice whose
    presence probability is not above ``presence_threshold``; ``"independent"`` changes nothing."""
    mask = np.asarray(mask)
    pixels = mask.reshape(len(mask), -1).sum(axis=1).astype(np.int64)
    if rule == "independent":
        return mask, np.zeros(len(mask), np.int64)
    if rule != "presence":
        raise ValueError(f"mask_rule must be one of {', '.join(MASK_RULES)}, got {rule!r}")
    confirmed = np.nan_to_num(np.asarray(presence, np.float64), nan=0.0) > presence_threshold
    out = mask.copy()
    out[~confirmed] = 0
    return out, np.where(confirmed, 0, pixels)


def check_threshold(value: float | None, name: str = "threshold") -> float | None:
    """A probability threshold strictly between 0 and 1 (None passes); ValueError otherwise."""
    if value is None:
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number in (0, 1), got {value!r}") from None
    if not 0.0 < value < 1.0:  # NaN fails too
        raise ValueError(f"{name} must be in (0, 1), got {value}")
    return value


def is_constant(image: np.ndarray) -> bool:
    finite = np.asarray(image)[np.isfinite(image)]
    return finite.size == 0 or float(finite.min()) == float(finite.max())


class Predictor:
    """The model, loaded once, plus how to run it.

    Parameters: ``threshold`` on the per-pixel tumor probability; ``tta`` averages each output
    with the output for the horizontally flipped input (its mask flipped back); ``largest_component``
    keeps only the largest connected tumor region of each case (3-D for volumes);
    ``batch_size`` slices per network call; ``jit_compile`` as for
    :func:`mtl.model.inference.compiled_forward`: ``"auto"`` (the default, for ``mtl serve``,
    which compiles the one-slice XLA path once in :meth:`warm_up`) or False (``mtl infer`` with
    fewer 2-D images than XLA needs to pay for its compile:
    :func:`mtl.model.inference.jit_for_single_slices`).

    ``mask_rule`` decides what is reported where the presence and mask heads disagree, for every
    output built from :meth:`predict` (mask files, DICOM SEG, overlays, findings, the web page,
    ``mtl evaluate``): ``"presence"`` (default) keeps a slice's mask only where that slice's
    presence decision is yes (probability > ``presence_threshold``, default ``threshold``);
    ``"independent"`` keeps the mask head's pixels whatever the presence head says.
    """

    def __init__(
        self,
        model: Any = None,
        *,
        forward: Forward | None = None,
        preprocessing: dict[str, Any] | None = None,
        classes: Sequence[str] | None = None,
        threshold: float = 0.5,
        tta: bool = False,
        largest_component: bool = False,
        batch_size: int = 16,
        presence_threshold: float | None = None,
        mask_rule: str = "presence",
        jit_compile: bool | str = "auto",
    ) -> None:
        if model is None and (forward is None or preprocessing is None or classes is None):
            raise ValueError("give a model, or forward + preprocessing + classes")
        self.model = model
        self.preprocessing = dict(preprocessing or model.preprocessing)
        self.classes = list(classes or model.classes)
        self.forward = forward or self._model_forward
        self._graph: Forward | None = None
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.threshold = check_threshold(threshold, "threshold")
        self.presence_threshold = (self.threshold if presence_threshold is None else
                                   check_threshold(presence_threshold, "presence_threshold"))
        if mask_rule not in MASK_RULES:
            raise ValueError(f"mask_rule must be one of {', '.join(MASK_RULES)}, got {mask_rule!r}")
        self.mask_rule = mask_rule
        self.tta = bool(tta)
        self.largest_component = bool(largest_component)
        self.batch_size = int(batch_size)
        self.jit_compile = checked_jit_compile(jit_compile)

    @classmethod
    def from_file(cls, path: str | Path, ensemble: Sequence[str | Path] = (),
                  **options: Any) -> "Predictor":
        """The model saved at ``path``; with ``ensemble`` (more model files), the mean of all
        of them (:mod:`mtl.model.ensemble`; EnsembleError, a ValueError, where they differ)."""
        if ensemble:
            from mtl.model.ensemble import load_ensemble

            return cls(load_ensemble([path, *ensemble]), **options)
        return cls(load_model(path), **options)

    @property
    def image_size(self) -> int:
        return int(self.preprocessing["image_size"])

    @property
    def channels(self) -> int:
        return int(self.preprocessing.get("channels", 1))

    def _model_forward(self, x: np.ndarray) -> dict[str, np.ndarray]:
        if self._graph is None:  # traced on first use, not at construction
            self._graph = compiled_forward(self.model, self.image_size, self.channels,
                                           jit_compile=self.jit_compile)
        return self._graph(x)

    def warm_up(self) -> None:
        """Build the inference graph and compile its one-slice path now (batch norm folding,
        tracing, XLA: a few seconds on a CPU), so that the first request does not wait for it."""
        self.run_network(np.zeros((1, self.image_size, self.image_size, self.channels),
                                  np.float32))

    def prepare(self, image: np.ndarray) -> tuple[np.ndarray, Letterbox]:
        """One raw slice -> network input (S, S, C) with the model's stored preprocessing."""
        return prepare_image(image, self.preprocessing)

    def run_network(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Network outputs for a batch of prepared inputs, in batches, with optional flip TTA."""
        parts: dict[str, list[np.ndarray]] = {"presence": [], "type": [], "mask": []}
        for start in range(0, len(x), self.batch_size):
            batch = np.ascontiguousarray(x[start : start + self.batch_size], dtype=np.float32)
            out = with_flip_tta(self._outputs)(batch) if self.tta else self._outputs(batch)
            for key in parts:
                parts[key].append(out[key])
        return {k: np.concatenate(v) for k, v in parts.items()}

    def _outputs(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        out = self.forward(batch)
        n, size = len(batch), batch.shape[1]
        presence = np.asarray(out["presence"], np.float32).reshape(n)
        type_probs = np.asarray(out["type"], np.float32).reshape(n, -1)
        mask = np.asarray(out["mask"], np.float32).reshape(n, size, size)
        if type_probs.shape[1] != len(self.classes):
            raise ModelError(f"type head gives {type_probs.shape[1]} probabilities for "
                             f"{len(self.classes)} classes")
        return {"presence": presence, "type": type_probs, "mask": mask}

    def predict(self, slices: np.ndarray | Sequence[np.ndarray],
                presence_threshold: float | None = None) -> CasePrediction:
        """Predict every slice of one case. Constant slices are not run (NaN probabilities,
        empty mask); a case whose slices are all constant raises ValueError.
        ``presence_threshold`` overrides the predictor's for the mask rule."""
        n = len(slices)
        shape = np.asarray(slices[0]).shape[:2]
        evaluated = np.array([not is_constant(s) for s in slices], dtype=bool)
        if not evaluated.any():
            raise ValueError("every slice is constant; nothing to analyse")
        presence = np.full(n, np.nan, np.float32)
        type_probs = np.full((n, len(self.classes)), np.nan, np.float32)
        prob = np.zeros((n, *shape), np.float32)
        letterboxes: list[Letterbox | None] = [None] * n
        todo = np.flatnonzero(evaluated)
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start : start + self.batch_size]
            prepared = [self.prepare(np.asarray(slices[i])) for i in chunk]
            x = np.stack([p[0] for p in prepared])
            out = self.run_network(x)
            for j, i in enumerate(chunk):
                info = prepared[j][1]
                letterboxes[i] = info
                presence[i] = out["presence"][j]
                type_probs[i] = out["type"][j]
                prob[i] = np.clip(unletterbox(out["mask"][j], info), 0.0, 1.0)
        mask = (prob > self.threshold).astype(np.uint8)
        mask, withheld = apply_mask_rule(
            mask, presence, self.mask_rule,
            self.presence_threshold if presence_threshold is None else presence_threshold)
        if self.largest_component:
            mask = keep_largest_component(mask if n > 1 else mask[0])
            mask = mask.reshape(n, *shape)
        return CasePrediction(presence, type_probs, prob, mask, evaluated, letterboxes, withheld)


__all__ = ["MASK_RULES", "CasePrediction", "Forward", "ModelError", "Predictor",
           "apply_mask_rule", "check_threshold", "is_constant", "keep_largest_component",
           "load_model"]
