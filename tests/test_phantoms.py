"""Tests for the synthetic phantom dataset (mtl.data.adapters.phantoms)."""

from __future__ import annotations

import time

import numpy as np
import pytest
from scipy import ndimage

from mtl.data.adapters import Record, get_adapter
from mtl.data.adapters.phantoms import (
    FOV_MM,
    KINDS,
    PhantomAdapter,
    phantom_samples,
    render_phantom,
)
from mtl.data.sample import NO_TUMOR, labelled_tasks


@pytest.fixture(scope="module")
def samples():
    return phantom_samples(60, size=128, seed=0)


@pytest.fixture(scope="module")
def by_kind():
    """30 renders of each kind at 128 px (indices 0..29, seed 3)."""
    return {k: [render_phantom(3, i, 128, k) for i in range(30)] for k in KINDS}


# ---- adapter and records ---------------------------------------------------------------------


def test_registry_builds_adapter_without_root():
    adapter = get_adapter("phantoms", None, n=10)
    assert isinstance(adapter, PhantomAdapter)
    assert adapter.name == "phantoms" and adapter.summary
    assert len(adapter) == 10
    sample = adapter.load(adapter.records()[0])
    assert sample["image"].shape == (128, 128)


def test_records_fields_and_determinism():
    recs = PhantomAdapter(n=20, seed=4).records()
    assert [r.case_id for r in recs] == [f"phantom-{i:05d}" for i in range(20)]
    for r in recs:
        assert isinstance(r, Record)
        assert r.patient_id == r.case_id
        assert r.has_mask and r.source == "phantoms"
        assert r.presence == int(r.label != NO_TUMOR)
        assert r.label in KINDS + (NO_TUMOR,)
    # Deterministic, and independent of n: a shorter dataset is a prefix of a longer one.
    again = PhantomAdapter(n=10, seed=4).records()
    assert [(r.case_id, r.label) for r in again] == [(r.case_id, r.label) for r in recs[:10]]
    other = PhantomAdapter(n=20, seed=5).records()
    assert [r.label for r in other] != [r.label for r in recs]


def test_load_is_deterministic_and_seed_dependent():
    a = PhantomAdapter(n=4, seed=1)
    b = PhantomAdapter(n=4, seed=2)
    for ra, rb in zip(a.records(), b.records()):
        s1, s2 = a.load(ra), a.load(ra)
        np.testing.assert_array_equal(s1["image"], s2["image"])
        np.testing.assert_array_equal(s1["mask"], s2["mask"])
        assert not np.array_equal(s1["image"], b.load(rb)["image"])


def test_global_rng_untouched():
    state = np.random.get_state()[1].copy()
    phantom_samples(3, seed=0)
    np.testing.assert_array_equal(np.random.get_state()[1], state)


def test_sample_contract(samples):
    assert len(samples) == 60
    for s in samples:
        img, mask = s["image"], s["mask"]
        assert img.shape == (128, 128) and img.dtype == np.float32
        assert mask.shape == (128, 128) and mask.dtype == np.uint8
        assert 0.0 <= img.min() and img.max() <= 1.0 and img.max() > 0.5
        assert set(np.unique(mask)) <= {0, 1}
        assert all(labelled_tasks(s).values())
        meta = s["meta"]
        assert meta["dataset"] == "phantoms" and meta["source"] == "phantoms"
        assert meta["patient_id"] == s["case_id"]
        assert meta["spacing"] == pytest.approx((FOV_MM / 128, FOV_MM / 128))
        assert meta["seed"] == 0 and meta["index"] == int(s["case_id"].split("-")[1])


def test_labels_presence_and_masks(samples):
    labels = {s["label"] for s in samples}
    assert labels == set(KINDS) | {NO_TUMOR}  # every class appears in 60 samples
    for s in samples:
        if s["label"] == NO_TUMOR:
            assert s["presence"] == 0 and s["mask"].sum() == 0
        else:
            assert s["presence"] == 1 and s["mask"].sum() > 0
    n_tumor = sum(s["presence"] for s in samples)
    assert 30 <= n_tumor <= 57  # about 75% of 60


