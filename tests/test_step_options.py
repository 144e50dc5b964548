"""``train.jit_compile`` and ``train.steps_per_execution`` (how the training step is compiled and
called) and XLA in ``compiled_forward``: each computes what the default does.

The network is a U-Net in miniature with mtl's heads (the op kinds of segmentation-models'
U-Net: convolutions, mtl's fused batch norm, pooling, nearest upsampling, concatenation), inside
the real ``MultiTaskModel`` with its masked loss and metrics, so XLA compiles in seconds.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from mtl.config import ConfigError, load_config

SIZE, BATCH, STEPS = 32, 4, 4


def tiny_network(spec):
    import keras

    from mtl.model.layers import BatchNormalization

    layers = keras.layers

    def conv_bn_relu(x, filters):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        return layers.ReLU()(BatchNormalization()(x))

    image = keras.Input((spec.input_size, spec.input_size, spec.channels))
    skip = conv_bn_relu(image, 4)
    deep = conv_bn_relu(layers.MaxPooling2D(2)(skip), 8)
    up = layers.UpSampling2D(2)(deep)
    decoded = conv_bn_relu(layers.Concatenate()([up, skip]), 4)
    mask = layers.Conv2D(1, 1, activation="sigmoid")(decoded)
    pooled = layers.Concatenate(name="head_pool")(
        [layers.GlobalAveragePooling2D()(deep), layers.GlobalMaxPooling2D()(deep)])
    shared = layers.Dense(8, activation="relu", name="head_dense")(pooled)
    return keras.Model(image, {
        "presence": layers.Dense(1, activation="sigmoid", name="presence")(shared),
        "type": layers.Dense(len(spec.classes), activation="softmax", name="type")(shared),
        "mask": layers.Identity(name="mask")(mask),
    })


@pytest.fixture
def tiny(monkeypatch):
    monkeypatch.setattr("mtl.model.multitask.build_network", tiny_network)


def config(**train):
    return load_config(None, {"data.image_size": SIZE, "train.batch_size": BATCH,
                              "model.head_dropout": 0.0,
                              **{f"train.{k}": v for k, v in train.items()}})


def dataset():
    """STEPS batches, every task labelled (half the masks empty), in a fixed order."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    n = STEPS * BATCH
    mask = np.zeros((n, SIZE, SIZE, 1), np.float32)
    mask[::2, 8:20, 10:22] = 1.0
    targets = {"presence": (mask.max(axis=(1, 2, 3)) > 0).astype(np.float32)[:, None],
               "type": rng.integers(0, 4, n).astype(np.int32), "mask": mask,
               "box": np.zeros_like(mask), "spacing": np.full((n, 2), np.nan, np.float32)}
    weights = {k: np.ones(n, np.float32) for k in ("presence", "type", "mask")}
    weights["box"] = np.zeros(n, np.float32)
    images = rng.random((n, SIZE, SIZE, 1), dtype=np.float32) + mask
    return tf.data.Dataset.from_tensor_slices((images, targets, weights)).batch(BATCH)


def trained(**train):
    """(per-step losses, weights) after STEPS steps of model.fit from seed 0's weights."""
    import keras

    from mtl.train import build_model

    keras.utils.set_random_seed(0)
    model = build_model(config(**train))
    losses = []
    record = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: losses.append(float(logs["loss"])))
    model.fit(dataset(), epochs=1, steps_per_epoch=STEPS, verbose=0, shuffle=False,
              callbacks=[record])
    return model, losses, [np.asarray(w) for w in model.weights]


def test_options_are_validated_with_a_clear_error():
    assert config().train.jit_compile == "auto" and config().train.steps_per_execution == 1
    assert config(jit_compile=True).train.jit_compile is True
    with pytest.raises(ConfigError, match=r"train\.jit_compile must be auto, true or false"):
        config(jit_compile="sometimes")
    with pytest.raises(ConfigError, match=r"train\.jit_compile must be auto, true or false"):
        config(jit_compile=1)
    with pytest.raises(ConfigError, match=r"train\.steps_per_execution must be >= 1"):
        config(steps_per_execution=0)
    with pytest.raises(ConfigError, match=r"train\.steps_per_execution: expected an integer"):
        config(steps_per_execution=1.5)


def test_steps_per_execution_divides_the_epoch():
    from mtl.train import step_options

    t = SimpleNamespace(jit_compile="auto", steps_per_execution=4)
    assert step_options(t) == {"jit_compile": "auto", "steps_per_execution": 4}
    assert step_options(t, 8)["steps_per_execution"] == 4
    assert step_options(t, 10)["steps_per_execution"] == 2  # 4 would run 12 steps an epoch
    assert step_options(t, 7)["steps_per_execution"] == 1
    assert step_options(t, 3)["steps_per_execution"] == 3


def test_build_model_compiles_with_the_options(tiny):
    from mtl.train import build_model

    model = build_model(config(jit_compile=False, steps_per_execution=3), steps_per_epoch=9)
    assert model.jit_compile is False and model.steps_per_execution == 3
    model = build_model(config(jit_compile=True, steps_per_execution=4), steps_per_epoch=10)
    assert model.jit_compile is True and model.steps_per_execution == 2
    # auto is Keras's rule: no XLA on a machine without a GPU
    import tensorflow as tf

    if not tf.config.list_physical_devices("GPU"):
        assert build_model(config()).jit_compile is False


