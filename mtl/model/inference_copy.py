"""The network rearranged for inference, in one copy: batch norm folded into the convolution
before it (:mod:`mtl.model.folding`) and the decoder's upsample-concatenate-convolve blocks
computed at the coarse resolution (:mod:`mtl.model.subpixel`).

One clone does both: copying a network's few hundred layers takes most of a second on a 2-core
CPU (0.6-0.8 s for the reference network), which a one-image ``mtl infer`` pays once.
"""

from __future__ import annotations

from typing import Any

import keras

from mtl.model.folding import FoldedBatchNorm, foldable_pairs, folded_weights
from mtl.model.subpixel import UpsampledConcatConv2D, rewritable_blocks, split_weights


def inference_copy(net: Any, fold: bool = True, subpixel: bool = True) -> Any:
    """An inference-only copy of the functional Keras model ``net`` with the same weights
    in which, with ``fold``, every pair of :func:`~mtl.model.folding.foldable_pairs` is one
    convolution with a bias (the batch norm becomes a
    :class:`~mtl.model.folding.FoldedBatchNorm` of the same name), and with ``subpixel``, every
    chain of :func:`~mtl.model.subpixel.rewritable_blocks` is one
    :class:`~mtl.model.subpixel.UpsampledConcatConv2D` named as its convolution. Returns
    ``net`` itself where neither finds anything (or ``net`` is not a functional model). The
    source network is not changed."""
    pairs = foldable_pairs(net) if fold else {}
    blocks = rewritable_blocks(net) if subpixel else []
    if not (pairs or blocks) or not hasattr(net, "_nodes_by_depth"):
        return net
    norms = set(pairs.values())
    by_up = {b.upsampling: b for b in blocks}
    by_concat = {b.concatenate: b for b in blocks}
    by_conv = {b.convolution: b for b in blocks}
    pending: dict[str, list] = {}  # a block's convolution name -> [coarse input, skip]

    def clone(layer: Any) -> Any:
        if layer.name in norms:
            return FoldedBatchNorm(name=layer.name)
        config = layer.get_config()
        if layer.name in pairs:
            config["use_bias"] = True
        return layer.__class__.from_config(config)

    def call(layer: Any, *args: Any, **kwargs: Any) -> Any:
        if layer.name in by_up:  # not upsampled: the coarse tensor goes on
            return args[0]
        if layer.name in by_concat:
            block = by_concat[layer.name]
            first, second = args[0]
            coarse, skip = (first, second) if block.upsampled_first else (second, first)
            pending[block.convolution] = [coarse, skip]
            return skip  # a stand-in that only the block's convolution reads (and ignores)
        if layer.name in by_conv:
            return UpsampledConcatConv2D(layer.filters, layer.activation, name=layer.name,
                                         dtype=layer.dtype_policy)(pending.pop(layer.name))
        return layer(*args, **kwargs)

    copy = keras.models.clone_model(net, clone_function=clone, call_function=call)
    for layer in copy.layers:
        if not layer.weights:  # the input layer too, which the clone names anew
            continue
        source = net.get_layer(layer.name)
        if layer.name in pairs:
            weights = folded_weights(source, net.get_layer(pairs[layer.name]))
        else:
            weights = source.get_weights()
        if layer.name in by_conv:
            weights = split_weights(weights, by_conv[layer.name])
        layer.set_weights(weights)
    return copy


__all__ = ["inference_copy"]
