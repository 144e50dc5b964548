"""Shared test fixtures."""

from __future__ import annotations

import os
import pickle
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from filelock import FileLock

#: real data prepared next to the project (``../shared/data``); never copied into the repo
SHARED_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real-data folder; skips the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not available: {SHARED_DATA.resolve()} does not exist")
    return SHARED_DATA.resolve()


@pytest.fixture(scope="session")
def scan_real_dataset(shared_data: Path) -> Callable[..., Any]:
    """scan(folder, adapter class, title) -> the adapter over ``shared_data/folder`` after one
    cold ``records()`` (every image read into the temporary feature cache), its seconds kept as
    ``adapter.scan_seconds``; skips the test where the folder is absent."""
    def scan(folder: str, adapter_class: type, title: str) -> Any:
        root = shared_data / folder
        if not root.is_dir():
            pytest.skip(f"real {title} data not available at {root}")
        adapter = adapter_class(root)
        started = time.perf_counter()
        adapter.records()
        adapter.scan_seconds = time.perf_counter() - started
        return adapter

    return scan


@pytest.fixture
def count_image_reads(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The images whose grouping features are read from disk (not the cache) during the test."""
    from mtl.data.grouping import features

    calls: list[Path] = []
    real = features._features_of

    def counting(path: Path) -> Any:
        calls.append(path)
        return real(path)

    monkeypatch.setattr(features, "_features_of", counting)
    return calls


@pytest.fixture
def serve_app() -> Iterator[Callable[..., Any]]:
    """make(predictor=None, **create_app options) -> (test client, app) of ``mtl serve``, by
    default around the fake perfect segmenter (tests/test_serve_support.py). After the test
    every app made is closed, and none may have left a temporary file behind."""
    from test_serve_support import make_client

    apps = []

    def make(predictor=None, **options):
        test_client, app = make_client(predictor, **options)
        apps.append(app)
        return test_client, app

    yield make
    for app in apps:
        assert not list(app.state.service.temp_root.iterdir()), "temporary files left behind"
        app.state.service.close()


@pytest.fixture(autouse=True, scope="session")
def _cache_in_tmp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """mtl's image-feature cache (dataset grouping) lives in a temporary folder during tests."""
    folder = tmp_path_factory.mktemp("mtl-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MTL_CACHE_DIR", str(folder))
        yield folder


def once_for_all_workers(tmp_path_factory: pytest.TempPathFactory, name: str,
                         make: Callable[[Path], Any]) -> Any:
    """``make(folder)`` run once for the whole test session, however many pytest-xdist worker
    processes it has: the first worker to ask makes it under a file lock in the folder all
    workers share (pytest-xdist's documented pattern) and keeps the result (pickled); the others
    read it. Without xdist, simply ``make(folder)``. ``make`` must write everything it returns
    under ``folder``, and the tests must not change what it wrote. ``tiny_variant_run`` adds a
    second run folder beside the shared one (to check that a run never overwrites another):
    safe because all its tests share one xdist group, so one process adds it."""
    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        return make(tmp_path_factory.mktemp(name))
    shared = tmp_path_factory.getbasetemp().parent  # the session's folder, above each worker's
    folder, kept = shared / name, shared / f"{name}.pickle"
    with FileLock(str(shared / f"{name}.lock")):
        if kept.is_file():
            return pickle.loads(kept.read_bytes())
        folder.mkdir()
        result = make(folder)
        kept.write_bytes(pickle.dumps(result))
        return result


@pytest.fixture(scope="session")
def tiny_phantom_run(tmp_path_factory: pytest.TempPathFactory):
    """One finished tiny training run on phantoms (2 epochs of 2 steps, with validation), shared
    by the tests that only read a run folder (each training run costs a model build and a trace,
    the largest part of the suite's time), trained once for all pytest-xdist workers. Tests must
    not change the folder: copy it first."""
    from mtl.config import load_config
    from mtl.train import train

    def make(runs: Path):
        config = load_config(overrides=[
            "data.image_size=64", "model.decoder_filters=[32,32,16,16,8]",
            "model.head_units=32", "train.batch_size=8", "train.epochs=2",
            "train.steps_per_epoch=2", "train.val_steps=1",
            "data.sources=[{format: phantoms, options: {n: 40, size: 64}}]",
            f"train.runs_dir={runs}", "name=tiny",
        ])
        return train(config, verbose=0)

    return once_for_all_workers(tmp_path_factory, "shared-runs", make)


#: the settings of tests/test_train.py's tiny networks that learn within a few epochs
LEARNING = [
    "data.image_size=64", "model.decoder_filters=[32,32,16,16,8]", "model.head_units=32",
    "model.bn_momentum=0.9", "train.batch_size=16", "train.learning_rate=0.002",
    "data.split={train: 0.6, val: 0.2, test: 0.2}",
]


@pytest.fixture(scope="session")
def learned_run(tmp_path_factory):
    """A tiny network that learns: 7 epochs on 240 phantoms from two datasets, with validation.
    tests/test_train.py checks that it learned, tests/test_evaluate.py evaluates it (each
    training run costs a model build and a trace). Tests must not change the folder: copy it
    first. Returns (config, TrainResult).

    The first dataset is the 200 phantoms the learning tests always used; with it, held-out
    Dice reached 0.66, 0.80 and 0.82 for seeds 0, 1 and 2 (the tests ask for 0.4). A split of
    the same size into 120 + 80 phantoms reached only 0.36 for seed 0: a few dozen steps of
    training are sensitive to the data, so change these datasets only with a look at the
    margin over several seeds.

    data.cache: each training phantom is generated, scaled and resized once, not in each of the
    7 epochs; the batches stay the same (a run with and without it gave an identical history.csv
    and identical weights in last.keras and best.keras)."""
    from mtl.config import load_config
    from mtl.train import train

    runs = tmp_path_factory.mktemp("learned-runs")
    config = load_config(overrides=LEARNING + [
        f"train.runs_dir={runs}", "name=learn", "train.epochs=7", "data.cache=true",
        "data.sources=[{format: phantoms, options: {n: 200, size: 64, seed: 5}}, "
        "{format: phantoms, options: {n: 40, size: 64, seed: 6}}]"])
    return config, train(config, verbose=0)


@pytest.fixture(scope="session")
def tiny_variant_run(tiny_phantom_run):
    """The shared run's config trained again (a second run costs a build and a trace), with
    four things changed that must not change its first epoch: items loaded by 2 worker
    processes (data.workers), a cosine learning-rate schedule over 3 epochs (its first epoch
    uses the base rate), MirroredStrategy on this one device and a time budget too generous to
    cut anything (train.time_budget_minutes). tests/test_train.py checks the seed, the workers,
    the schedule and the budget's records on it, tests/test_distribute.py the strategy."""
    from mtl.config import load_config
    from mtl.train import train

    config = load_config(tiny_phantom_run.run_dir / "config.yaml", [
        "train.epochs=3", "data.workers=2", "train.lr_schedule=cosine",
        "train.lr_min_fraction=0.1", "train.strategy=mirrored",
        "train.time_budget_minutes=600"])
    return config, train(config, verbose=0)
