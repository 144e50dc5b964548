"""Models whose input channels are named MR sequences in ``mtl infer`` (issue 17): a 3-channel
LGG slice as the dataset ships it, one file per sequence (``--input NAME=FILE``), the
refusals, and the required check that ``mtl infer`` of an LGG slice gives the scores
``mtl evaluate`` gives for it. The model is a real, tiny, untrained 3-channel network (32 px)
built once; the LGG folder is written by the tests (TCGA folder names, data.csv)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner

from mtl.infer.command import infer
from mtl.infer.predict import Predictor
from mtl.infer.readers import InputError, channel_item
from mtl.infer.runner import InferOptions, run
from test_infer_support import save_nifti, save_png, tiny_model_path  # noqa: F401 - fixture

NAMES = ["pre-contrast", "flair", "post-contrast"]
SIZE = 40
CSV = ("Patient,RNASeqCluster,MethylationCluster,neoplasm_histologic_grade,gender\n"
       "TCGA_CS_4941,2,4,2,2\n"
       "TCGA_DU_5849,1,,1,1\n")


def lgg_slice(seed: int, tumor: tuple[int, int, int, int] | None) -> tuple[np.ndarray, np.ndarray]:
    """A (SIZE, SIZE, 3) uint8 slice (pre-contrast, FLAIR, post-contrast: each its own range
    and texture, so channel order and per-channel scaling both matter) and its 0/255 mask."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    head = ((yy - SIZE / 2) ** 2 + (xx - SIZE / 2) ** 2) < (0.42 * SIZE) ** 2
    image = np.zeros((SIZE, SIZE, 3), np.float32)
    image[..., 0] = head * (40 + 20 * rng.random((SIZE, SIZE)))  # dim, noisy
    image[..., 1] = head * (90 + 30 * np.sin(xx / 4.0) + 10 * rng.random((SIZE, SIZE)))
    image[..., 2] = head * (60 + 0.8 * yy + 5 * rng.random((SIZE, SIZE)))
    mask = np.zeros((SIZE, SIZE), np.uint8)
    if tumor is not None:
        r0, r1, c0, c1 = tumor
        image[r0:r1, c0:c1, 1] = 240  # bright on FLAIR
        image[r0:r1, c0:c1, 2] += 70  # enhancing a little
        mask[r0:r1, c0:c1] = 255
    return np.clip(np.round(image), 0, 255).astype(np.uint8), mask


def write_fake_lgg(root: Path) -> list[Path]:
    """Two TCGA patients of three slices each, as kaggle_3m ships them; the image paths."""
    data = root / "kaggle_3m"
    data.mkdir(parents=True)
    (data / "data.csv").write_text(CSV)
    images = []
    for p, (folder, tumor_slices) in enumerate([("TCGA_CS_4941_19960909", {2, 3}),
                                                ("TCGA_DU_5849_19950405", {2})]):
        (data / folder).mkdir()
        for index in (1, 2, 3):
            box = (8 + index, 20 + index, 10 + 2 * p, 24) if index in tumor_slices else None
            image, mask = lgg_slice(10 * p + index, box)
            path = data / folder / f"{folder}_{index}.tif"
            tifffile.imwrite(path, image, photometric="rgb")
            tifffile.imwrite(data / folder / f"{folder}_{index}_mask.tif", mask)
            images.append(path)
    return images


@pytest.fixture(scope="module")
def seq_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real (untrained, seeded) 32-px model of the three LGG sequences, G2/G3, saved once."""
    import keras

    from mtl.config import load_config
    from mtl.train import build_model

    keras.utils.set_random_seed(3)
    model = build_model(load_config(overrides=[
        "data.image_size=32", "data.channels=3", f"data.channel_names=[{', '.join(NAMES)}]",
        "data.classes=[no_tumor, G2, G3]", "model.decoder_filters=[8,8,8,8,8]",
        "model.head_units=8"]))
    path = tmp_path_factory.mktemp("seq-model") / "lgg3.keras"
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not yet been built.*")
        model.save(path)
    return path


@pytest.fixture(scope="module")
def predictor(seq_model: Path) -> Predictor:
    return Predictor.from_file(seq_model)


@pytest.fixture(scope="module")
def lgg(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    root = tmp_path_factory.mktemp("lgg")
    return root, write_fake_lgg(root)


def _invoke(*args):
    result = CliRunner().invoke(infer, [str(a) for a in args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def _findings(out: Path, case: str) -> dict:
    return json.loads((out / case / "findings.json").read_text())


def _split_channels(tif: Path, folder: Path) -> dict[str, Path]:
    """The TIFF's three channels as three grey PNGs (one file per sequence)."""
    image = tifffile.imread(tif)
    folder.mkdir(parents=True, exist_ok=True)
    return {name: save_png(folder / f"{tif.stem}_{name}.png", image[..., c])
            for c, name in enumerate(NAMES)}


