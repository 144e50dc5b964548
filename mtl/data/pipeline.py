"""From adapters to batches: sources, epoch plans, joint augmentation and tf.data.

A training epoch is planned up front in NumPy from ``(seed, epoch)``: which source, which item
and which augmentation seed fills every slot. The plan makes runs reproducible and lets
``--resume`` continue with exactly the epochs an uninterrupted run would have seen. tf.data
then decodes and augments the planned items in parallel, batches them and prefetches: in its own
threads (``data.num_parallel_calls``), or in worker processes (``data.workers``), which Python's
global interpreter lock does not serialise. This module imports TensorFlow only to build the
dataset, so worker processes start without it.

Each element is ``(image, targets, weights)``: ``targets`` and ``weights`` are dicts keyed by
the tasks of :data:`mtl.tasks.TASKS` (``presence``, ``type``, ``mask``, ``box``), each encoded
and shaped as its table entry says; a weight of 0 marks a label the sample lacks, and the target
under it is an unused placeholder that the loss multiplies by that 0.
"""

from __future__ import annotations

import collections
import itertools
import logging
import math
import os
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator
import albumentations as A
import cv2
import numpy as np

from mtl.config import AugmentConfig, Config, ConfigError, SourceConfig
from mtl.data.adapters import Adapter, Record, get_adapter
from mtl.data.adapters.base import context_refusal
from mtl.data.preprocess import (
    box_to_mask, check_channels, data_preprocessing, letterbox, prepare_image,
)
from mtl.data.sample import Sample
from mtl import tasks
from mtl.tasks import TASK_NAMES, Labels, target_specs

if TYPE_CHECKING:
    import tensorflow as tf

log = logging.getLogger(__name__)

#: targets that carry information for metrics only, never for the loss: (shape, dtype)
INFO_SPECS = {"spacing": ((2,), "float32")}  # mm per network pixel (row, col), NaN if unknown
INFO_KEYS = tuple(INFO_SPECS)


def element_specs(image_size: int) -> dict[str, tuple[tuple[int, ...], str]]:
    """``{key: (shape, dtype)}`` of one item's targets, in the order TASK_NAMES + INFO_KEYS."""
    return {**target_specs(image_size), **INFO_SPECS}


@dataclass
class Source:
    """An opened dataset: its adapter, records, and label mapping into the class list."""

    config: SourceConfig
    adapter: Adapter
    records: list[Record]
    name: str
    splits: dict[str, list[int]] = field(default_factory=dict)
    #: ``(file, reason)`` of the items the adapter skipped while listing them (before any
    #: pixels were loaded); load-time skips are counted by :func:`preflight` and
    #: :class:`LoadErrors`, see :func:`skip_report`
    scan_skipped: list[tuple[str, str]] = field(default_factory=list)
    #: neighbouring slices read on either side of each slice (``data.context_slices``)
    context_slices: int = 0

    def load(self, record: Record) -> Sample:
        """The record's sample, with its neighbouring slices as channels when the run reads
        them (:meth:`Adapter.load_context`)."""
        if self.context_slices:
            return self.adapter.load_context(record, self.context_slices)
        return self.adapter.load(record)

    def class_label(self, label: str | None) -> str | None:
        if label is None:
            return None
        return self.config.label_map.get(label, label)


def open_source(config: SourceConfig, on_error: str, classes: list[str], index: int = 0,
                context_slices: int = 0) -> Source:
    adapter = get_adapter(config.format, config.root, on_error=on_error, **config.options)
    if context_slices and type(adapter).load_context is Adapter.load_context:
        raise ConfigError(context_refusal(f"{config.format} ({config.root})", context_slices))
    records = adapter.records()
    source = Source(config, adapter, records, name=f"{config.format}" + (f"#{index}" if index else ""),
                    scan_skipped=list(adapter.skipped),  # loads add to adapter.skipped later
                    context_slices=int(context_slices))
    unknown = sorted(
        {str(source.class_label(r.label)) for r in records if source.class_label(r.label) is not None}
        - set(classes)
    )
    if unknown:
        raise ConfigError(
            f"{config.format} ({config.root}): labels {unknown} are not in data.classes {classes}; "
            "add them to data.classes or map them with the source's label_map"
        )
    return source


