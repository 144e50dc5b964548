"""Patient-safe stratified splits."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest

from mtl.data.adapters.base import Record
from mtl.data.splits import (
    allocate_folds,
    check_no_leak,
    cross_validation_fold,
    indices_for_case_ids,
    refit_split,
    split_records,
)
from mtl.runfolder import RunFolder, splits_entry


def make_records(
    n_patients: int, seed: int = 0, labels: tuple[str, ...] = ("a", "a", "a", "b", "c")
) -> list[Record]:
    """Patients with 1-6 slices each, one label per patient."""
    rng = random.Random(seed)
    records = []
    for p in range(n_patients):
        label = rng.choice(labels)
        for k in range(rng.randint(1, 6)):
            records.append(
                Record(
                    case_id=f"p{p}-s{k}",
                    patient_id=f"p{p}",
                    presence=1 if label != "no_tumor" else 0,
                    label=label,
                    has_mask=False,
                )
            )
    return records


def assert_partition(records: list[Record], splits: dict[str, list[int]]) -> None:
    every = sorted(i for indices in splits.values() for i in indices)
    assert every == list(range(len(records)))
    check_no_leak(records, splits)


def test_split_is_a_patient_safe_partition() -> None:
    records = make_records(200)
    splits = split_records(records, seed=0)
    assert list(splits) == ["train", "val", "test"]
    assert_partition(records, splits)
    share = {name: len(v) / len(records) for name, v in splits.items()}
    assert share["train"] == pytest.approx(0.7, abs=0.05)
    assert share["val"] == pytest.approx(0.15, abs=0.04)
    assert share["test"] == pytest.approx(0.15, abs=0.04)


def test_split_is_stratified() -> None:
    records = make_records(300, labels=("a", "a", "a", "b", "c", "no_tumor"))
    splits = split_records(records, seed=1)
    overall = Counter(r.stratum for r in records)
    for name, indices in splits.items():
        counts = Counter(records[i].stratum for i in indices)
        for stratum, total in overall.items():
            share = counts[stratum] / len(indices)
            assert share == pytest.approx(total / len(records), abs=0.06), (name, stratum)


def test_split_is_deterministic_by_seed() -> None:
    records = make_records(80)
    assert split_records(records, seed=3) == split_records(records, seed=3)
    assert split_records(records, seed=3) != split_records(records, seed=4)


@pytest.mark.parametrize("n_patients", [3, 4, 5, 6, 7, 9, 12])
@pytest.mark.parametrize("seed", range(8))
def test_few_groups_still_fill_every_split(n_patients: int, seed: int) -> None:
    records = make_records(n_patients, seed=seed)
    splits = split_records(records, seed=seed)
    assert_partition(records, splits)
    assert all(splits.values()), {k: len(v) for k, v in splits.items()}


def test_rare_stratum_with_one_group() -> None:
    records = make_records(40, labels=("a", "b"))
    rare = Record(case_id="rare", patient_id="rare-p", presence=1, label="rare", has_mask=False)
    records.append(rare)
    assert_partition(records, split_records(records, seed=0))


def test_custom_and_zero_fractions() -> None:
    records = make_records(50)
    splits = split_records(records, {"train": 0.8, "val": 0.0, "test": 0.2}, seed=0)
    assert splits["val"] == [] and splits["train"] and splits["test"]
    assert_partition(records, splits)
    only = split_records(records, {"all": 1.0})
    assert only == {"all": list(range(len(records)))}


def test_bad_fractions_and_too_few_patients() -> None:
    records = make_records(10)
    with pytest.raises(ValueError, match="sum to 1"):
        split_records(records, {"train": 0.7, "test": 0.2})
    with pytest.raises(ValueError, match="non-negative"):
        split_records(records, {"train": 1.2, "test": -0.2})
    two = [r for r in records if r.patient_id in ("p0", "p1")]
    with pytest.raises(ValueError, match="2 patient group"):
        split_records(two)


def test_allocate_folds() -> None:
    default = {"train": 0.7, "val": 0.15, "test": 0.15}
    assert allocate_folds(default, 20) == {"train": 14, "val": 3, "test": 3}
    assert allocate_folds(default, 3) == {"train": 1, "val": 1, "test": 1}
    no_val = {"train": 0.9, "val": 0.0, "test": 0.1}
    assert allocate_folds(no_val, 4) == {"train": 3, "val": 0, "test": 1}


def test_check_no_leak_names_leaked_patients() -> None:
    records = [
        Record(case_id=f"{p}-s{k}", patient_id=p, presence=1, label="a", has_mask=False)
        for p, n in (("p0", 3), ("p1", 2))
        for k in range(n)
    ]
    with pytest.raises(ValueError, match=r"leak 1 patient.*'p0' in test, train"):
        check_no_leak(records, {"train": [0, 3, 4], "test": [1, 2]})
    with pytest.raises(ValueError, match="record 'p1-s0' in 'train' and 'test'"):
        check_no_leak(records, {"train": [0, 1, 2, 3, 4], "test": [3]})
    with pytest.raises(ValueError, match="index 999"):
        check_no_leak(records, {"train": [999]})


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    """splits.json in the one format a run folder has (what ``mtl train`` writes)."""
    records = make_records(30)
    splits = split_records(records, seed=0)
    folder = RunFolder.create(tmp_path, "out")
    path = folder.write_splits({"toy": splits_entry("toy", "data/toy", records, splits)})
    content = json.loads(path.read_text())
    assert (content["toy"]["format"], content["toy"]["root"]) == ("toy", "data/toy")
    for name, indices in splits.items():
        assert len(content["toy"]["case_ids"][name]) == len(indices)
        assert content["toy"]["patients"][name] == len({records[i].patient_id for i in indices})
    loaded = folder.read_splits()["toy"]["case_ids"]
    assert loaded == {name: [records[i].case_id for i in v] for name, v in splits.items()}
    assert indices_for_case_ids(records, loaded) == splits


def test_save_refuses_leaks_and_load_rejects_junk(tmp_path: Path) -> None:
    records = make_records(5, seed=2)
    with pytest.raises(ValueError, match="leak"):
        splits_entry("toy", None, records, {"train": [0, 1], "test": [0]})
    (tmp_path / "splits.json").write_text('{"hello": 1}')
    with pytest.raises(ValueError, match="not a splits file"):
        RunFolder(tmp_path).read_splits()
    with pytest.raises(ValueError, match="not in the records"):
        indices_for_case_ids(records, {"train": ["nope"]})


def test_small_datasets_with_thin_strata_still_split():
    """Fewer members per class than folds: falls back without leaking (30 phantoms, 4 classes)."""
    from mtl.data.adapters.phantoms import PhantomAdapter

    records = PhantomAdapter(None, n=30, size=32).records()
    for seed in range(5):
        splits = split_records(records, {"train": 0.6, "val": 0.2, "test": 0.2}, seed=seed)
        check_no_leak(records, splits)
        assert all(splits[k] for k in ("train", "val", "test"))
        assert sorted(i for v in splits.values() for i in v) == list(range(30))
    tiny = records[:3]
    splits = split_records(tiny, {"train": 0.4, "val": 0.3, "test": 0.3})
    assert sorted(len(v) for v in splits.values()) == [1, 1, 1]


@pytest.mark.parametrize("seed", [0, 3])
def test_cross_validation_folds_keep_the_test_split_and_cover_the_rest_once(seed: int) -> None:
    """data.cv_folds: every fold has the same test split as the plain split; the folds'
    validation splits are patient-safe, disjoint, and together hold every train and val item
    exactly once; each fold's training split is the rest; stratified like the plain split."""
    records = make_records(60, seed=seed)
    fractions = {"train": 0.7, "val": 0.1, "test": 0.2}
    plain = split_records(records, fractions, seed=seed)
    folds = [split_records(records, fractions, seed=seed, cv=(5, k)) for k in range(5)]
    pool = sorted(plain["train"] + plain["val"])
    for fold in folds:
        assert fold["test"] == sorted(plain["test"])
        check_no_leak(records, fold)
        assert sorted(fold["train"] + fold["val"]) == pool
        assert fold["val"] and len({records[i].patient_id for i in fold["val"]}) >= 6
    vals = [i for fold in folds for i in fold["val"]]
    assert sorted(vals) == pool  # each train/val item is validated on exactly once
    # stratified: every fold's validation split sees the rare labels too
    for label in ("b", "c"):
        assert all(any(records[i].label == label for i in fold["val"]) for fold in folds), label
    # the same fold again: the same split
    assert split_records(records, fractions, seed=seed, cv=(5, 2)) == folds[2]


