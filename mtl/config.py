"""Typed configuration: ``experiments/*.yaml`` plus command-line overrides, parsed once.

Everything downstream receives a :class:`Config`; nothing else reads YAML or raw dicts.
Overrides use dotted keys with YAML values, e.g. ``train.epochs=3`` or
``loss.weights={presence: 1, type: 0.5, mask: 2}``. Unknown keys are errors, never ignored.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mtl.data.context import OFFSET_MARK, context_names, offsets
from mtl.model.network import Architecture, NetworkSpec
from mtl.model.weight_gradient import WEIGHT_GRADIENTS
from mtl.precision import PRECISIONS
from mtl.tasks import DICE_MODES, default_weights

DEFAULT_CLASSES = ["no_tumor", "glioma", "meningioma", "pituitary"]


class ConfigError(ValueError):
    """A configuration key or value that cannot be used; the message names it."""


@dataclass
class SourceConfig:
    """One dataset in the mix: its adapter format, folder, sampling weight and options."""

    format: str = "phantoms"
    root: str | None = None
    weight: float = 1.0
    #: map an adapter's label to one of data.classes; map to null to treat it as missing
    label_map: dict[str, str | None] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class AugmentConfig:
    """Joint image/mask augmentation (albumentations); probabilities and ranges."""

    enabled: bool = True
    hflip: float = 0.5
    vflip: float = 0.0
    affine: float = 0.7
    rotate_limit: float = 15.0
    scale_limit: float = 0.1
    shift_limit: float = 0.05
    brightness_contrast: float = 0.5
    brightness_limit: float = 0.15
    contrast_limit: float = 0.15
    distortion: float = 0.25  # elastic or grid distortion, one of the two
    #: with data.context_slices: the chance that a slice's neighbours swap sides (the volume
    #: read the other way up), so the network does not depend on which way a file stacks them
    slice_flip: float = 0.5


@dataclass
class DataConfig:
    sources: list[SourceConfig] = field(default_factory=lambda: [SourceConfig()])
    classes: list[str] = field(default_factory=lambda: list(DEFAULT_CLASSES))
    image_size: int = 128
    channels: int = 1
    #: names of the input channels when they are MR sequences, in order (e.g. [pre-contrast,
    #: flair, post-contrast]): every sample must carry exactly these (meta["channels"]), each is
    #: intensity-scaled on its own, and the model records them so inference asks for each one
    channel_names: list[str] | None = None
    #: 2.5-D input: each slice is read with this many neighbouring slices of its volume on
    #: either side, stacked as channels (mtl.data.context); needs channel_names and a dataset
    #: that reads volumes (lgg). The network then takes (2k + 1) * channels input channels
    context_slices: int = 0
    #: per-image intensity scaling to [0, 1] between these percentiles
    intensity_percentiles: list[float] = field(default_factory=lambda: [0.5, 99.5])
    split: dict[str, float] = field(
        default_factory=lambda: {"train": 0.7, "val": 0.15, "test": 0.15}
    )
    #: k-fold cross-validation: with cv_folds >= 2 the patients of the train and val splits
    #: are dealt into cv_folds patient-safe folds; fold cv_fold (0-based) is the validation
    #: split, the others train, and the test split stays the same for every fold
    #: (mtl.data.splits.cross_validation_fold). 0: off
    cv_folds: int = 0
    cv_fold: int = 0
    #: train on the val split's patients too, once the choices validation makes (epochs, gate)
    #: have been made elsewhere (e.g. on cross-validation folds): the test split stays as
    #: data.split makes it, the val split is empty, and the run has no validation
    #: (mtl.data.splits.refit_split)
    refit: bool = False
    #: "raise": a bad item stops with an error naming the file; "skip": skipped and counted
    on_error: str = "raise"
    #: load every item once before training so bad data is found before the first epoch
    preflight: bool = True
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    #: parallel decode/augment calls in tf.data threads; null lets tf.data tune it
    num_parallel_calls: int | None = None
    #: keep each training item decoded, intensity-scaled and resized in memory after its first
    #: use, so later epochs only augment (same batches). Costs S*S*(4*C + 2) bytes per item:
    #: 0.5 GB for 5,000 items at 128 px, 2 GB at 256 px; per process with data.workers
    cache: bool = False
    #: 0: decode and augment in tf.data threads of the training process (they share Python's
    #: global interpreter lock, so they gain little over one thread); N > 0: in N worker
    #: processes, which scale with cores. Worth it with a GPU or many cores; on 2 cores see
    #: benchmarks/README.md
    workers: int = 0
    cache_val: bool = True
    #: split all sources together so that near-copies of a slice in any source of the run land
    #: in one split (mtl.data.copies); false splits each source on its own
    link_copies: bool = True
    #: "all": every near-copy in the training split trains; "once": one item of each group of
    #: near-copies trains, the one of the first-listed source (BRISC's copies of figshare and
    #: Br35H slices, with BRISC's own masks of them, are left out of training; val and test are
    #: unchanged). Needs data.link_copies (mtl.data.copies.train_once)
    train_copies: str = "all"

    @property
    def cv(self) -> tuple[int, int] | None:
        """``(cv_folds, cv_fold)`` for :func:`mtl.data.splits.split_records`, or None."""
        return (self.cv_folds, self.cv_fold) if self.cv_folds else None

    @property
    def input_names(self) -> list[str] | None:
        """The network's named input channels: ``channel_names`` at each slice offset
        (``flair@-1``, ``flair``, ``flair@+1``, ...), or None for a grey/RGB model."""
        if not self.channel_names:
            return None
        return context_names(self.channel_names, self.context_slices)

    @property
    def input_channels(self) -> int:
        """The network's input channels: ``channels`` per slice, times the slices read."""
        return self.channels * (2 * self.context_slices + 1)


