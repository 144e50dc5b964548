"""The decoder's upsample-concatenate-convolve computed at the coarse resolution
(mtl.model.subpixel), for inference."""

import numpy as np
import pytest

import keras

from mtl.model.inference_copy import inference_copy
from mtl.model.subpixel import (
    UpsampledConcatConv2D, phase_kernels, rewritable_blocks, saves_work,
)
from test_folding import small_mtl_network  # tests/ is on sys.path under pytest


def test_phase_kernels_reproduce_a_convolution_of_the_upsampled_input():
    import tensorflow as tf

    rng = np.random.default_rng(0)
    low = rng.standard_normal((2, 5, 7, 3)).astype(np.float32)
    kernel = rng.standard_normal((3, 3, 3, 4)).astype(np.float32)
    upsampled = np.repeat(np.repeat(low, 2, axis=1), 2, axis=2)
    want = tf.nn.conv2d(upsampled, kernel, 1, "SAME").numpy()
    phases = tf.nn.conv2d(np.pad(low, [(0, 0), (1, 1), (1, 1), (0, 0)]), phase_kernels(kernel),
                          1, "VALID")
    assert phases.shape == (2, 6, 8, 16)  # (h + 1, w + 1, 4F)
    shuffled = tf.nn.depth_to_space(phases, 2).numpy()
    np.testing.assert_allclose(shuffled[:, 1:-1, 1:-1], want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="3x3"):
        phase_kernels(np.zeros((5, 5, 1, 1)))


def decoder_like(shape=(8, 12, 6)):
    """Two rewritable chains (upsampled first; skip first with an activation on the
    convolution) and seven that are not: upsampled tensor read twice, bilinear, 1x1 kernel,
    three concatenated inputs, concatenation read twice, concatenation and upsampled tensor as
    outputs of the model."""
    low = keras.Input(shape, name="low")
    skip = keras.Input((None if shape[0] is None else 2 * shape[0],
                        None if shape[1] is None else 2 * shape[1], 4), name="skip")
    up = keras.layers.UpSampling2D(2, name="a_up")(low)
    a = keras.layers.Conv2D(5, 3, padding="same", name="a_conv")(
        keras.layers.Concatenate(name="a_cat")([up, skip]))
    up = keras.layers.UpSampling2D(2, name="b_up")(low)
    b = keras.layers.Conv2D(5, 3, padding="same", activation="relu", use_bias=False,
                            name="b_conv")(keras.layers.Concatenate(name="b_cat")([skip, up]))
    up = keras.layers.UpSampling2D(2, name="c_up")(low)  # read twice
    c = keras.layers.Conv2D(5, 3, padding="same", name="c_conv")(
        keras.layers.Concatenate(name="c_cat")([up, skip]))
    c = keras.layers.Add()([c, keras.layers.Conv2D(5, 1, name="c_side")(up)])
    up = keras.layers.UpSampling2D(2, interpolation="bilinear", name="d_up")(low)
    d = keras.layers.Conv2D(5, 3, padding="same", name="d_conv")(
        keras.layers.Concatenate(name="d_cat")([up, skip]))
    up = keras.layers.UpSampling2D(2, name="e_up")(low)
    e = keras.layers.Conv2D(5, 1, name="e_conv")(keras.layers.Concatenate(name="e_cat")([up, skip]))
    up = keras.layers.UpSampling2D(2, name="f_up")(low)
    f = keras.layers.Conv2D(5, 3, padding="same", name="f_conv")(
        keras.layers.Concatenate(name="f_cat")([up, skip, skip]))
    cat = keras.layers.Concatenate(name="g_cat")([keras.layers.UpSampling2D(2, name="g_up")(low),
                                                  skip])  # read twice
    g = keras.layers.Add()([keras.layers.Conv2D(5, 3, padding="same", name="g_conv")(cat),
                            keras.layers.Conv2D(5, 1, name="g_side")(cat)])
    cat = keras.layers.Concatenate(name="h_cat")([keras.layers.UpSampling2D(2, name="h_up")(low),
                                                  skip])  # an output of the model
    h = keras.layers.Conv2D(5, 3, padding="same", name="h_conv")(cat)
    up = keras.layers.UpSampling2D(2, name="i_up")(low)  # an output of the model
    i = keras.layers.Conv2D(5, 3, padding="same", name="i_conv")(
        keras.layers.Concatenate(name="i_cat")([up, skip]))
    out = keras.layers.Concatenate(name="out")([a, b, c, d, e, f, g, h, i])
    return keras.Model([low, skip], {"map": out, "pooled": keras.layers.GlobalMaxPooling2D()(out),
                                     "h_cat": cat, "i_up": up})


def randomise(net, seed=0):
    """Every trained weight random (batch-norm statistics untouched), so a misplaced tap or
    channel shows."""
    rng = np.random.default_rng(seed)
    for weight in net.trainable_weights:
        weight.assign(rng.standard_normal(weight.shape).astype(np.float32) * 0.3)


