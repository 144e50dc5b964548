"""The masked multi-task loss.

Each task's loss is a weighted mean over the samples that label that task: the per-task sample
weight (1 labelled, 0 missing) multiplies the per-sample loss, and the sum is divided by the
number of labelled samples in the batch. A batch with no labelled sample for a task contributes
exactly 0 to that task, with zero gradient. Nothing is ever compared with a made-up target.

Task losses:

- presence: binary cross-entropy;
- type: sparse categorical cross-entropy over the class list;
- mask: soft Dice + pixel BCE. ``dice="image"``: Dice per image, averaged (an image with no
  tumor has an all-background target and counts: its Dice term is ~0 only when the prediction
  is empty too). ``dice="batch"``: one Dice over all labelled pixels of the batch (nnU-Net's
  batch Dice), so tumor-free images count through their false-positive pixels without each
  one pulling hard towards an empty prediction;
- box (optional, weight 0 by default): for samples whose location is known only as a box, the
  mean predicted tumor probability outside the box, so box-only data can still teach location.

The total is ``sum_t w_t * L_t`` with weights from the config or, with ``uncertainty=True``,
the homoscedastic-uncertainty weighting of Kendall, Gal & Cipolla (CVPR 2018):
``sum_t w_t * (0.5 * exp(-s_t) * L_t + 0.5 * s_t)``, where ``s_t = log sigma_t^2`` is learned.
"""

from __future__ import annotations

import tensorflow as tf
import keras

LOSS_TASKS = ("presence", "type", "mask", "box")
_EPS = 1e-7


def masked_mean(values: tf.Tensor, weights: tf.Tensor) -> tf.Tensor:
    """sum(w * v) / sum(w), and exactly 0 (zero gradient) where sum(w) == 0."""
    values = tf.reshape(tf.cast(values, tf.float32), [-1])
    weights = tf.reshape(tf.cast(weights, tf.float32), [-1])
    return tf.math.divide_no_nan(tf.reduce_sum(values * weights), tf.reduce_sum(weights))


def presence_bce(y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
    """Per-sample BCE, (B, 1) x (B, 1) -> (B,)."""
    return keras.losses.binary_crossentropy(
        tf.reshape(tf.cast(y_true, tf.float32), [-1, 1]), tf.reshape(y_pred, [-1, 1])
    )


def type_ce(y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
    """Per-sample cross-entropy, (B,) int class index x (B, K) probabilities -> (B,)."""
    return keras.losses.sparse_categorical_crossentropy(tf.reshape(y_true, [-1]), y_pred)


def soft_dice_loss(y_true: tf.Tensor, y_pred: tf.Tensor, smooth: float = 1.0) -> tf.Tensor:
    """Per-image soft Dice loss, (B, H, W, 1) x (B, H, W, 1) -> (B,)."""
    y_true = tf.cast(y_true, tf.float32)
    axes = [1, 2, 3]
    inter = tf.reduce_sum(y_true * y_pred, axis=axes)
    total = tf.reduce_sum(y_true, axis=axes) + tf.reduce_sum(y_pred, axis=axes)
    return 1.0 - (2.0 * inter + smooth) / (total + smooth)


def mask_dice_bce(y_true: tf.Tensor, y_pred: tf.Tensor, smooth: float = 1.0) -> tf.Tensor:
    """Per-image Dice + mean pixel BCE -> (B,)."""
    y_true = tf.cast(y_true, tf.float32)
    bce = tf.reduce_mean(keras.losses.binary_crossentropy(y_true, y_pred), axis=[1, 2])
    return soft_dice_loss(y_true, y_pred, smooth) + bce


def batch_soft_dice_loss(y_true: tf.Tensor, y_pred: tf.Tensor, weights: tf.Tensor,
                         smooth: float = 1.0) -> tf.Tensor:
    """One soft Dice loss over every labelled pixel of the batch (weights (B,) select images)."""
    w = tf.reshape(tf.cast(weights, tf.float32), [-1, 1, 1, 1])
    y_true = tf.cast(y_true, tf.float32) * w
    y_pred = y_pred * w
    inter = tf.reduce_sum(y_true * y_pred)
    total = tf.reduce_sum(y_true) + tf.reduce_sum(y_pred)
    labelled = tf.cast(tf.reduce_sum(weights) > 0, tf.float32)
    return labelled * (1.0 - (2.0 * inter + smooth) / (total + smooth))


def outside_box(box: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
    """Per-image mean predicted tumor probability outside the box (box = 1 inside) -> (B,)."""
    return tf.reduce_mean(y_pred * (1.0 - tf.cast(box, tf.float32)), axis=[1, 2, 3])


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
        defaults = {"presence": 1.0, "type": 1.0, "mask": 1.0, "box": 0.0}
        unknown = set(weights or {}) - set(defaults)
        if unknown:
            raise ValueError(f"unknown loss weight(s) {sorted(unknown)}; known: {LOSS_TASKS}")
        self.task_weights = {**defaults, **(weights or {})}
        self.uncertainty = bool(uncertainty)
        self.dice_smooth = float(dice_smooth)
        if dice not in ("image", "batch"):
            raise ValueError(f"dice must be 'image' or 'batch', got {dice!r}")
        self.dice = dice
        # one learned log-variance per task; created always so checkpoints have one layout
        self.log_vars = self.add_weight(
            name="log_vars",
            shape=(len(LOSS_TASKS),),
            initializer="zeros",
            trainable=self.uncertainty,
        )

    def task_losses(self, y_true: dict, y_pred: dict, sample_weight: dict) -> dict[str, tf.Tensor]:
        per_sample = {
            "presence": lambda: presence_bce(y_true["presence"], y_pred["presence"]),
            "type": lambda: type_ce(y_true["type"], y_pred["type"]),
            "mask": lambda: mask_dice_bce(y_true["mask"], y_pred["mask"], self.dice_smooth),
            "box": lambda: outside_box(y_true["box"], y_pred["mask"]),
        }
        if self.dice == "batch":
            def batch_mask_loss():
                t = tf.cast(y_true["mask"], tf.float32)
                bce = tf.reduce_mean(keras.losses.binary_crossentropy(t, y_pred["mask"]), axis=[1, 2])
                return masked_mean(bce, sample_weight["mask"]) + batch_soft_dice_loss(
                    t, y_pred["mask"], sample_weight["mask"], self.dice_smooth)
        losses = {
            task: masked_mean(fn(), sample_weight[task])
            for task, fn in per_sample.items()
            if task in y_true and self.task_weights[task] > 0
            and not (task == "mask" and self.dice == "batch")
        }
        if self.dice == "batch" and "mask" in y_true and self.task_weights["mask"] > 0:
            losses["mask"] = batch_mask_loss()
        return losses

    def combine(self, losses: dict[str, tf.Tensor], sample_weight: dict) -> tf.Tensor:
        total = tf.constant(0.0)
        for i, task in enumerate(LOSS_TASKS):
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