@dataclass
class ModelConfig(Architecture):
    """The network's fields (:class:`mtl.model.network.Architecture`: backbone, decoder, heads,
    bn_momentum) and how training runs it."""

    #: with more than one replica, BatchNormalization uses moments all-reduced over replicas
    #: (same statistics on every worker; better estimates from small per-replica batches)
    sync_batchnorm: bool = True


@dataclass
class LossConfig:
    #: per task of mtl.tasks.TASKS (presence 1, type 1, mask 1, box 0 by default)
    weights: dict[str, float] = field(default_factory=default_weights)
    uncertainty: bool = False
    dice_smooth: float = 1.0
    #: "image": soft Dice per image, averaged; "batch": one Dice over the batch; "batch+image":
    #: both, the per-image term over tumor images only (mtl.tasks.DICE_MODES, see losses)
    dice: str = "image"


@dataclass
class TrainConfig:
    epochs: int = 20
    #: batch per replica (device); the global batch is this times the number of replicas
    batch_size: int = 16
    #: the learning rate for one replica; see lr_scaling
    learning_rate: float = 1e-3
    #: "linear": multiply the learning rate by the number of replicas; "none": keep it
    lr_scaling: str = "linear"
    #: auto | default | mirrored | multiworker (see mtl.distribute)
    strategy: str = "auto"
    #: auto | float32 | mixed_bfloat16 | mixed_float16: the compute precision of training
    #: (weights, batch norm, heads and loss stay float32; saved models predict in float32).
    #: bfloat16 runs convolutions about twice as fast on CPUs with AVX512_BF16 or AMX
    #: (benchmarks/README.md) and many times slower on others; float16 is for GPUs (loss scaling
    #: is automatic). auto: bfloat16 where the CPU or GPU computes in it, else float32
    #: (mtl.precision)
    precision: str = "float32"
    #: XLA compilation of the training and validation steps (Keras's compile(jit_compile)):
    #: auto follows Keras (on where a GPU is visible, off on CPU-only machines and under a
    #: tf.distribute strategy); true / false force it. Same results up to float rounding
    #: (tested), except that dropout draws other random masks under XLA. On a CPU it is
    #: slower (1.5x at 128 px on a 2-core Xeon: benchmarks/step_profile.py) and compiling
    #: adds seconds to minutes at the start
    jit_compile: bool | str = "auto"
    #: training steps run per call from Python into TensorFlow (Keras's steps_per_execution);
    #: > 1 saves per-step Python overhead where steps are short (small images, GPUs). Progress
    #: and batch-level callbacks then report every N steps. Reduced to the largest divisor of
    #: the steps per epoch, so epochs keep their batches
    steps_per_execution: int = 1
    #: auto | transposed | native: how convolution weight gradients are computed in training.
    #: transposed: as a forward convolution of the transposed tensors, for the plain stride-1
    #: convolutions (no dilation or groups, kernel > 1x1) with >= 64 channels in and out
    #: (mtl.model.weight_gradient); native: TensorFlow's own kernel. auto: transposed on x86-64
    #: CPUs with AVX2 and without AVX-512 and no GPU, where it was measured faster, else native.
    #: Same results up to float rounding; the saved model is the same either way
    weight_gradient: str = "auto"
    #: null: one pass over the training split per epoch
    steps_per_epoch: int | None = None
    val_steps: int | None = None
    #: the metric that picks best.keras, and whether higher is better
    monitor: str = "val_loss"
    monitor_mode: str = "min"
    early_stopping_patience: int | None = None
    reduce_lr_patience: int | None = 3
    #: plateau: halve the learning rate after reduce_lr_patience epochs without improvement of
    #: the monitor; cosine: decay it from learning_rate to lr_min_fraction of it along half a
    #: cosine over the planned epochs (set per epoch, so a resumed run continues the same curve;
    #: reduce_lr_patience is then unused)
    lr_schedule: str = "plateau"
    lr_min_fraction: float = 0.02
    #: start from a trained model's weights: a .keras file or a run folder (its best.keras).
    #: Same network, classes and sequences; it may read fewer neighbouring slices than this run
    #: (a single-slice model starts a data.context_slices one: mtl.model.warm_start). Optimizer,
    #: schedule and epochs start afresh. Unused when a run resumes (its own weights go on)
    init_from: str | None = None
    #: end training within this many minutes of wall-clock time (loading the data included,
    #: summed over the sessions of a resumed run): after each epoch the run plans as many of
    #: train.epochs as the time left holds at its median epoch time, the cosine schedule follows
    #: the plan, and training stops when not one more epoch fits (mtl.time_budget). null: train
    #: every one of train.epochs. Not under the multiworker strategy (workers would time apart)
    time_budget_minutes: float | None = None
    runs_dir: str = "runs"