def test_steps_per_execution_trains_the_same(tiny):
    model, losses, weights = trained(steps_per_execution=1)
    model2, losses2, weights2 = trained(steps_per_execution=STEPS // 2)
    assert model2.steps_per_execution == STEPS // 2
    assert int(model2.optimizer.iterations) == int(model.optimizer.iterations) == STEPS
    assert len(losses2) == 2  # callbacks see one batch end per execution
    assert losses2 == pytest.approx([losses[1], losses[3]], rel=1e-5)
    for a, b in zip(weights, weights2):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_the_training_step_is_traced_once(tiny, monkeypatch):
    """The optimizer's variables exist before fit traces the step (MultiTaskModel's
    _maybe_symbolic_build); Keras 3 would create them inside the first trace, and TensorFlow
    would then trace the whole step a second time. Same losses as Keras's own order."""
    from mtl.model.multitask import MultiTaskModel

    traced = []
    step = MultiTaskModel.train_step

    def counting(self, data):
        traced.append(1)
        return step(self, data)

    monkeypatch.setattr(MultiTaskModel, "train_step", counting)
    model, losses, _ = trained()
    assert len(traced) == 1 and int(model.optimizer.iterations) == STEPS
    # Keras's own order without a strategy: the optimizer built inside the first trace
    traced.clear()
    monkeypatch.setattr(MultiTaskModel, "_maybe_symbolic_build", lambda self, **_: None)
    lazy, lazy_losses, _ = trained()
    assert len(traced) == 2
    assert losses == pytest.approx(lazy_losses, rel=1e-6)


def test_xla_trains_the_same(tiny):
    model, losses, weights = trained(jit_compile=False)
    model2, losses2, weights2 = trained(jit_compile=True)
    assert model2.jit_compile is True and model.jit_compile is False
    assert losses2 == pytest.approx(losses, rel=1e-4)
    for a, b in zip(weights, weights2):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)


def test_compiled_forward_with_xla_predicts_the_same(tiny):
    from mtl.model.inference import compiled_forward
    from mtl.train import build_model

    model = build_model(config())
    x = np.random.default_rng(1).random((3, SIZE, SIZE, 1), dtype=np.float32)
    plain = compiled_forward(model, SIZE, 1, jit_compile=False)(x)
    xla = compiled_forward(model, SIZE, 1, jit_compile=True)
    out = xla(x)
    assert set(out) == set(plain)
    for key in plain:
        np.testing.assert_allclose(out[key], plain[key], rtol=1e-4, atol=1e-5)
    one = xla(x[:1])  # another batch size: compiled again, same values
    np.testing.assert_allclose(one["mask"], plain["mask"][:1], rtol=1e-4, atol=1e-5)


def test_compiled_forward_auto_runs_small_batches_through_xla(tiny):
    from mtl.model.inference import XLA_BELOW_BATCH, compiled_forward
    from mtl.train import build_model

    model = build_model(config())
    x = np.random.default_rng(2).random((XLA_BELOW_BATCH + 1, SIZE, SIZE, 1), dtype=np.float32)
    plain = compiled_forward(model, SIZE, 1, jit_compile=False)(x)
    auto = compiled_forward(model, SIZE, 1)  # the default: "auto"
    assert auto.xla_graph is not None and auto.graph is not auto.xla_graph
    big = auto(x)
    one = auto(x[:1])
    few = auto(x[:XLA_BELOW_BATCH - 1])
    # one trace each: the large batch in the plain graph, the small ones in the XLA graph
    assert auto.graph.experimental_get_tracing_count() == 1
    assert auto.xla_graph.experimental_get_tracing_count() == 1
    for key in plain:
        np.testing.assert_allclose(big[key], plain[key], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(one[key], plain[key][:1], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(few[key], plain[key][:XLA_BELOW_BATCH - 1], rtol=1e-4,
                                   atol=1e-5)
    assert compiled_forward(model, SIZE, 1, jit_compile=False).xla_graph is None
    with pytest.raises(ValueError, match="jit_compile must be auto"):
        compiled_forward(model, SIZE, 1, jit_compile="always")


@pytest.mark.parametrize("amsgrad", [False, True])  # amsgrad: Keras's own update, unfused
def test_fused_adam_updates_as_keras_adam(amsgrad):
    import keras
    import tensorflow as tf

    from mtl.model.optimizers import FusedAdam

    rng = np.random.default_rng(0)
    shapes = [(3, 3, 4, 8), (8,), (16, 4)]
    start = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    grads = [[tf.constant(rng.standard_normal(s).astype(np.float32)) for s in shapes]
             for _ in range(3)]

    def run(optimizer):
        weights = [keras.Variable(w) for w in start]
        step = tf.function(lambda g: optimizer.apply_gradients(zip(g, weights)))
        for g in grads:
            step(g)
        return [np.asarray(w) for w in weights], optimizer

    expected, _ = run(keras.optimizers.Adam(1e-2, amsgrad=amsgrad))
    got, fused = run(FusedAdam(1e-2, amsgrad=amsgrad))
    assert int(fused.iterations) == 3
    for a, b, w in zip(expected, got, start):
        assert not np.allclose(b, w)  # it did update
        # float rounding (the kernel's order of operations): 1e-6 of steps of about 1e-2
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


def test_models_save_and_load_with_fused_adam(tiny, tmp_path):
    import keras

    from mtl.model.optimizers import FusedAdam
    from mtl.train import build_model

    model = build_model(config())
    assert isinstance(model.optimizer, FusedAdam)
    model.fit(dataset(), epochs=1, steps_per_epoch=1, verbose=0, shuffle=False)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert isinstance(loaded.optimizer, FusedAdam) and int(loaded.optimizer.iterations) == 1
    for a, b in zip(model.optimizer.variables, loaded.optimizer.variables):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