def test_no_cross_validation_fold_is_left_empty() -> None:
    """With about as many patient groups as folds StratifiedGroupKFold can leave a fold empty
    (five groups of 5, 28, 1, 10 and 2 slices into five folds): every fold still validates on
    one group, and the folds still cover the pool once."""
    records = [Record(case_id=f"p{g}-{k}", patient_id=f"p{g}", presence=1, label=label,
                      has_mask=False)
               for g, (n, label) in enumerate(zip((5, 28, 1, 10, 2), "caaac")) for k in range(n)]
    splits = {"train": list(range(len(records))), "val": [], "test": []}
    vals = [cross_validation_fold(records, splits, 5, k)["val"] for k in range(5)]
    assert all(vals)
    assert sorted(i for v in vals for i in v) == list(range(len(records)))


def test_evaluate_and_leak_checks_follow_the_cross_validation_fold(tmp_path: Path) -> None:
    """A split recomputed for evaluation is the fold's; a fold's model is refused on another
    fold's validation split (it trained there) and accepted on the shared test split."""
    from types import SimpleNamespace

    from mtl.config import load_config
    from mtl.evaluate.evaluation import assign_eval_split
    from mtl.model.warm_start import used_held_out

    records = make_records(40)
    config = load_config(overrides=["data.cv_folds=4", "data.cv_fold=1",
                                    "data.split={train: 0.7, val: 0.1, test: 0.2}"])
    source = SimpleNamespace(name="phantoms", records=records, splits={},
                             config=SimpleNamespace(format="phantoms", root=None))
    assign_eval_split(source, "val", {}, config)
    assert source.splits == split_records(records, config.data.split, cv=(4, 1))
    member = tmp_path / "fold0"
    member.mkdir()
    fold0 = split_records(records, config.data.split, cv=(4, 0))
    RunFolder(member).write_splits({"phantoms": splits_entry("phantoms", None, records, fold0)})
    kw = {"what": "member", "against": "here"}
    leaked = used_held_out(member / "best.keras", [source], ("val",), ("train", "val"), **kw)
    assert leaked and all(x.endswith("(val)") for x in leaked)
    assert used_held_out(member / "best.keras", [source], ("test",), ("train", "val"), **kw) == []


