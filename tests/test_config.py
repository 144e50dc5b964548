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
        # issue 15, item 9: values accepted silently before, refused now, naming the key
        ("train.learning_rate=0", "train.learning_rate must be > 0"),
        ("train.learning_rate=-0.001", "train.learning_rate must be > 0"),
        ("data.intensity_percentiles=[99.5, 0.5]", "data.intensity_percentiles"),
        ("data.intensity_percentiles=[0, 120]", "data.intensity_percentiles"),
        ("loss.weights={mask: -1}", "loss.weights.mask must be >= 0"),
        ("loss.weights={makс: 1}", "loss.weights: unknown task"),
        ("data.sources=[{format: phantoms, options: {n: 8, sizee: 64}}]",
         r"data.sources\[0\].options: unknown option\(s\) sizee for format 'phantoms'"),
        ("data.sources=[{format: brisc, root: x, options: {subsett: train}}]",
         r"data.sources\[0\].options: unknown option\(s\) subsett .*known: subset"),
        ("data.sources=[{format: phantoms, weight: -1}]", r"data.sources\[0\].weight"),
        # item 10: these ended in a traceback
        ("data.sources=[{format: dicomdir, root: x}]",
         r"data.sources\[0\].format: unknown dataset format 'dicomdir'"),
        ("data.image_size=-64", "data.image_size must be a positive multiple of 32"),
        ("data.split={train: 0.9, val: 0.2, test: -0.1}", "data.split.test must be in"),
        ("model.deep_supervision=5", "model.deep_supervision must be between 0 and 4"),
        ("loss.dice=volume", r"loss.dice must be one of image, batch, batch\+image, not 'volume'"),
        ("data.cv_fold=2", "data.cv_fold=2 needs data.cv_folds >= 2"),
        ("data.cv_folds=1", "data.cv_fold must be between 0 and data.cv_folds - 1"),
    ],
)
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=[override])


def test_cross_validation_fold_settings():
    assert load_config().data.cv is None
    assert load_config(overrides=["data.cv_folds=5"]).data.cv == (5, 0)
    assert load_config(overrides=["data.cv_folds=5", "data.cv_fold=4"]).data.cv == (5, 4)
    with pytest.raises(ConfigError, match="got fold 5 of 5"):
        load_config(overrides=["data.cv_folds=5", "data.cv_fold=5"])
    with pytest.raises(ConfigError, match="got fold -1 of 5"):
        load_config(overrides=["data.cv_folds=5", "data.cv_fold=-1"])
    assert load_config(overrides=["data.refit=true"]).data.refit is True
    with pytest.raises(ConfigError, match="data.refit .* takes no data.cv_folds"):
        load_config(overrides=["data.refit=true", "data.cv_folds=4"])


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


def test_adapters_refuse_unknown_options_when_built_directly(tmp_path):
    from mtl.data.adapters import get_adapter

    with pytest.raises(ValueError, match="br35h: unknown option.*dedupe"):
        get_adapter("br35h", tmp_path, dedupe=False)
