"""Patient-safe, stratified train/val/test splits of adapter records.

Records are grouped by ``Record.patient_id`` so that no patient (or patient block, or image
group, as each adapter defines it) appears in two splits, and stratified by ``Record.stratum`` so
that every split sees every class in about the same proportion. The groups are dealt into many
small folds with scikit-learn's ``StratifiedGroupKFold`` and the folds are then handed out to the
splits in proportion to ``fractions``; with few groups the proportions are only approximate, but
the patient separation always holds.

With ``cv=(folds, fold)`` (``data.cv_folds`` / ``data.cv_fold``) the patients of the train and
val splits are dealt again into ``folds`` patient-safe, stratified folds: fold ``fold`` is the
validation split and the others train (:func:`cross_validation_fold`). The test split stays as
it was, so the folds' models are all tested on the same patients, and their validation splits
together hold every other patient exactly once (out-of-fold predictions).

Splits are saved as case ids per split in a run folder's ``splits.json``
(:func:`mtl.runfolder.splits_entry`, :meth:`mtl.runfolder.RunFolder.read_splits`);
:func:`match_case_ids` turns them back into indices.
"""

from __future__ import annotations

import warnings
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

from mtl.data.adapters.base import Record

DEFAULT_FRACTIONS: dict[str, float] = {"train": 0.7, "val": 0.15, "test": 0.15}
#: most folds the groups are dealt into (finer fractions cost scan time, not accuracy)
MAX_FOLDS = 40
#: a fold count whose fractions are this close to the requested ones is good enough
FRACTION_TOLERANCE = 0.01


def _check_fractions(fractions: Mapping[str, float]) -> dict[str, float]:
    fractions = {str(k): float(v) for k, v in fractions.items()}
    if not fractions or any(v < 0 for v in fractions.values()):
        raise ValueError(f"fractions must be non-negative, got {fractions}")
    if abs(sum(fractions.values()) - 1.0) > 1e-6:
        total = sum(fractions.values())
        raise ValueError(f"fractions must sum to 1, got {fractions} (sum {total:g})")
    return fractions


def allocate_folds(fractions: Mapping[str, float], n_folds: int) -> dict[str, int]:
    """Folds per split: largest-remainder rounding of ``fraction * n_folds``, at least one fold
    for every split with a positive fraction (so needs ``n_folds`` >= number of such splits)."""
    active = [name for name, f in fractions.items() if f > 0]
    counts = {name: 1 for name in active}
    for _ in range(n_folds - len(active)):
        # give the next fold to the split furthest below its share
        name = max(active, key=lambda n: fractions[n] * n_folds - counts[n])
        counts[name] += 1
    return {name: counts.get(name, 0) for name in fractions}


def choose_n_folds(fractions: Mapping[str, float], n_groups: int) -> int:
    """Smallest fold count that meets the fractions within FRACTION_TOLERANCE, else the best."""
    n_active = sum(1 for f in fractions.values() if f > 0)
    best, best_error = n_active, float("inf")
    for n in range(max(n_active, 2), max(min(n_groups, MAX_FOLDS), 2) + 1):
        counts = allocate_folds(fractions, n)
        error = max(abs(counts[k] / n - f) for k, f in fractions.items())
        if error <= FRACTION_TOLERANCE:
            return n
        if error < best_error - 1e-12:
            best, best_error = n, error
    return best


def _fold_of_each_record(
    records: Sequence[Record], n_folds: int, seed: int, stratify: bool = True
) -> np.ndarray:
    groups = np.array([r.patient_id for r in records], dtype=object)
    strata = np.array([r.stratum for r in records], dtype=object)
    folds = np.empty(len(records), dtype=int)
    splitter = (
        StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        if stratify
        else GroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    )
    with warnings.catch_warnings():
        # "The least populated class in y has only k members": expected with rare classes
        warnings.simplefilter("ignore", UserWarning)
        parts = splitter.split(np.zeros(len(records)), strata, groups)
        for fold, (_, test_index) in enumerate(parts):
            folds[test_index] = fold
    return folds