def test_cross_validation_refuses_bad_folds_and_too_few_patients() -> None:
    records = make_records(4)
    splits = split_records(records, {"train": 0.5, "val": 0.25, "test": 0.25})
    with pytest.raises(ValueError, match="needs folds >= 2"):
        cross_validation_fold(records, splits, 3, 3)
    with pytest.raises(ValueError, match="into 5 cross-validation folds"):
        cross_validation_fold(records, splits, 5, 0)


@pytest.mark.parametrize("seed", [0, 3])
def test_refit_trains_on_the_val_patients_and_keeps_the_test_split(seed: int) -> None:
    """data.refit: the plain split's val items join train, val is empty, test is untouched,
    and no patient is in two splits."""
    records = make_records(60, seed=seed)
    fractions = {"train": 0.7, "val": 0.1, "test": 0.2}
    plain = split_records(records, fractions, seed=seed)
    refit = split_records(records, fractions, seed=seed, refit=True)
    assert plain["val"] and refit["val"] == []
    assert refit["test"] == sorted(plain["test"])
    assert refit["train"] == sorted(plain["train"] + plain["val"])
    check_no_leak(records, refit)
    assert refit_split(plain) == refit
    assert refit_split({"train": [3, 1], "val": [2]}) == {"train": [1, 2, 3], "val": []}