def open_sources(config: Config) -> list[Source]:
    return [
        open_source(s, config.data.on_error, config.data.classes, i, config.data.context_slices)
        for i, s in enumerate(config.data.sources)
    ]


# --------------------------------------------------------------------------- preflight


def preflight(sources: list[Source], on_error: str, *, progress: bool = True) -> list[tuple[str, str]]:
    """Load every item once before training, so bad data never stops an epoch half-way.

    ``on_error="raise"``: one :class:`DataError` listing every unreadable item (by file).
    ``on_error="skip"``: unreadable items are removed from their source; returns them as
    ``(file, reason)`` pairs.
    """
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    from mtl.data.adapters import DataError

    def check(job: tuple[int, int]) -> tuple[int, int, str | None]:
        k, i = job
        try:
            sources[k].load(sources[k].records[i])
            return k, i, None
        except Exception as exc:  # noqa: BLE001 - every failure is reported with its file
            return k, i, str(exc)

    jobs = [(k, i) for k, s in enumerate(sources) for i in range(len(s.records))]
    bad: list[tuple[int, int, str]] = []
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        for k, i, error in tqdm(pool.map(check, jobs), total=len(jobs), desc="checking data",
                                unit="item", disable=not progress, leave=False):
            if error is not None:
                bad.append((k, i, error))
    failures = [(sources[k].records[i].source or sources[k].records[i].case_id, why)
                for k, i, why in bad]
    if bad and on_error == "raise":
        listed = "\n  ".join(f"{src}: {why}" for src, why in failures[:20])
        more = f"\n  ... and {len(failures) - 20} more" if len(failures) > 20 else ""
        raise DataError(
            f"{len(failures)} unreadable item(s); fix or remove them, or set data.on_error: skip "
            f"to skip and count them:\n  {listed}{more}")
    for k in sorted({k for k, _, _ in bad}):
        drop = {i for kk, i, _ in bad if kk == k}
        sources[k].records = [r for i, r in enumerate(sources[k].records) if i not in drop]
    return failures


def skip_report(sources: list[Source], at_preflight: list[tuple[str, str]],
                load_errors: list[tuple[str, str]], examples: int = 20) -> dict[str, Any]:
    """The skipped items of a run, each counted once, at the first stage it failed.

    Stages: ``scan`` (the adapter left the item out while listing, ``Source.scan_skipped``),
    ``preflight`` (:func:`preflight` could not load it) and ``load`` (it failed while training,
    :class:`LoadErrors`). An adapter also records its load failures in ``adapter.skipped``;
    those are not scan-time skips, so they are not read from there. Keys: ``skipped`` (the
    total), ``skipped_at_scan``, ``skipped_at_preflight``, ``skipped_at_load`` and
    ``skipped_examples`` (the first ``examples`` ``(file, reason)`` pairs).
    """
    seen: set[str] = set()
    counts = {}
    entries: list[tuple[str, str]] = []
    stages = (("scan", [item for s in sources for item in s.scan_skipped]),
              ("preflight", at_preflight), ("load", load_errors))
    for stage, items in stages:
        counts[stage] = 0
        for source, reason in items:
            if str(source) in seen:
                continue
            seen.add(str(source))
            counts[stage] += 1
            entries.append((str(source), reason))
    return {"skipped": len(entries), "skipped_at_scan": counts["scan"],
            "skipped_at_preflight": counts["preflight"], "skipped_at_load": counts["load"],
            "skipped_examples": [list(e) for e in entries[:examples]]}


# --------------------------------------------------------------------------- augmentation


