"""Optimizers mtl substitutes for Keras's own where those are slow on TensorFlow.

``FusedAdam`` is ``keras.optimizers.Adam`` whose update of each weight is TensorFlow's fused
kernel (``ResourceApplyAdam``: the two moments and the weight updated in one pass). Keras 3
composes the update from about ten separate ops per weight (subtract, multiply, square, sqrt,
divide, three assignments, ...), each a full pass over a tensor the size of the weight; for a
U-Net on a CPU that was a fifth of the training step at 64 px (``benchmarks/step_profile.py``).
Same variables, same update rule (the kernel computes Keras's formula, epsilon outside the
square root), same results up to float rounding (tested); it falls back to Keras's own update
wherever the kernel does not apply (amsgrad, sparse gradients, a distribution strategy).
"""

from __future__ import annotations

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="mtl")
class FusedAdam(keras.optimizers.Adam):
    """``keras.optimizers.Adam`` through TensorFlow's fused ``ResourceApplyAdam`` kernel."""

    def _fusable(self, gradient, variable) -> bool:
        return (
            not self.amsgrad
            and not isinstance(gradient, tf.IndexedSlices)
            and not tf.distribute.has_strategy()
            and isinstance(variable, tf.Variable)
            and hasattr(variable, "handle")
        )

    def update_step(self, gradient, variable, learning_rate):
        if not self._fusable(gradient, variable):
            return super().update_step(gradient, variable, learning_rate)
        index = self._get_variable_index(variable)
        m, v = self._momentums[index].value, self._velocities[index].value
        dtype = variable.dtype
        local_step = tf.cast(self.iterations + 1, dtype)
        beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
        tf.raw_ops.ResourceApplyAdam(
            var=variable.handle, m=m.handle, v=v.handle,
            beta1_power=tf.pow(beta_1, local_step), beta2_power=tf.pow(beta_2, local_step),
            lr=tf.cast(learning_rate, dtype), beta1=beta_1, beta2=beta_2,
            epsilon=tf.cast(self.epsilon, dtype), grad=tf.cast(gradient, dtype),
            use_locking=False,
        )


__all__ = ["FusedAdam"]
