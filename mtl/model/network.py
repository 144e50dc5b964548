"""The multi-task network: one shared encoder, three heads.

``build_network`` returns a functional Keras model ``image -> {"presence", "type", "mask"}``:

- ``presence``: (B, 1) sigmoid probability that the slice holds a tumor;
- ``type``: (B, n_classes) softmax over the configured class list (e.g. no_tumor, glioma, ...);
- ``mask``: (B, H, W, 1) sigmoid tumor probability per pixel, from the U-Net decoder;
- ``mask_aux`` (only with ``deep_supervision`` > 0): (B, H, W, k), the tumor probability
  predicted from each of the decoder's k coarser stages (finest first), upsampled to the input
  size. Only the loss reads it (deep supervision); inference leaves it out.

The presence and type heads read the encoder's deepest feature map through global average and
max pooling, so all three tasks train the same encoder. The heads are the builders of the task
table (:data:`mtl.tasks.HEADS`); this module builds the encoder, decoder and the shared features
they read: ``pooled`` (the pooled, dropped-out, dense encoder features) and ``decoder`` (the
U-Net's per-pixel probability).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING

from mtl import tasks

if TYPE_CHECKING:  # keras (and TensorFlow) load only to build: NetworkSpec is part of the config
    import keras


@dataclass
class Architecture:
    """The network's own fields: the config's ``model`` section (:class:`mtl.config.ModelConfig`
    adds training options) and, with the data's size, channels and classes, a
    :class:`NetworkSpec`. Declared here only."""

    backbone: str = "resnet18"
    encoder_weights: str | None = None
    decoder_filters: list[int] = field(default_factory=lambda: [256, 128, 64, 32, 16])
    decoder_block_type: str = "upsampling"
    head_units: int = 256
    head_dropout: float = 0.3
    #: BatchNormalization momentum for every BN layer; null keeps the backbone's (0.99).
    #: Lower values (0.9) let short runs on small data validate sensibly.
    bn_momentum: float | None = None
    #: deep supervision: how many of the decoder's coarser stages (the finest k below the last)
    #: also predict the mask while training (a 1x1 convolution, upsampled to the input size);
    #: 0 is off. The loss weighs stage j's mask loss by 2^-j (nnU-Net's scheme).
    deep_supervision: int = 0

    def architecture(self) -> dict:
        """This object's :class:`Architecture` fields (lists copied)."""
        return {f.name: _copy(getattr(self, f.name)) for f in fields(Architecture)}


def _copy(value):
    return list(value) if isinstance(value, list) else value


@dataclass
class NetworkSpec(Architecture):
    """Everything needed to rebuild the network; stored inside the saved model."""

    input_size: int = 128
    channels: int = 1
    classes: list[str] = field(
        default_factory=lambda: ["no_tumor", "glioma", "meningioma", "pituitary"]
    )

    def __post_init__(self) -> None:
        if self.input_size % 32:
            raise ValueError(f"input_size must be a multiple of 32, got {self.input_size}")
        if self.channels < 1:
            raise ValueError(f"channels must be >= 1, got {self.channels}")
        if len(self.classes) < 2 or len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes must list >= 2 distinct names, got {self.classes}")
        if not 0 <= self.deep_supervision < len(self.decoder_filters):
            raise ValueError(f"deep_supervision must be between 0 and "
                             f"{len(self.decoder_filters) - 1} (the decoder's stages below the "
                             f"last), got {self.deep_supervision}")


#: the network output that holds the deep-supervision masks (:func:`_coarse_masks`)
AUX_OUTPUT = tasks.task("mask").coarse_output


def _coarse_masks(unet: keras.Model, spec: NetworkSpec) -> keras.KerasTensor:
    """(B, S, S, k): a sigmoid mask from each of the ``spec.deep_supervision`` decoder stages
    below the last (finest first), each a 1x1 convolution of the stage's features upsampled
    bilinearly to the input size."""
    import keras

    last = len(spec.decoder_filters) - 1
    maps = []
    for level in range(1, spec.deep_supervision + 1):
        stage = unet.get_layer(f"decoder_stage{last - level}b_relu").output
        factor = spec.input_size // int(stage.shape[1])
        logit = keras.layers.Conv2D(1, 1, name=f"{AUX_OUTPUT}{level}_conv")(stage)
        maps.append(keras.layers.UpSampling2D(factor, interpolation="bilinear",
                                              name=f"{AUX_OUTPUT}{level}_up")(logit))
    joined = maps[0] if len(maps) == 1 else keras.layers.Concatenate(
        name=f"{AUX_OUTPUT}_concat")(maps)
    return keras.layers.Activation("sigmoid", name=AUX_OUTPUT, dtype="float32")(joined)


def build_network(spec: NetworkSpec) -> keras.Model:
    import keras

    from mtl.model.backbones import build_unet  # imports segmentation-models: only when building

    shape = (spec.input_size, spec.input_size, spec.channels)
    unet, bottleneck = build_unet(
        spec.backbone,
        shape,
        encoder_weights=spec.encoder_weights,
        decoder_filters=tuple(spec.decoder_filters),
        decoder_block_type=spec.decoder_block_type,
    )
    pooled = keras.layers.Concatenate(name="head_pool")(
        [
            keras.layers.GlobalAveragePooling2D(name="head_gap")(bottleneck),
            keras.layers.GlobalMaxPooling2D(name="head_gmp")(bottleneck),
        ]
    )
    shared = keras.layers.Dropout(spec.head_dropout, name="head_dropout")(pooled)
    shared = keras.layers.Dense(spec.head_units, activation="relu", name="head_dense")(shared)
    if spec.bn_momentum is not None:
        for layer in unet.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = spec.bn_momentum
    # outputs in float32 under mixed precision too: sigmoid/softmax and the loss need its range
    for layer in unet.layers[-2:]:  # segmentation-models' final 1x1 conv and its sigmoid
        layer.dtype_policy = "float32"
    features = {"pooled": shared, "decoder": unet.output}
    outputs = {task.output: task.head(task.output, features, spec) for task in tasks.HEADS}
    if spec.deep_supervision:
        outputs[AUX_OUTPUT] = _coarse_masks(unet, spec)
    return keras.Model(
        unet.input,
        outputs,
        name=f"mtl_{spec.backbone}",
    )
