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


#: ``jit_compile="auto"``: batches smaller than this run through XLA, larger ones through the
#: plain graph. XLA's gain shrinks as the batch grows, and each batch size compiles once (about
#: 2.5 s). Measured with ``benchmarks/step_profile.py`` (README -> Performance): on a 2-core
#: AVX2-only AMD EPYC with oneDNN's kernels, XLA over the plain graph 1.35-1.67x at batch 1, 1.26x
#: at 2, 1.23x at 4 (1.10x in CPU time), 1.10x at 8 (0.96x in CPU time), 0.95x at 16; on an
#: AVX-512 Xeon 1.09x at batch 1 and 0.82x at 16
XLA_BELOW_BATCH = 4


#: single-slice network calls in one process from which XLA's one-off compile pays for itself.
#: ``benchmarks/infer_xla.py`` on a 2-core AVX2 EPYC: XLA added 2.0 s to the first slice and
#: saved 44 ms on each later one at 192 px (pays after 46 slices), 2.1 s and 17 ms at
#: 96 px (128); on an AVX-512 Xeon its gain at batch 1 is smaller still (1.09x)
XLA_PAYS_AFTER_SLICES = 64


def checked_jit_compile(jit_compile: Any) -> bool | str:
    """``jit_compile`` itself where it is ``"auto"``, True or False; else a ValueError."""
    if not (isinstance(jit_compile, bool) or jit_compile == "auto"):
        raise ValueError(f"jit_compile must be auto, True or False, not {jit_compile!r}")
    return jit_compile


def jit_for_single_slices(n_slices: int) -> bool | str:
    """``jit_compile`` for one process that runs ``n_slices`` single slices (``mtl infer`` over
    2-D images, one network call each): ``"auto"`` (XLA for them) from
    :data:`XLA_PAYS_AFTER_SLICES`, else False. `mtl serve` keeps ``"auto"``: it compiles once
    before the first request and serves many."""
    return "auto" if int(n_slices) >= XLA_PAYS_AFTER_SLICES else False


def jit_for_batches(batch_size: int) -> bool:
    """``jit_compile`` for a pass over a whole split in batches of ``batch_size`` (evaluation,
    calibration, the healthy-volume check): XLA where that batch size is small enough to gain
    from it (:data:`XLA_BELOW_BATCH`), else the plain graph for every batch. From 4 slices per
    batch on, ``"auto"`` would compile XLA for a short last batch alone (about 2 s on a 2-core
    EPYC, ``benchmarks/infer_xla.py``) to save milliseconds on one batch. (Below 4, XLA compiles
    once per shape, so a short last batch still costs a second compile.)"""
    return int(batch_size) < XLA_BELOW_BATCH


def compiled_forward(model: Any, image_size: int, channels: int,
                     jit_compile: bool | str = "auto", fold: bool = True,
                     subpixel: bool = True) -> Forward:
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
    graph). ``"auto"`` (the default) uses XLA for batches smaller than
    :data:`XLA_BELOW_BATCH`, where it is faster (one slice: ``mtl serve``; ``mtl infer`` and
    passes over a split choose with :func:`jit_for_single_slices` and :func:`jit_for_batches`),
    and the plain graph for larger ones, where XLA is slower on CPUs; the first
    call of each small batch size compiles (about 2.5 s on a 2-core CPU). ``False`` never uses
    XLA.

    ``fold=True`` (the default) runs a copy of the network with each batch norm that follows a
    convolution folded into that convolution's kernel and bias (:mod:`mtl.model.folding`): the
    same function up to float rounding (tested), one op fewer per pair, and on CPUs without
    AVX-512 several times faster at batch 1 (README, Performance). ``fold=False`` leaves the
    batch norms as they are.

    ``subpixel=True`` (the default) also computes each decoder block's ``upsample ->
    concatenate -> 3x3 convolution`` at the coarse resolution (:mod:`mtl.model.subpixel`): the
    same function up to float rounding (tested), about 4 / 9 of the multiply-adds on the
    upsampled channels; on a 2-core AVX2 EPYC 1.08x faster at batch 16 and 1.12x at batch 1
    through the plain graph, 1.04x at batch 1 through XLA (128 px; 192 px: 1.05x, 1.23x, 1.01x;
    ``benchmarks/results/subpixel*-avx2.md``, README, Performance).
    ``subpixel=False`` keeps the decoder's own arrangement; ``fold=False, subpixel=False`` runs
    the network as trained.

    ``model`` may be an :class:`mtl.model.ensemble.Ensemble`: the mean of its members' passes.
    """
    import tensorflow as tf

    from mtl.model.ensemble import is_ensemble

    if is_ensemble(model):
        return model.compiled_forward(image_size, channels, jit_compile=jit_compile, fold=fold,
                                      subpixel=subpixel)

    from mtl.model.calibration import temperatures
    from mtl.model.inference_copy import inference_copy

    auto = checked_jit_compile(jit_compile) == "auto"

    net = getattr(model, "net", model)
    net = inference_copy(net, fold=fold, subpixel=subpixel)
    spec = tf.TensorSpec([None, int(image_size), int(image_size), int(channels)], tf.float32)
    t_presence, t_type = temperatures(model)
    extended = _with_logits(net)

    if extended is None:
        def body(x):
            return net(x, training=False)
    else:
        presence_head, type_head = net.get_layer("presence"), net.get_layer("type")

        def logits(head, features):
            return tf.matmul(features, tf.cast(head.kernel, tf.float32)) + tf.cast(head.bias,
                                                                                   tf.float32)

        def body(x):
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

    graph = tf.function(body, input_signature=[spec], jit_compile=jit_compile is True)
    xla_graph = tf.function(body, input_signature=[spec], jit_compile=True) if auto else None

    def forward(x: np.ndarray) -> dict[str, np.ndarray]:
        fn = xla_graph if auto and len(x) < XLA_BELOW_BATCH else graph
        return {k: v.numpy() for k, v in fn(tf.convert_to_tensor(x, tf.float32)).items()}

    forward.graph = graph  # type: ignore[attr-defined] - the tf.function, for inspection
    forward.xla_graph = xla_graph  # type: ignore[attr-defined] - None unless "auto"
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


__all__ = ["Forward", "XLA_BELOW_BATCH", "XLA_PAYS_AFTER_SLICES", "checked_jit_compile",
           "compiled_forward", "jit_for_batches", "jit_for_single_slices", "with_flip_tta"]