def test_class_subset_and_fraction():
    only = phantom_samples(12, seed=0, classes=("pituitary",), tumor_fraction=1.0)
    assert {s["label"] for s in only} == {"pituitary"}
    healthy = PhantomAdapter(n=12, tumor_fraction=0.0).records()
    assert {r.label for r in healthy} == {NO_TUMOR}


@pytest.mark.parametrize(
    "kw",
    [dict(classes=("astrocytoma",)), dict(classes=()), dict(n=0), dict(size=8),
     dict(seed=-1), dict(tumor_fraction=1.5), dict(on_error="ignore")],
)
def test_bad_options_raise(kw):
    with pytest.raises(ValueError):
        PhantomAdapter(**kw)


@pytest.mark.parametrize("size", [96, 200, 512])
def test_other_sizes(size):
    s = phantom_samples(2, size=size, seed=0, tumor_fraction=1.0)[1]
    assert s["image"].shape == s["mask"].shape == (size, size)
    assert s["mask"].sum() > 0


def test_anatomy_does_not_depend_on_kind_or_size():
    # The same (seed, index) draws the same head whatever the tumor and the size.
    healthy = render_phantom(0, 5, 128, NO_TUMOR)
    glioma = render_phantom(0, 5, 128, "glioma")
    np.testing.assert_array_equal(healthy.head, glioma.head)
    outside = ~ndimage.binary_dilation(glioma.mask.astype(bool), iterations=12)
    assert np.abs(healthy.image - glioma.image)[outside].max() < 1e-6
    big = render_phantom(0, 5, 256, NO_TUMOR)
    assert abs(big.head.mean() - healthy.head.mean()) < 0.01


# ---- per-kind geometry ------------------------------------------------------------------------


def test_masks_inside_head_with_plausible_area(by_kind):
    for kind, items in by_kind.items():
        for p in items:
            m = p.mask.astype(bool)
            assert m.any(), kind
            assert not (m & ~p.head).any(), kind
            assert 0.004 <= m.mean() <= 0.08, (kind, m.mean())


def test_glioma_is_intra_axial_and_larger_than_pituitary(by_kind):
    for p in by_kind["glioma"]:
        grown = ndimage.binary_dilation(p.mask.astype(bool), iterations=1)
        assert not (grown & ~p.brain).any()  # surrounded by brain on all sides
    glioma_area = np.mean([p.mask.mean() for p in by_kind["glioma"]])
    pituitary_area = np.mean([p.mask.mean() for p in by_kind["pituitary"]])
    assert glioma_area > 1.5 * pituitary_area


def test_glioma_has_ring_enhancement(by_kind):
    # The rim (mask minus its eroded interior) is brighter than the core.
    for p in by_kind["glioma"][:10]:
        m = p.mask.astype(bool)
        core = ndimage.binary_erosion(m, iterations=3)
        if core.sum() < 5:
            continue
        rim = m & ~ndimage.binary_erosion(m, iterations=1)
        assert p.image[rim].mean() > p.image[core].mean() + 0.15


def test_meningioma_is_attached_to_skull(by_kind):
    for p in by_kind["meningioma"]:
        m = p.mask.astype(bool)
        # It straddles the brain surface: part in the extra-axial space, part pressing in.
        assert (m & ~p.brain).any() and (m & p.brain).any()
        # And it lies next to the edge of the head.
        dist_to_outside = ndimage.distance_transform_edt(p.head)
        assert dist_to_outside[m].min() < 0.08 * 128


def test_pituitary_on_midline_below_centre(by_kind):
    for p in by_kind["pituitary"]:
        rows, cols = np.nonzero(p.mask)
        assert abs(cols.mean() - 64) < 0.1 * 128
        assert rows.mean() > 64 + 0.05 * 128
        assert p.mask.mean() < 0.015  # small


# ---- speed ------------------------------------------------------------------------------------


def test_generation_is_fast():
    adapter = PhantomAdapter(n=50, size=128, seed=9)
    recs = adapter.records()
    adapter.load(recs[0])  # warm-up (imports, caches)
    # CPU time of this process: other jobs on a shared machine do not count against it
    t0 = time.process_time()
    for r in recs:
        adapter.load(r)
    per_sample = (time.process_time() - t0) / len(recs)
    assert per_sample < 0.020, f"{per_sample * 1000:.1f} ms per 128x128 sample"
