"""Does a model widened for neighbouring slices start where its single-slice model stands?

Builds the network of ``--config`` with ``data.context_slices`` = ``--context``, starts it from
``--model`` (``train.init_from``'s :func:`mtl.model.warm_start.warm_start`, calibration carried
over so that only the weights are compared), and runs both on the slices of one LGG patient's
volume: the single-slice model on each slice, the widened one on the slice stacked with its
neighbours. Before any training step the outputs should agree to float rounding.

    python benchmarks/warm_start_check.py --model runs/lgg-grade-192-50/best.keras \\
        --config experiments/lgg_grade.yaml --lgg data/lgg --patient 5 --slices 8:20 \\
        --out benchmarks/results/warm_start_check-lgg-grade-192-50.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="a single-slice model (.keras)")
    p.add_argument("--config", required=True, help="the experiment the model was trained with")
    p.add_argument("--context", type=int, default=1, help="neighbouring slices per side (1)")
    p.add_argument("--lgg", default="data/lgg", help="the LGG folder (kaggle_3m inside)")
    p.add_argument("--patient", type=int, default=0, help="which patient folder, in name order")
    p.add_argument("--slices", default="", help="first:last slice positions (default: all)")
    p.add_argument("--out", help="results JSON")
    return p.parse_args(argv)


def patient_volume(root: Path, patient: int) -> tuple[str, np.ndarray]:
    """One patient's slices in order, (N, H, W, 3), read by the LGG adapter
    (:func:`mtl.data.volumes.volumes_of`); ``patient``: the index in folder-name order."""
    from mtl.data.adapters import get_adapter
    from mtl.data.volumes import volumes_of

    adapter = get_adapter("lgg", root)
    volumes = volumes_of(adapter)
    name = sorted(volumes)[patient]
    return name, np.stack([adapter.load(record)["image"] for _n, record in volumes[name]])


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    os.environ.setdefault("SM_FRAMEWORK", "tf.keras")
    import keras

    from mtl.config import load_config
    from mtl.data.context import stack_context
    from mtl.infer.predict import Predictor
    from mtl.model.warm_start import warm_start
    from mtl.train import build_model

    source = keras.models.load_model(args.model)
    target = build_model(load_config(args.config, {"data.context_slices": args.context}))
    done = warm_start(target, source)
    target.calibration = source.calibration  # compare the weights, not the temperatures
    name, volume = patient_volume(Path(args.lgg), args.patient)
    stacked = stack_context(volume, args.context)
    if args.slices:
        first, last = (int(x) for x in args.slices.split(":"))
        volume, stacked = volume[first:last], stacked[first:last]
    single = Predictor(source).predict(volume)
    widened = Predictor(target).predict(stacked)
    result = {
        "model": args.model, "context_slices": args.context, "patient_folder": name,
        "slices": int(len(volume)), "widened_weights": done["widened"],
        "max_abs_difference": {
            "presence": float(np.nanmax(np.abs(widened.presence - single.presence))),
            "type_probabilities": float(np.nanmax(np.abs(widened.type_probs - single.type_probs))),
            "mask_probability": float(np.nanmax(np.abs(widened.prob - single.prob))),
        },
        "mask_pixels_that_differ": int((widened.mask != single.mask).sum()),
    }
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
