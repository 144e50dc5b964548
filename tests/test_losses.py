"""The masked multi-task loss: missing labels give no gradient, weights change the total."""

import numpy as np
import pytest
import tensorflow as tf

from mtl.model.losses import MultiTaskLoss, mask_dice_bce, masked_mean, soft_dice_loss

B, S, K = 4, 8, 3


def batch(rng):
    y_true = {
        "presence": tf.constant(rng.integers(0, 2, (B, 1)), tf.float32),
        "type": tf.constant(rng.integers(0, K, (B,)), tf.int32),
        "mask": tf.constant(rng.random((B, S, S, 1)) > 0.7, tf.float32),
        "box": tf.constant(np.ones((B, S, S, 1)), tf.float32),
    }
    logits = {
        "presence": tf.Variable(rng.normal(size=(B, 1)), dtype=tf.float32),
        "type": tf.Variable(rng.normal(size=(B, K)), dtype=tf.float32),
        "mask": tf.Variable(rng.normal(size=(B, S, S, 1)), dtype=tf.float32),
    }
    return y_true, logits


def predict(logits):
    return {
        "presence": tf.sigmoid(logits["presence"]),
        "type": tf.nn.softmax(logits["type"]),
        "mask": tf.sigmoid(logits["mask"]),
    }


def ones(**overrides):
    w = {t: tf.ones(B) for t in ("presence", "type", "mask", "box")}
    w.update({k: tf.constant(v, tf.float32) for k, v in overrides.items()})
    return w


@pytest.mark.parametrize("task", ["presence", "type", "mask"])
def test_missing_label_gives_zero_gradient_to_that_sample(task):
    rng = np.random.default_rng(0)
    y_true, logits = batch(rng)
    loss = MultiTaskLoss()
    weights = ones(**{task: [1.0, 0.0, 1.0, 0.0]})
    with tf.GradientTape() as tape:
        total, _ = loss(y_true, predict(logits), weights)
    grad = tape.gradient(total, logits[task]).numpy()
    assert np.abs(grad[[1, 3]]).max() == 0.0  # unlabelled samples: exactly no gradient
    assert np.abs(grad[[0, 2]]).max() > 0.0


@pytest.mark.parametrize("task", ["presence", "type", "mask"])
def test_task_with_no_label_in_batch_contributes_nothing(task):
    rng = np.random.default_rng(1)
    y_true, logits = batch(rng)
    loss = MultiTaskLoss()
    with tf.GradientTape() as tape:
        total, parts = loss(y_true, predict(logits), ones(**{task: [0.0] * B}))
    assert float(parts[task]) == 0.0
    grad = tape.gradient(total, logits[task])
    assert grad is None or np.abs(grad.numpy()).max() == 0.0


def test_missing_labels_do_not_change_the_labelled_loss():
    """The loss over labelled samples is the same whatever garbage sits under weight 0."""
    rng = np.random.default_rng(2)
    y_true, logits = batch(rng)
    loss = MultiTaskLoss()
    w = ones(type=[1.0, 1.0, 0.0, 0.0])
    _, a = loss(y_true, predict(logits), w)
    changed = y_true["type"].numpy().copy()
    changed[2:] = (changed[2:] + 1) % K  # whatever sits under a zero weight
    y_true["type"] = tf.constant(changed)
    _, b = loss(y_true, predict(logits), w)
    assert float(a["type"]) == pytest.approx(float(b["type"]))


def test_weights_change_the_total():
    rng = np.random.default_rng(3)
    y_true, logits = batch(rng)
    pred = predict(logits)
    base, parts = MultiTaskLoss()(y_true, pred, ones())
    heavy, _ = MultiTaskLoss(weights={"mask": 3.0})(y_true, pred, ones())
    no_type, _ = MultiTaskLoss(weights={"type": 0.0})(y_true, pred, ones())
    assert float(heavy) == pytest.approx(float(base) + 2.0 * float(parts["mask"]), rel=1e-5)
    assert float(no_type) == pytest.approx(float(base) - float(parts["type"]), rel=1e-5)
    with_box, parts_box = MultiTaskLoss(weights={"box": 1.0})(y_true, pred, ones())
    assert float(parts_box["box"]) == pytest.approx(0.0, abs=1e-7)  # box covers everything


def test_uncertainty_weighting_follows_kendall():
    rng = np.random.default_rng(4)
    y_true, logits = batch(rng)
    pred = predict(logits)
    loss = MultiTaskLoss(uncertainty=True)
    s = np.array([0.5, -0.3, 1.0, 0.0], np.float32)
    loss.log_vars.assign(s)
    total, parts = loss(y_true, pred, ones())
    expected = sum(
        0.5 * np.exp(-s[i]) * float(parts[t]) + 0.5 * s[i]
        for i, t in enumerate(("presence", "type", "mask"))
    )
    assert float(total) == pytest.approx(expected, rel=1e-5)
    with tf.GradientTape() as tape:
        total, _ = loss(y_true, pred, ones())
    assert np.abs(tape.gradient(total, loss.log_vars).numpy()[:3]).min() > 0


