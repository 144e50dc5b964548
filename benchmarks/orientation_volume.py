"""What turning volume slices upright does to a real tumor volume's Dice (issue 14, item 5).

Real tumor volumes with expert masks: the TCGA-LGG patients of Buda et al. (``kaggle_3m``, not
in ``../shared/data``; see ``datasets/lgg.yaml`` for where it comes from). Each patient's axial
slices are pictures in the usual radiological orientation (anterior up, the patient's right on
the viewer's left), numbered in slice order. This script stacks one channel of them into a NIfTI
volume with an RAS+ affine (x to the patient's right, y anterior: the layout a DICOM-to-NIfTI
converter writes), which puts every slice in the array transposed and mirrored relative to the
picture. The voxel size is not in the data set, so the affine says 1 mm; Dice does not depend on it.

Every volume is then run through ``mtl infer``'s reader and predictor twice:
- ``upright``: the reader turns slices upright before the network (today's ``mtl infer``);
- ``array order``: slices as stored (``load_case(..., upright=False)``, ``mtl infer`` before
  the change),
and the mask written back into the array is scored against the expert mask, in the same array.
Reported per patient and as medians: volume Dice (all voxels) and mean Dice over tumor slices.

    python benchmarks/orientation_volume.py runs/reference/best.keras --lgg <kaggle_3m folder> \\
        --patients 20 --channel post-contrast --out benchmarks/results/orientation_volume.json
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import log, machine_facts  # noqa: E402
from mtl.data.volumes import picture_to_ras  # noqa: E402

CHANNELS = ("pre-contrast", "flair", "post-contrast")
_NUMBER = re.compile(r"_(\d+)\.tif$")


def patient_slices(folder: Path, channel: int) -> tuple[np.ndarray, np.ndarray]:
    """(S, H, W) pictures of one channel and (S, H, W) bool masks, in slice order."""
    import tifffile

    images = sorted((p for p in folder.glob("*.tif") if not p.name.endswith("_mask.tif")),
                    key=lambda p: int(_NUMBER.search(p.name).group(1)))
    pictures, masks = [], []
    for path in images:
        pixels = tifffile.imread(path)
        pictures.append(pixels[..., channel] if pixels.ndim == 3 else pixels)
        masks.append(tifffile.imread(path.with_name(path.stem + "_mask.tif")) > 0)
    return np.stack(pictures), np.stack(masks)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def score(predictor: Any, path: Path, truth: np.ndarray, upright: bool) -> dict[str, Any]:
    from mtl.infer.readers import InputItem, load_case

    case = load_case(InputItem(path.stem, "nifti", path, (path,)), upright=upright)
    pred = predictor.predict(case.slices)
    mask = case.to_native(pred.mask) > 0
    tumor = [k for k in range(truth.shape[2]) if truth[:, :, k].any()]
    decided = np.nan_to_num(pred.presence, nan=0.0) > predictor.presence_threshold
    return {
        "volume_dice": dice(mask, truth),
        "tumor_slice_dice": float(np.mean([dice(mask[:, :, k], truth[:, :, k]) for k in tumor])),
        "presence_accuracy": float(np.mean(decided == truth.reshape(-1, truth.shape[2]).any(0))),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--lgg", type=Path, required=True, help="the kaggle_3m folder")
    parser.add_argument("--patients", type=int, default=20,
                        help="the first N patients (sorted by folder name) with a tumor")
    parser.add_argument("--channel", choices=CHANNELS, default="post-contrast")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    import nibabel as nib
    from tqdm import tqdm

    from mtl.infer.predict import Predictor, load_model

    predictor = Predictor(load_model(args.model))
    channel = CHANNELS.index(args.channel)
    folders = sorted(p for p in args.lgg.iterdir() if p.is_dir() and any(p.glob("*_mask.tif")))
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for folder in tqdm(folders, desc="patients", file=sys.stderr):
            if len(rows) == args.patients:
                break
            pictures, masks = patient_slices(folder, channel)
            if not masks.any():
                continue
            path = Path(tmp) / f"{folder.name}.nii.gz"
            image = nib.Nifti1Image(picture_to_ras(pictures), np.eye(4))
            image.header.set_sform(np.eye(4), code=1)
            nib.save(image, str(path))
            truth = picture_to_ras(masks)
            rows.append({"patient": folder.name, "slices": int(len(pictures)),
                         "upright": score(predictor, path, truth, True),
                         "array_order": score(predictor, path, truth, False)})
    summary = {
        way: {metric: float(np.median([r[way][metric] for r in rows]))
              for metric in ("volume_dice", "tumor_slice_dice", "presence_accuracy")}
        for way in ("upright", "array_order")
    }
    result = {"command": "python benchmarks/orientation_volume.py " + " ".join(
                  [args.model.as_posix(), "--lgg <kaggle_3m folder>", "--patients",
                   str(args.patients), "--channel", args.channel]),
              "model": args.model.as_posix(), "channel": args.channel, "patients": len(rows),
              "median": summary, "per_patient": rows, "machine": machine_facts()}
    print(f"{len(rows)} LGG patient volumes ({args.channel}), medians:")
    print("| slices reach the network | volume Dice | tumor-slice Dice | presence accuracy |")
    print("| --- | --- | --- | --- |")
    for way, label in (("upright", "upright (mtl infer today)"), ("array_order", "in array order")):
        s = summary[way]
        print(f"| {label} | {s['volume_dice']:.3f} | {s['tumor_slice_dice']:.3f} | "
              f"{s['presence_accuracy']:.3f} |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
        log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
