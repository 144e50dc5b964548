"""What the arithmetic allows: the machine's 3x3 convolution GFLOP/s and the model's FLOPs.

Conventions (also in benchmarks/README.md):

- 1 FLOP = one floating-point multiply or add; a multiply-accumulate counts 2.
- A 3x3 "SAME" convolution of an (N, H, W, Cin) input into Cout channels costs
  ``2 * N * H * W * Cin * Cout * 9`` FLOPs forward. Its backward pass (gradient with respect to
  the input and to the kernel) costs twice that, so forward+backward is 3x forward.
- The conv peak is timed both forward-only and forward+backward (input and kernel gradients) in
  one ``tf.function`` each, float32 NHWC; ``peak_gflops`` is the larger of the two medians.
- Model FLOPs are counted by TensorFlow's profiler (``tf.compat.v1.profiler``, float_operation
  view) over the frozen graph of ``model.net``'s inference forward pass at batch 1, i.e. FLOPs per
  image. Ops the profiler has no FLOP statistics for (e.g. fused batch norm, resizes) count 0;
  convolutions and matmuls dominate. A layer-by-layer analytic count of the Conv2D / depthwise
  / Dense layers is reported next to it as a cross-check.
- Training FLOPs per image = 3 x forward FLOPs (forward + backward, backward ~ 2x forward);
  optimizer updates and the loss are ignored.
"""

from __future__ import annotations

import time
from typing import Any

from benchmarks.common import stats


def conv_flops(batch: int, height: int, width: int, cin: int, cout: int, k: int = 3) -> int:
    """Forward FLOPs of a stride-1 SAME k x k convolution (multiply and add counted apart)."""
    return 2 * batch * height * width * cin * cout * k * k


