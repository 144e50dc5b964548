"""The one module that imports segmentation-models; swapping the library touches only this file.

segmentation-models 1.0.1 targets Keras 2; on TensorFlow >= 2.16 it runs on Keras 3 through
``SM_FRAMEWORK=tf.keras``, which must be set before its first import.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator

os.environ.setdefault("SM_FRAMEWORK", "tf.keras")
if os.environ["SM_FRAMEWORK"] != "tf.keras":  # pragma: no cover - user misconfiguration
    raise ImportError(
        "mtl needs SM_FRAMEWORK=tf.keras (segmentation-models on Keras 3 through TensorFlow); "
        f"found SM_FRAMEWORK={os.environ['SM_FRAMEWORK']!r}"
    )

import segmentation_models as sm  # noqa: E402
import keras  # noqa: E402

from mtl.model.layers import BatchNormalization  # noqa: E402

#: the batch-norm layer the backbones and the decoder are built with (Keras's own one is
#: several times slower to train on TensorFlow; see mtl.model.layers)
BATCHNORM: type = BatchNormalization

#: backbones the test-suite builds; every name in ``available_backbones()`` is accepted
TESTED_BACKBONES = ("resnet18", "resnet34", "resnet50", "vgg16", "efficientnetb0", "mobilenetv2")


class EncoderWeightsError(RuntimeError):
    """Pretrained encoder weights could not be obtained (offline machine, blocked download)."""


def available_backbones() -> list[str]:
    return list(sm.Backbones.models_names())


def build_unet(
    backbone: str,
    input_shape: tuple[int, int, int],
    *,
    encoder_weights: str | None,
    decoder_filters: tuple[int, ...],
    decoder_block_type: str,
) -> tuple[keras.Model, keras.KerasTensor]:
    """A U-Net with one sigmoid mask channel, and the encoder's deepest feature map.

    The deepest feature is the tensor the decoder starts from (for VGG, the output of its
    centre block), so the classification heads and the decoder share the whole encoder.
    """
    if backbone not in available_backbones():
        raise ValueError(
            f"unknown backbone {backbone!r}; choose one of: {', '.join(available_backbones())}"
        )
    if encoder_weights not in (None, "imagenet"):
        raise ValueError(f"encoder_weights must be null or 'imagenet', got {encoder_weights!r}")
    if encoder_weights == "imagenet" and input_shape[-1] != 3:
        raise ValueError("encoder_weights: imagenet needs 3 input channels (data.channels: 3)")
    try:
        with _layers_with_batchnorm(BATCHNORM):
            unet = sm.Unet(
                backbone,
                input_shape=input_shape,
                classes=1,
                activation="sigmoid",
                encoder_weights=encoder_weights,
                decoder_filters=tuple(decoder_filters),
                decoder_block_type=decoder_block_type,
            )
    except Exception as exc:  # keras' downloader raises a bare Exception with the URL in it
        if encoder_weights and ("URL fetch failure" in str(exc) or "download" in str(exc).lower()):
            raise EncoderWeightsError(
                f"could not download ImageNet weights for {backbone!r}: {exc}. This machine "
                "looks offline; train from scratch (model.encoder_weights: null) or copy the "
                "weights file into ~/.keras/models/ first."
            ) from exc
        raise
    first_block = "decoder_stage0_upsampling" if decoder_block_type == "upsampling" else (
        "decoder_stage0a_transpose"
    )
    bottleneck = unet.get_layer(first_block).input
    return unet, bottleneck


class _LayersWith:
    """segmentation-models' view of ``keras.layers`` with some classes replaced."""

    def __init__(self, layers: Any, **replacements: type) -> None:
        self._layers = layers
        self._replacements = replacements

    def __getattr__(self, name: str) -> Any:
        if name in self._replacements:
            return self._replacements[name]
        return getattr(self._layers, name)


@contextlib.contextmanager
def _layers_with_batchnorm(batchnorm: type) -> Iterator[None]:
    """Build segmentation-models networks with ``batchnorm`` for every BatchNormalization.

    segmentation-models hands its backbones and decoders the ``layers`` module it stores at
    ``set_framework``; swapping that module for the duration of one build is the only way in.
    """
    original = sm._KERAS_LAYERS
    sm._KERAS_LAYERS = _LayersWith(original, BatchNormalization=batchnorm)
    try:
        yield
    finally:
        sm._KERAS_LAYERS = original
