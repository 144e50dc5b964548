"""Patient groups from slice runs (figshare JPEG) and near-duplicate images (Br35H)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from mtl.data.grouping import (
    box_jumps,
    cache_dir,
    consecutive_similarity,
    duplicate_groups,
    estimate_straddles,
    fixed_blocks,
    image_features,
    patient_blocks,
)


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("MTL_CACHE_DIR", str(folder))
    return folder


# --- synthetic slice runs -----------------------------------------------------------------------


def box(xc: float, yc: float, w: float, h: float) -> tuple[float, float, float, float]:
    return (xc - w / 2, yc - h / 2, xc + w / 2, yc + h / 2)


def synthetic_runs(
    seed: int = 0, n_patients: int = 40
) -> tuple[list[int], list[str], list[tuple[float, ...]], list[int]]:
    """Ids, labels, boxes and the true patient of each item.

    Each patient has 3-12 consecutive slices with a slowly drifting box; a new patient has a new
    box somewhere else. Classes come in runs of a few patients, and ids skip a block twice.
    """
    rng = np.random.default_rng(seed)
    ids, labels, boxes, patients = [], [], [], []
    next_id, label = 1, "glioma"
    for patient in range(n_patients):
        if patient % 7 == 3:
            label = {"glioma": "meningioma", "meningioma": "pituitary"}.get(label, "glioma")
        if patient in (11, 29):
            next_id += 50  # a gap in the ids
        xc, yc = rng.uniform(0.25, 0.75, size=2)
        w, h = rng.uniform(0.08, 0.3, size=2)
        while boxes and box_jumps([boxes[-1], box(xc, yc, w, h)])[0] < 2.5:
            xc, yc = rng.uniform(0.25, 0.75, size=2)
            w, h = rng.uniform(0.08, 0.3, size=2)
        for _ in range(int(rng.integers(3, 13))):
            ids.append(next_id)
            labels.append(label)
            boxes.append(box(xc, yc, w, h))
            patients.append(patient)
            next_id += 1
            xc, yc = xc + rng.normal(0, 0.005), yc + rng.normal(0, 0.005)
            w, h = w * rng.uniform(0.92, 1.08), h * rng.uniform(0.92, 1.08)
    return ids, labels, boxes, patients


def test_box_jumps() -> None:
    jumps = box_jumps([box(0.5, 0.5, 0.2, 0.2), box(0.5, 0.5, 0.2, 0.2), box(0.7, 0.5, 0.2, 0.1)])
    assert jumps[0] == 0.0
    assert jumps[1] == pytest.approx(0.2 / 0.2 + np.log(2))
    assert box_jumps([box(0.5, 0.5, 0.1, 0.1)]).shape == (0,)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("target", [5, 20])
def test_every_patient_in_exactly_one_group(seed: int, target: int) -> None:
    ids, labels, boxes, patients = synthetic_runs(seed)
    groups = patient_blocks(ids, labels, boxes, target)
    groups_of_patient: dict[int, set[str]] = {}
    for patient, group in zip(patients, groups):
        groups_of_patient.setdefault(patient, set()).add(group)
    assert all(len(g) == 1 for g in groups_of_patient.values())
    # and it does not lump everything together: about one group per target_size items
    assert len(set(groups)) >= len(ids) / (3 * target)


def test_fixed_blocks_split_patients_that_patient_blocks_keep() -> None:
    ids, labels, boxes, patients = synthetic_runs(0)
    blocks = fixed_blocks(ids, 20)
    split_patients = {
        p for p in set(patients) if len({b for b, q in zip(blocks, patients) if q == p}) > 1
    }
    assert split_patients  # the old grouping cuts through patients
    before = estimate_straddles(ids, labels, boxes, blocks)
    after = estimate_straddles(ids, labels, boxes, patient_blocks(ids, labels, boxes, 20))
    assert before.similar_boxes >= len(split_patients) > 0
    assert after.similar_boxes == 0
    assert before.similar_images is None


def test_class_change_and_id_gap_always_cut() -> None:
    ids = [1, 2, 3, 4, 5, 6, 10, 11, 12]
    labels = ["glioma"] * 3 + ["meningioma"] * 3 + ["meningioma"] * 3
    boxes = [box(0.5, 0.5, 0.2, 0.2)] * 9  # identical boxes: nothing else would cut
    groups = patient_blocks(ids, labels, boxes, target_size=100)
    assert groups == ["ids-0001-0003"] * 3 + ["ids-0004-0006"] * 3 + ["ids-0010-0012"] * 3


def test_cuts_at_the_largest_jumps_and_respects_target_size() -> None:
    # ids 1-12: jumps between 4|5 (huge), 8|9 (smaller); nothing else moves
    boxes = [box(0.3, 0.3, 0.1, 0.1)] * 4 + [box(0.7, 0.7, 0.2, 0.2)] * 4
    boxes += [box(0.7, 0.4, 0.2, 0.2)] * 4
    ids, labels = list(range(1, 13)), ["glioma"] * 12
    assert len(set(patient_blocks(ids, labels, boxes, 4))) == 3
    assert len(set(patient_blocks(ids, labels, boxes, 5))) == 1  # both cuts leave 4 < 5
    # with room for only one cut, the larger jump wins
    groups = patient_blocks(ids[:10], labels[:10], boxes[:10], 2)
    assert len(set(groups)) == 3
    groups = patient_blocks(ids[:10], labels[:10], boxes[:10], 3)
    assert groups == ["ids-0001-0004"] * 4 + ["ids-0005-0010"] * 6


def test_no_cut_between_near_identical_boxes_however_long_the_run() -> None:
    ids = list(range(1, 101))
    boxes = [box(0.5 + 0.001 * i, 0.5, 0.2, 0.2) for i in range(100)]
    assert len(set(patient_blocks(ids, ["glioma"] * 100, boxes, 10))) == 1


def test_similar_images_veto_a_cut_and_unknown_similarity_does_not() -> None:
    boxes = [box(0.3, 0.3, 0.1, 0.1)] * 5 + [box(0.7, 0.7, 0.2, 0.2)] * 5
    ids, labels = list(range(10)), ["pituitary"] * 10
    similarity = np.full(9, 0.5)
    assert len(set(patient_blocks(ids, labels, boxes, 3, similarity=similarity))) == 2
    similarity[4] = 0.97  # the two slices around the box jump look alike: one stack
    assert len(set(patient_blocks(ids, labels, boxes, 3, similarity=similarity))) == 1
    similarity[4] = np.nan
    assert len(set(patient_blocks(ids, labels, boxes, 3, similarity=similarity))) == 2
    estimate = estimate_straddles(
        ids, labels, boxes, [str(i) for i in ids], similarity=np.full(9, 0.95)
    )
    assert (estimate.boundaries, estimate.similar_boxes) == (9, 8)
    assert (estimate.similar_images, estimate.either) == (9, 9)


def test_groups_follow_the_input_order() -> None:
    ids, labels, boxes, _ = synthetic_runs(3)
    expected = dict(zip(ids, patient_blocks(ids, labels, boxes, 10)))
    order = np.random.default_rng(0).permutation(len(ids))
    shuffled = patient_blocks(
        [ids[i] for i in order], [labels[i] for i in order], [boxes[i] for i in order], 10
    )
    assert shuffled == [expected[ids[i]] for i in order]


def test_patient_blocks_bad_input() -> None:
    one = box(0.5, 0.5, 0.1, 0.1)
    with pytest.raises(ValueError, match="distinct"):
        patient_blocks([1, 1], ["a", "a"], [one, one])
    with pytest.raises(ValueError, match="target_size"):
        patient_blocks([1], ["a"], [one], 0)
    with pytest.raises(ValueError, match="similarity"):
        patient_blocks([1, 2], ["a", "a"], [one, one], similarity=[0.5, 0.5])
    with pytest.raises(ValueError, match="labels"):
        patient_blocks([1, 2], ["a"], [one, one])
    assert patient_blocks([], [], []) == []


# --- synthetic near-duplicates ------------------------------------------------------------------


def brain_like(seed: int, size: int = 160) -> np.ndarray:
    """A dark background with a bright textured ellipse whose size, place and texture vary."""
    rng = np.random.default_rng(seed)
    texture = Image.fromarray((rng.random((6, 6)) * 255).astype(np.uint8)).resize(
        (size, size), Image.Resampling.BICUBIC
    )
    rows, cols = np.mgrid[0:size, 0:size] / size
    cy, cx = rng.uniform(0.4, 0.6, size=2)
    ry, rx = rng.uniform(0.25, 0.45, size=2)
    head = ((rows - cy) / ry) ** 2 + ((cols - cx) / rx) ** 2 < 1
    pixels = np.asarray(texture, np.float64) * 0.7 + 60
    return np.where(head, pixels, 5).astype(np.uint8)


def save(pixels: np.ndarray, path: Path, **kwargs: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format="JPEG", quality=kwargs.get("quality", 92))
    return path


@pytest.fixture
def duplicates_folder(tmp_path: Path) -> dict[str, Path]:
    """Six distinct images and copies of two of them."""
    folder = tmp_path / "images"
    paths = {f"img{i}": save(brain_like(i), folder / f"img{i}.jpg") for i in range(6)}
    base = brain_like(0)
    image = Image.fromarray(base)
    paths["resized"] = folder / "resized.jpg"
    image.resize((311, 311), Image.Resampling.BILINEAR).save(paths["resized"], quality=80)
    paths["mirrored"] = save(np.ascontiguousarray(base[:, ::-1]), folder / "mirrored.jpg")
    contrast = np.clip((base.astype(float) / 255) ** 0.7 * 230 + 10, 0, 255).astype(np.uint8)
    paths["contrast"] = save(contrast, folder / "contrast.jpg")
    paths["copy"] = folder / "copy.jpg"
    shutil.copy(paths["img0"], paths["copy"])
    padded = np.zeros((220, 200), np.uint8)
    padded[30:190, 20:180] = brain_like(1)
    paths["padded"] = save(padded, folder / "padded.png.jpg")
    small = ImageOps.mirror(Image.fromarray(brain_like(1))).resize((90, 90))
    paths["small_mirrored"] = folder / "small_mirrored.png"
    small.save(paths["small_mirrored"])
    return paths


def test_copies_share_a_group_and_distinct_images_do_not(
    duplicates_folder: dict[str, Path],
) -> None:
    names = list(duplicates_folder)
    groups = dict(zip(names, duplicate_groups([duplicates_folder[n] for n in names])))
    of_img0 = {groups[n] for n in ("img0", "resized", "mirrored", "contrast", "copy")}
    of_img1 = {groups[n] for n in ("img1", "padded", "small_mirrored")}
    assert of_img0 == {"dup-img0"}
    assert of_img1 == {"dup-img1"}
    assert [groups[f"img{i}"] for i in range(2, 6)] == [f"img{i}" for i in range(2, 6)]


def test_distinct_images_stay_apart() -> None:
    pixels = [brain_like(seed) for seed in range(100, 140)]
    features_paths = []
    folder = cache_dir().parent / "distinct"
    for i, p in enumerate(pixels):
        features_paths.append(save(p, folder / f"d{i}.jpg"))
    groups = duplicate_groups(features_paths)
    assert groups == [p.stem for p in features_paths]


def test_unreadable_image_is_its_own_group(duplicates_folder: dict[str, Path]) -> None:
    broken = duplicates_folder["img0"].parent / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff not really")
    groups = duplicate_groups([duplicates_folder["img0"], broken, duplicates_folder["copy"]])
    assert groups == ["dup-img0", "broken", "dup-img0"]
    features = image_features([broken, broken.parent / "absent.jpg"])
    assert not features.ok.any() and not features.phash.any()


def test_features_are_cached_by_size_and_mtime(
    duplicates_folder: dict[str, Path], _cache_in_tmp: Path, count_image_reads: list[Path]
) -> None:
    paths = list(duplicates_folder.values())
    first = image_features(paths)
    assert cache_dir() == _cache_in_tmp
    assert list(_cache_in_tmp.glob("image-features-*.npz"))
    calls = count_image_reads
    calls.clear()  # the first, cold read
    again = image_features(paths)
    assert calls == []
    np.testing.assert_array_equal(first.phash, again.phash)
    np.testing.assert_array_equal(first.thumb_full, again.thumb_full)
    save(brain_like(55), duplicates_folder["img3"])  # changed file: read again
    changed = image_features(paths)
    assert [p.name for p in calls] == ["img3.jpg"]
    assert not np.array_equal(changed.phash[3], first.phash[3])


def test_cache_folder_from_argument_and_unwritable_cache(
    duplicates_folder: dict[str, Path], tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    image_features([duplicates_folder["img0"]], cache=elsewhere)
    assert list(elsewhere.glob("image-features-*.npz"))
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.warns(UserWarning, match="cannot write"):
        features = image_features([duplicates_folder["img0"]], cache=blocker / "sub")
    assert features.ok.all()


def test_consecutive_similarity(duplicates_folder: dict[str, Path]) -> None:
    paths = [duplicates_folder[n] for n in ("img0", "copy", "img2", "img3")]
    broken = paths[0].parent / "broken.jpg"
    broken.write_bytes(b"junk")
    similarity = consecutive_similarity([*paths, broken])
    assert similarity.shape == (4,)
    assert similarity[0] == pytest.approx(1.0)
    assert similarity[1] < 0.9 and similarity[2] < 0.9
    assert np.isnan(similarity[3])


def test_the_feature_cache_is_readable_by_its_owner_only(
    duplicates_folder: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cache names the user's image files: written 0600, as a private temporary file."""
    monkeypatch.setenv("MTL_CACHE_DIR", str(tmp_path / "cache"))
    image_features(list(duplicates_folder.values()))
    (cache,) = (tmp_path / "cache").glob("image-features-*.npz")
    assert cache.stat().st_mode & 0o777 == 0o600