def build_augmenter(cfg: AugmentConfig) -> A.Compose | None:
    """Joint image/mask/box augmentation; geometric transforms move all three together."""
    if not cfg.enabled:
        return None
    transforms = [
        A.HorizontalFlip(p=cfg.hflip),
        A.VerticalFlip(p=cfg.vflip),
        A.Affine(
            scale=(1 - cfg.scale_limit, 1 + cfg.scale_limit),
            translate_percent=(-cfg.shift_limit, cfg.shift_limit),
            rotate=(-cfg.rotate_limit, cfg.rotate_limit),
            border_mode=cv2.BORDER_CONSTANT,
            p=cfg.affine,
        ),
        A.RandomBrightnessContrast(
            brightness_limit=cfg.brightness_limit, contrast_limit=cfg.contrast_limit,
            p=cfg.brightness_contrast,
        ),
        A.OneOf(
            [
                A.ElasticTransform(alpha=20, sigma=5, border_mode=cv2.BORDER_CONSTANT),
                A.GridDistortion(num_steps=5, distort_limit=0.2, border_mode=cv2.BORDER_CONSTANT),
            ],
            p=cfg.distortion,
        ),
    ]
    return A.Compose(transforms, additional_targets={"box": "mask"})


# --------------------------------------------------------------------------- encoding


@dataclass
class Prepared:
    """A sample at network size before augmentation: what :class:`SampleEncoder` caches."""

    image: np.ndarray  # (S, S, C) float32 in [0, 1]
    mask: np.ndarray  # (S, S) uint8
    box: np.ndarray  # (S, S) uint8
    presence: int | None
    label: str | None  # already mapped into the class list
    has_mask: bool
    use_box: bool
    spacing: np.ndarray  # (2,) mm per network pixel, NaN if unknown

    @property
    def nbytes(self) -> int:
        return self.image.nbytes + self.mask.nbytes + self.box.nbytes


def check_sample_channels(sample: Sample, names: list[str]) -> None:
    """A sample fed to a model with named channels must carry those sequences, in that order
    (``meta["channels"]``, set by adapters such as lgg); a sample that does not say which
    channels it holds must at least have that many."""
    from mtl.data.adapters import DataError

    meta = sample["meta"]
    declared = meta.get("channels")
    where = meta.get("source") or sample["case_id"]
    if declared is not None and list(declared) != list(names):
        missing = [n for n in names if n not in declared]
        detail = f"missing {', '.join(missing)}" if missing else "in another order"
        raise DataError(f"{where}: holds channels {list(declared)}, the model's input is "
                        f"{list(names)} (data.channel_names, data.context_slices; {detail})")
    if declared is None:
        try:
            check_channels(sample["image"], names)
        except ValueError as exc:
            raise DataError(f"{where}: {exc}") from None