def test_patient_groups_counts_each_sources_patients_in_one_split() -> None:
    """The log line of data.refit and data.cv_folds: distinct patient groups, not items."""
    from types import SimpleNamespace

    from mtl.train import patient_groups

    a = SimpleNamespace(name="a", records=make_records(12, seed=1))
    b = SimpleNamespace(name="b", records=make_records(9, seed=2))
    for source in (a, b):
        source.splits = split_records(source.records, {"train": 0.6, "val": 0.2, "test": 0.2},
                                      seed=0, refit=True)
    line = patient_groups([a, b], "train", "training")
    counts = [len({s.records[i].patient_id for i in s.splits["train"]}) for s in (a, b)]
    assert line == (f"a: {counts[0]} training patient group(s); "
                    f"b: {counts[1]} training patient group(s)")
    assert counts[0] < len(a.splits["train"])  # patients with several slices count once
    assert patient_groups([a], "val", "validation") == "a: 0 validation patient group(s)"


def test_lgg_cross_validation_folds_on_the_real_set() -> None:
    """experiments/lgg_grade.yaml with data.cv_folds=5 on TCGA-LGG: the 23 test patients stay,
    and the five validation splits hold the other 87 patients once; data.refit trains on those
    87 (README -> Cross-validation quotes the sizes printed here)."""
    from mtl.config import load_config
    from mtl.data.pipeline import open_sources

    repo = Path(__file__).resolve().parents[1]
    if not (repo / "data" / "lgg" / "kaggle_3m").is_dir():
        pytest.skip("real data not available: data/lgg/kaggle_3m (TCGA-LGG, README -> Grade on "
                    "TCGA-LGG says where to get it)")
    config = load_config(repo / "experiments" / "lgg_grade.yaml",
                         overrides=[f"data.sources=[{{format: lgg, root: {repo / 'data' / 'lgg'}, "
                                    "options: {label_from: grade}}]"])
    source = open_sources(config)[0]
    records = source.records

    def patients(indices) -> set[str]:
        return {records[i].patient_id for i in indices}

    plain = split_records(records, config.data.split, seed=config.seed)
    seen: set[str] = set()
    for k in range(5):
        fold = split_records(records, config.data.split, seed=config.seed, cv=(5, k))
        assert fold["test"] == sorted(plain["test"]) and len(patients(fold["test"])) == 23
        val = patients(fold["val"])
        tumor = sum(records[i].presence == 1 for i in fold["val"])
        print(f"fold {k}: {len(val)} validation patients, {len(fold['val'])} slices, "
              f"{tumor} with tumor")
        assert 15 <= len(val) <= 19 and not val & seen
        seen |= val
    assert len(seen) == 87 and seen == patients(plain["train"] + plain["val"])
    refit = split_records(records, config.data.split, seed=config.seed, refit=True)
    print(f"refit: train {len(refit['train'])} slices / {len(patients(refit['train']))} "
          f"patients (plain: {len(patients(plain['train']))}), test {len(refit['test'])} / "
          f"{len(patients(refit['test']))}")
    # README -> Grade on TCGA-LGG: "87 training patients instead of 77, the same 23 to test on"
    assert refit["test"] == sorted(plain["test"]) and refit["val"] == []
    assert len(patients(plain["train"])) == 77 and len(patients(refit["train"])) == 87
    assert (len(refit["train"]), len(refit["test"])) == (3115, 814)