def _result(predictor: Predictor, out: Path, inputs=(), sequences=None, **options):
    result = run(predictor, list(inputs), out, InferOptions(**options), sequences=sequences)
    assert not result.failures, [c.error for c in result.failures]
    return result.cases[0].record


# --------------------------------------------------------------------------- the required check


def test_infer_of_an_lgg_slice_reproduces_what_evaluate_scores(seq_model, predictor, lgg,
                                                               tmp_path, monkeypatch):
    """`mtl infer` on each 3-channel LGG TIFF gives the presence probability, the grade
    probabilities and the mask (pixels, Dice against the dataset's mask) that `mtl evaluate`
    computes for that slice (mtl.evaluate.predict.predict_split, which evaluate scores)."""
    import mtl.evaluate.evaluation as runner
    from mtl.evaluate.metrics import score_mask
    from PIL import Image

    root, images = lgg
    seen = []
    original = runner.predict_split

    def spy(*args, **kwargs):
        seen.append(original(*args, **kwargs))
        return seen[-1]

    monkeypatch.setattr(runner, "predict_split", spy)
    # a bare model file (no run folder): the preprocessing, channel names included, comes
    # from the model itself
    runner.evaluate(seq_model, data=[f"lgg={root}"], split="all", out=tmp_path / "eval",
                    n_resamples=10)
    pred = seen[0]
    assert len(pred.case_ids) == len(images) == 6
    classes = ["no_tumor", "G2", "G3"]
    # the default rule (a mask counts where presence says yes) on the command line, and the
    # mask head alone through the same runner (the network already traced)
    for rule in ("presence", "independent"):
        native = pred.native_under(rule, 0.5)
        out = tmp_path / f"infer-{rule}"
        if rule == "presence":
            result = _invoke(seq_model, *images, "--out", out, "--no-progress")
            assert result.exit_code == 0, result.output
        else:
            alone = Predictor(predictor.model, forward=predictor.forward, mask_rule=rule)
            assert not run(alone, images, out).failures
        for j, case_id in enumerate(pred.case_ids):
            record = _findings(out, case_id)  # named after the TIFF: <folder>_<slice>
            f = record["findings"]
            assert record["input"]["channels"] == NAMES
            assert record["input"]["overlay_channel"] == "flair"
            assert f["presence"]["probability"] == pytest.approx(
                float(pred.outputs["presence"][j, 0]), abs=2e-4)
            for c, name in enumerate(classes):
                assert f["type"]["probabilities"][name] == pytest.approx(
                    float(pred.outputs["type"][j, c]), abs=2e-4)
            mask = np.asarray(Image.open(out / case_id / "mask.png")) > 0
            assert abs(int(mask.sum()) - int(native.pred_pixels[j])) <= 2, (rule, case_id)
            truth_path = images[j].with_name(images[j].stem + "_mask.tif")
            tumor, dice, *_ = score_mask(tifffile.imread(truth_path), mask, None)
            assert tumor == bool(native.tumor[j])
            if tumor:
                assert dice == pytest.approx(float(native.dice[j]), abs=0.01), (rule, case_id)
    assert np.nanmax(pred.native.dice) > 0.1  # the comparison is not only of empty masks


# --------------------------------------------------------------------------- one file per sequence


def test_one_file_per_sequence_equals_the_three_channel_image_and_order_matters(
        predictor, lgg, tmp_path):
    _root, images = lgg
    tif = images[1]  # a slice with tumor
    files = _split_channels(tif, tmp_path / "seq")
    whole = _result(predictor, tmp_path / "whole", [tif])
    pairs = [(name, files[name]) for name in NAMES]
    split = _result(predictor, tmp_path / "split", sequences=pairs, overlay=True)
    assert split["findings"]["presence"] == whole["findings"]["presence"]
    assert split["findings"]["type"] == whole["findings"]["type"]
    assert split["findings"]["tumor"]["pixels"] == whole["findings"]["tumor"]["pixels"]
    assert split["input"]["channels"] == NAMES
    assert split["input"]["files"] == {n: str(files[n]) for n in NAMES}
    assert split["case"] == tif.stem  # the common start of the three file names
    assert (tmp_path / "split" / tif.stem / "overlay.png").is_file()
    # names match case-insensitively, in any order on the command line
    shuffled = [("FLAIR", files["flair"]), ("post-contrast", files["post-contrast"]),
                ("Pre-Contrast", files["pre-contrast"])]
    again = _result(predictor, tmp_path / "again", sequences=shuffled)
    assert again["findings"]["presence"] == whole["findings"]["presence"]
    # two sequences swapped: the network sees another input
    swapped = [("pre-contrast", files["post-contrast"]), ("flair", files["flair"]),
               ("post-contrast", files["pre-contrast"])]
    other = _result(predictor, tmp_path / "swapped", sequences=swapped)
    a = [other["findings"]["presence"]["probability"],
         *other["findings"]["type"]["probabilities"].values()]
    b = [whole["findings"]["presence"]["probability"],
         *whole["findings"]["type"]["probabilities"].values()]
    assert not np.allclose(a, b, atol=1e-4)