def reverse_slices(image: np.ndarray, slices: int) -> np.ndarray:
    """(S, S, slices * C) with the slices' channel groups in reverse order: the neighbours
    above a slice become those below it (the sequences' order within a slice is kept)."""
    s1, s2, channels = image.shape
    grouped = image.reshape(s1, s2, slices, channels // slices)
    return np.ascontiguousarray(grouped[:, :, ::-1].reshape(s1, s2, channels))


class SampleEncoder:
    """Turns a sample dict into network input, targets and per-task weights (NumPy).

    Encoding is two steps: :meth:`prepare` (intensity scaling, letterbox to the network size:
    the same every epoch) and :meth:`finish` (seeded augmentation, targets, weights). With
    ``cache=True`` (``data.cache``) the prepared sample of each planned item is kept in memory
    after its first use, so later epochs skip decoding and preparing and only augment; the
    batches are identical either way.
    """

    def __init__(self, config: Config, augment: bool, cache: bool = False) -> None:
        d = config.data
        self.classes = list(d.classes)
        self.spec = data_preprocessing(d)
        self.channel_names = d.input_names  # with each neighbouring slice's channels
        self.size = d.image_size
        self.channels = d.input_channels
        self.context_slices = d.context_slices
        self.slice_flip = d.augment.slice_flip if augment and d.augment.enabled else 0.0
        self._aug_cfg = d.augment if augment else None
        self._local = threading.local()  # one augmenter per worker thread: reseeding is safe
        self._cache: dict[tuple[int, int], Prepared] | None = {} if cache else None

    def __getstate__(self) -> dict[str, Any]:  # sent to worker processes without its threads' state
        state = dict(self.__dict__)
        del state["_local"]
        if state["_cache"] is not None:
            state["_cache"] = {}  # each worker process fills its own
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._local = threading.local()

    @property
    def cache_bytes(self) -> int:
        return sum(p.nbytes for p in (self._cache or {}).values())

    def _augmenter(self) -> A.Compose | None:
        if self._aug_cfg is None:
            return None
        if not hasattr(self._local, "aug"):
            self._local.aug = build_augmenter(self._aug_cfg)
        return self._local.aug

    def prepare(self, sample: Sample, source: Source) -> Prepared:
        if self.channel_names is not None:
            check_sample_channels(sample, self.channel_names)
        image, info = prepare_image(sample["image"], self.spec)
        h, w = sample["image"].shape[:2]
        has_mask = sample["mask"] is not None
        mask = letterbox(sample["mask"], info, nearest=True) if has_mask else np.zeros(
            (self.size, self.size), np.uint8
        )
        box_px = sample["meta"].get("box")
        use_box = box_px is not None and not has_mask
        box = letterbox(box_to_mask(box_px, h, w), info, nearest=True) if use_box else np.zeros(
            (self.size, self.size), np.uint8
        )
        spacing = sample["meta"].get("spacing")
        # mm per network-input pixel (row, col); NaN where the dataset gives no spacing
        scale = info.side / info.size
        spacing = (np.asarray(spacing, np.float32)[:2] * scale if spacing is not None
                   else np.full(2, np.nan, np.float32))
        return Prepared(image, mask, box, sample["presence"], source.class_label(sample["label"]),
                        has_mask, use_box, spacing.astype(np.float32))

    def prepared(self, key: tuple[int, int], load: Callable[[], tuple[Sample, Source]]) -> Prepared:
        """The prepared sample of planned item ``key``, from the cache when it is on."""
        if self._cache is not None and key in self._cache:
            return self._cache[key]
        sample, source = load()
        prepared = self.prepare(sample, source)
        if self._cache is not None:
            self._cache[key] = prepared
        return prepared

    def finish(self, p: Prepared, aug_seed: int) -> tuple[np.ndarray, dict, dict]:
        image, mask, box = p.image, p.mask, p.box
        if self.context_slices and self.slice_flip and (
                np.random.default_rng([int(aug_seed), 1]).random() < self.slice_flip):
            image = reverse_slices(image, 2 * self.context_slices + 1)
        aug = self._augmenter()
        if aug is not None:
            aug.set_random_seed(int(aug_seed))
            # copies: a cached sample must come out of augmentation untouched
            out = aug(image=image.copy(), mask=mask.copy(), box=box.copy())
            image, mask, box = out["image"], out["mask"], out["box"]
            image = np.clip(image, 0.0, 1.0)
        labels = Labels(p.presence,
                        self.classes.index(p.label) if p.label is not None else None,
                        mask, p.has_mask, box, p.use_box)
        targets, weights = {}, {}
        for task in tasks.TASKS:
            targets[task.name], labelled = task.encode(labels)
            weights[task.name] = np.float32(labelled)
        targets["spacing"] = p.spacing.copy()
        image = image.astype(np.float32).reshape(self.size, self.size, self.channels)
        return image, targets, weights

    def encode(self, sample: Sample, source: Source, aug_seed: int) -> tuple[np.ndarray, dict, dict]:
        return self.finish(self.prepare(sample, source), aug_seed)

    def blank(self) -> tuple[np.ndarray, dict, dict]:
        """A zero-weight placeholder for an item skipped at load time (on_error='skip')."""
        s, c = self.size, self.channels
        targets = {k: np.zeros(shape, dtype) for k, (shape, dtype) in target_specs(s).items()}
        targets["spacing"] = np.full(2, np.nan, np.float32)
        return np.zeros((s, s, c), np.float32), targets, {k: np.float32(0) for k in TASK_NAMES}


# --------------------------------------------------------------------------- plans


@dataclass
class Plan:
    """Which (source, item, augmentation seed) fills each slot, in order."""

    source: np.ndarray
    item: np.ndarray
    aug_seed: np.ndarray

    def __len__(self) -> int:
        return len(self.item)

    def shard(self, index: int, count: int) -> "Plan":
        """Every ``count``-th slot from ``index``: one worker's share of the plan."""
        if count == 1:
            return self
        return Plan(self.source[index::count], self.item[index::count], self.aug_seed[index::count])


def steps_per_epoch(sources: list[Source], split: str, batch_size: int) -> int:
    n = sum(len(s.splits.get(split, [])) for s in sources)
    return max(1, math.ceil(n / batch_size))


def plan_training(
    sources: list[Source], *, seed: int, epochs: range, steps: int, batch_size: int
) -> Plan:
    """Weighted sampling across sources; each source is walked in a fresh permutation.

    A source's chance per slot is proportional to ``weight * n_train_items``: weight 1 for all
    sources is plain concatenation, weight 2 oversamples a source twofold.
    """
    sizes = np.array([len(s.splits["train"]) for s in sources], float)
    if sizes.sum() == 0:
        raise ConfigError("the training split is empty")
    p = sizes * np.array([s.config.weight for s in sources], float)
    p = p / p.sum()
    src_all, item_all, seed_all = [], [], []
    for epoch in epochs:
        rng = np.random.default_rng([seed, epoch])
        n = steps * batch_size
        chosen = rng.choice(len(sources), size=n, p=p)
        items = np.empty(n, np.int64)
        for k, s in enumerate(sources):
            slots = np.flatnonzero(chosen == k)
            if not len(slots):
                continue
            pool = np.asarray(s.splits["train"], np.int64)
            reps = math.ceil(len(slots) / len(pool))
            order = np.concatenate([rng.permutation(pool) for _ in range(reps)])
            items[slots] = order[: len(slots)]
        src_all.append(chosen)
        item_all.append(items)
        seed_all.append(rng.integers(0, 2**31 - 1, size=n))
    return Plan(np.concatenate(src_all), np.concatenate(item_all), np.concatenate(seed_all))


def plan_split(sources: list[Source], split: str) -> Plan:
    """Every item of a split, in order, once (evaluation)."""
    src, items = [], []
    for k, s in enumerate(sources):
        idx = s.splits.get(split, [])
        src.append(np.full(len(idx), k, np.int64))
        items.append(np.asarray(idx, np.int64))
    src_a, item_a = np.concatenate(src), np.concatenate(items)
    return Plan(src_a, item_a, np.zeros(len(item_a), np.int64))


# --------------------------------------------------------------------------- tf.data


class LoadErrors:
    """Thread-safe list of the items skipped at load time, each once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.items: list[tuple[str, str]] = []

    def add(self, source: str, reason: str) -> None:
        with self._lock:
            if (source, reason) not in self.items:  # an item fails again every epoch
                self.items.append((source, reason))


Encoded = tuple[np.ndarray, dict, dict]


def load_item(sources: list[Source], encoder: SampleEncoder, src: int, item: int,
              aug_seed: int) -> tuple[tuple[str, str] | None, Encoded | None]:
    """Load and encode one planned item: ``(None, encoded)``, or ``((file, reason), None)``."""
    source = sources[src]
    record = source.records[item]
    try:
        prepared = encoder.prepared((src, item), lambda: (source.load(record), source))
        return None, encoder.finish(prepared, aug_seed)
    except Exception as exc:  # noqa: BLE001 - reported with the file name, or skipped
        return (record.source or record.case_id, str(exc)), None


def _settle(result: tuple[tuple[str, str] | None, Encoded | None], on_error: str,
            errors: LoadErrors, encoder: SampleEncoder) -> Encoded:
    error, encoded = result
    if error is None:
        return encoded
    if on_error == "raise":
        raise RuntimeError(f"{error[0]}: {error[1]}")
    errors.add(*error)
    return encoder.blank()


# worker processes: each holds the sources and the encoder, sent once at start
_WORKER_STATE: tuple[list[Source], SampleEncoder] | None = None


def _worker_start(sources: list[Source], encoder: SampleEncoder) -> None:
    global _WORKER_STATE
    _WORKER_STATE = (sources, encoder)
    cv2.setNumThreads(1)  # the processes are the parallelism


def _worker_load(job: tuple[int, int, int]):
    assert _WORKER_STATE is not None
    return load_item(*_WORKER_STATE, *job)


def encode_in_processes(sources: list[Source], encoder: SampleEncoder, plan: Plan, workers: int,
                        on_error: str, errors: LoadErrors) -> Iterator[Encoded]:
    """The plan's items loaded and encoded by ``workers`` processes, yielded in plan order.

    At most ``4 * workers`` items are in flight, so memory stays flat however long the plan.
    Processes are spawned, never forked (forking a process that runs TensorFlow can hang), and
    end with the iteration.
    """
    import multiprocessing

    jobs = zip(plan.source.tolist(), plan.item.tolist(), plan.aug_seed.tolist())
    context = multiprocessing.get_context("spawn")
    with context.Pool(workers, initializer=_worker_start, initargs=(sources, encoder)) as pool:
        pending = collections.deque(pool.apply_async(_worker_load, (job,))
                                    for job in itertools.islice(jobs, 4 * workers))
        while pending:
            result = pending.popleft().get()
            job = next(jobs, None)
            if job is not None:
                pending.append(pool.apply_async(_worker_load, (job,)))
            yield _settle(result, on_error, errors, encoder)


def make_dataset(
    sources: list[Source],
    plan: Plan,
    encoder: SampleEncoder,
    *,
    batch_size: int,
    on_error: str = "raise",
    num_parallel_calls: int | None = None,
    errors: LoadErrors | None = None,
    drop_remainder: bool = False,
    workers: int = 0,
) -> tf.data.Dataset:
    """A batched, prefetched dataset of ``(image, targets, weights)`` following ``plan``.

    ``workers`` > 0 loads and encodes in that many processes (:func:`encode_in_processes`),
    else in ``num_parallel_calls`` tf.data threads; both give the same elements.
    """
    import tensorflow as tf

    errors = errors if errors is not None else LoadErrors()
    s, c = encoder.size, encoder.channels
    specs = element_specs(s)  # in the order of TASK_NAMES + INFO_KEYS
    if workers > 0:
        def generate():
            for image, targets, weights in encode_in_processes(sources, encoder, plan, workers,
                                                              on_error, errors):
                yield (image, {k: targets[k] for k in TASK_NAMES + INFO_KEYS},
                       {k: weights[k] for k in TASK_NAMES})

        signature = (
            tf.TensorSpec((s, s, c), tf.float32),
            {k: tf.TensorSpec(shape, dtype) for k, (shape, dtype) in specs.items()},
            {k: tf.TensorSpec((), tf.float32) for k in TASK_NAMES},
        )
        ds = tf.data.Dataset.from_generator(generate, output_signature=signature)
        return ds.batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)

    def load(src: np.int64, item: np.int64, aug_seed: np.int64):
        image, targets, weights = _settle(
            load_item(sources, encoder, int(src), int(item), int(aug_seed)), on_error, errors,
            encoder)
        return (image, *(targets[k] for k in TASK_NAMES + INFO_KEYS),
                *(weights[k] for k in TASK_NAMES))

    out_types = [tf.float32] + [tf.as_dtype(dtype) for _, dtype in specs.values()]
    out_types += [tf.float32] * len(TASK_NAMES)
    shapes = [(s, s, c)] + [shape for shape, _ in specs.values()] + [()] * len(TASK_NAMES)
    n_targets = len(TASK_NAMES) + len(INFO_KEYS)

    def tf_load(src, item, aug_seed):
        flat = tf.numpy_function(load, [src, item, aug_seed], out_types, stateful=False)
        for tensor, shape in zip(flat, shapes):
            tensor.set_shape(shape)
        image, *rest = flat
        targets = dict(zip(TASK_NAMES + INFO_KEYS, rest[:n_targets]))
        weights = dict(zip(TASK_NAMES, rest[n_targets:]))
        return image, targets, weights

    ds = tf.data.Dataset.from_tensor_slices((plan.source, plan.item, plan.aug_seed))
    ds = ds.map(
        tf_load,
        num_parallel_calls=num_parallel_calls or tf.data.AUTOTUNE,
        deterministic=True,
    )
    return ds.batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)

