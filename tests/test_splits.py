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
    indices_for_case_ids,
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