@dataclass
class Config:
    name: str = "run"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def network_spec(self) -> NetworkSpec:
        return NetworkSpec(**self.model.architecture(), input_size=self.data.image_size,
                           channels=self.data.input_channels, classes=list(self.data.classes))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def validate(self) -> "Config":
        if self.data.on_error not in ("raise", "skip"):
            raise ConfigError(f"data.on_error must be 'raise' or 'skip', not {self.data.on_error!r}")
        if not self.data.sources:
            raise ConfigError("data.sources is empty: list at least one dataset")
        if set(self.data.split) - {"train", "val", "test"} or "train" not in self.data.split:
            raise ConfigError(f"data.split needs train (and val/test) fractions, got {self.data.split}")
        if abs(sum(self.data.split.values()) - 1.0) > 1e-6:
            raise ConfigError(f"data.split fractions must sum to 1, got {self.data.split}")
        if self.data.cv_folds and (self.data.cv_folds < 2
                                   or not 0 <= self.data.cv_fold < self.data.cv_folds):
            raise ConfigError(f"data.cv_fold must be between 0 and data.cv_folds - 1 with "
                              f"data.cv_folds >= 2 (or 0: no cross-validation), got fold "
                              f"{self.data.cv_fold} of {self.data.cv_folds}")
        if not self.data.cv_folds and self.data.cv_fold:
            raise ConfigError(f"data.cv_fold={self.data.cv_fold} needs data.cv_folds >= 2")
        if self.data.train_copies not in ("all", "once"):
            raise ConfigError(f"data.train_copies must be 'all' or 'once', "
                              f"not {self.data.train_copies!r}")
        if self.data.train_copies == "once" and not self.data.link_copies:
            raise ConfigError("data.train_copies: once needs data.link_copies: true (the copies "
                              "are found when the sources are split together)")
        if self.data.refit and self.data.cv_folds:
            raise ConfigError("data.refit trains on every non-test patient, so it takes no "
                              "data.cv_folds: set one or the other")
        if self.train.strategy not in ("auto", "default", "mirrored", "multiworker"):
            raise ConfigError("train.strategy must be auto, default, mirrored or multiworker")
        if self.data.workers < 0:
            raise ConfigError(f"data.workers must be >= 0, got {self.data.workers}")
        if self.train.precision not in PRECISIONS:
            raise ConfigError(f"train.precision must be one of {', '.join(PRECISIONS)}, "
                              f"not {self.train.precision!r}")
        if self.train.jit_compile not in ("auto", True, False):
            raise ConfigError(f"train.jit_compile must be auto, true or false, "
                              f"not {self.train.jit_compile!r}")
        if self.train.weight_gradient not in WEIGHT_GRADIENTS:
            raise ConfigError(f"train.weight_gradient must be one of "
                              f"{', '.join(WEIGHT_GRADIENTS)}, not {self.train.weight_gradient!r}")
        if self.train.steps_per_execution < 1:
            raise ConfigError(f"train.steps_per_execution must be >= 1, "
                              f"got {self.train.steps_per_execution}")
        if self.train.lr_scaling not in ("linear", "none"):
            raise ConfigError("train.lr_scaling must be 'linear' or 'none'")
        if self.loss.dice not in DICE_MODES:
            raise ConfigError(f"loss.dice must be one of {', '.join(DICE_MODES)}, "
                              f"not {self.loss.dice!r}")
        if self.train.lr_schedule not in ("plateau", "cosine"):
            raise ConfigError(f"train.lr_schedule must be 'plateau' or 'cosine', "
                              f"not {self.train.lr_schedule!r}")
        if not 0.0 <= self.train.lr_min_fraction <= 1.0:
            raise ConfigError(f"train.lr_min_fraction must be in [0, 1], "
                              f"got {self.train.lr_min_fraction}")
        if self.train.monitor_mode not in ("min", "max"):
            raise ConfigError("train.monitor_mode must be 'min' or 'max'")
        budget = self.train.time_budget_minutes
        if budget is not None and not budget > 0:
            raise ConfigError(f"train.time_budget_minutes must be > 0 (or null), got {budget}")
        if budget is not None and self.train.strategy == "multiworker":
            raise ConfigError("train.time_budget_minutes does not work with the multiworker "
                              "strategy (each worker would time its own epochs): "
                              "--set train.time_budget_minutes=null and size train.epochs")
        if self.train.epochs < 1 or self.train.batch_size < 1:
            raise ConfigError("train.epochs and train.batch_size must be >= 1")
        if len(self.data.intensity_percentiles) != 2:
            raise ConfigError("data.intensity_percentiles must be [low, high]")
        low, high = self.data.intensity_percentiles
        if not 0.0 <= low < high <= 100.0:
            raise ConfigError(f"data.intensity_percentiles must be [low, high] with "
                              f"0 <= low < high <= 100, got {self.data.intensity_percentiles}")
        if not (math.isfinite(self.train.learning_rate) and self.train.learning_rate > 0):
            raise ConfigError(f"train.learning_rate must be > 0, got {self.train.learning_rate}")
        for key, fraction in self.data.split.items():
            if not (math.isfinite(fraction) and 0.0 <= fraction <= 1.0):
                raise ConfigError(f"data.split.{key} must be in [0, 1], got {fraction}")
        if self.data.image_size < 32 or self.data.image_size % 32:
            raise ConfigError(f"data.image_size must be a positive multiple of 32, "
                              f"got {self.data.image_size}")
        if self.data.channels < 1:
            raise ConfigError(f"data.channels must be >= 1, got {self.data.channels}")
        names = self.data.channel_names
        if names is not None:
            if len(names) != self.data.channels:
                raise ConfigError(f"data.channel_names lists {len(names)} names for "
                                  f"data.channels={self.data.channels}")
            if len(set(names)) != len(names) or not all(isinstance(n, str) and n for n in names):
                raise ConfigError(f"data.channel_names must be distinct non-empty names, got {names}")
            marked = [n for n in names if OFFSET_MARK in n]
            if marked:
                raise ConfigError(f"data.channel_names: {marked} hold {OFFSET_MARK!r}, which marks a "
                                  "neighbouring slice's channel (data.context_slices); name the "
                                  "sequences alone")
        k = self.data.context_slices
        try:
            offsets(k)
        except ValueError as exc:
            raise ConfigError(f"data.context_slices: {exc}") from None
        if k and not names:
            raise ConfigError("data.context_slices needs data.channel_names: the neighbouring "
                              "slices' channels are named after the sequences (flair@-1, ...)")
        if self.model.encoder_weights == "imagenet" and self.data.input_channels != 3:
            raise ConfigError(f"model.encoder_weights: imagenet needs 3 input channels; "
                              f"data.channels={self.data.channels} with data.context_slices={k} "
                              f"gives {self.data.input_channels}")
        stages = len(self.model.decoder_filters)
        if not 0 <= self.model.deep_supervision < stages:
            raise ConfigError(f"model.deep_supervision must be between 0 and {stages - 1} (the "
                              f"decoder's stages below the last), got "
                              f"{self.model.deep_supervision}")
        known_tasks = list(default_weights())
        unknown_tasks = sorted(set(self.loss.weights) - set(known_tasks))
        if unknown_tasks:
            raise ConfigError(f"loss.weights: unknown task(s) {', '.join(unknown_tasks)}; "
                              f"known: {', '.join(known_tasks)}")
        for task, weight in self.loss.weights.items():
            if not (math.isfinite(weight) and weight >= 0):
                raise ConfigError(f"loss.weights.{task} must be >= 0, got {weight}")
        self._validate_sources()
        try:
            self.network_spec()
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        return self

    def _validate_sources(self) -> None:
        """Each source's format is a known adapter and its options are ones that adapter reads."""
        from mtl.data.adapters import adapter_class

        for i, source in enumerate(self.data.sources):
            where = f"data.sources[{i}]"
            try:
                cls = adapter_class(source.format)
            except ValueError as exc:
                raise ConfigError(f"{where}.format: {exc}") from None
            unknown = sorted(set(source.options) - cls.known_options())
            if unknown:
                known = ", ".join(sorted(cls.known_options())) or "none"
                raise ConfigError(f"{where}.options: unknown option(s) {', '.join(unknown)} for "
                                  f"format {source.format!r}; known: {known}")
            if not (math.isfinite(source.weight) and source.weight >= 0):
                raise ConfigError(f"{where}.weight must be >= 0, got {source.weight}")


