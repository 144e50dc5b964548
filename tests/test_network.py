"""The network: output names and shapes per backbone, save/load round trip."""

import numpy as np
import pytest

import keras

from mtl.model.backbones import TESTED_BACKBONES, EncoderWeightsError, build_unet
from mtl.model.multitask import MultiTaskModel
from mtl.model.network import NetworkSpec, build_network

CLASSES = ["no_tumor", "glioma", "meningioma", "pituitary"]


@pytest.mark.parametrize("backbone", TESTED_BACKBONES)
def test_outputs_per_backbone(backbone):
    spec = NetworkSpec(backbone=backbone, input_size=64, channels=1, classes=CLASSES,
                       decoder_filters=[32, 16, 16, 8, 8], head_units=16)
    net = build_network(spec)
    out = net(np.random.default_rng(0).random((2, 64, 64, 1), dtype=np.float32))
    assert set(out) == {"presence", "type", "mask"}
    assert tuple(out["presence"].shape) == (2, 1)
    assert tuple(out["type"].shape) == (2, 4)
    assert tuple(out["mask"].shape) == (2, 64, 64, 1)
    probs = keras.ops.convert_to_numpy(out["type"])
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    for key in ("presence", "mask"):
        values = keras.ops.convert_to_numpy(out[key])
        assert values.min() >= 0.0 and values.max() <= 1.0


def test_input_size_and_channels_come_from_the_spec():
    net = build_network(NetworkSpec(input_size=96, channels=3, classes=["a", "b"],
                                    decoder_filters=[16, 16, 8, 8, 8], head_units=8))
    assert tuple(net.input.shape) == (None, 96, 96, 3)
    assert tuple(net.output["type"].shape) == (None, 2)


def test_bad_spec_is_a_clear_error():
    with pytest.raises(ValueError, match="multiple of 32"):
        NetworkSpec(input_size=100)
    with pytest.raises(ValueError, match="unknown backbone"):
        build_unet("resnet9000", (64, 64, 1), encoder_weights=None,
                   decoder_filters=(8,) * 5, decoder_block_type="upsampling")
    with pytest.raises(ValueError, match="3 input channels"):
        build_unet("resnet18", (64, 64, 1), encoder_weights="imagenet",
                   decoder_filters=(8,) * 5, decoder_block_type="upsampling")


def test_imagenet_weights_offline_is_a_clear_error(monkeypatch):
    import keras.src.utils.file_utils as file_utils

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure on https://example.invalid/w.h5: None -- offline")

    monkeypatch.setattr(file_utils, "get_file", offline)
    monkeypatch.setattr(keras.utils, "get_file", offline)
    with pytest.raises(EncoderWeightsError, match="offline"):
        build_unet("resnet18", (64, 64, 3), encoder_weights="imagenet",
                   decoder_filters=(8,) * 5, decoder_block_type="upsampling")


@pytest.mark.parametrize("backbone", ["resnet18", "efficientnetb0"])
def test_save_and_load_give_equal_outputs(tmp_path, backbone):
    model = MultiTaskModel(
        {"backbone": backbone, "input_size": 64, "channels": 1, "classes": CLASSES,
         "decoder_filters": [16, 16, 8, 8, 8], "head_units": 8},
        loss={"uncertainty": True, "weights": {"mask": 2.0}},
        preprocessing={"image_size": 64, "channels": 1},
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    model.optimizer.build(model.trainable_variables)  # as after training: its state is saved too
    x = np.random.default_rng(1).random((3, 64, 64, 1), dtype=np.float32)
    before = model.predict(x, verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    after = loaded.predict(x, verbose=0)
    for key in ("presence", "type", "mask"):
        np.testing.assert_allclose(before[key], after[key], atol=1e-6)
    assert loaded.classes == CLASSES
    assert loaded.preprocessing == {"image_size": 64, "channels": 1}
    assert loaded.multitask_loss.uncertainty is True
    assert loaded.multitask_loss.task_weights["mask"] == 2.0
