"""The task table (mtl.tasks): one declaration per task, read by the network, loss, pipeline,
model and config; one Dice; one source of the network's fields."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from mtl import tasks
from mtl.config import Config, ModelConfig, load_config
from mtl.data.pipeline import INFO_KEYS, SampleEncoder, element_specs
from mtl.data.sample import labelled_tasks, make_sample
from mtl.model.losses import (
    MultiTaskLoss, batch_soft_dice_loss, dice, soft_dice_loss,
)
from mtl.model.multitask import hard_dice
from mtl.model.network import Architecture, NetworkSpec, build_network


def test_every_reader_takes_its_task_names_from_the_table():
    names = tuple(t.name for t in tasks.TASKS)
    assert names == ("presence", "type", "mask", "box")  # the order of saved log-variances
    assert tasks.TASK_NAMES == names
    assert [t.name for t in tasks.HEADS] == ["presence", "type", "mask"]
    assert Config().loss.weights == {"presence": 1.0, "type": 1.0, "mask": 1.0, "box": 0.0}
    assert MultiTaskLoss().task_weights == tasks.default_weights()
    specs = element_specs(32)
    assert tuple(specs) == tasks.TASK_NAMES + INFO_KEYS
    assert specs["type"] == ((), "int32") and specs["mask"] == ((32, 32, 1), "float32")
    sample = make_sample(np.zeros((8, 8)), case_id="a", presence=1, label=None)
    assert labelled_tasks(sample) == {"presence": True, "type": False, "mask": False}
    with pytest.raises(ValueError, match="known: presence, type, mask, box"):
        tasks.task("size")


def test_one_dice_gives_the_loss_the_batch_loss_and_the_metric():
    t = np.zeros((2, 4, 4, 1), np.float32)
    t[0, :2] = 1.0  # 8 tumor pixels in image 0, none in image 1
    p = np.zeros_like(t)
    p[0, :1] = 0.5  # 4 pixels at 0.5 inside the tumor
    # soft, per image: (2 * 2 + 1) / (8 + 2 + 1) and (0 + 1) / (0 + 1)
    np.testing.assert_allclose(dice(t, p).numpy(), [5 / 11, 1.0], rtol=1e-6)
    np.testing.assert_allclose(soft_dice_loss(t, p).numpy(), [1 - 5 / 11, 0.0], atol=1e-6)
    # one over the labelled images of the batch
    both = batch_soft_dice_loss(t, p, tf.constant([1.0, 1.0]))
    assert float(both) == pytest.approx(1 - 5 / 11, abs=1e-6)
    assert float(batch_soft_dice_loss(t, p, tf.constant([0.0, 0.0]))) == 0.0
    # hard: thresholded, empty vs empty = 1, no smoothing
    np.testing.assert_allclose(hard_dice(t, p + 0.1).numpy(), [2 * 4 / 12, 1.0], rtol=1e-6)
    np.testing.assert_allclose(dice(t > 0.5, p > 0.4, smooth=0.0, empty=1.0).numpy(),
                               [2 * 4 / 12, 1.0], rtol=1e-6)


def test_network_fields_are_declared_once():
    arch = {f.name for f in dataclasses.fields(Architecture)}
    assert issubclass(ModelConfig, Architecture) and issubclass(NetworkSpec, Architecture)
    assert arch <= {f.name for f in dataclasses.fields(ModelConfig)}
    assert {f.name for f in dataclasses.fields(NetworkSpec)} - arch == {
        "input_size", "channels", "classes"}
    config = load_config(overrides=["model.head_units=12", "model.bn_momentum=0.9",
                                     "data.image_size=64", "data.classes=[a, b]"])
    spec = config.network_spec()
    assert (spec.head_units, spec.bn_momentum, spec.input_size, spec.classes) == (
        12, 0.9, 64, ["a", "b"])
    assert spec.decoder_filters is not config.model.decoder_filters  # a copy


def _size_task() -> tasks.Task:
    """A made-up fifth task: a tumor-size regression from the pooled features."""
    return tasks.Task(
        name="size", output="size", head=tasks.DenseHead("sigmoid", units=1),
        loss=lambda t, p, o: tf.reduce_mean(tf.abs(tf.reshape(t, [-1, 1]) - p), axis=-1),
        weight=0.5, sample_key=None,
        encode=lambda lab: (np.array([lab.mask.mean()], np.float32), lab.has_mask),
        spec=lambda size: ((1,), "float32"), metric=None, score=lambda *a, **k: {},
    )


def test_a_new_head_is_one_entry(monkeypatch):
    extra = _size_task()
    monkeypatch.setattr(tasks, "TASKS", tasks.TASKS + (extra,))
    monkeypatch.setattr(tasks, "HEADS", tasks.HEADS + (extra,))
    spec = NetworkSpec(input_size=32, classes=["a", "b"], decoder_filters=[8, 8, 8, 8, 8],
                       head_units=8)
    net = build_network(spec)
    x = np.random.default_rng(0).random((2, 32, 32, 1), dtype=np.float32)
    out = {k: v.numpy() for k, v in net(x).items()}
    assert set(out) == {"presence", "type", "mask", "size"} and out["size"].shape == (2, 1)

    loss = MultiTaskLoss()
    assert loss.task_weights["size"] == 0.5 and tuple(loss.log_vars.shape) == (5,)
    y = {"size": np.array([0.5, 0.0], np.float32)}
    total, losses = loss(y, out, {"size": np.array([1.0, 0.0], np.float32)})
    assert set(losses) == {"size"}
    assert float(losses["size"]) == pytest.approx(abs(0.5 - float(out["size"][0, 0])), rel=1e-5)
    assert float(total) == pytest.approx(0.5 * float(losses["size"]), rel=1e-5)

    config = load_config(overrides=["data.image_size=32", "data.augment.enabled=false"])
    encoder = SampleEncoder(config, augment=False)
    mask = np.zeros((32, 32), np.uint8)
    mask[:8] = 1
    sample = make_sample(np.random.default_rng(1).random((32, 32)), case_id="a", mask=mask,
                         presence=1, label="glioma")

    class Source:
        @staticmethod
        def class_label(label):
            return label

    _, targets, weights = encoder.encode(sample, Source(), aug_seed=0)
    assert targets["size"].tolist() == [0.25] and weights["size"] == 1.0
    assert set(encoder.blank()[1]) >= {"size", "spacing"}