# --------------------------------------------------------------------------- parsing


def _convert(value: Any, tp: Any, where: str) -> Any:
    """Turn a YAML value into the annotated type ``tp`` (dataclasses, lists, dicts, scalars)."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return _build(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"{where}: may not be null")
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0])
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_convert(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        _, item = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return {str(k): _convert(v, item, f"{where}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            number = float(value)
        except ValueError:
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
        if tp is int:
            if number != int(number):
                raise ConfigError(f"{where}: expected an integer, got {value!r}")
            return int(number)
        return number
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - names
    if unknown:
        raise ConfigError(
            f"{where or 'config'}: unknown key(s) {sorted(unknown)}; known: {sorted(names)}"
        )
    kwargs = {
        k: _convert(v, hints[k], f"{where}.{k}" if where else k) for k, v in values.items()
    }
    return cls(**kwargs)


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        if key.isdigit() and isinstance(node, list):
            node = node[int(key)]
            continue
        child = node.get(key)
        if not isinstance(child, (dict, list)):
            child = {}
            node[key] = child
        node = child
    last = keys[-1]
    if last.isdigit() and isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``"train.epochs=3"`` -> ``("train.epochs", 3)``; the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.path=value")
    key, raw = text.split("=", 1)
    try:
        return key.strip(), yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: bad value: {exc}") from None


def load_config(
    path: str | Path | None = None, overrides: list[str] | dict[str, Any] | None = None
) -> Config:
    """Defaults <- YAML file <- overrides, checked and typed."""
    tree: dict[str, Any] = Config().to_dict()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: top level must be a mapping")
        tree = _merge(tree, loaded)
    pairs = overrides.items() if isinstance(overrides, dict) else map(parse_override, overrides or [])
    for key, value in pairs:
        _set_dotted(tree, key, value)
    return _build(Config, tree, "").validate()


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k not in ("weights", "options", "label_map", "split"):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out