def test_one_volume_per_sequence_stacks_slices_and_checks_the_geometry(predictor, tmp_path):
    import nibabel as nib

    affine = np.diag([0.9, 0.9, 2.5, 1.0])
    volumes = {}
    for c, name in enumerate(NAMES):
        vol = np.stack([lgg_slice(k, (10, 20, 12, 24) if k == 1 else None)[0][..., c]
                        for k in range(3)], axis=-1).astype(np.int16)
        volumes[name] = save_nifti(tmp_path / f"BraTS_007_{name}.nii.gz", vol, affine)
    record = _result(predictor, tmp_path / "out", sequences=[(n, volumes[n]) for n in NAMES],
                     overlay=True)
    assert record["kind"] == "nifti" and record["input"]["n_slices"] == 3
    assert record["case"] == "BraTS_007"
    assert (tmp_path / "out" / "BraTS_007" / "mask.nii.gz").is_file()
    # another affine (shifted 1 mm) or another shape: refused, naming both files
    shifted = affine.copy()
    shifted[0, 3] = 1.0
    moved = save_nifti(tmp_path / "moved.nii.gz", np.asarray(nib.load(volumes["flair"]).dataobj),
                       shifted)
    with pytest.raises(InputError, match=r"not on one grid: the affine of flair \(.*moved"):
        _raise_case_error(predictor, tmp_path / "o2", [
            ("pre-contrast", volumes["pre-contrast"]), ("flair", moved),
            ("post-contrast", volumes["post-contrast"])])
    small = save_nifti(tmp_path / "small.nii.gz", (np.ones((20, 20, 3)) * np.arange(3)).astype(np.int16),
                       affine)
    with pytest.raises(InputError, match="differ in shape: pre-contrast is 40x40x3"):
        _raise_case_error(predictor, tmp_path / "o3", [("pre-contrast", volumes["pre-contrast"]),
                                                      ("flair", volumes["flair"]),
                                                      ("post-contrast", small)])


def _raise_case_error(predictor: Predictor, out: Path, pairs) -> None:
    """Run one case of one file per sequence; raise its failure as an InputError."""
    result = run(predictor, [], out, InferOptions(), sequences=pairs)
    assert len(result.cases) == 1
    if result.failures:
        raise InputError(result.failures[0].error)


# --------------------------------------------------------------------------- refusals


def test_a_grey_image_or_a_single_volume_is_refused_naming_the_sequences(predictor, lgg,
                                                                         tmp_path):
    _root, images = lgg
    grey = save_png(tmp_path / "grey.png", tifffile.imread(images[1])[..., 1])
    rgb_grey = save_png(tmp_path / "rgb_grey.png",
                        np.repeat(tifffile.imread(images[1])[..., 1:2], 3, axis=-1))
    volume = save_nifti(tmp_path / "flair.nii.gz",
                        np.stack([tifffile.imread(p)[..., 1] for p in images[:3]], -1),
                        np.eye(4))
    result = run(predictor, [grey, rgb_grey, volume, images[1]], tmp_path / "out")
    errors = {c.name: c.error for c in result.cases}
    assert [c.status for c in result.cases] == ["failed", "failed", "failed", "ok"]
    hint = "--input pre-contrast=FILE --input flair=FILE --input post-contrast=FILE"
    assert "a grey image (1 channel); this model needs 3 input channels, one per MR " \
           "sequence: pre-contrast, flair, post-contrast" in errors["grey"]
    assert hint in errors["grey"]
    assert "3 channels are identical" in errors["rgb_grey"]
    assert "a NIfTI volume holds one sequence" in errors["flair"] and hint in errors["flair"]
    assert all("\n" not in e for e in errors.values() if e)


