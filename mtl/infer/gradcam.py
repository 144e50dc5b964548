"""Grad-CAM (Selvaraju et al., 2017) for the type head, on the encoder's deepest feature map.

The presence and type heads read the encoder's bottleneck through global pooling; the
bottleneck is the input of layer ``head_gap`` inside ``model.net``. Grad-CAM weighs each
bottleneck channel by the mean gradient of the chosen class probability with respect to it,
sums, keeps the positive part and scales to [0, 1]. The map is as coarse as the bottleneck
(input side / 32), upsampled bilinearly to the network input, then mapped back to the slice's
own geometry with :func:`mtl.data.preprocess.unletterbox`.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from mtl.data.preprocess import prepare_image, unletterbox


class GradCam:
    """Grad-CAM maps of a loaded mtl model for the type head."""

    def __init__(self, model: Any) -> None:
        import keras

        net = model.net
        bottleneck = net.get_layer("head_gap").input
        self.model = model
        self.submodel = keras.Model(net.input, [bottleneck, net.output["type"]])

    def network_maps(self, x: np.ndarray, class_index: int | Sequence[int]) -> np.ndarray:
        """(B, S, S, C) network inputs -> (B, S, S) maps in [0, 1] for the given class(es)."""
        import cv2
        import tensorflow as tf

        x = tf.convert_to_tensor(np.asarray(x, np.float32))
        n = int(x.shape[0])
        indices = np.broadcast_to(np.asarray(class_index, np.int32), (n,))
        with tf.GradientTape() as tape:
            features, probs = self.submodel(x, training=False)
            tape.watch(features)
            score = tf.gather(probs, tf.constant(indices), axis=1, batch_dims=1)
        grads = tape.gradient(score, features)
        weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
        cams = tf.nn.relu(tf.reduce_sum(weights * features, axis=-1)).numpy()
        size = int(x.shape[1])
        out = np.zeros((n, size, size), np.float32)
        for i, cam in enumerate(cams):
            peak = float(cam.max())
            if peak > 0:
                out[i] = cv2.resize(cam / peak, (size, size), interpolation=cv2.INTER_LINEAR)
        return np.clip(out, 0.0, 1.0)

    def slice_maps(self, slices: Sequence[np.ndarray], class_index: int,
                   batch_size: int = 8) -> list[np.ndarray]:
        """Raw 2-D slices -> Grad-CAM maps at each slice's own size, values in [0, 1]."""
        spec = self.model.preprocessing
        maps: list[np.ndarray] = []
        for start in range(0, len(slices), batch_size):
            prepared = [prepare_image(np.asarray(s), spec) for s in slices[start:start + batch_size]]
            cams = self.network_maps(np.stack([p[0] for p in prepared]), class_index)
            for cam, (_x, info) in zip(cams, prepared):
                maps.append(np.clip(unletterbox(cam, info), 0.0, 1.0))
        return maps


__all__ = ["GradCam"]
