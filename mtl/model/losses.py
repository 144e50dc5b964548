"""The masked multi-task loss.

Each task's loss is a weighted mean over the samples that label that task: the per-task sample
weight (1 labelled, 0 missing) multiplies the per-sample loss, and the sum is divided by the
number of labelled samples in the batch. A batch with no labelled sample for a task contributes
exactly 0 to that task, with zero gradient. Nothing is ever compared with a made-up target.

Task losses (each declared with its task in :data:`mtl.tasks.TASKS`; Dice is :func:`dice`):

- presence: binary cross-entropy;
- type: sparse categorical cross-entropy over the class list;
- mask: soft Dice + pixel BCE. ``dice="image"``: Dice per image, averaged (an image with no
  tumor has an all-background target and counts: its Dice term is ~0 only when the prediction
  is empty too). ``dice="batch"``: one Dice over all labelled pixels of the batch (nnU-Net's
  batch Dice), so tumor-free images count through their false-positive pixels without each
  one pulling hard towards an empty prediction. ``dice="batch+image"``: the batch Dice plus
  the per-image Dice averaged over the labelled images with tumor pixels (tumor-free images
  count through the batch term only);
- deep supervision (``model.deep_supervision`` k > 0): the network's ``mask_aux`` output (the
  mask task's ``coarse_output`` in :mod:`mtl.tasks`) holds k coarser masks; the mask loss
  becomes ``(L_0 + sum_j 2^-j L_j) / (1 + sum_j 2^-j)`` with ``L_j`` the same mask loss on
  stage j's mask (nnU-Net's weighting);
- box (optional, weight 0 by default): for samples whose location is known only as a box, the
  mean predicted tumor probability outside the box, so box-only data can still teach location.

The total is ``sum_t w_t * L_t`` with weights from the config or, with ``uncertainty=True``,
the homoscedastic-uncertainty weighting of Kendall, Gal & Cipolla (CVPR 2018):
``sum_t w_t * (0.5 * exp(-s_t) * L_t + 0.5 * s_t)``, where ``s_t = log sigma_t^2`` is learned.
"""

from __future__ import annotations

import tensorflow as tf
import keras

from mtl import tasks
from mtl.tasks import default_weights
# the per-task losses live with their task in the table (mtl.tasks); imported here by name too
from mtl.tasks import mask_dice_bce  # noqa: F401

_EPS = 1e-7


def masked_mean(values: tf.Tensor, weights: tf.Tensor) -> tf.Tensor:
    """sum(w * v) / sum(w), and exactly 0 (zero gradient) where sum(w) == 0."""
    values = tf.reshape(tf.cast(values, tf.float32), [-1])
    weights = tf.reshape(tf.cast(weights, tf.float32), [-1])
    return tf.math.divide_no_nan(tf.reduce_sum(values * weights), tf.reduce_sum(weights))


def dice(y_true: tf.Tensor, y_pred: tf.Tensor, *, smooth: float = 1.0,
         axis: tuple[int, ...] | None = (1, 2, 3), empty: float | None = None) -> tf.Tensor:
    """The one Dice coefficient on tensors: the loss's, the batch loss's and the training metric's.

    (B, H, W, 1) x (B, H, W, 1): ``axis=(1, 2, 3)`` gives one Dice per image (B,), ``axis=None``
    one over the whole batch. ``empty=None``: the smoothed (soft) Dice
    ``(2|T.P| + smooth) / (|T| + |P| + smooth)``; ``empty=e``: ``(2|T.P| + smooth) /
    max(|T| + |P| + smooth, 1)``, and ``e`` where both are empty (the hard metric, on 0/1 masks,
    ``smooth=0``). Evaluation scores NumPy masks with ``mtl.evaluate.metrics.dice_iou``.
    """
    y_true = tf.cast(y_true, tf.float32)
    y_pred = tf.cast(y_pred, tf.float32)
    inter = tf.reduce_sum(y_true * y_pred, axis=axis)
    total = tf.reduce_sum(y_true, axis=axis) + tf.reduce_sum(y_pred, axis=axis)
    if empty is None:
        return (2.0 * inter + smooth) / (total + smooth)
    return tf.where(total > 0, (2.0 * inter + smooth) / tf.maximum(total + smooth, 1.0), empty)


