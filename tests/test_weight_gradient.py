"""Weight gradients as transposed forward convolutions compute what TensorFlow's kernel does,
on exactly the layers chosen, and leave the saved model as it was."""

import json

import numpy as np
import pytest
import tensorflow as tf

import keras

from mtl.config import ConfigError, load_config
from mtl.model import weight_gradient as wg
from mtl.model.network import NetworkSpec, build_network


def _tensors(shape, kernel, seed=0):
    rng = np.random.default_rng(seed)
    return (tf.constant(rng.normal(size=shape), tf.float32),
            tf.constant(rng.normal(size=kernel), tf.float32))


@pytest.mark.parametrize("padding", ["VALID", "SAME"])
@pytest.mark.parametrize("kernel", [(3, 3, 5, 7), (1, 3, 4, 2), (2, 2, 3, 3), (3, 1, 2, 6)])
def test_weight_gradient_equals_tensorflows_kernel(padding, kernel):
    x, k = _tensors((3, 9, 11, kernel[2]), kernel)
    dy = tf.random.stateless_normal(tf.nn.conv2d(x, k, 1, padding).shape, seed=(1, 2))
    expected = tf.raw_ops.Conv2DBackpropFilter(input=x, filter_sizes=kernel, out_backprop=dy,
                                               strides=[1, 1, 1, 1], padding=padding)
    got = wg.weight_gradient(x, dy, kernel, padding)
    assert got.shape == kernel
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("padding", ["valid", "same"])
def test_conv2d_forward_and_both_gradients_equal_tensorflows(padding):
    x, k = _tensors((2, 8, 10, 6), (3, 3, 6, 4), seed=3)
    results = []
    for conv in (lambda x, k: tf.nn.conv2d(x, k, 1, padding.upper()),
                 lambda x, k: wg.conv2d(x, k, padding)):
        with tf.GradientTape() as tape:
            tape.watch([x, k])
            y = conv(x, k)
            loss = tf.reduce_sum(y * tf.range(y.shape[-1], dtype=tf.float32)) + tf.reduce_sum(y**2)
        results.append([y, *tape.gradient(loss, [x, k])])
    for ours, theirs in zip(results[1], results[0]):
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-3)


def test_conv2d_in_a_graph_with_an_unknown_batch():
    x, k = _tensors((5, 6, 6, 3), (3, 3, 3, 2))

    @tf.function(input_signature=[tf.TensorSpec([None, 6, 6, 3]), tf.TensorSpec([3, 3, 3, 2])])
    def grads(x, k):
        with tf.GradientTape() as tape:
            tape.watch(k)
            loss = tf.reduce_sum(wg.conv2d(x, k, "same") ** 2)
        return tape.gradient(loss, k)

    with tf.GradientTape() as tape:
        tape.watch(k)
        loss = tf.reduce_sum(tf.nn.conv2d(x, k, 1, "SAME") ** 2)
    np.testing.assert_allclose(grads(x, k), tape.gradient(loss, k), rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize(("machine", "avx512", "gpus", "chosen"), [
    ("x86_64", False, 0, "transposed"),  # measured faster: an AVX2-only AMD EPYC
    ("x86_64", True, 0, "native"),       # oneDNN's direct NHWC kernels on AVX-512
    ("x86_64", False, 1, "native"),      # cuDNN
    ("aarch64", False, 0, "native"),
])
def test_auto_chooses_from_the_machine(machine, avx512, gpus, chosen):
    assert wg.choose_weight_gradient(machine, avx512, gpus) == chosen


def test_unknown_choice_is_refused():
    with pytest.raises(ValueError, match="weight_gradient must be one of auto, transposed, native"):
        wg.resolve_weight_gradient("matmul")
    with pytest.raises(ConfigError, match="train.weight_gradient"):
        load_config(None, {"train.weight_gradient": "fast"})
    assert load_config(None, {}).train.weight_gradient == "auto"


def _network():
    keras.utils.set_random_seed(0)
    spec = NetworkSpec(input_size=32, channels=1, decoder_filters=[64, 32, 16, 8, 8],
                       head_units=8)
    return build_network(spec)


def _routed(model):
    return {layer.name for layer in model._flatten_layers(include_self=False, recursive=True)
            if "convolution_op" in vars(layer)}


def test_only_wide_stride_one_convolutions_are_routed_and_native_undoes_it():
    model = _network()
    count = wg.use_weight_gradient(model, "transposed")
    routed = _routed(model)
    assert count == len(routed) > 0
    convs = [layer for layer in model._flatten_layers(include_self=False, recursive=True)
             if type(layer) is keras.layers.Conv2D]
    for layer in convs:
        kh, kw, cin, cout = layer.kernel.shape
        wide = min(cin, cout) >= wg.MIN_CHANNELS and kh * kw > 1
        assert (layer.name in routed) == (wide and tuple(layer.strides) == (1, 1)), layer.name
    assert "stage1_unit1_conv1" in routed and "conv0" not in routed  # 64 channels; 1 -> 64
    assert "stage2_unit1_conv1" not in routed  # stride 2
    assert wg.use_weight_gradient(model, "native") == 0
    assert not _routed(model)


def test_a_routed_network_trains_the_same_gradients_and_saves_the_same_model(tmp_path):
    x = tf.random.stateless_uniform((2, 32, 32, 1), seed=(0, 1))
    models, grads = [], []
    for choice in ("native", "transposed"):
        model = _network()
        before = json.dumps(model.get_config(), sort_keys=True, default=str)
        wg.use_weight_gradient(model, choice)
        assert json.dumps(model.get_config(), sort_keys=True, default=str) == before
        with tf.GradientTape() as tape:
            out = model(x, training=True)
            loss = tf.reduce_sum(out["mask"] ** 2) + tf.reduce_sum(out["presence"])
        grads.append(tape.gradient(loss, model.trainable_variables))
        models.append(model)
    for native, transposed, variable in zip(*grads, models[0].trainable_variables):
        assert (native is None) == (transposed is None), variable.path
        if native is None:  # a head the loss does not read
            continue
        np.testing.assert_allclose(transposed, native, rtol=1e-3, atol=1e-4,
                                   err_msg=variable.path)
    path = tmp_path / "routed.keras"
    models[1].save(path)
    loaded = keras.models.load_model(path, compile=False)
    assert not _routed(loaded)
    np.testing.assert_allclose(loaded(x)["mask"], models[1](x)["mask"], atol=1e-6)


def test_the_run_records_the_choice_auto_made(tiny_phantom_run):
    recorded = json.loads((tiny_phantom_run.run_dir / "distribution.json").read_text())
    assert recorded["weight_gradient"] == wg.resolve_weight_gradient("auto")


def test_bfloat16_layers_keep_their_compute_dtype():
    layer = keras.layers.Conv2D(64, 3, padding="same", dtype="mixed_bfloat16")
    layer.build((None, 6, 6, 64))
    layer.convolution_op = lambda inputs, kernel: wg.conv2d(inputs, kernel, layer.padding)
    x = tf.random.stateless_normal((2, 6, 6, 64), seed=(2, 3))
    with tf.GradientTape() as tape:
        y = layer(x)
        loss = tf.reduce_sum(tf.cast(y, tf.float32) ** 2)
    assert y.dtype == tf.bfloat16
    grad = tape.gradient(loss, layer.kernel)
    assert grad is not None and grad.shape == (3, 3, 64, 64)
    assert np.isfinite(np.asarray(tf.cast(grad, tf.float32))).all()
