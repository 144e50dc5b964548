"""Near-copies across the datasets of one run land in one split (mtl.data.copies)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from mtl.config import Config, DataConfig, SourceConfig
from mtl.data.copies import check_groups_together, link_copies, split_jointly, train_once
from mtl.data.pipeline import open_sources
from mtl.data.splits import split_records
from mtl.train import assign_splits, data_summary


def brain_like(seed: int, size: int = 160) -> np.ndarray:
    """A dark background with a bright textured ellipse whose size, place and texture vary."""
    rng = np.random.default_rng(seed)
    texture = Image.fromarray((rng.random((6, 6)) * 255).astype(np.uint8)).resize(
        (size, size), Image.Resampling.BICUBIC)
    rows, cols = np.mgrid[0:size, 0:size] / size
    cy, cx = rng.uniform(0.4, 0.6, size=2)
    ry, rx = rng.uniform(0.25, 0.45, size=2)
    head = ((rows - cy) / ry) ** 2 + ((cols - cx) / rx) ** 2 < 1
    return np.where(head, np.asarray(texture, np.float64) * 0.7 + 60, 5).astype(np.uint8)


#: the planted copies: image of dataset A -> how dataset B holds it
PLANTED = {3: "reencoded", 7: "resized", 11: "mirrored", 15: "reencoded", 19: "resized",
           23: "mirrored"}
N_A, N_B_OWN = 40, 30


def _write_copy(pixels: np.ndarray, how: str, path: Path) -> None:
    image = Image.fromarray(pixels)
    if how == "resized":
        image = image.resize((233, 233), Image.Resampling.BILINEAR)
    elif how == "mirrored":
        image = ImageOps.mirror(image)
    image.save(path, quality=70 if how == "reencoded" else 90)


#: BRISC file names: brisc2025_train_<index>_<tumor>_<plane>_t1
COPY_INDEX, OWN_INDEX = 100, 500


def _brisc_file(b: Path, index: int, tumor: bool) -> Path:
    folder = b / "classification_task" / "train" / ("glioma" if tumor else "no_tumor")
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"brisc2025_train_{index:05d}_{'gl' if tumor else 'no'}_ax_t1.jpg"


@pytest.fixture
def two_datasets(tmp_path: Path) -> tuple[Path, Path]:
    """Dataset A (yes/no class folders) and dataset B (BRISC layout), B holding copies of A."""
    a, b = tmp_path / "a", tmp_path / "b"
    for i in range(N_A):
        folder = a / ("yes" if i % 2 else "no")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(brain_like(i)).save(folder / f"a{i:02d}.jpg", quality=92)
    for k, (i, how) in enumerate(PLANTED.items()):
        _write_copy(brain_like(i), how, _brisc_file(b, COPY_INDEX + k, tumor=bool(i % 2)))
    for j in range(N_B_OWN):
        Image.fromarray(brain_like(1000 + j)).save(
            _brisc_file(b, OWN_INDEX + j, tumor=bool(j % 2)), quality=92)
    return a, b


def _config(a: Path, b: Path, seed: int = 0, link: bool = True) -> Config:
    return Config(seed=seed, data=DataConfig(
        sources=[SourceConfig(format="class_folders", root=str(a)),
                 SourceConfig(format="brisc", root=str(b))],
        link_copies=link))


def _planted_pairs(sources) -> list[tuple[int, int]]:
    """(index in A, index in B) of every planted copy."""
    index_a = {Path(r.source).stem: i for i, r in enumerate(sources[0].records)}
    index_b = {int(Path(r.source).stem.split("_")[2]): i for i, r in enumerate(sources[1].records)}
    return [(index_a[f"a{i:02d}"], index_b[COPY_INDEX + k]) for k, i in enumerate(PLANTED)]


def _split_of(splits: dict[str, list[int]], index: int) -> str:
    return next(name for name, indices in splits.items() if index in indices)


def test_planted_copies_are_found_and_nothing_else(two_datasets) -> None:
    sources = open_sources(_config(*two_datasets))
    links = link_copies(sources)
    found = {(a[1], b[1]) for a, b in links.pairs if a[0] == 0 and b[0] == 1}
    assert found == set(_planted_pairs(sources))
    assert not [p for p in links.pairs if p[0][0] == p[1][0]]  # no copies within a dataset
    summary = links.summary()
    assert summary["cross_dataset_groups"] == len(PLANTED)
    assert summary["items_in_cross_dataset_groups"] == 2 * len(PLANTED)
    assert summary["cross_dataset_groups_by_datasets"] == {
        "brisc#1+class_folders": len(PLANTED)}


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_copies_land_in_the_same_split(two_datasets, seed: int) -> None:
    sources = open_sources(_config(*two_datasets, seed=seed))
    links = link_copies(sources)
    parts = split_jointly(sources, links, {"train": 0.6, "val": 0.2, "test": 0.2}, seed=seed)
    check_groups_together(links, parts)
    for a, b in _planted_pairs(sources):
        assert _split_of(parts[0], a) == _split_of(parts[1], b)
    for k, source in enumerate(sources):  # every item is in exactly one split
        assert sorted(i for idx in parts[k].values() for i in idx) == list(
            range(len(source.records)))
        assert all(parts[k][name] for name in ("train", "val", "test"))


def test_cross_validation_folds_keep_copies_together(two_datasets) -> None:
    """data.cv_folds over linked datasets: near-copies share each fold's split, the test split
    is the plain split's, and the folds' validation splits cover train and val once."""
    sources = open_sources(_config(*two_datasets))
    links = link_copies(sources, progress=False)
    fractions = {"train": 0.6, "val": 0.2, "test": 0.2}
    plain = split_jointly(sources, links, fractions, seed=0)
    folds = [split_jointly(sources, links, fractions, seed=0, cv=(3, k)) for k in range(3)]
    for fold in folds:
        check_groups_together(links, fold)
        for a, b in _planted_pairs(sources):
            assert _split_of(fold[0], a) == _split_of(fold[1], b)
        for k in range(len(sources)):
            assert sorted(fold[k]["test"]) == sorted(plain[k]["test"])
    for k in range(len(sources)):
        vals = sorted(i for fold in folds for i in fold[k]["val"])
        assert vals == sorted(plain[k]["train"] + plain[k]["val"])


def test_a_dataset_without_copies_in_the_others_leaves_their_splits_alone(two_datasets) -> None:
    """Adding a dataset that shares no near-copy keeps the linked datasets' splits as they were
    (so models trained before and after it are compared on the same test slices); the new one is
    still split patient-safe in the same proportions."""
    fractions = {"train": 0.6, "val": 0.2, "test": 0.2}
    before = open_sources(_config(*two_datasets))
    parts_before = split_jointly(before, link_copies(before, progress=False), fractions, seed=0)
    config = _config(*two_datasets)
    config.data.sources.append(
        SourceConfig(format="phantoms", options={"n": 30, "size": 64, "seed": 9}))
    after = open_sources(config)
    links = link_copies(after, progress=False)
    assert links.summary()["cross_dataset_groups_by_datasets"] == {
        "brisc#1+class_folders": len(PLANTED)}
    parts_after = split_jointly(after, links, fractions, seed=0)
    check_groups_together(links, parts_after)
    assert parts_after[:2] == parts_before
    assert all(len(parts_after[2][name]) for name in fractions)
    assert sum(len(v) for v in parts_after[2].values()) == 30


def test_splitting_each_dataset_alone_would_leak(two_datasets) -> None:
    """What the joint split prevents: split apart, some copies straddle train and test."""
    sources = open_sources(_config(*two_datasets))
    fractions = {"train": 0.6, "val": 0.2, "test": 0.2}
    straddles = 0
    for seed in range(4):
        alone = [split_records(s.records, fractions, seed=seed) for s in sources]
        straddles += sum(_split_of(alone[0], a) != _split_of(alone[1], b)
                         for a, b in _planted_pairs(sources))
    assert straddles > 0
    with pytest.raises(ValueError, match="near-copies span"):
        check_groups_together(link_copies(sources), alone)


def test_run_folder_records_the_cross_dataset_groups(two_datasets, tmp_path: Path) -> None:
    config = _config(*two_datasets)
    sources = open_sources(config)
    run = tmp_path / "run"
    run.mkdir()
    copies = assign_splits(sources, config, run, reuse=False)
    summary = data_summary(sources, copies)
    assert summary["_near_copies"]["cross_dataset_groups"] == len(PLANTED)
    saved = json.loads((run / "splits.json").read_text())
    assert set(saved) == {"class_folders", "brisc#1"}
    for a, b in _planted_pairs(sources):
        case_a, case_b = sources[0].records[a].case_id, sources[1].records[b].case_id
        side_a = next(n for n, ids in saved["class_folders"]["case_ids"].items() if case_a in ids)
        side_b = next(n for n, ids in saved["brisc#1"]["case_ids"].items() if case_b in ids)
        assert side_a == side_b
    # resuming reads the same splits back, and the counts from data_summary.json
    (run / "data_summary.json").write_text(json.dumps(summary))
    again = open_sources(config)
    assert assign_splits(again, config, run, reuse=True) == copies
    assert [s.splits for s in again] == [s.splits for s in sources]


def test_items_without_an_image_file_are_compared_through_the_adapter() -> None:
    """Phantoms have no file: their pixels come from the adapter (and identical seeds match)."""
    config = Config(data=DataConfig(sources=[
        SourceConfig(format="phantoms", options={"n": 12, "size": 64, "seed": 5}),
        SourceConfig(format="phantoms", options={"n": 12, "size": 64, "seed": 5}),
    ]))
    sources = open_sources(config)
    links = link_copies(sources, progress=False)
    assert links.summary()["cross_dataset_groups"] >= 10  # the same 12 phantoms twice


def test_real_data_copies_across_figshare_br35h_and_brisc(shared_data: Path) -> None:
    roots = {f: shared_data / d for f, d in
             (("figshare", "figshare-cheng"), ("br35h", "br35h"), ("brisc", "brisc2025"))}
    missing = [str(r) for r in roots.values() if not r.is_dir()]
    if missing:
        pytest.skip(f"real data not available: {missing}")
    config = Config(data=DataConfig(sources=[SourceConfig(format=f, root=str(r))
                                             for f, r in roots.items()]))
    sources = open_sources(config)
    links = link_copies(sources, progress=False)
    summary = links.summary()
    print(summary)
    # measured: BRISC holds copies of 92 figshare patient groups and 16 Br35H groups
    by = {"+".join(sorted(n.split("#")[0] for n in key.split("+"))): v
          for key, v in summary["cross_dataset_groups_by_datasets"].items()}
    assert by.get("brisc+figshare", 0) >= 50
    assert by.get("br35h+brisc", 0) >= 5
    assert summary["largest_split_group"] < 300  # copies do not chain into one giant group
    parts = split_jointly(sources, links, config.data.split, seed=0)
    check_groups_together(links, parts)
    for k, source in enumerate(sources):
        total = len(source.records)
        assert 0.1 * total < len(parts[k]["test"]) < 0.25 * total, source.name


@pytest.mark.parametrize("link", [True, False])
def test_run_folder_saves_the_cross_validation_fold(two_datasets, tmp_path: Path, link: bool
                                                    ) -> None:
    """data.cv_folds / cv_fold reach splits.json (the fold's validation patients) and
    data_summary.json, linked or not; a fold count the patients cannot fill is a ConfigError
    naming the dataset, not a traceback."""
    from mtl.config import ConfigError

    saved = []
    for fold in (0, 1):
        config = _config(*two_datasets, link=link)
        config.data.cv_folds, config.data.cv_fold = 2, fold
        sources = open_sources(config)
        run = tmp_path / f"run{int(link)}{fold}"
        run.mkdir()
        copies = assign_splits(sources, config, run, reuse=False)
        assert data_summary(sources, copies, cv=config.data.cv)["_cross_validation"] == {
            "folds": 2, "fold": fold}
        saved.append(json.loads((run / "splits.json").read_text()))
    for name in saved[0]:
        ids = [set(s[name]["case_ids"]["val"]) for s in saved]
        assert ids[0] and ids[1] and not ids[0] & ids[1]
        assert saved[0][name]["case_ids"]["test"] == saved[1][name]["case_ids"]["test"]
        assert ids[0] | ids[1] == set(saved[0][name]["case_ids"]["train"]) | ids[0]
    config = _config(*two_datasets, link=link)
    config.data.cv_folds = 500
    run = tmp_path / f"run{int(link)}-many"
    run.mkdir()
    with pytest.raises(ConfigError, match="into 500 cross-validation folds.*data.cv_folds 500"):
        assign_splits(open_sources(config), config, run, reuse=False)


@pytest.mark.parametrize("link", [True, False])
def test_run_folder_saves_the_refit_split(two_datasets, tmp_path: Path, link: bool) -> None:
    """data.refit reaches splits.json (val empty, its patients in train, test as the plain
    run's) and data_summary.json, linked or not; evaluating such a run's val split is refused
    with a message that says why."""
    from mtl.config import ConfigError
    from mtl.evaluate.evaluation import assign_eval_split

    saved = {}
    for refit in (False, True):
        config = _config(*two_datasets, link=link)
        config.data.refit = refit
        sources = open_sources(config)
        run = tmp_path / f"run{int(link)}{int(refit)}"
        run.mkdir()
        copies = assign_splits(sources, config, run, reuse=False)
        assert ("_refit" in data_summary(sources, copies, refit=config.data.refit)) is refit
        saved[refit] = json.loads((run / "splits.json").read_text())
    for name, entry in saved[True].items():
        plain = saved[False][name]["case_ids"]
        assert plain["val"] and entry["case_ids"]["val"] == []
        assert entry["case_ids"]["test"] == plain["test"]
        assert set(entry["case_ids"]["train"]) == set(plain["train"]) | set(plain["val"])
    source = open_sources(config)[0]
    with pytest.raises(ConfigError, match="trained on its validation patients"):
        assign_eval_split(source, "val", saved[True], config)
    assign_eval_split(source, "test", saved[True], config)
    assert source.splits["test"]


def test_resume_refuses_a_changed_set_of_datasets(two_datasets, tmp_path: Path) -> None:
    from mtl.config import ConfigError

    a, b = two_datasets
    config = _config(a, b)
    run = tmp_path / "run"
    run.mkdir()
    assign_splits(open_sources(config), config, run, reuse=False)
    only_b = Config(data=DataConfig(sources=[SourceConfig(format="brisc", root=str(b))]))
    with pytest.raises(ConfigError, match="cannot change on resume"):
        assign_splits(open_sources(only_b), only_b, run, reuse=True)


def test_evaluation_finds_the_joint_split_however_the_dataset_is_listed(
        two_datasets, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mtl.evaluate.evaluation import assign_eval_split

    a, b = two_datasets
    config = _config(a, b)
    run = tmp_path / "run"
    run.mkdir()
    trained = open_sources(config)
    assign_splits(trained, config, run, reuse=False)
    saved = json.loads((run / "splits.json").read_text())
    # B alone, first in the list (so named "brisc", not "brisc#1") and by a relative path
    monkeypatch.chdir(b.parent)
    alone = Config(data=DataConfig(sources=[SourceConfig(format="brisc", root="b")]))
    (source,) = open_sources(alone)
    how = assign_eval_split(source, "test", saved, alone)
    assert how == "the run's saved split"
    assert sorted(source.records[i].case_id for i in source.splits["test"]) == sorted(
        trained[1].records[i].case_id for i in trained[1].splits["test"])
    # data the run never saw: a fresh split, and the report says what it cannot exclude
    other = Config(data=DataConfig(sources=[SourceConfig(format="class_folders", root="a")]))
    (fresh,) = open_sources(other)
    saved.pop("class_folders")
    assert "copies of its training items are not excluded" in assign_eval_split(
        fresh, "test", saved, other)


def test_train_once_keeps_the_first_sources_item_of_each_copy_group(two_datasets) -> None:
    """data.train_copies: once leaves dataset B's copies of A's slices out of training only."""
    sources = open_sources(_config(*two_datasets))
    links = link_copies(sources, progress=False)
    parts = [{"train": list(range(len(s.records))), "test": []} for s in sources]
    dropped = train_once(links, parts)
    copies_in_b = {b for _, b in _planted_pairs(sources)}
    assert dropped == {"class_folders": 0, "brisc#1": len(PLANTED)}
    assert parts[0]["train"] == list(range(len(sources[0].records)))  # the originals all train
    assert set(parts[1]["train"]) == set(range(len(sources[1].records))) - copies_in_b
    # a copy whose original is not in training (another split) still trains
    a, b = _planted_pairs(sources)[0]
    parts = [{"train": [i for i in range(len(sources[0].records)) if i != a], "val": [a]},
             {"train": list(range(len(sources[1].records)))}]
    assert train_once(links, parts)["brisc#1"] == len(PLANTED) - 1 and b in parts[1]["train"]


def test_train_copies_once_through_assign_splits(two_datasets, tmp_path: Path) -> None:
    """The run's splits: training loses B's copies, val and test are those of 'all', the count
    is in data_summary.json, and a resumed run reads the same splits back."""
    runs = {}
    for mode in ("all", "once"):
        config = _config(*two_datasets)
        config.data.train_copies = mode
        sources = open_sources(config)
        run = tmp_path / mode
        run.mkdir()
        copies = assign_splits(sources, config, run, reuse=False)
        runs[mode] = (config, sources, copies, run)
    _, all_sources, all_copies, _ = runs["all"]
    config, sources, copies, run = runs["once"]
    assert "left_out_of_training" not in all_copies
    trained_copies = [b for a, b in _planted_pairs(all_sources)
                      if b in all_sources[1].splits["train"]]
    assert trained_copies  # the check below is not empty
    assert copies["left_out_of_training"] == {"class_folders": 0, "brisc#1": len(trained_copies)}
    assert not set(trained_copies) & set(sources[1].splits["train"])
    for once, every in zip(sources, all_sources):
        assert once.splits["val"] == every.splits["val"]
        assert once.splits["test"] == every.splits["test"]
    assert sources[0].splits["train"] == all_sources[0].splits["train"]
    summary = data_summary(sources, copies)
    assert summary["brisc#1"]["splits"]["train"]["items"] == (
        len(all_sources[1].splits["train"]) - len(trained_copies))
    (run / "data_summary.json").write_text(json.dumps(summary))
    again = open_sources(config)
    assert assign_splits(again, config, run, reuse=True) == copies
    assert [s.splits for s in again] == [s.splits for s in sources]


@pytest.mark.parametrize("changes, message", [
    ({"train_copies": "sometimes"}, "data.train_copies must be"),
    ({"train_copies": "once", "link_copies": False}, "needs data.link_copies"),
])
def test_train_copies_settings_are_checked(changes, message) -> None:
    from mtl.config import ConfigError

    data = DataConfig(sources=[SourceConfig(format="phantoms")], **changes)
    with pytest.raises(ConfigError, match=message):
        Config(data=data).validate()
