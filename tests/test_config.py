"""Config: YAML + overrides into typed objects, clear errors for bad keys and values."""

from pathlib import Path

import pytest

from mtl.config import Config, ConfigError, load_config

EXPERIMENTS = sorted((Path(__file__).resolve().parents[1] / "experiments").glob("*.yaml"))


def test_defaults_are_valid_and_train_on_phantoms():
    config = load_config()
    assert isinstance(config, Config)
    assert config.data.sources[0].format == "phantoms"
    assert config.network_spec().classes == config.data.classes


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.name)
def test_every_experiment_file_loads(path):
    load_config(path)


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("name: x\ntrain: {epochs: 5}\nloss: {uncertainty: true}\n")
    config = load_config(path, ["train.epochs=7", "model.backbone=mobilenetv2",
                                "loss.weights={mask: 2}", "data.sources.0.weight=3"])
    assert (config.name, config.train.epochs, config.model.backbone) == ("x", 7, "mobilenetv2")
    assert config.loss.uncertainty is True
    assert config.loss.weights == {"mask": 2.0}
    assert config.data.sources[0].weight == 3.0
    assert load_config(overrides={"train.learning_rate": "1e-4"}).train.learning_rate == 1e-4


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.epoch=3", "unknown key"),
        ("train.epochs=three", "train.epochs: expected a number"),
        ("train.epochs=2.5", "expected an integer"),
        ("data.image_size=100", "multiple of 32"),
        ("data.split={train: 0.5, val: 0.1}", "sum to 1"),
        ("data.on_error=ignore", "on_error"),
        ("loss.uncertainty=maybe", "true/false"),
        ("epochs", "key.path=value"),
    ],
)
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=[override])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_round_trip_through_yaml(tmp_path):
    config = load_config(overrides=["train.epochs=3", "loss.uncertainty=true"])
    path = tmp_path / "c.yaml"
    path.write_text(config.to_yaml())
    assert load_config(path) == config