@pytest.mark.parametrize("shape", [(8, 12, 6), (None, None, 6)])
def test_rewritten_network_computes_the_same(shape):
    net = decoder_like(shape)
    randomise(net)
    blocks = {b.convolution: b for b in rewritable_blocks(net)}
    assert set(blocks) == {"a_conv", "b_conv"}
    assert blocks["a_conv"].upsampled_first and not blocks["b_conv"].upsampled_first
    assert (blocks["a_conv"].upsampled_channels, blocks["a_conv"].skip_channels) == (6, 4)
    rewritten = inference_copy(net, fold=False)
    names = {layer.name for layer in rewritten.layers}
    assert not names & {"a_up", "a_cat", "b_up", "b_cat"}
    assert {"c_up", "c_cat", "d_up", "e_cat", "f_cat", "g_cat", "h_cat", "i_up"} <= names
    assert isinstance(rewritten.get_layer("a_conv"), UpsampledConcatConv2D)
    assert isinstance(rewritten.get_layer("c_conv"), keras.layers.Conv2D)
    rng = np.random.default_rng(1)
    x = [rng.standard_normal((3, 8, 12, 6)).astype(np.float32),
         rng.standard_normal((3, 16, 24, 4)).astype(np.float32)]
    want, got = net(x, training=False), rewritten(x, training=False)
    for key in want:
        np.testing.assert_allclose(np.asarray(got[key]), np.asarray(want[key]),
                                   rtol=1e-4, atol=1e-4)
    # the source network is untouched
    assert isinstance(net.get_layer("a_conv"), keras.layers.Conv2D)
    assert net.get_layer("a_up") is not None


def test_rewritten_only_where_it_saves_multiply_adds():
    assert not saves_work(1, 1) and not saves_work(2, 2) and not saves_work(1, 2)
    assert saves_work(3, 3) and saves_work(4, 4) and saves_work(None, 8) and saves_work(None, None)
    net = decoder_like((2, 2, 6))  # a 2 x 2 coarse input: 144 taps x positions either way
    assert rewritable_blocks(net) == []


def test_flop_count_of_the_rewritten_layers():
    from benchmarks.flops import analytic_flops

    net = decoder_like()
    before, after = analytic_flops(net), analytic_flops(inference_copy(net, fold=False))
    # a_conv and b_conv: 3x3 over 16 x 24 x (6 + 4) channels -> 5, against a 2x2 phase
    # convolution over 9 x 13 x 6 -> 20 channels and a 3x3 one over 16 x 24 x 4 -> 5
    old, new = 2 * 16 * 24 * 10 * 5 * 9, 2 * (9 * 13 * 6 * 20 * 4 + 16 * 24 * 4 * 5 * 9)
    assert after["by_layer_type"]["UpsampledConcatConv2D"] == 2 * new
    assert before["total"] - after["total"] == 2 * (old - new)


def test_nothing_to_rewrite_returns_the_network():
    x = inputs = keras.Input((8, 8, 2))
    x = keras.layers.UpSampling2D(2)(x)
    net = keras.Model(inputs, keras.layers.Conv2D(3, 3, padding="same")(x))  # no skip
    assert rewritable_blocks(net) == []
    assert inference_copy(net) is net


@pytest.mark.parametrize("deep_supervision", [0, 2])
def test_mtl_decoder_blocks_with_a_skip_run_at_the_coarse_resolution(deep_supervision):
    from mtl.model.inference import compiled_forward

    net = small_mtl_network(deep_supervision, seed=5)
    randomise(net, seed=4)
    # the blocks that concatenate an encoder skip (the last block has none), except the first:
    # at 64 px its coarse input is 2 x 2, where the rewrite saves no multiply-adds
    assert [b.convolution for b in rewritable_blocks(net)] == [
        f"decoder_stage{i}a_conv" for i in (1, 2, 3)]
    x = np.random.default_rng(3).random((2, 64, 64, 1), dtype=np.float32)
    whole = compiled_forward(net, 64, 1, jit_compile=False, subpixel=False)(x)
    forward = compiled_forward(net, 64, 1, jit_compile=False)
    got = forward(x)
    assert set(got) == set(whole) and "mask_aux" not in got
    for key in whole:
        np.testing.assert_allclose(got[key], whole[key], rtol=1e-4, atol=1e-4)
    ops = [op.type for op in forward.graph.get_concrete_function().graph.get_operations()]
    assert ops.count("DepthToSpace") == 3
    xla = compiled_forward(net, 64, 1, jit_compile=True)(x[:1])  # through XLA too
    np.testing.assert_allclose(xla["mask"], whole["mask"][:1], rtol=1e-4, atol=1e-4)
