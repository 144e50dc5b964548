"""Inference speed through mtl's own inference path (what ``mtl infer`` runs per case).

- ``slice_latency``: one PNG slice, file to mask: :func:`mtl.infer.runner.infer_case` on the
  discovered item, i.e. read + decode the PNG, preprocess (percentile scaling, letterbox), the
  network, un-letterbox, threshold, findings, and ``mask.png`` + ``findings.json`` written
  (atomically) to a fresh folder. Median and p95 over ``latency_repeats`` calls after 2 warm-up
  calls. ``stages`` times the parts separately (read, predict, network alone) for orientation.
- ``throughput``: ``Predictor.predict`` (preprocess + network + un-letterbox + threshold) over an
  in-memory stack of slices at the predictor's batch size (16): slices/s; and the network alone
  (``Predictor.run_network`` on prepared inputs) at the same batch size.
- ``volume``: ``infer_case`` on a NIfTI volume (155 slices by default): read, predict every
  slice, findings, ``mask.nii.gz`` written. Seconds per volume.
- ``model_load_seconds``: ``Predictor.from_file`` once (not part of any figure above: a server or
  a batch run loads the model once).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import log, stats
from benchmarks.fixtures import InferInputs, phantom_slice


def run_section(inputs: InferInputs, *, latency_repeats: int, repeats: int,
                throughput_slices: int, batch_size: int = 16) -> dict[str, Any]:
    from mtl.infer.predict import Predictor
    from mtl.infer.readers import discover, load_case
    from mtl.infer.runner import InferOptions, infer_case

    t0 = time.perf_counter()
    predictor = Predictor.from_file(inputs.model, batch_size=batch_size)
    load_seconds = time.perf_counter() - t0
    options = InferOptions(force=True)
    scratch = Path(tempfile.mkdtemp(prefix="mtl-bench-infer-"))
    try:
        (png_item,), bad = discover([inputs.png])
        (vol_item,), bad2 = discover([inputs.volume])
        if bad or bad2:
            raise RuntimeError(f"inputs not usable: {bad + bad2}")

        def one_case(item, k: int) -> float:
            out = scratch / f"run{k}"
            t = time.perf_counter()
            result = infer_case(item, predictor, out, options)
            elapsed = time.perf_counter() - t
            if not (result.folder / "findings.json").is_file():
                raise RuntimeError(f"{item.name}: no findings written")
            shutil.rmtree(out, ignore_errors=True)
            return elapsed

        # --- one slice, file to mask
        log(f"infer: {inputs.png_size}x{inputs.png_size} slice, file to mask, "
            f"{latency_repeats} calls")
        warm = [one_case(png_item, -1 - i) for i in range(2)]
        latency = [one_case(png_item, i) for i in range(latency_repeats)]
        stages: dict[str, list[float]] = {"read": [], "predict": [], "network": []}
        for _ in range(max(3, min(10, latency_repeats))):
            t = time.perf_counter()
            case = load_case(png_item)
            stages["read"].append(time.perf_counter() - t)
            t = time.perf_counter()
            predictor.predict(case.slices)
            stages["predict"].append(time.perf_counter() - t)
            x = predictor.prepare(case.slices[0])[0][None]
            t = time.perf_counter()
            predictor.run_network(x)
            stages["network"].append(time.perf_counter() - t)

        # --- throughput at batch 16
        n = int(throughput_slices)
        log(f"infer: throughput over {n} slices at batch {batch_size}")
        distinct = [phantom_slice(inputs.png_size, index=i) for i in range(min(8, n))]
        stack = np.stack([distinct[i % len(distinct)] for i in range(n)])
        prepared = np.stack([predictor.prepare(s)[0] for s in stack])
        predictor.predict(stack[:batch_size])  # warm-up at the full batch shape
        predict_s, network_s = [], []
        for _ in range(repeats):
            t = time.perf_counter()
            predictor.predict(stack)
            predict_s.append(n / (time.perf_counter() - t))
            t = time.perf_counter()
            predictor.run_network(prepared)
            network_s.append(n / (time.perf_counter() - t))

        # --- a whole volume
        log(f"infer: volume {inputs.volume_shape}, {repeats} runs")
        volume_warm = one_case(vol_item, -100)
        volume = [one_case(vol_item, 100 + i) for i in range(repeats)]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    return {
        "model": str(inputs.model),
        "model_note": inputs.model_note,
        "model_input_size": predictor.image_size,
        "batch_size": batch_size,
        "model_load_seconds": load_seconds,
        "slice_latency": {
            "input": f"{inputs.png_size}x{inputs.png_size} PNG (uint8 phantom)",
            "size": inputs.png_size,
            "what": "infer_case: read PNG -> preprocess -> network -> mask at image size -> "
                    "findings -> mask.png + findings.json written",
            "warmup_seconds": warm,
            "seconds": stats(latency),
            "median_ms": float(np.median(latency) * 1000),
            "p95_ms": float(np.percentile(latency, 95) * 1000),
            "stages_seconds": {k: stats(v) for k, v in stages.items()},
        },
        "throughput": {
            "slices": n,
            "slice_size": inputs.png_size,
            "predict_slices_per_s": stats(predict_s),
            "network_only_slices_per_s": stats(network_s),
            "what": "Predictor.predict on an in-memory stack (no file I/O); network only = "
                    "Predictor.run_network on prepared inputs",
        },
        "volume": {
            "input": f"NIfTI {inputs.volume_shape} int16, every slice non-constant",
            "shape": list(inputs.volume_shape),
            "slices": inputs.volume_shape[2],
            "what": "infer_case: read NIfTI -> predict every slice -> findings -> mask.nii.gz",
            "warmup_seconds": volume_warm,
            "seconds": stats(volume),
        },
    }
