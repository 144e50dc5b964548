"""Convolution weight gradients computed as a forward convolution, where that beats the
CPU's own weight-gradient kernel.

The kernel gradient of a stride-1 convolution ``y = conv2d(x, k)`` (NHWC, VALID) is

    dk[i, j, c, o] = sum over n, h, w of x[n, h + i, w + j, c] * dy[n, h, w, o],

which is itself a VALID forward convolution once the tensors are transposed: the input
``x`` as (C_in, H, W, N) (channels become images, images channels) and the output gradient
``dy`` as the filter (H_out, W_out, N, C_out); the result (C_in, kh, kw, C_out) is the kernel
gradient transposed. On an AVX2-only CPU, oneDNN's weight-gradient kernel for the NHWC tensors
TensorFlow hands it was the largest single cost of mtl's training step (46% of its op time,
``benchmarks/results/step_profile-avx2.md``). For the wide layers of a ResNet encoder (64-512
channels) the transposed forward convolution was 1.1-2.1x faster per layer over three runs
(1.3-1.5x summed over them); for narrow ones at high resolution (16 channels at 64-128 px)
1.6-2.6x slower (``benchmarks/results/weight_gradient-avx2.md``). So
:func:`use_weight_gradient` sends only the convolutions with at least :data:`MIN_CHANNELS` input
and output channels this way, and only where that was measured to help (:func:`resolve_weight_gradient`: ``auto`` is on for x86-64 CPUs
with AVX2 and without AVX-512, and no GPU; measured in float32 with oneDNN's kernels and
without XLA).

The forward pass and the input gradient stay TensorFlow's own ops (the ones its registered
gradient runs); only the kernel's gradient is computed differently: the same sums in another
order, equal up to float rounding (tested). Nothing is saved with the model: the choice is made
per training session on the layers of the model being trained (``train.weight_gradient``).
"""

from __future__ import annotations

import functools
import logging
import platform
from typing import Any

from mtl.precision import cpu_flags

log = logging.getLogger(__name__)

#: ``train.weight_gradient`` values: auto (the measured choice for this machine), transposed
#: (a forward convolution of the transposed tensors), native (TensorFlow's kernel)
WEIGHT_GRADIENTS = ("auto", "transposed", "native")
#: the fewest input and output channels of a convolution whose weight gradient is a transposed
#: forward convolution: at 16 channels TensorFlow's kernel is faster, from 64 on mostly the
#: transposed one (32: 0.83-1.14x over three runs, benchmarks/weight_gradient.py)
MIN_CHANNELS = 64


def choose_weight_gradient(machine: str, flags: frozenset[str] | set[str], gpus: int) -> str:
    """``auto``'s choice from the CPU's architecture and /proc/cpuinfo flags and the GPUs:
    transposed forward convolutions on x86-64 CPUs with AVX2 and without AVX-512 (measured on an
    AMD EPYC with AVX2), TensorFlow's kernels everywhere else: wherever a GPU trains (cuDNN),
    the CPU has AVX-512 (oneDNN's direct NHWC kernels; not measured faster), or its flags are
    unknown (no /proc/cpuinfo: Windows, macOS)."""
    if gpus or machine.lower() not in ("x86_64", "amd64"):
        return "native"
    if "avx2" not in flags or "avx512f" in flags:
        return "native"
    return "transposed"


def resolve_weight_gradient(name: str) -> str:
    """``transposed`` or ``native`` for ``train.weight_gradient`` on this machine."""
    if name not in WEIGHT_GRADIENTS:
        raise ValueError(f"train.weight_gradient must be one of {', '.join(WEIGHT_GRADIENTS)}, "
                         f"not {name!r}")
    if name != "auto":
        return name
    import tensorflow as tf

    return choose_weight_gradient(platform.machine(), cpu_flags(),
                                  len(tf.config.list_physical_devices("GPU")))


def eligible(layer: Any, min_channels: int = MIN_CHANNELS) -> bool:
    """Whether ``layer``'s weight gradient goes through :func:`conv2d`: a built
    ``keras.layers.Conv2D`` (the class itself) with stride 1, no dilation, no groups, channels
    last, a kernel larger than 1x1 and at least ``min_channels`` channels in and out."""
    import keras

    if type(layer) is not keras.layers.Conv2D or not layer.built:
        return False
    kh, kw, cin, cout = (int(d) for d in layer.kernel.shape)
    return (
        tuple(layer.strides) == (1, 1)
        and tuple(layer.dilation_rate) == (1, 1)
        and layer.groups == 1
        and layer.data_format == "channels_last"
        and kh * kw > 1
        and min(cin, cout) >= min_channels
    )


def use_weight_gradient(model: Any, name: str) -> int:
    """Compute the weight gradients of ``model``'s eligible convolutions (:func:`eligible`)
    as transposed forward convolutions (``transposed``) or with TensorFlow's kernel
    (``native``; ``auto``: see :func:`resolve_weight_gradient`); returns how many layers use
    the transposed one. Must run before the model's train step is traced (before ``fit``)."""
    chosen = resolve_weight_gradient(name)
    count = 0
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if not eligible(layer):
            continue
        if chosen == "transposed":
            layer.convolution_op = functools.partial(conv2d, padding=layer.padding)
            count += 1
        elif "convolution_op" in vars(layer):
            del layer.convolution_op  # back to the class's own
    log.info("train.weight_gradient %s: %s", name, f"{count} convolutions' weight gradients as "
             "transposed forward convolutions" if chosen == "transposed" else "TensorFlow's kernel")
    return count


def conv2d(x: Any, kernel: Any, padding: str) -> Any:
    """``tf.nn.conv2d(x, kernel, 1, padding)`` (NHWC, stride 1) whose kernel gradient is
    :func:`weight_gradient`; its input gradient is TensorFlow's ``Conv2DBackpropInput``."""
    import tensorflow as tf

    padding = padding.upper()
    x = tf.convert_to_tensor(x)
    kernel = tf.convert_to_tensor(kernel)

    @tf.custom_gradient
    def forward(x, kernel):
        def backward(dy):
            dx = tf.raw_ops.Conv2DBackpropInput(
                input_sizes=tf.shape(x), filter=kernel, out_backprop=dy, strides=[1, 1, 1, 1],
                padding=padding)
            return dx, weight_gradient(x, dy, tuple(int(d) for d in kernel.shape), padding)

        return tf.nn.conv2d(x, kernel, 1, padding), backward

    return forward(x, kernel)


def weight_gradient(x: Any, dy: Any, kernel_shape: tuple[int, int, int, int], padding: str
                    ) -> Any:
    """The gradient of a stride-1 ``conv2d(x, kernel, padding)`` with respect to its kernel,
    given the output gradient ``dy``: a VALID forward convolution of ``x`` transposed to
    (C_in, H, W, N) with ``dy`` transposed to the filter (H_out, W_out, N, C_out)."""
    import tensorflow as tf

    kh, kw = kernel_shape[:2]
    if padding == "SAME":  # TensorFlow's SAME at stride 1: (k - 1) // 2 before, the rest after
        x = tf.pad(x, [[0, 0], [(kh - 1) // 2, kh // 2], [(kw - 1) // 2, kw // 2], [0, 0]])
    xt = tf.transpose(x, [3, 1, 2, 0])
    dyt = tf.transpose(dy, [1, 2, 0, 3])
    return tf.transpose(tf.nn.conv2d(xt, dyt, 1, "VALID"), [1, 2, 0, 3])
