"""Batch norm folded into the convolution before it, for inference.

In inference a batch-norm layer is a fixed affine map per channel,
``y = gamma * (x - mean) / sqrt(variance + epsilon) + beta``. Where it reads a convolution's
output and nothing else does, the map can be moved into the convolution's kernel and bias:
with ``s = gamma / sqrt(variance + epsilon)``, the kernel's output channels are scaled by
``s`` and the bias becomes ``(bias - mean) * s + beta``. The network then computes the same
function (up to float rounding) with one op fewer per pair.

Why it matters: TensorFlow fuses a convolution, its batch norm and the ReLU after it into one
oneDNN convolution whose batch norm runs as "binary" post-ops. On CPUs without AVX-512,
oneDNN runs such convolutions through its GEMM path, where those post-ops are slow: at batch 1,
the reference network's convolutions took ten times their batch-16 time per image with the
kernels capped to AVX2 (``benchmarks/step_profile.py``; README, Performance). A folded
convolution has a bias and a ReLU, which that path does fast, and there is no batch norm
left to compute on any CPU or GPU.

Only for inference (:func:`mtl.model.inference_copy.inference_copy` makes the folded copy):
training needs the batch statistics and the layers' own variables.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np


def foldable_pairs(net: Any) -> dict[str, str]:
    """{convolution layer name: batch-norm layer name} of the pairs that
    :func:`mtl.model.inference_copy.inference_copy` folds: a ``Conv2D`` without activation,
    channels last, called once, whose only consumer is a channels-last ``BatchNormalization``
    called once (any subclass: mtl's fused one too)."""
    pairs: dict[str, str] = {}
    for layer in getattr(net, "layers", []):
        if not isinstance(layer, keras.layers.BatchNormalization) or len(layer._inbound_nodes) != 1:
            continue
        if layer.axis not in (-1, 3) or layer.synchronized or layer.renorm:
            continue
        inputs = layer._inbound_nodes[0].input_tensors
        if len(inputs) != 1:
            continue
        conv = inputs[0]._keras_history.operation
        if (
            type(conv) is keras.layers.Conv2D
            and len(conv._inbound_nodes) == 1
            and len(conv._outbound_nodes) == 1
            and conv.data_format == "channels_last"
            and conv.activation is keras.activations.linear
        ):
            pairs[conv.name] = layer.name
    return pairs


def folded_weights(conv: Any, bn: Any) -> list[np.ndarray]:
    """[kernel, bias] of the convolution ``conv`` followed by the batch norm ``bn`` in
    inference (computed in float64, returned in the variables' dtypes)."""
    stored = conv.kernel.numpy()
    kernel = stored.astype(np.float64)
    channels = kernel.shape[-1]
    bias = np.asarray(conv.bias.numpy(), np.float64) if conv.use_bias else np.zeros(channels)
    gamma = np.asarray(bn.gamma.numpy(), np.float64) if bn.scale else np.ones(channels)
    beta = np.asarray(bn.beta.numpy(), np.float64) if bn.center else np.zeros(channels)
    mean = np.asarray(bn.moving_mean.numpy(), np.float64)
    variance = np.asarray(bn.moving_variance.numpy(), np.float64)
    scale = gamma / np.sqrt(variance + bn.epsilon)
    return [(kernel * scale).astype(stored.dtype),
            ((bias - mean) * scale + beta).astype(stored.dtype)]


class FoldedBatchNorm(keras.layers.Layer):
    """A folded batch norm's place in the graph: returns its input (it takes the batch norm's
    call arguments, ``training`` and ``mask``). Inference only, never saved."""

    def call(self, inputs, training=None, mask=None):
        return inputs

    def compute_output_shape(self, input_shape):
        return input_shape
