"""Layers mtl substitutes for Keras's own where those are slow on TensorFlow.

``BatchNormalization`` here is ``keras.layers.BatchNormalization`` computed by TensorFlow's
fused kernel (``FusedBatchNormV3``, one pass over the activations forward and one backward,
implemented by oneDNN on CPU and cuDNN on GPU). Keras 3 composes batch norm from separate
mean, variance, multiply and add ops instead, each a full pass over the activations, which
costs a U-Net a large share of its training time. Same variables, same update rule, same
results up to float rounding; it falls back to Keras's own computation wherever the fused
kernel does not apply (synchronized batch norm, renorm, masks, non-4-D inputs, a channel axis
other than the last).
"""

from __future__ import annotations

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="mtl")
class BatchNormalization(keras.layers.BatchNormalization):
    """``keras.layers.BatchNormalization`` through TensorFlow's fused batch-norm kernel.

    The class keeps Keras's name on purpose: a ``.keras`` file addresses each layer's weights
    by a path built from its class name, so models saved with Keras's layer load into this one
    and the other way round.
    """

    def _fusable(self, inputs, mask) -> bool:
        return (
            mask is None
            and not self.synchronized
            and not self.renorm
            and len(inputs.shape) == 4
            and self.axis in (-1, 3)
        )

    def call(self, inputs, training=None, mask=None):
        if not self._fusable(inputs, mask):
            return super().call(inputs, training=training, mask=mask)
        x = tf.cast(inputs, tf.float32)
        channels = x.shape[-1]
        gamma = tf.cast(self.gamma, tf.float32) if self.scale else tf.ones([channels])
        beta = tf.cast(self.beta, tf.float32) if self.center else tf.zeros([channels])
        if training and self.trainable:
            y, mean, variance = tf.compat.v1.nn.fused_batch_norm(
                x, gamma, beta, epsilon=self.epsilon, is_training=True, data_format="NHWC"
            )
            # the kernel returns the unbiased (n - 1) batch variance; Keras tracks the biased one
            n = tf.cast(tf.size(x) // channels, tf.float32)
            variance = variance * ((n - 1.0) / tf.maximum(n, 1.0))
            m = self.momentum
            self.moving_mean.assign(self.moving_mean * m + tf.cast(mean, self.moving_mean.dtype) * (1 - m))
            self.moving_variance.assign(
                self.moving_variance * m + tf.cast(variance, self.moving_variance.dtype) * (1 - m)
            )
        else:
            y, _, _ = tf.compat.v1.nn.fused_batch_norm(
                x, gamma, beta,
                mean=tf.cast(self.moving_mean, tf.float32),
                variance=tf.cast(self.moving_variance, tf.float32),
                epsilon=self.epsilon, is_training=False, data_format="NHWC",
            )
        return tf.cast(y, self.compute_dtype)


__all__ = ["BatchNormalization"]
