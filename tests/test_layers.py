"""mtl's fused BatchNormalization computes what Keras's does, and models built with either load
into the other."""

import collections
import warnings

import numpy as np
import pytest
import tensorflow as tf

import keras

import mtl.model.backbones as backbones
from mtl.model.layers import BatchNormalization
from mtl.model.multitask import MultiTaskModel
from mtl.model.network import NetworkSpec, build_network


def _pair(channels=6, **kwargs):
    """The same layer twice, Keras's and mtl's, with equal non-trivial weights."""
    rng = np.random.default_rng(0)
    ours, theirs = BatchNormalization(**kwargs), keras.layers.BatchNormalization(**kwargs)
    for layer in (ours, theirs):
        layer.build((None, 5, 7, channels))
    weights = [rng.normal(1.0, 0.3, channels), rng.normal(0.0, 0.5, channels),
               rng.normal(0.2, 0.5, channels), rng.uniform(0.5, 2.0, channels)]
    for layer in (ours, theirs):
        layer.set_weights([w.astype(np.float32) for w in weights])
    return ours, theirs


def _x(channels=6, seed=1):
    return tf.constant(np.random.default_rng(seed).normal(3.0, 2.0, (4, 5, 7, channels)),
                       tf.float32)


def test_inference_output_equals_keras():
    ours, theirs = _pair()
    x = _x()
    np.testing.assert_allclose(ours(x, training=False), theirs(x, training=False),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("momentum", [0.99, 0.5])
def test_training_output_moving_statistics_and_gradients_equal_keras(momentum):
    ours, theirs = _pair(momentum=momentum, epsilon=1e-3)
    x = _x()
    results = []
    for layer in (ours, theirs):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
            loss = tf.reduce_sum(y * tf.range(y.shape[-1], dtype=tf.float32)) + tf.reduce_sum(y**2)
        grads = tape.gradient(loss, [x, layer.gamma, layer.beta])
        results.append((y, [g.numpy() for g in grads],
                        layer.moving_mean.numpy(), layer.moving_variance.numpy()))
    (y1, g1, mm1, mv1), (y2, g2, mm2, mv2) = results
    np.testing.assert_allclose(y1, y2, rtol=1e-4, atol=1e-4)
    for a, b in zip(g1, g2):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3)
    # the moving variance tracks the biased batch variance, as Keras's does
    np.testing.assert_allclose(mm1, mm2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(mv1, mv2, rtol=1e-5, atol=1e-6)
    assert not np.allclose(mv1, 0.0)


def test_frozen_layer_uses_moving_statistics_in_training():
    ours, theirs = _pair()
    ours.trainable = theirs.trainable = False
    x = _x()
    before = ours.moving_mean.numpy().copy()
    np.testing.assert_allclose(ours(x, training=True), theirs(x, training=True), rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_array_equal(ours.moving_mean.numpy(), before)


def test_unfusable_cases_fall_back_to_keras():
    # synchronized moments (several replicas) and non-4-D inputs take Keras's path
    ours, theirs = _pair(synchronized=True)
    x = _x()
    np.testing.assert_allclose(ours(x, training=True), theirs(x, training=True), rtol=1e-4,
                               atol=1e-4)
    flat_ours, flat_theirs = BatchNormalization(), keras.layers.BatchNormalization()
    v = tf.constant(np.random.default_rng(2).normal(size=(8, 3)), tf.float32)
    np.testing.assert_allclose(flat_ours(v, training=True), flat_theirs(v, training=True),
                               rtol=1e-5, atol=1e-5)


def test_every_backbone_is_built_with_the_fused_layer():
    net = build_network(NetworkSpec(backbone="efficientnetb0", input_size=64,
                                    decoder_filters=[16, 16, 8, 8, 8], head_units=8))
    kinds = collections.Counter(type(layer) for layer in net.layers
                                if isinstance(layer, keras.layers.BatchNormalization))
    assert set(kinds) == {BatchNormalization} and kinds[BatchNormalization] > 20


def test_model_saved_with_keras_batchnorm_loads_with_equal_outputs(tmp_path, monkeypatch):
    """Models trained before the fused layer (the reference model) still load and predict the
    same, and files written now load where only Keras's layer exists."""
    spec = {"backbone": "resnet18", "input_size": 64, "decoder_filters": [16, 16, 8, 8, 8],
            "head_units": 8}
    pre = {"image_size": 64, "channels": 1}
    with monkeypatch.context() as m:
        m.setattr(backbones, "BATCHNORM", keras.layers.BatchNormalization)
        old = MultiTaskModel(spec=spec, preprocessing=pre)
        assert not any(isinstance(layer, BatchNormalization) for layer in old.net.layers)
        x = np.random.default_rng(3).random((2, 64, 64, 1), np.float32)
        rng = np.random.default_rng(4)
        for layer in old.net.layers:  # statistics far from their initial values
            if isinstance(layer, keras.layers.BatchNormalization):
                mean, var = layer.moving_mean, layer.moving_variance
                mean.assign(rng.normal(0, 0.5, mean.shape).astype(np.float32))
                var.assign(rng.uniform(0.5, 2.0, var.shape).astype(np.float32))
        expected = {k: np.asarray(v) for k, v in old(x, training=False).items()}
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*not yet been built.*")
            old.save(tmp_path / "old.keras")
    new = keras.models.load_model(tmp_path / "old.keras", compile=False)
    assert any(isinstance(layer, BatchNormalization) for layer in new.net.layers)
    for key, value in new(x, training=False).items():
        np.testing.assert_allclose(np.asarray(value), expected[key], rtol=1e-4, atol=1e-5)
