"""The task table: what the network learns, declared once per task.

Each :class:`Task` in :data:`TASKS` names its network output and declares

- its **head**: a small builder that turns the shared features into that output (cf.
  segmentation_models.pytorch ``base/heads.py``), or none when the task reads another task's
  output (box reads the mask);
- its **per-sample loss** (B,) and default loss weight, and optionally a whole-batch loss that
  replaces the masked mean of the per-sample loss (the mask's batch Dice);
- its **target encoding**: which sample field labels it, and how a sample's labels become the
  target array and the 0/1 weight (a weight of 0: the sample does not label the task);
- its **tensor spec**: the shape and dtype tf.data carries the target in;
- its **metric**: the masked metric tracked in training and the score ``mtl evaluate`` reports.

The network (:mod:`mtl.model.network`), the loss (:mod:`mtl.model.losses`), the model and its
training metrics (:mod:`mtl.model.multitask`), the pipeline (:mod:`mtl.data.pipeline`), the
sample convention (:mod:`mtl.data.sample`), the config's loss weights (:mod:`mtl.config`) and
the report (:mod:`mtl.evaluate.report`) read this table: a new head is one entry in ``TASKS``.

Importing this module loads neither TensorFlow nor scikit-learn (the pipeline's worker processes
read it); the functions that need them import them when called.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np


# --------------------------------------------------------------------------- heads


@dataclass(frozen=True)
class DenseHead:
    """One Dense layer on the pooled encoder features, ``(B, units)``.

    ``units=None``: one unit per class of the network's class list. The output is float32 under
    mixed precision too: the sigmoid/softmax and the loss need its range.
    """

    activation: str
    units: int | None = None

    def __call__(self, name: str, features: dict[str, Any], spec: Any) -> Any:
        import keras

        units = len(spec.classes) if self.units is None else self.units
        return keras.layers.Dense(units, activation=self.activation, name=name,
                                  dtype="float32")(features["pooled"])


@dataclass(frozen=True)
class DecoderHead:
    """The U-Net decoder's per-pixel probability ``(B, S, S, 1)``, under the task's name."""

    def __call__(self, name: str, features: dict[str, Any], spec: Any) -> Any:
        import keras

        return keras.layers.Identity(name=name, dtype="float32")(features["decoder"])


# --------------------------------------------------------------------------- encoding


@dataclass
class Labels:
    """What one sample says, at network size after augmentation: the input of every task's
    target encoding. ``mask`` and ``box`` are (S, S) uint8, all zero where not labelled."""

    presence: int | None
    class_index: int | None  # index into the class list; None when the type is unknown
    mask: np.ndarray
    has_mask: bool
    box: np.ndarray
    use_box: bool  # the location is known only as a box (the sample has no mask)


def _pixels(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float32).reshape(*a.shape[:2], 1)


# --------------------------------------------------------------------------- losses and metrics
# Tensors in, tensors out; TensorFlow is imported on the first call. ``options`` is the
# MultiTaskLoss (``dice_smooth``, ``dice``).


def presence_bce(y_true: Any, y_pred: Any, options: Any = None) -> Any:
    """Per-sample BCE, (B, 1) x (B, 1) -> (B,)."""
    import keras
    import tensorflow as tf

    return keras.losses.binary_crossentropy(
        tf.reshape(tf.cast(y_true, tf.float32), [-1, 1]), tf.reshape(y_pred, [-1, 1])
    )


def type_ce(y_true: Any, y_pred: Any, options: Any = None) -> Any:
    """Per-sample cross-entropy, (B,) int class index x (B, K) probabilities -> (B,)."""
    import keras
    import tensorflow as tf

    return keras.losses.sparse_categorical_crossentropy(tf.reshape(y_true, [-1]), y_pred)


def pixel_bce(y_true: Any, y_pred: Any) -> Any:
    """Per-image mean pixel BCE, (B, H, W, 1) x (B, H, W, 1) -> (B,)."""
    import keras
    import tensorflow as tf

    return tf.reduce_mean(keras.losses.binary_crossentropy(y_true, y_pred), axis=[1, 2])


def mask_dice_bce(y_true: Any, y_pred: Any, smooth: float = 1.0) -> Any:
    """Per-image soft Dice loss + mean pixel BCE -> (B,)."""
    import tensorflow as tf

    from mtl.model.losses import soft_dice_loss

    y_true = tf.cast(y_true, tf.float32)
    return soft_dice_loss(y_true, y_pred, smooth) + pixel_bce(y_true, y_pred)


#: the mask loss's Dice term (``loss.dice``): "image" per image, averaged; "batch" one Dice over
#: the batch's labelled pixels; "batch+image" the batch Dice plus the per-image Dice averaged
#: over the labelled images that hold tumor pixels (a missed small tumor costs its image a whole
#: Dice point, not its share of the batch's pixels)
DICE_MODES: tuple[str, ...] = ("image", "batch", "batch+image")


def _mask_batch_loss(y_true: Any, y_pred: Any, weights: Any, options: Any) -> Any:
    """With ``dice="batch"``: one soft Dice over the labelled pixels of the batch, plus the
    masked mean of the per-image BCE; ``"batch+image"`` adds the per-image soft Dice averaged
    over the labelled images with tumor pixels; None (per-image Dice) otherwise."""
    if options.dice == "image":  # the other DICE_MODES start from the batch Dice
        return None
    import tensorflow as tf

    from mtl.model.losses import batch_soft_dice_loss, masked_mean, soft_dice_loss

    t = tf.cast(y_true, tf.float32)
    loss = masked_mean(pixel_bce(t, y_pred), weights) + batch_soft_dice_loss(
        t, y_pred, weights, options.dice_smooth)
    if options.dice == "batch+image":
        tumor = tf.cast(tf.reduce_sum(t, axis=[1, 2, 3]) > 0, tf.float32)
        loss += masked_mean(soft_dice_loss(t, y_pred, options.dice_smooth),
                            tf.reshape(tf.cast(weights, tf.float32), [-1]) * tumor)
    return loss


def outside_box(box: Any, y_pred: Any, options: Any = None) -> Any:
    """Per-image mean predicted tumor probability outside the box (box = 1 inside) -> (B,)."""
    import tensorflow as tf

    return tf.reduce_mean(y_pred * (1.0 - tf.cast(box, tf.float32)), axis=[1, 2, 3])


def _presence_correct(y_true: Any, y_pred: Any, weights: Any) -> tuple[Any, Any]:
    import tensorflow as tf

    correct = tf.equal(tf.reshape(y_pred, [-1]) > 0.5, tf.reshape(y_true, [-1]) > 0.5)
    return tf.cast(correct, tf.float32), weights


def _type_correct(y_true: Any, y_pred: Any, weights: Any) -> tuple[Any, Any]:
    import tensorflow as tf

    predicted = tf.argmax(y_pred, axis=-1, output_type=tf.int32)
    correct = tf.equal(predicted, tf.cast(tf.reshape(y_true, [-1]), tf.int32))
    return tf.cast(correct, tf.float32), weights


def _mask_dice(y_true: Any, y_pred: Any, weights: Any) -> tuple[Any, Any]:
    """Hard Dice over labelled images that hold a tumor; empty images are scored by
    ``mtl evaluate``."""
    import tensorflow as tf

    from mtl.model.losses import dice

    has_tumor = tf.cast(tf.reduce_max(y_true, axis=[1, 2, 3]) > 0.5, tf.float32)
    return dice(y_true > 0.5, y_pred > 0.5, smooth=0.0, empty=1.0), weights * has_tumor


# --------------------------------------------------------------------------- scores (NumPy)


def _score_presence(truth, prob, *, threshold, classes, spacing) -> dict:
    from mtl.evaluate.metrics import presence_metrics

    return presence_metrics(truth.ravel(), prob.ravel(), threshold)


def _score_type(truth, probs, *, threshold, classes, spacing) -> dict:
    from mtl.evaluate.metrics import type_metrics

    return type_metrics(truth, probs, classes)


def _score_mask(truth, prob, *, threshold, classes, spacing) -> dict:
    from mtl.evaluate.metrics import mask_metrics

    return mask_metrics(truth, prob, spacing, threshold)


def _score_box(truth, prob, *, threshold, classes, spacing) -> dict:
    from mtl.evaluate.metrics import box_metrics

    return box_metrics(truth, prob, threshold)


# --------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Task:
    """One task: its output, head, loss, target encoding, tensor spec and metric."""

    #: the key of its target, weight, loss and loss weight
    name: str
    #: the network output its loss and metrics read (its own, unless it reads another head's)
    output: str
    #: builds the output from the shared features: ``head(name, features, spec)``; None: none
    head: Callable[[str, dict[str, Any], Any], Any] | None
    #: per-sample loss ``loss(y_true, y_pred, options) -> (B,)``
    loss: Callable[[Any, Any, Any], Any]
    #: default weight in the total loss (``loss.weights``)
    weight: float
    #: the sample field that labels it (None is missing); None: no field of its own
    sample_key: str | None
    #: ``encode(labels) -> (target, labelled)``
    encode: Callable[[Labels], tuple[np.ndarray, bool]]
    #: ``spec(image_size) -> (shape, dtype)`` of one target
    spec: Callable[[int], tuple[tuple[int, ...], str]]
    #: training metric: its name and ``fn(y_true, y_pred, weights) -> (values, weights)``
    metric: tuple[str, Callable[[Any, Any, Any], tuple[Any, Any]]] | None
    #: evaluation score on NumPy arrays of the labelled items:
    #: ``score(truth, output, threshold=, classes=, spacing=) -> dict``
    score: Callable[..., dict]
    #: optional whole-batch loss ``(y_true, y_pred, weights, options) -> scalar | None`` that
    #: replaces the masked mean of ``loss`` when it returns a value
    batch_loss: Callable[[Any, Any, Any, Any], Any] | None = None
    #: for the calibration report of a probability head: ``(truth, probs) -> (confidence,
    #: correct)`` per item; None: not calibrated
    confidence: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None
    #: the network output holding coarser predictions of this task, one per channel (deep
    #: supervision, present only when the network has it): each is scored by the same loss and
    #: channel j weighs 2^-(j+1) beside the main output's 1 (:class:`mtl.model.losses`); None: none
    coarse_output: str | None = None


TASKS: tuple[Task, ...] = (
    Task(
        name="presence", output="presence", head=DenseHead("sigmoid", units=1),
        loss=presence_bce, weight=1.0, sample_key="presence",
        encode=lambda lab: (np.array([lab.presence or 0], np.float32), lab.presence is not None),
        spec=lambda size: ((1,), "float32"),
        metric=("presence_acc", _presence_correct), score=_score_presence,
        confidence=lambda truth, prob: (prob.ravel(), truth.ravel()),
    ),
    Task(
        name="type", output="type", head=DenseHead("softmax"),
        loss=type_ce, weight=1.0, sample_key="label",
        encode=lambda lab: (np.int32(lab.class_index if lab.class_index is not None else 0),
                            lab.class_index is not None),
        spec=lambda size: ((), "int32"),
        metric=("type_acc", _type_correct), score=_score_type,
        confidence=lambda truth, probs: (probs.max(1), probs.argmax(1) == truth),
    ),
    Task(
        name="mask", output="mask", head=DecoderHead(),
        loss=lambda t, p, o: mask_dice_bce(t, p, o.dice_smooth), weight=1.0, sample_key="mask",
        encode=lambda lab: (_pixels(lab.mask), lab.has_mask),
        spec=lambda size: ((size, size, 1), "float32"),
        metric=("dice", _mask_dice), score=_score_mask, batch_loss=_mask_batch_loss,
        coarse_output="mask_aux",
    ),
    Task(  # location known only as a box: the mask head's probability outside it
        name="box", output="mask", head=None,
        loss=outside_box, weight=0.0, sample_key=None,
        encode=lambda lab: (_pixels(lab.box), lab.use_box),
        spec=lambda size: ((size, size, 1), "float32"),
        metric=None, score=_score_box,
    ),
)

#: every task, in table order: the keys of targets, weights, losses and ``loss.weights``
TASK_NAMES: tuple[str, ...] = tuple(t.name for t in TASKS)
#: the tasks with a head of their own: the network's outputs
HEADS: tuple[Task, ...] = tuple(t for t in TASKS if t.head is not None)


def task(name: str) -> Task:
    """The task called ``name``; ValueError naming the known ones otherwise."""
    for t in TASKS:
        if t.name == name:
            return t
    raise ValueError(f"unknown task {name!r}; known: {', '.join(TASK_NAMES)}")


def default_weights() -> dict[str, float]:
    """``{task: default loss weight}`` in table order."""
    return {t.name: t.weight for t in TASKS}


def target_specs(image_size: int) -> dict[str, tuple[tuple[int, ...], str]]:
    """``{task: (shape, dtype)}`` of one sample's targets at ``image_size``."""
    return {t.name: t.spec(image_size) for t in TASKS}


__all__ = ["TASKS", "TASK_NAMES", "HEADS", "Task", "Labels", "DenseHead", "DecoderHead",
           "task", "default_weights", "target_specs"]