def split_records(
    records: Sequence[Record],
    fractions: Mapping[str, float] | None = None,
    seed: int = 0,
    cv: tuple[int, int] | None = None,
    refit: bool = False,
) -> dict[str, list[int]]:
    """Split records into named parts by patient, stratified: {split name: sorted indices}.

    ``fractions`` (default 0.7 / 0.15 / 0.15 train / val / test) must sum to 1; a split with
    fraction 0 comes back empty. The result depends only on the records (and their order),
    ``seed``, ``cv`` (``(folds, fold)``: :func:`cross_validation_fold` of the result) and
    ``refit`` (:func:`refit_split` of the result). Raises ValueError when there are fewer
    patient groups than non-empty splits.
    """
    splits = _split_by_fractions(records, fractions, seed)
    if cv is not None:
        splits = cross_validation_fold(records, splits, *cv, seed=seed)
    return refit_split(splits) if refit else splits


def refit_split(splits: Mapping[str, Sequence[int]]) -> dict[str, list[int]]:
    """``data.refit``: the ``val`` split's items join ``train`` and ``val`` is left empty;
    every other split (``test``) is kept as it is, so a model refit on all non-test patients
    is tested on the same patients as the models its choices were made with."""
    result = {name: sorted(int(i) for i in indices) for name, indices in splits.items()}
    result["train"] = sorted(result.get("train", []) + result.get("val", []))
    result["val"] = []
    return result


def _split_by_fractions(
    records: Sequence[Record], fractions: Mapping[str, float] | None, seed: int
) -> dict[str, list[int]]:
    fractions = _check_fractions(DEFAULT_FRACTIONS if fractions is None else fractions)
    active = [name for name, f in fractions.items() if f > 0]
    n_groups = len({r.patient_id for r in records})
    if n_groups < len(active):
        raise ValueError(
            f"cannot split {n_groups} patient group(s) into {len(active)} non-empty splits"
        )
    if len(active) == 1:
        return {name: list(range(len(records))) if name in active else [] for name in fractions}
    # StratifiedGroupKFold refuses more folds than the largest stratum has members
    largest_stratum = max(Counter(r.stratum for r in records).values())
    n_folds = choose_n_folds(fractions, min(n_groups, max(largest_stratum, len(active))))
    folds = _fold_of_each_record(records, n_folds, seed, stratify=largest_stratum >= n_folds)
    fold_order = np.random.default_rng(seed).permutation(n_folds)
    split_of_fold: dict[int, str] = {}
    position = 0
    for name, count in allocate_folds(fractions, n_folds).items():
        for fold in fold_order[position : position + count]:
            split_of_fold[int(fold)] = name
        position += count
    result: dict[str, list[int]] = {name: [] for name in fractions}
    for index, fold in enumerate(folds):
        result[split_of_fold[int(fold)]].append(index)
    return _fill_empty_splits(records, result, active)


def cross_validation_fold(
    records: Sequence[Record], splits: Mapping[str, Sequence[int]], folds: int, fold: int,
    seed: int = 0,
) -> dict[str, list[int]]:
    """Fold ``fold`` of ``folds``-fold cross-validation inside ``splits``: the patients of its
    ``train`` and ``val`` splits dealt into ``folds`` patient-safe folds, stratified as
    :func:`split_records` deals them; fold ``fold`` becomes ``val``, the others ``train``, and
    every other split (``test``) is kept as it is. The folds of one ``seed`` never overlap and
    together cover the train and val patients. Raises ValueError for a fold out of range or
    fewer patient groups than folds."""
    if folds < 2 or not 0 <= fold < folds:
        raise ValueError(f"cross-validation fold {fold} of {folds}: needs folds >= 2 and "
                         f"0 <= fold < folds")
    pool = sorted(int(i) for name in ("train", "val") for i in splits.get(name, []))
    members = [records[i] for i in pool]
    n_groups = len({r.patient_id for r in members})
    if n_groups < folds:
        raise ValueError(f"cannot deal {n_groups} patient group(s) of the train and val splits "
                         f"into {folds} cross-validation folds")
    largest_stratum = max(Counter(r.stratum for r in members).values())
    fold_of = _fold_of_each_record(members, folds, seed, stratify=largest_stratum >= folds)
    # a fold left empty gets a group, the same whichever fold validates (so they still cover
    # the pool once); positions into ``members``
    parts = _fill_empty_splits(
        members, {f: [j for j, g in enumerate(fold_of) if g == f] for f in range(folds)},
        list(range(folds)))
    result = {name: sorted(int(i) for i in indices) for name, indices in splits.items()}
    result["val"] = sorted(pool[j] for j in parts[fold])
    result["train"] = sorted(pool[j] for f, js in parts.items() if f != fold for j in js)
    return result