def test_masked_mean_and_dice():
    assert float(masked_mean(tf.constant([1.0, 5.0]), tf.constant([1.0, 0.0]))) == 1.0
    assert float(masked_mean(tf.constant([1.0, 5.0]), tf.constant([0.0, 0.0]))) == 0.0
    target = np.zeros((1, 8, 8, 1), np.float32)
    target[0, 2:5, 2:5] = 1
    assert float(soft_dice_loss(target, target)[0]) == pytest.approx(0.0, abs=1e-6)
    assert float(soft_dice_loss(target, 1 - target)[0]) > 0.9
    empty = np.zeros_like(target)
    # a no-tumor image with an empty prediction is a perfect score, and it counts
    assert float(mask_dice_bce(empty, empty + 1e-6)[0]) < 1e-3
    assert float(mask_dice_bce(empty, empty + 0.9)[0]) > 1.0


def test_batch_dice_option():
    rng = np.random.default_rng(5)
    y_true, logits = batch(rng)
    y_true["mask"] = tf.concat([y_true["mask"][:2], tf.zeros_like(y_true["mask"][2:])], 0)
    loss = MultiTaskLoss(dice="batch")
    w = ones(mask=[1.0, 0.0, 1.0, 1.0])
    with tf.GradientTape() as tape:
        total, parts = loss(y_true, predict(logits), w)
    grad = tape.gradient(total, logits["mask"]).numpy()
    assert np.abs(grad[1]).max() == 0.0  # the unlabelled image gets no gradient
    assert all(np.abs(grad[i]).max() > 0 for i in (0, 2, 3))  # tumor-free images count
    # by hand: BCE averaged over labelled images + one Dice over their pixels
    t = y_true["mask"].numpy()[[0, 2, 3]]
    p = predict(logits)["mask"].numpy()[[0, 2, 3]]
    bce = np.mean(-(t * np.log(p) + (1 - t) * np.log(1 - p)))
    dice = 1 - (2 * (t * p).sum() + 1) / (t.sum() + p.sum() + 1)
    assert float(parts["mask"]) == pytest.approx(bce + dice, rel=1e-4)
    _, none = loss(y_true, predict(logits), ones(mask=[0.0] * B))
    assert float(none["mask"]) == 0.0
    with pytest.raises(ValueError, match="dice"):
        MultiTaskLoss(dice="volume")


def test_batch_plus_image_dice_option():
    rng = np.random.default_rng(6)
    y_true, logits = batch(rng)
    y_true["mask"] = tf.concat([y_true["mask"][:2], tf.zeros_like(y_true["mask"][2:])], 0)
    assert float(tf.reduce_sum(y_true["mask"][0])) > 0 and float(tf.reduce_sum(y_true["mask"][1])) > 0
    w = ones(mask=[1.0, 0.0, 1.0, 1.0])
    _, parts = MultiTaskLoss(dice="batch+image")(y_true, predict(logits), w)
    _, batch_only = MultiTaskLoss(dice="batch")(y_true, predict(logits), w)
    # by hand: the batch loss + the per-image Dice of image 0, the one labelled image with tumor
    # (image 1 has tumor but no label; images 2 and 3 are tumor-free)
    t = y_true["mask"].numpy()[0]
    p = predict(logits)["mask"].numpy()[0]
    image = 1 - (2 * (t * p).sum() + 1) / (t.sum() + p.sum() + 1)
    assert float(parts["mask"]) == pytest.approx(float(batch_only["mask"]) + image, rel=1e-4)
    # no labelled tumor image: the per-image term is exactly 0, the batch term stays
    _, free = MultiTaskLoss(dice="batch+image")(y_true, predict(logits),
                                                ones(mask=[0.0, 0.0, 1.0, 1.0]))
    _, free_batch = MultiTaskLoss(dice="batch")(y_true, predict(logits),
                                                ones(mask=[0.0, 0.0, 1.0, 1.0]))
    assert float(free["mask"]) == pytest.approx(float(free_batch["mask"]), rel=1e-6)


@pytest.mark.parametrize("dice", ["image", "batch"])
def test_deep_supervision_weighs_coarse_masks_by_stage(dice):
    rng = np.random.default_rng(7)
    y_true, logits = batch(rng)
    coarse = tf.sigmoid(tf.constant(rng.normal(size=(B, S, S, 2)), tf.float32))
    y_true["box"] = tf.concat([tf.ones((B, S, S // 2, 1)), tf.zeros((B, S, S // 2, 1))], 2)
    w = ones(mask=[1.0, 0.0, 1.0, 1.0])
    loss = MultiTaskLoss(dice=dice, weights={"box": 1.0})
    pred = predict(logits)
    _, plain = loss(y_true, pred, w)
    _, deep = loss(y_true, {**pred, "mask_aux": coarse}, w)
    _, first = loss(y_true, {**pred, "mask": coarse[..., :1]}, w)
    _, second = loss(y_true, {**pred, "mask": coarse[..., 1:]}, w)
    expected = (float(plain["mask"]) + 0.5 * float(first["mask"])
                + 0.25 * float(second["mask"])) / 1.75
    assert float(deep["mask"]) == pytest.approx(expected, rel=1e-5)
    assert float(deep["presence"]) == pytest.approx(float(plain["presence"]))
    # the box task reads the main mask only
    assert float(deep["box"]) > 0.1
    assert float(deep["box"]) == pytest.approx(float(plain["box"]))
