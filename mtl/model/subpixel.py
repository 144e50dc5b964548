"""The decoder's upsample-concatenate-convolve computed at the coarse resolution, for inference.

Each block of the U-Net decoder upsamples its input ``x`` (h x w) twofold by repeating every
pixel (nearest neighbour), concatenates the encoder's skip features and runs a 3x3 convolution
over the result. The part of that convolution that reads the upsampled channels wastes work:
of the 3x3 taps over a repeated pixel grid, only 2x2 distinct input pixels reach each output
pixel. For the output pixel at row ``2i + a`` (``a`` in {0, 1}, its row *phase*), the kernel's
three rows fall on rows ``i - 1, i, i`` of ``x`` when ``a = 0`` and on ``i, i, i + 1`` when
``a = 1``; the same holds for columns. So each of the four output phases ``(a, b)`` is a 2x2
convolution of ``x`` at its own resolution, with the 3x3 kernel's taps summed where they fall on
the same pixel (:func:`phase_kernels`). The four phases are one 2x2 convolution with four times
the output channels over ``x`` padded by one pixel, interleaved back to full resolution by
``depth_to_space`` (the "pixel shuffle" of sub-pixel convolution, Shi et al. 2016); with each
phase in the slot of the opposite phase, the shuffled map is the upsampled convolution shifted
by one pixel, so one crop finishes it. The skip channels keep their own 3x3 convolution at full
resolution, and the two are added. Same function up to float rounding,
and the upsampled channels cost 16 taps at a quarter of the pixels instead of 9 taps: 4 / 9 of
their former multiply-adds, a little more for small inputs, whose padded border counts
(:func:`saves_work`); the upsampled and concatenated tensors are never built.

Where it pays: the whole network 1.08x faster at batch 16 and 128 px on a 2-core AVX2 EPYC,
1.05x at 192 px (``python benchmarks/step_profile.py --variants
infer_batch_graph,infer_batch_nosubpixel``; README -> Performance). Block by block (a
throwaway script, not kept) the four blocks with a skip connection were 1.14-1.23x faster; the
last block of mtl's decoder, which has no skip, ran 0.88x as fast (1.02x with its bias and ReLU
moved before the shuffle: the shuffle and crop cost about what the taps save on 16 channels),
so only ``upsample -> concatenate -> 3x3 convolution`` is rewritten.

Only for inference: :func:`mtl.model.inference_copy.inference_copy` makes a copy of the
network with the same weights in this arrangement; the trained and saved model is unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

#: for an output phase (0 or 1) and a 2x2 tap (0 or 1): the 3x3 kernel's rows (or columns)
#: that fall on that tap's input pixel
_TAPS = {0: ((0,), (1, 2)), 1: ((0, 1), (2,))}


def phase_kernels(kernel: np.ndarray) -> np.ndarray:
    """(2, 2, C, 4F): the 3x3 ``kernel`` (3, 3, C, F) of a convolution over a twofold nearest
    upsampled input, as four 2x2 kernels over the input itself padded by one pixel, one per
    output phase ``(a, b)`` (row, column), placed in ``depth_to_space`` slot ``(1 - a, 1 - b)``:
    the valid 2x2 convolution of the padded input, shuffled by ``depth_to_space(., 2)``, is then
    the convolution of the upsampled input with one pixel more on each side (crop ``[1:-1]``).
    Summed in float64."""
    kernel = np.asarray(kernel)
    if kernel.shape[:2] != (3, 3):
        raise ValueError(f"a 3x3 kernel is needed, got {kernel.shape}")
    wide = kernel.astype(np.float64)
    phases = []
    for a in (1, 0):  # slot 2 * (1 - a) + (1 - b)
        for b in (1, 0):
            phase = np.zeros((2, 2) + kernel.shape[2:])
            for ty, rows in enumerate(_TAPS[a]):
                for tx, cols in enumerate(_TAPS[b]):
                    phase[ty, tx] = wide[list(rows)][:, list(cols)].sum(axis=(0, 1))
            phases.append(phase)
    return np.concatenate(phases, axis=-1).astype(kernel.dtype)


@dataclass(frozen=True)
class Block:
    """One rewritable decoder block: the layer names and where the upsampled channels sit."""

    upsampling: str
    concatenate: str
    convolution: str
    upsampled_first: bool  # the upsampled tensor is the concatenation's first input
    upsampled_channels: int
    skip_channels: int


def saves_work(height: int | None, width: int | None) -> bool:
    """Whether the rewrite computes fewer multiply-adds for the upsampled channels of an
    ``height`` x ``width`` coarse input: its 2x2 phase convolution runs over
    ``(height + 1) x (width + 1)`` positions (the padded border included) for 16 taps, against
    9 taps over ``2 height x 2 width``: ``16 (height + 1)(width + 1) < 36 height width``, false
    for 1 x 1 (64 against 36) and 2 x 2 (144 against 144) inputs, true from 3 x 3 on; true
    where the size is only known when the network runs."""
    if height is None or width is None:
        return True
    return 16 * (height + 1) * (width + 1) < 36 * height * width


def _single_use(layer: Any) -> bool:
    return len(layer._inbound_nodes) == 1 and len(layer._outbound_nodes) == 1


def rewritable_blocks(net: Any) -> list[Block]:
    """The ``UpSampling2D(2, nearest) -> Concatenate (with one other tensor, on channels) ->
    Conv2D (3x3, stride 1, same padding, no dilation or groups)`` chains of ``net`` where each
    layer is called once and read by the next alone (neither the upsampled nor the concatenated
    tensor is one of ``net``'s outputs), all channels last, the convolution without LoRA, and the
    rewrite :func:`saves_work` at the coarse input's size."""
    outputs = {id(t) for t in keras.tree.flatten(getattr(net, "outputs", None) or [])}
    blocks = []
    for conv in getattr(net, "layers", []):
        if type(conv) is not keras.layers.Conv2D or len(conv._inbound_nodes) != 1:
            continue
        if getattr(conv, "lora_enabled", False):  # its kernel is not the whole weight
            continue
        if (tuple(conv.kernel_size) != (3, 3) or tuple(conv.strides) != (1, 1)
                or conv.padding != "same" or tuple(conv.dilation_rate) != (1, 1)
                or conv.groups != 1 or conv.data_format != "channels_last"):
            continue
        concat = conv._inbound_nodes[0].input_tensors[0]._keras_history.operation
        if (type(concat) is not keras.layers.Concatenate or not _single_use(concat)
                or id(concat.output) in outputs):
            continue
        parts = concat._inbound_nodes[0].input_tensors
        if concat.axis not in (-1, 3) or len(parts) != 2:
            continue
        sources = [t._keras_history.operation for t in parts]
        ups = [i for i, s in enumerate(sources) if type(s) is keras.layers.UpSampling2D]
        if len(ups) != 1:
            continue
        up = sources[ups[0]]
        if (tuple(up.size) != (2, 2) or up.interpolation != "nearest"
                or up.data_format != "channels_last" or not _single_use(up)
                or id(up.output) in outputs):
            continue
        if not saves_work(*up._inbound_nodes[0].input_tensors[0].shape[1:3]):
            continue
        blocks.append(Block(upsampling=up.name, concatenate=concat.name, convolution=conv.name,
                            upsampled_first=ups[0] == 0,
                            upsampled_channels=int(parts[ups[0]].shape[-1]),
                            skip_channels=int(parts[1 - ups[0]].shape[-1])))
    return blocks


def split_weights(weights: list[np.ndarray], block: Block) -> list[np.ndarray]:
    """[phase kernel (2, 2, C_up, 4F), skip kernel (3, 3, C_skip, F), bias (F)] of the
    :class:`UpsampledConcatConv2D` that computes ``block``'s convolution, from that
    convolution's weights ``[kernel (3, 3, C_up + C_skip, F)]`` or ``[kernel, bias]``."""
    kernel = weights[0]
    n_up = block.upsampled_channels
    up, skip = ((kernel[:, :, :n_up], kernel[:, :, n_up:]) if block.upsampled_first
                else (kernel[:, :, -n_up:], kernel[:, :, :-n_up]))
    bias = weights[1] if len(weights) > 1 else np.zeros(kernel.shape[-1], kernel.dtype)
    return [phase_kernels(up), np.ascontiguousarray(skip), bias]


class UpsampledConcatConv2D(keras.layers.Layer):
    """``conv(concatenate(upsample2x(low), skip))`` computed as a 2x2 convolution of ``low``
    per output phase plus a 3x3 convolution of ``skip`` (module docstring). Called on
    ``[low, skip]``. Inference only, never saved."""

    def __init__(self, filters: int, activation: Any = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.activation = keras.activations.get(activation)

    def build(self, input_shape: Any) -> None:
        low, skip = input_shape
        self.phase_kernel = self.add_weight(shape=(2, 2, low[-1], 4 * self.filters),
                                            initializer="zeros", name="phase_kernel")
        self.skip_kernel = self.add_weight(shape=(3, 3, skip[-1], self.filters),
                                           initializer="zeros", name="skip_kernel")
        self.bias = self.add_weight(shape=(self.filters,), initializer="zeros", name="bias")

    def call(self, inputs: Any) -> Any:
        import tensorflow as tf

        low, skip = inputs
        padded = tf.pad(low, [[0, 0], [1, 1], [1, 1], [0, 0]])
        phases = tf.nn.conv2d(padded, self.phase_kernel, 1, "VALID")  # (B, h + 1, w + 1, 4F)
        upsampled = tf.nn.depth_to_space(phases, 2)[:, 1:-1, 1:-1]  # (B, 2h, 2w, F)
        out = tf.nn.bias_add(tf.nn.conv2d(skip, self.skip_kernel, 1, "SAME"), self.bias)
        return self.activation(out + upsampled)

    def compute_output_shape(self, input_shape: Any) -> tuple:
        skip = input_shape[1]
        return (*skip[:-1], self.filters)


__all__ = ["Block", "UpsampledConcatConv2D", "phase_kernels", "rewritable_blocks", "saves_work",
           "split_weights"]