def _fill_empty_splits(
    records: Sequence[Record], result: dict[Any, list[int]], active: list[Any]
) -> dict[Any, list[int]]:
    """Give each empty active split the smallest patient group of the split with most groups.

    StratifiedGroupKFold may leave a fold empty when there are very few groups.
    """
    for name in active:
        if result[name]:
            continue
        groups_of = {
            split: Counter(records[i].patient_id for i in indices)
            for split, indices in result.items()
        }
        donor = max(result, key=lambda split: len(groups_of[split]))
        smallest = min(groups_of[donor].items(), key=lambda item: (item[1], item[0]))[0]
        result[name] = [i for i in result[donor] if records[i].patient_id == smallest]
        result[donor] = [i for i in result[donor] if records[i].patient_id != smallest]
    return result


def check_no_leak(records: Sequence[Record], splits: Mapping[str, Sequence[int]]) -> None:
    """Raise ValueError if a patient, or a record, appears in more than one split."""
    splits_of_patient: dict[str, set[str]] = defaultdict(set)
    split_of_index: dict[int, str] = {}
    problems: list[str] = []
    for name, indices in splits.items():
        for index in indices:
            if not 0 <= index < len(records):
                raise ValueError(
                    f"split {name!r} has index {index}, but there are {len(records)} records"
                )
            if index in split_of_index and split_of_index[index] != name:
                problems.append(
                    f"record {records[index].case_id!r} in {split_of_index[index]!r} and {name!r}"
                )
            split_of_index[index] = name
            splits_of_patient[records[index].patient_id].add(name)
    leaked = {p: sorted(s) for p, s in splits_of_patient.items() if len(s) > 1}
    problems.extend(f"patient {p!r} in {', '.join(s)}" for p, s in sorted(leaked.items()))
    if problems:
        shown = "; ".join(problems[:20])
        if len(problems) > 20:
            shown += f"; ... ({len(problems)} in all)"
        raise ValueError(f"splits leak {len(leaked)} patient(s): {shown}")


def indices_for_case_ids(
    records: Sequence[Record], case_splits: Mapping[str, Sequence[str]]
) -> dict[str, list[int]]:
    """Turn {split: case ids} (a splits.json entry's ``case_ids``) back into indices into
    ``records``.

    Raises ValueError naming case ids that are not among the records.
    """
    indices, missing = match_case_ids(records, case_splits)
    if missing:
        raise ValueError(
            f"{len(missing)} case id(s) of the splits are not in the records, e.g. {missing[:5]}"
        )
    return indices


def match_case_ids(
    records: Sequence[Record], case_splits: Mapping[str, Sequence[str]]
) -> tuple[dict[str, list[int]], list[str]]:
    """({split: indices of the case ids found}, [case ids not among the records])."""
    index_of = {r.case_id: i for i, r in enumerate(records)}
    missing = [c for ids in case_splits.values() for c in ids if c not in index_of]
    found = {name: sorted(index_of[c] for c in ids if c in index_of)
             for name, ids in case_splits.items()}
    return found, missing
