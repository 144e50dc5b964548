"""The network's inference pass as one compiled TensorFlow graph, shared by infer, serve and
evaluate."""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np

#: a batch of network inputs (B, S, S, C) -> {"presence": (B, 1), "type": (B, K), "mask": (B, S, S, 1)}
Forward = Callable[[np.ndarray], Mapping[str, Any]]


def compiled_forward(model: Any, image_size: int, channels: int) -> Forward:
    """The model's inference pass as one traced TensorFlow graph, for any batch size.

    Calling a Keras model eagerly dispatches its few hundred ops one by one from Python, which
    dominates small batches (on the 2-core benchmark machine the reference network took 104 ms
    for one slice eagerly and 17 ms as a graph: ``benchmarks/``). The graph computes the same
    ops, so outputs are the same up to float rounding (tested). Traced on the first call; the
    batch dimension is left open, so partial batches do not retrace.
    """
    import tensorflow as tf

    net = getattr(model, "net", model)
    spec = tf.TensorSpec([None, int(image_size), int(image_size), int(channels)], tf.float32)

    @tf.function(input_signature=[spec])
    def graph(x):
        return net(x, training=False)

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
        return {
            "presence": (np.asarray(plain["presence"]) + np.asarray(mirrored["presence"])) / 2,
            "type": (np.asarray(plain["type"]) + np.asarray(mirrored["type"])) / 2,
            "mask": (np.asarray(plain["mask"]) + np.asarray(mirrored["mask"])[:, :, ::-1]) / 2,
        }

    return averaged


__all__ = ["Forward", "compiled_forward", "with_flip_tta"]
