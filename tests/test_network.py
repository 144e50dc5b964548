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


def test_deep_supervision_adds_coarse_masks_that_inference_leaves_out(tmp_path):
    from mtl.model.inference import compiled_forward

    spec = {"input_size": 64, "channels": 1, "classes": CLASSES, "head_units": 8,
            "decoder_filters": [16, 16, 8, 8, 8], "deep_supervision": 2}
    model = MultiTaskModel(spec, loss={"dice": "batch"},
                           preprocessing={"image_size": 64, "channels": 1})
    rng = np.random.default_rng(2)
    x = rng.random((2, 64, 64, 1), dtype=np.float32)
    out = model(x)
    assert set(out) == {"presence", "type", "mask", "mask_aux"}
    aux = keras.ops.convert_to_numpy(out["mask_aux"])
    assert aux.shape == (2, 64, 64, 2) and aux.min() >= 0.0 and aux.max() <= 1.0
    # finest first: stage 3 (32 px) feeds the first map, stage 2 (16 px) the second
    assert tuple(model.net.get_layer("mask_aux1_conv").input.shape[1:3]) == (32, 32)
    assert tuple(model.net.get_layer("mask_aux2_conv").input.shape[1:3]) == (16, 16)
    assert "mask_aux" not in compiled_forward(model, 64, 1)(x)
    # one training step moves the coarse heads (the loss reads them), and the file keeps them
    y = {"presence": np.ones((2, 1), np.float32), "type": np.array([1, 2], np.int32),
         "mask": (rng.random((2, 64, 64, 1)) > 0.8).astype(np.float32),
         "box": np.zeros((2, 64, 64, 1), np.float32)}
    w = {"presence": np.ones(2, np.float32), "type": np.ones(2, np.float32),
         "mask": np.ones(2, np.float32), "box": np.zeros(2, np.float32)}
    kernel = keras.ops.convert_to_numpy(model.net.get_layer("mask_aux2_conv").kernel).copy()
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    model.fit(x, y, sample_weight=w, epochs=1, batch_size=2, verbose=0)
    assert not np.allclose(kernel, keras.ops.convert_to_numpy(
        model.net.get_layer("mask_aux2_conv").kernel))
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert loaded.spec.deep_supervision == 2
    np.testing.assert_allclose(loaded.predict(x, verbose=0)["mask_aux"],
                               model.predict(x, verbose=0)["mask_aux"], atol=1e-6)
    with pytest.raises(ValueError, match="deep_supervision must be between 0 and 4"):
        NetworkSpec(deep_supervision=5)
