"""The network's inference pass as one compiled TensorFlow graph, shared by infer, serve and
evaluate."""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np

from mtl.model.network import AUX_OUTPUT

#: a batch of network inputs (B, S, S, C) -> {"presence": (B, 1), "type": (B, K), "mask": (B, S, S, 1)}
Forward = Callable[[np.ndarray], Mapping[str, Any]]


def _with_logits(net: Any) -> Any:
    """``net`` with two more outputs, the presence and type heads' input features, when it
    has mtl's heads (``head_dense``, ``presence``, ``type``); None otherwise."""
    import keras

    names = {layer.name for layer in net.layers}
    if not {"head_dense", "presence", "type"} <= names or not isinstance(net.output, dict):
        return None
    outputs = {k: v for k, v in net.output.items() if k != AUX_OUTPUT}  # training only
    return keras.Model(net.inputs, {**outputs, "features": net.get_layer("head_dense").output})


def compiled_forward(model: Any, image_size: int, channels: int,
                     jit_compile: bool = False, fold: bool = True) -> Forward:
    """The model's inference pass as one traced TensorFlow graph, for any batch size.

    Calling a Keras model eagerly dispatches its few hundred ops one by one from Python, which
    dominates small batches (on the 2-core benchmark machine the reference network took 104 ms
    for one slice eagerly and 17 ms as a graph: ``benchmarks/``). The graph computes the same
    ops, so outputs are the same up to float rounding (tested). Traced on the first call; the
    batch dimension is left open, so partial batches do not retrace.

    This is where calibration is applied, once for ``mtl infer``, ``mtl serve`` and ``mtl
    evaluate``: ``presence`` and ``type`` are ``sigmoid(z / T)`` and ``softmax(z / T)`` of the
    heads' logits with the temperatures the model stores (:mod:`mtl.model.calibration`; 1 when
    none). For mtl's network the outputs also hold the heads' raw logits (``presence_logit``,
    ``type_logits``) and uncalibrated probabilities (``presence_uncalibrated``,
    ``type_uncalibrated``).

    ``jit_compile=True`` compiles the graph with XLA, once per batch size seen (same outputs up
    to float rounding, tested; ``benchmarks/step_profile.py`` measures it against the plain
    graph).

    ``fold=True`` (the default) runs a copy of the network with each batch norm that follows a
    convolution folded into that convolution's kernel and bias (:mod:`mtl.model.folding`): the
    same function up to float rounding (tested), one op fewer per pair, and on CPUs without
    AVX-512 several times faster at batch 1 (README, Performance). ``fold=False`` runs the
    network as trained.
    """
    import tensorflow as tf

    from mtl.model.calibration import temperatures
    from mtl.model.folding import fold_batchnorm

    net = getattr(model, "net", model)
    if fold:
        net = fold_batchnorm(net)
    spec = tf.TensorSpec([None, int(image_size), int(image_size), int(channels)], tf.float32)
    t_presence, t_type = temperatures(model)
    extended = _with_logits(net)

    if extended is None:
        @tf.function(input_signature=[spec], jit_compile=jit_compile)
        def graph(x):
            return net(x, training=False)
    else:
        presence_head, type_head = net.get_layer("presence"), net.get_layer("type")

        def logits(head, features):
            return tf.matmul(features, tf.cast(head.kernel, tf.float32)) + tf.cast(head.bias,
                                                                                   tf.float32)

        @tf.function(input_signature=[spec], jit_compile=jit_compile)
        def graph(x):
            out = extended(x, training=False)
            features = tf.cast(out.pop("features"), tf.float32)
            z_presence, z_type = logits(presence_head, features), logits(type_head, features)
            return {
                "presence": tf.sigmoid(z_presence / t_presence),
                "type": tf.nn.softmax(z_type / t_type, axis=-1),
                "mask": out["mask"],
                "presence_logit": z_presence,
                "type_logits": z_type,
                "presence_uncalibrated": out["presence"],
                "type_uncalibrated": out["type"],
            }

    def forward(x: np.ndarray) -> dict[str, np.ndarray]:
        return {k: v.numpy() for k, v in graph(tf.convert_to_tensor(x, tf.float32)).items()}

    forward.graph = graph  # type: ignore[attr-defined] - the tf.function, for inspection
    return forward


def with_flip_tta(forward: Forward) -> Forward:
    """``forward`` averaged with its output for the left-right mirrored input (the mirrored
    mask flipped back): test-time augmentation, two network passes per batch."""

    def averaged(x: np.ndarray) -> dict[str, np.ndarray]:
        x = np.asarray(x, np.float32)
        plain = forward(x)
        mirrored = forward(np.ascontiguousarray(x[:, :, ::-1]))
        out = {k: (np.asarray(v) + np.asarray(mirrored[k])) / 2
               for k, v in plain.items() if k != "mask"}  # probabilities (and logits)
        out["mask"] = (np.asarray(plain["mask"]) + np.asarray(mirrored["mask"])[:, :, ::-1]) / 2
        return out

    return averaged


__all__ = ["Forward", "compiled_forward", "with_flip_tta"]