class ConvProbe:
    """Times one large 3x3 Conv2D, forward and forward+backward; call :meth:`measure` per repeat.

    ``shape`` is (batch, height, width, channels) of the input; output channels = input channels.
    Each measurement runs ``inner`` calls and reports the mean time per call.
    """

    def __init__(self, shape: tuple[int, int, int, int] = (16, 64, 64, 128), inner: int = 3) -> None:
        import tensorflow as tf

        self.shape = tuple(int(s) for s in shape)
        n, h, w, c = self.shape
        self.inner = int(inner)
        self.fwd_flops = conv_flops(n, h, w, c, c)
        self.fwd_bwd_flops = 3 * self.fwd_flops
        self.x = tf.random.stateless_normal(self.shape, seed=(1, 2))
        self.kernel = tf.Variable(tf.random.stateless_normal((3, 3, c, c), seed=(3, 4)) * 0.05)
        kernel = self.kernel

        @tf.function
        def forward(x):
            return tf.nn.conv2d(x, kernel, strides=1, padding="SAME")

        @tf.function
        def forward_backward(x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = tf.nn.conv2d(x, kernel, strides=1, padding="SAME")
            # upstream gradient = ones: the backward pass is the two full convolution gradients
            dx, dk = tape.gradient(y, [x, kernel])
            return y, dx, dk

        self._forward = forward
        self._forward_backward = forward_backward
        self.runs: dict[str, list[float]] = {"forward": [], "forward_backward": []}
        # trace and warm up (oneDNN primitive creation happens on the first call)
        for _ in range(2):
            forward(self.x)
            forward_backward(self.x)

    def _time(self, fn) -> float:
        t0 = time.perf_counter()
        for _ in range(self.inner):
            fn(self.x)  # eager CPU calls return once the outputs are computed
        return (time.perf_counter() - t0) / self.inner

    def measure(self) -> None:
        self.runs["forward"].append(self._time(self._forward))
        self.runs["forward_backward"].append(self._time(self._forward_backward))

    def result(self) -> dict[str, Any]:
        fwd = stats(self.fwd_flops / t / 1e9 for t in self.runs["forward"])
        both = stats(self.fwd_bwd_flops / t / 1e9 for t in self.runs["forward_backward"])
        peaks = [v for v in (fwd["median"], both["median"]) if v is not None]
        return {
            "what": "3x3 Conv2D, stride 1, SAME, float32 NHWC, Cout = Cin",
            "input_shape": list(self.shape),
            "inner_calls_per_repeat": self.inner,
            "forward_gflop": self.fwd_flops / 1e9,
            "forward_backward_gflop": self.fwd_bwd_flops / 1e9,
            "seconds": {k: stats(v) for k, v in self.runs.items()},
            "gflops_forward": fwd,
            "gflops_forward_backward": both,
            "peak_gflops": max(peaks) if peaks else None,
            "peak_is": ("forward" if fwd["median"] == max(peaks) else "forward_backward")
            if peaks else None,
        }


# --------------------------------------------------------------------------- model FLOPs


def profiler_forward_flops(net: Any, input_shape: tuple[int, int, int]) -> dict[str, Any]:
    """FLOPs of ``net``'s inference forward pass for one image, counted by TF's profiler."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    fn = tf.function(lambda x: net(x, training=False))
    concrete = fn.get_concrete_function(tf.TensorSpec((1, *input_shape), tf.float32))
    frozen = convert_variables_to_constants_v2(concrete)
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(frozen.graph.as_graph_def(), name="")
    builder = tf.compat.v1.profiler.ProfileOptionBuilder
    options = builder(builder.float_operation()).with_empty_output().build()
    logger, level = tf.get_logger(), tf.get_logger().level
    logger.setLevel("ERROR")  # the v1 profiler logs a deprecation notice
    try:
        profile = tf.compat.v1.profiler.profile(
            graph=graph, run_meta=tf.compat.v1.RunMetadata(), cmd="op", options=options)
    finally:
        logger.setLevel(level)
    by_op = {child.name: int(child.total_float_ops) for child in profile.children
             if child.total_float_ops}
    return {"total": int(profile.total_float_ops), "by_op_type": by_op}


def analytic_flops(net: Any) -> dict[str, Any]:
    """Cross-check: 2*MACs of every Conv2D, DepthwiseConv2D, Conv2DTranspose and Dense layer,
    and of the inference copy's ``UpsampledConcatConv2D`` (its 2x2 phase convolution at the
    coarse resolution plus its skip convolution: :mod:`mtl.model.subpixel`)."""
    import keras

    from mtl.model.subpixel import UpsampledConcatConv2D

    total, by_kind = 0, {}
    for layer in net.layers:
        if isinstance(layer, UpsampledConcatConv2D):
            (_, h, w, c_up), (_, hs, ws, c_skip) = (tuple(t.shape) for t in layer.input)
            flops = 2 * layer.filters * ((h + 1) * (w + 1) * c_up * 4 * 4 + hs * ws * c_skip * 9)
            by_kind["UpsampledConcatConv2D"] = by_kind.get("UpsampledConcatConv2D", 0) + flops
            total += flops
            continue
        try:
            out_shape = tuple(layer.output.shape)
            in_shape = tuple(layer.input.shape)
        except (AttributeError, ValueError):
            continue
        flops = 0
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            kh, kw = layer.kernel_size
            flops = 2 * out_shape[1] * out_shape[2] * out_shape[3] * kh * kw
        elif isinstance(layer, keras.layers.Conv2DTranspose):
            kh, kw = layer.kernel_size
            flops = 2 * in_shape[1] * in_shape[2] * in_shape[3] * out_shape[3] * kh * kw
        elif isinstance(layer, keras.layers.Conv2D):
            kh, kw = layer.kernel_size
            groups = getattr(layer, "groups", 1) or 1
            flops = 2 * out_shape[1] * out_shape[2] * out_shape[3] * (in_shape[3] // groups) * kh * kw
        elif isinstance(layer, keras.layers.Dense):
            flops = 2 * in_shape[-1] * out_shape[-1]
        if flops:
            kind = type(layer).__name__
            by_kind[kind] = by_kind.get(kind, 0) + int(flops)
            total += int(flops)
    return {"total": total, "by_layer_type": by_kind}


def model_flops(net: Any, input_shape: tuple[int, int, int]) -> dict[str, Any]:
    """Forward FLOPs per image (profiler, with the analytic cross-check) and the training figure."""
    profiled = profiler_forward_flops(net, input_shape)
    analytic = analytic_flops(net)
    forward = profiled["total"]
    return {
        "input_shape": list(input_shape),
        "method": "tf.compat.v1.profiler float_operation over the frozen inference graph, batch 1",
        "forward_flops_per_image": forward,
        "forward_gflop_per_image": forward / 1e9,
        "train_gflop_per_image": 3 * forward / 1e9,
        "train_convention": "training = 3 x forward (backward ~ 2 x forward)",
        "profiler_by_op_type": profiled["by_op_type"],
        "analytic_forward_gflop_per_image": analytic["total"] / 1e9,
        "analytic_by_layer_type": analytic["by_layer_type"],
        "parameters": int(sum(int(w.numpy().size) for w in net.weights)),
    }
