"""``MultiTaskModel``: the network plus its loss and masked metrics, saved as one ``.keras`` file.

The model is rebuilt from its :class:`~mtl.model.network.NetworkSpec` on load (no weight
download: saved weights are loaded over it), and carries the preprocessing it was trained with
so inference never has to re-type it. Targets and sample weights are dicts keyed by task; see
:mod:`mtl.data.pipeline` for how samples become them.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import tensorflow as tf
import keras

from mtl.distribute import cluster_role
from mtl.model.losses import MultiTaskLoss, dice, masked_mean
from mtl.model import optimizers as _optimizers  # noqa: F401 - saved models name FusedAdam
from mtl.model.network import NetworkSpec, build_network
from mtl import tasks


def hard_dice(y_true: tf.Tensor, y_pred: tf.Tensor, threshold: float = 0.5) -> tf.Tensor:
    """Per-image Dice of the thresholded prediction, (B, H, W, 1) -> (B,); empty vs empty = 1."""
    return dice(y_true > 0.5, y_pred > threshold, smooth=0.0, empty=1.0)


def _reducible_across_workers(logs: dict[str, Any]) -> dict[str, Any]:
    """One-element vectors instead of scalars when several workers train together.

    Keras 3 averages each replica's logs with ``strategy.reduce("MEAN", value, axis=0)`` under
    MultiWorkerMirroredStrategy, which fails on scalars (tensorflow/tensorflow#72388); the
    reduction of a one-element vector is the same scalar.
    """
    if cluster_role().num_workers > 1:
        return {k: tf.reshape(v, [1]) for k, v in logs.items()}
    return logs


@keras.saving.register_keras_serializable(package="mtl")
class MultiTaskModel(keras.Model):
    """Shared encoder + the heads of :data:`mtl.tasks.TASKS`, trained under a masked multi-task
    loss, with each task's masked metric."""

    def __init__(
        self,
        spec: dict[str, Any] | NetworkSpec,
        loss: dict[str, Any] | None = None,
        preprocessing: dict[str, Any] | None = None,
        card: dict[str, Any] | None = None,
        calibration: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.spec = spec if isinstance(spec, NetworkSpec) else NetworkSpec(**spec)
        self.preprocessing = dict(preprocessing or {})
        #: the model card (:mod:`mtl.model.card`); None for files written before cards
        self.card = dict(card) if card else None
        #: presence/type temperatures (:mod:`mtl.model.calibration`), applied at prediction by
        #: :func:`mtl.model.inference.compiled_forward`, never in training (``call``)
        self.calibration = dict(calibration) if calibration else None
        self.net = build_network(self.spec)
        self.multitask_loss = MultiTaskLoss(**(loss or {}), name="multitask_loss", dtype="float32")
        self.task_loss_trackers = {
            t.name: keras.metrics.Mean(name=f"{t.name}_loss")
            for t in tasks.TASKS
            if self.multitask_loss.task_weights[t.name] > 0
        }
        #: each task's training metric (presence_acc, type_acc, dice), by task
        self.task_metrics = {t.name: keras.metrics.Mean(name=t.metric[0])
                             for t in tasks.TASKS if t.metric is not None}

    @property
    def classes(self) -> list[str]:
        return list(self.spec.classes)

    def call(self, inputs, training=False):
        return self.net(inputs, training=training)

    def build(self, input_shape=None):  # the network is built at construction
        self.built = True

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        """Build what fit needs before the first step is traced, without Keras's symbolic pass.

        This model is fully built at construction and compiles no Keras losses or metrics, so
        the only state left to create is the optimizer's, under the strategy's scope (the
        default strategy's where none was set). Keras 3 would otherwise:
        - without a strategy, leave the optimizer to build itself inside the first traced train
          step, and TensorFlow then traces that step a second time once the variables exist
          (one more trace of the whole network each time training starts);
        - under a strategy, first average a data batch across replicas, which fails with
          MultiWorkerMirroredStrategy (keras-team/keras#20585).
        """
        with self.distribute_strategy.scope():
            if self.optimizer is not None and not self.optimizer.built:
                self.optimizer.build(self.trainable_variables)
            self._post_build()

    def train_step(self, data):
        return _reducible_across_workers(super().train_step(data))

    def test_step(self, data):
        return _reducible_across_workers(super().test_step(data))

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        total, losses = self.multitask_loss(y, y_pred, sample_weight)
        for task, value in losses.items():
            self.task_loss_trackers[task].update_state(
                value, sample_weight=tf.reduce_sum(sample_weight[task])
            )
        # under tf.distribute, gradients are summed over replicas: return the per-replica share
        # (Keras divides the loss it tracks back by the same factor)
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        return total / replicas if replicas > 1 else total

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        for t in tasks.TASKS:
            if t.metric is not None:
                values, weights = t.metric[1](y[t.name], y_pred[t.output], sample_weight[t.name])
                self.task_metrics[t.name].update_state(values, sample_weight=weights)
        return self.get_metrics_result()

    def get_config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "spec": dataclasses.asdict(self.spec),
            "loss": self.multitask_loss.get_config()
            | {"name": None, "trainable": None, "dtype": None},
            "preprocessing": self.preprocessing,
            "card": self.card,
            "calibration": self.calibration,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "MultiTaskModel":
        config = dict(config)
        spec = dict(config.pop("spec"))
        spec["encoder_weights"] = None  # weights come from the file, never from a download
        loss = {k: v for k, v in (config.pop("loss") or {}).items() if k in ("weights", "uncertainty", "dice_smooth", "dice")}
        return cls(spec=spec, loss=loss, **config)


__all__ = ["MultiTaskModel", "hard_dice", "masked_mean"]
