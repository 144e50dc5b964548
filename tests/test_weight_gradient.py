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


@pytest.mark.parametrize("spatial", [(6, 6), (None, None)])
def test_conv2d_in_a_graph_with_an_unknown_batch_and_size(spatial):
    x, k = _tensors((5, 6, 6, 3), (3, 3, 3, 2))

    @tf.function(input_signature=[tf.TensorSpec([None, *spatial, 3]),
                                  tf.TensorSpec([3, 3, 3, 2])])
    def grads(x, k):
        with tf.GradientTape() as tape:
            tape.watch(k)
            loss = tf.reduce_sum(wg.conv2d(x, k, "same") ** 2)
        return tape.gradient(loss, k)

    with tf.GradientTape() as tape:
        tape.watch(k)
        loss = tf.reduce_sum(tf.nn.conv2d(x, k, 1, "SAME") ** 2)
    np.testing.assert_allclose(grads(x, k), tape.gradient(loss, k), rtol=1e-4, atol=1e-3)


AVX2 = {"avx", "avx2", "fma"}


@pytest.mark.parametrize(("machine", "flags", "gpus", "chosen"), [
    ("x86_64", AVX2, 0, "transposed"),                # measured faster: an AVX2-only AMD EPYC
    ("AMD64", AVX2, 0, "transposed"),
    ("x86_64", AVX2 | {"avx512f"}, 0, "native"),      # oneDNN's direct NHWC kernels on AVX-512
    ("x86_64", AVX2, 1, "native"),                    # cuDNN
    ("x86_64", {"avx", "sse4_2"}, 0, "native"),       # no AVX2: not measured
    ("AMD64", set(), 0, "native"),                    # flags unknown (no /proc/cpuinfo)
    ("aarch64", set(), 0, "native"),
])
def test_auto_chooses_from_the_machine(machine, flags, gpus, chosen):
    assert wg.choose_weight_gradient(machine, frozenset(flags), gpus) == chosen


def test_unknown_choice_is_refused():
    with pytest.raises(ValueError, match="weight_gradient must be one of auto, transposed, native"):
        wg.resolve_weight_gradient("matmul")  # not an option (matrix products per tap were tried)
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


def test_a_routed_network_trains_the_same_gradients_and_saves_the_same_model(tmp_path,
                                                                          monkeypatch):
    calls = []
    original = wg.weight_gradient
    monkeypatch.setattr(wg, "weight_gradient", lambda *a: calls.append(a[2]) or original(*a))
    x = tf.random.stateless_uniform((2, 32, 32, 1), seed=(0, 1))
    models, grads = [], []
    for choice in ("native", "transposed"):
        model = _network()
        before = json.dumps(model.get_config(), sort_keys=True, default=str)
        routed = wg.use_weight_gradient(model, choice)
        assert (routed > 0) == (choice == "transposed")
        assert json.dumps(model.get_config(), sort_keys=True, default=str) == before
        with tf.GradientTape() as tape:
            out = model(x, training=True)
            loss = tf.reduce_sum(out["mask"] ** 2) + tf.reduce_sum(out["presence"])
        grads.append(tape.gradient(loss, model.trainable_variables))
        models.append(model)
    assert len(calls) == routed  # each routed layer's kernel gradient, once, the transposed way
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


def _config(choice):
    return load_config(None, {
        "data.image_size": 32, "model.decoder_filters": [64, 32, 16, 8, 8],
        "model.head_units": 8, "train.batch_size": 2, "train.weight_gradient": choice})


@pytest.mark.filterwarnings("ignore:You are saving a model that has not yet been built")
def test_build_model_and_resume_apply_the_option(tmp_path):
    from mtl.train import build_model, load_checkpoint

    native = build_model(_config("native"))
    assert not _routed(native)
    model = build_model(_config("transposed"))
    assert _routed(model) == {layer.name for layer in model._flatten_layers(
        include_self=False, recursive=True) if wg.eligible(layer)} != set()
    path = tmp_path / "last.keras"
    model.save(path)
    resumed = load_checkpoint(path, path, _config("transposed").train, steps=1)
    assert _routed(resumed) == _routed(model)
    assert not _routed(load_checkpoint(path, path, _config("native").train, steps=1))


@pytest.mark.filterwarnings("ignore:Gradients do not exist")  # the heads: only the mask is trained
def test_keras_fit_trains_through_the_transposed_gradients():
    model = _network()
    assert wg.use_weight_gradient(model, "transposed") > 0
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss={"mask": "mse"})
    x = np.random.default_rng(0).random((4, 32, 32, 1), dtype=np.float32)
    y = (x > 0.5).astype(np.float32)
    kernel = model.get_layer("stage2_unit2_conv2").kernel
    before = kernel.numpy()
    history = model.fit(x, {"mask": y}, batch_size=2, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert not np.allclose(kernel.numpy(), before)  # a routed layer's kernel was trained


def test_the_run_records_the_choice_auto_made(tiny_phantom_run):
    recorded = json.loads((tiny_phantom_run.run_dir / "distribution.json").read_text())
    assert recorded["weight_gradient"] == wg.resolve_weight_gradient("auto")


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_layers_keep_their_compute_dtype_and_gradient(policy):
    layers = [keras.layers.Conv2D(64, 3, padding="same", dtype=policy) for _ in range(2)]
    for layer in layers:
        layer.build((None, 6, 6, 64))
    layers[1].set_weights(layers[0].get_weights())
    layers[1].convolution_op = lambda inputs, kernel: wg.conv2d(inputs, kernel, "same")
    x = tf.random.stateless_normal((2, 6, 6, 64), seed=(2, 3))
    grads = []
    for layer in layers:
        with tf.GradientTape() as tape:
            y = layer(x)
            loss = tf.reduce_sum(tf.cast(y, tf.float32) ** 2)
        assert y.dtype == layer.compute_dtype != "float32"
        grads.append(np.asarray(tape.gradient(loss, layer.kernel), np.float32))
    assert np.isfinite(grads[1]).all()
    scale = np.abs(grads[0]).max()
    np.testing.assert_allclose(grads[1] / scale, grads[0] / scale, atol=5e-2)
