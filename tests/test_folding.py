"""Batch norm folded into the convolution before it (mtl.model.folding), for inference."""

import numpy as np
import pytest

import keras

from mtl.model.folding import foldable_pairs
from mtl.model.inference_copy import inference_copy
from mtl.model.layers import BatchNormalization as FusedBatchNormalization
from mtl.model.network import NetworkSpec, build_network


def randomise_statistics(net, seed=0):
    """Batch-norm statistics and affine weights far from their initial (identity) values, so a
    wrong fold shows."""
    rng = np.random.default_rng(seed)
    for layer in net.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.moving_mean.shape
            layer.moving_mean.assign(rng.normal(0.0, 0.5, n))
            layer.moving_variance.assign(rng.uniform(0.3, 3.0, n))
            if layer.scale:
                layer.gamma.assign(rng.uniform(0.5, 1.5, n))
            if layer.center:
                layer.beta.assign(rng.normal(0.0, 0.3, n))


def small_net():
    x = inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", use_bias=False, name="a_conv")(x)
    x = FusedBatchNormalization(name="a_bn")(x)  # mtl's fused layer
    x = keras.layers.Activation("relu")(x)
    x = keras.layers.Conv2D(8, 3, padding="same", use_bias=True, name="b_conv")(x)
    x = keras.layers.BatchNormalization(scale=False, epsilon=1e-3, name="b_bn")(x)  # Keras's
    y = keras.layers.Conv2D(8, 1, use_bias=False, name="c_conv")(x)  # read twice: not folded
    c = keras.layers.BatchNormalization(name="c_bn")(y)
    d = keras.layers.Conv2D(8, 1, activation="relu", name="d_conv")(x)  # activation: not folded
    d = keras.layers.BatchNormalization(center=False, name="d_bn")(d)
    z = keras.layers.Add()([c, y, d])
    return keras.Model(inputs, {"out": keras.layers.GlobalAveragePooling2D()(z), "map": z})


def test_pairs_are_single_consumer_linear_convolutions():
    assert foldable_pairs(small_net()) == {"a_conv": "a_bn", "b_conv": "b_bn"}


def test_folded_network_computes_the_same():
    net = small_net()
    randomise_statistics(net)
    folded = inference_copy(net, subpixel=False)
    assert folded is not net
    assert not any(isinstance(l, keras.layers.BatchNormalization) and l.name in ("a_bn", "b_bn")
                   for l in folded.layers)
    assert folded.get_layer("a_conv").use_bias and folded.get_layer("b_conv").use_bias
    assert isinstance(folded.get_layer("c_bn"), keras.layers.BatchNormalization)
    x = np.random.default_rng(1).standard_normal((4, 16, 16, 3)).astype(np.float32)
    want, got = net(x, training=False), folded(x, training=False)
    for key in want:
        np.testing.assert_allclose(np.asarray(got[key]), np.asarray(want[key]),
                                   rtol=1e-5, atol=1e-5)
    # the source network is untouched
    assert not net.get_layer("a_conv").use_bias
    assert isinstance(net.get_layer("a_bn"), keras.layers.BatchNormalization)


def test_nothing_to_fold_returns_the_network():
    x = inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3, padding="same")(x)
    net = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))
    assert foldable_pairs(net) == {}
    assert inference_copy(net) is net


def small_mtl_network(deep_supervision, seed):
    """mtl's network (resnet18, 64 px, narrow decoder and heads) with its batch-norm statistics
    randomised."""
    spec = NetworkSpec(backbone="resnet18", input_size=64, channels=1,
                       classes=["no_tumor", "glioma", "meningioma", "pituitary"],
                       decoder_filters=[32, 16, 16, 8, 8], head_units=16,
                       deep_supervision=deep_supervision)
    net = build_network(spec)
    randomise_statistics(net, seed=seed)
    return net


@pytest.mark.parametrize("deep_supervision", [0, 2])
def test_mtl_network_folds_every_convolution_batch_norm(deep_supervision):
    from mtl.model.inference import compiled_forward

    net = small_mtl_network(deep_supervision, seed=2)
    pairs = foldable_pairs(net)
    # resnet18: the stem and the first convolution of each of 8 units; 5 decoder blocks x 2
    assert len(pairs) == 1 + 8 + 10
    assert {"conv0", "stage4_unit2_conv1", "decoder_stage4b_conv"} <= set(pairs)
    x = np.random.default_rng(3).random((2, 64, 64, 1), dtype=np.float32)
    unfolded = compiled_forward(net, 64, 1, fold=False)(x)
    folded = compiled_forward(net, 64, 1)(x)
    assert set(folded) == set(unfolded) and "mask_aux" not in folded
    for key in unfolded:
        np.testing.assert_allclose(folded[key], unfolded[key], rtol=1e-4, atol=1e-4)
    # the folded graph has no batch-norm op left for the folded pairs
    graph = compiled_forward(net, 64, 1).graph.get_concrete_function().graph
    norms = [op for op in graph.get_operations() if "FusedBatchNorm" in op.type]
    assert len(norms) == sum(isinstance(l, keras.layers.BatchNormalization)
                             for l in net.layers) - len(pairs)