def soft_dice_loss(y_true: tf.Tensor, y_pred: tf.Tensor, smooth: float = 1.0) -> tf.Tensor:
    """Per-image soft Dice loss, (B, H, W, 1) x (B, H, W, 1) -> (B,)."""
    return 1.0 - dice(y_true, y_pred, smooth=smooth)


def batch_soft_dice_loss(y_true: tf.Tensor, y_pred: tf.Tensor, weights: tf.Tensor,
                         smooth: float = 1.0) -> tf.Tensor:
    """One soft Dice loss over every labelled pixel of the batch (weights (B,) select images)."""
    w = tf.reshape(tf.cast(weights, tf.float32), [-1, 1, 1, 1])
    labelled = tf.cast(tf.reduce_sum(weights) > 0, tf.float32)
    return labelled * (1.0 - dice(tf.cast(y_true, tf.float32) * w, y_pred * w, smooth=smooth,
                                  axis=None))


@keras.saving.register_keras_serializable(package="mtl")
class MultiTaskLoss(keras.layers.Layer):
    """Weighted (or uncertainty-weighted) sum of the masked task losses.

    ``call(y_true, y_pred, sample_weight)`` takes dicts keyed by task and returns
    ``(total, {task: loss})``. Missing keys in ``y_true`` mean the task is not trained.
    """

    def __init__(
        self,
        weights: dict[str, float] | None = None,
        uncertainty: bool = False,
        dice_smooth: float = 1.0,
        dice: str = "image",
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        defaults = default_weights()
        unknown = set(weights or {}) - set(defaults)
        if unknown:
            raise ValueError(f"unknown loss weight(s) {sorted(unknown)}; known: {tuple(defaults)}")
        self.task_weights = {**defaults, **(weights or {})}
        self.uncertainty = bool(uncertainty)
        self.dice_smooth = float(dice_smooth)
        if dice not in tasks.DICE_MODES:
            raise ValueError(f"dice must be one of {tasks.DICE_MODES}, got {dice!r}")
        self.dice = dice
        # one learned log-variance per task; created always so checkpoints have one layout
        self.log_vars = self.add_weight(
            name="log_vars",
            shape=(len(tasks.TASKS),),
            initializer="zeros",
            trainable=self.uncertainty,
        )

    def task_losses(self, y_true: dict, y_pred: dict, sample_weight: dict) -> dict[str, tf.Tensor]:
        """``{task: masked loss}`` for each task of the table that ``y_true`` labels and whose
        weight is > 0."""
        losses = {}
        for task in tasks.TASKS:
            if task.name not in y_true or self.task_weights[task.name] <= 0:
                continue
            truth, weights = y_true[task.name], sample_weight[task.name]
            losses[task.name] = self._task_loss(task, truth, y_pred[task.output], weights)
            coarse = y_pred.get(task.coarse_output) if task.coarse_output else None
            if coarse is not None:  # deep supervision: stage j weighs 2^-j, normalised
                total, norm = losses[task.name], 1.0
                for j in range(coarse.shape[-1]):
                    total += 0.5 ** (j + 1) * self._task_loss(task, truth, coarse[..., j:j + 1],
                                                             weights)
                    norm += 0.5 ** (j + 1)
                losses[task.name] = total / norm
        return losses

    def _task_loss(self, task, truth, pred, weights) -> tf.Tensor:
        whole = task.batch_loss(truth, pred, weights, self) if task.batch_loss else None
        return whole if whole is not None else masked_mean(task.loss(truth, pred, self), weights)

    def combine(self, losses: dict[str, tf.Tensor], sample_weight: dict) -> tf.Tensor:
        total = tf.constant(0.0)
        for i, task in enumerate(t.name for t in tasks.TASKS):
            if task not in losses:
                continue
            term = losses[task]
            if self.uncertainty:
                # the log-variance term counts only where the batch labels the task, so an
                # unlabelled task's sigma is not pushed around by batches without its labels
                labelled = tf.cast(tf.reduce_sum(sample_weight[task]) > 0, tf.float32)
                s = self.log_vars[i]
                term = 0.5 * tf.exp(-s) * term + 0.5 * s * labelled
            total = total + self.task_weights[task] * term
        return total

    def call(self, y_true: dict, y_pred: dict, sample_weight: dict):
        losses = self.task_losses(y_true, y_pred, sample_weight)
        return self.combine(losses, sample_weight), losses

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "weights": dict(self.task_weights),
            "uncertainty": self.uncertainty,
            "dice_smooth": self.dice_smooth,
            "dice": self.dice,
        }