def test_input_option_refusals_on_the_command_line(seq_model, tiny_model_path, lgg, tmp_path):  # noqa: F811
    _root, images = lgg
    files = _split_channels(images[1], tmp_path / "seq")
    base = [seq_model, "--out", tmp_path / "out", "--no-progress"]
    missing = _invoke(*base, "--input", f"pre-contrast={files['pre-contrast']}",
                      "--input", f"flair={files['flair']}")
    assert missing.exit_code != 0
    assert "missing post-contrast; this model needs 3 input channels" in missing.output
    assert "--input post-contrast=FILE" in missing.output
    unknown = _invoke(*base, *[a for n in NAMES for a in ("--input", f"{n}={files[n]}")],
                      "--input", f"t1ce={files['flair']}")
    assert unknown.exit_code != 0
    assert "has no sequence 't1ce'; its inputs are pre-contrast, flair, post-contrast" \
        in unknown.output
    twice = _invoke(*base, "--input", f"flair={files['flair']}",
                    "--input", f"FLAIR={files['flair']}")
    assert twice.exit_code != 0 and "given twice" in twice.output
    malformed = _invoke(*base, "--input", str(files["flair"]))
    assert malformed.exit_code == 2 and "give NAME=FILE" in malformed.output
    nothing = _invoke(*base)
    assert nothing.exit_code == 2 and "--input NAME=FILE" in nothing.output
    grey_model = _invoke(tiny_model_path, "--out", tmp_path / "g", "--no-progress",
                         "--input", f"flair={files['flair']}")
    assert grey_model.exit_code != 0
    assert "not named MR sequences" in grey_model.output
    assert not (tmp_path / "out" / "findings.csv").exists()  # refused before anything ran


def test_channel_item_names_the_file_that_cannot_be_used(tmp_path):
    a = save_png(tmp_path / "a.png", lgg_slice(0, None)[0][..., 0])
    c = save_png(tmp_path / "c.png", lgg_slice(0, None)[0][..., 2])
    with pytest.raises(InputError, match=r"--input flair=.*nope.png: no such file"):
        channel_item([("pre-contrast", a), ("flair", tmp_path / "nope.png"),
                      ("post-contrast", c)], NAMES)
    (tmp_path / "two").mkdir()
    for name in ("x.png", "y.png"):
        save_png(tmp_path / "two" / name, lgg_slice(0, None)[0][..., 1])
    with pytest.raises(InputError, match=r"--input flair=.*two: holds 2 inputs \(x, y\)"):
        channel_item([("pre-contrast", a), ("flair", tmp_path / "two"), ("post-contrast", c)],
                     NAMES)


def test_a_colour_image_given_as_one_sequence_is_refused(predictor, lgg, tmp_path):
    _root, images = lgg
    files = _split_channels(images[1], tmp_path / "seq")
    colour = save_png(tmp_path / "colour.png", tifffile.imread(images[1]))
    with pytest.raises(InputError, match="flair.*an image of 3 different channels"):
        _raise_case_error(predictor, tmp_path / "out", [
            ("pre-contrast", files["pre-contrast"]), ("flair", colour),
            ("post-contrast", files["post-contrast"])])


def test_grey_models_read_colour_images_as_before(tiny_model_path, tmp_path):  # noqa: F811
    """A model without channel names still takes a colour image as its luma (unchanged)."""
    from mtl.infer.readers import discover, load_case

    image, _mask = lgg_slice(1, (10, 20, 12, 24))
    path = save_png(tmp_path / "colour.png", image)
    case = load_case(discover([path])[0][0])
    assert case.slices.shape == (1, SIZE, SIZE) and case.channel_names is None


def test_evaluate_refuses_a_healthy_volume_check_of_a_sequence_model_before_predicting(
        seq_model, lgg, tmp_path, monkeypatch):
    """`mtl evaluate --healthy-volume` on a model of three MR sequences: one grey healthy
    volume cannot feed it, so it is refused naming the sequences, before the split is run."""
    from mtl.cli import main
    from mtl.evaluate import evaluation

    def never(*args, **kwargs):
        raise AssertionError("the split was predicted before the refusal")

    monkeypatch.setattr(evaluation, "predict_split", never)
    volume = save_nifti(tmp_path / "healthy.nii.gz", np.ones((8, 8, 8), np.float32), np.eye(4))
    result = CliRunner().invoke(main, ["evaluate", str(seq_model), "--data", f"lgg={lgg[0]}",
                                       "--split", "all", "--healthy-volume", str(volume)])
    assert result.exit_code != 0
    assert "3 MR sequences (pre-contrast, flair, post-contrast)" in result.output
    assert "Traceback" not in result.output
