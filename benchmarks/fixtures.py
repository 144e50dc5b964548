"""What the benchmarks run on: the resolved config (with a phantom fallback), inputs, a model file.

- The config is ``load_config(path, overrides)`` like ``mtl train``. A source whose folder is
  missing (e.g. ``experiments/shared_real.yaml`` on a machine without ``../shared/data``) is
  dropped; if none is left the data become phantoms (:data:`FALLBACK_PHANTOMS`), and the JSON
  says so.
- ``--quick`` shrinks everything (64 px network input, tiny decoder, batch 4, a few phantoms) so
  the whole suite runs in about a minute: it proves the script works, it measures nothing.
- Inference inputs are phantoms written to a temporary folder: one PNG slice (512x512 by
  default) and one NIfTI volume (240x240x155 by default, BraTS' shape), every slice non-constant.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("SM_FRAMEWORK", "tf.keras")

#: phantoms standing in for real data that is not on this machine (raw slices of 256 px, so
#: decoding and letterboxing do real work; the real figshare slices are 512 px)
FALLBACK_PHANTOMS = {"format": "phantoms", "options": {"n": 480, "size": 256, "seed": 0}}

QUICK_OVERRIDES = [
    "data.image_size=64",
    "model.decoder_filters=[16,16,8,8,8]",
    "model.head_units=8",
    "train.batch_size=4",
    "data.sources=[{format: phantoms, options: {n: 48, size: 64, seed: 0}}]",
]


@dataclass
class ResolvedConfig:
    path: str | None
    overrides: list[str]  # everything passed to load_config, in order (children get the same)
    data_note: str | None

    def load(self, *extra: str):
        from mtl.config import load_config

        return load_config(self.path, [*self.overrides, *extra])


def resolve_config(path: str | None, overrides: list[str], quick: bool) -> ResolvedConfig:
    """The config to benchmark, with missing data folders replaced by phantoms."""
    from mtl.config import load_config

    overrides = list(overrides)
    if quick:
        return ResolvedConfig(path, overrides + QUICK_OVERRIDES,
                              "quick mode: 48 phantoms of 64 px, 64 px network input")
    config = load_config(path, overrides)
    present, missing = [], []
    for source in config.data.sources:
        if source.format == "phantoms" or (source.root and Path(source.root).exists()):
            present.append(source)
        else:
            missing.append(f"{source.format} ({source.root})")
    if not missing:
        return ResolvedConfig(path, overrides, None)
    if present:
        kept = [{"format": s.format, "root": s.root, "weight": s.weight,
                 "label_map": s.label_map, "options": s.options} for s in present]
        note = f"data folders missing, left out: {', '.join(missing)}"
    else:
        kept = [FALLBACK_PHANTOMS]
        note = (f"data folders missing ({', '.join(missing)}): phantoms instead "
                f"({json.dumps(FALLBACK_PHANTOMS['options'])})")
    return ResolvedConfig(path, overrides + [f"data.sources={json.dumps(kept)}"], note)


def open_train_sources(config) -> list:
    """The config's sources with every record in the "train" split.

    Throughput does not depend on which items are held out, and skipping the patient-safe split
    (which hashes every image for some datasets) keeps start-up short.
    """
    from mtl.data.pipeline import open_sources

    sources = open_sources(config)
    for source in sources:
        source.splits = {"train": list(range(len(source.records)))}
    return sources


# --------------------------------------------------------------------------- inference inputs


def phantom_slice(size: int, index: int = 1, seed: int = 0) -> np.ndarray:
    """A phantom slice with a tumor, as uint8 (what a PNG export of a scan holds)."""
    from mtl.data.adapters.phantoms import render_phantom

    image = render_phantom(seed, index, size, "glioma").image
    return np.clip(np.round(image * 255), 0, 255).astype(np.uint8)


def write_png(path: Path, size: int) -> Path:
    from PIL import Image

    Image.fromarray(phantom_slice(size)).save(path)
    return path


def write_volume(path: Path, size: int, n_slices: int) -> Path:
    """A (size, size, n_slices) int16 NIfTI, axial slices along axis 2, 1 mm RAS affine.

    A handful of distinct phantom slices are cycled, each scaled a little differently, so no
    slice is constant (constant slices are skipped by the predictor: this is the worst case).
    """
    import nibabel as nib

    distinct = [phantom_slice(size, index=i).astype(np.float32) for i in range(min(8, n_slices))]
    volume = np.empty((size, size, n_slices), np.int16)
    for k in range(n_slices):
        volume[:, :, k] = np.round(distinct[k % len(distinct)] * (4.0 + 0.01 * k)).astype(np.int16)
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    header = nib.Nifti1Header()  # int16 in mm, qform and sform the scanner's (code 1)
    header.set_data_dtype(np.int16)
    header.set_xyzt_units("mm")
    header.set_qform(affine, code=1)
    header.set_sform(affine, code=1)
    nib.save(nib.Nifti1Image(volume, affine, header), str(path))
    return path


def save_untrained_model(config, path: Path) -> Path:
    """The config's model with random weights: same shapes and cost as a trained one."""
    from mtl.train import build_model

    model = build_model(config)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not yet been built.*")
        model.save(path)
    return path


@dataclass
class InferInputs:
    model: Path
    model_note: str
    png: Path
    png_size: int
    volume: Path
    volume_shape: list[int]


def make_infer_inputs(folder: Path, config, *, model_path: str | None, png_size: int,
                      volume_size: int, volume_slices: int) -> InferInputs:
    folder.mkdir(parents=True, exist_ok=True)
    if model_path:
        model, note = Path(model_path), f"given model {model_path}"
    else:
        model = save_untrained_model(config, folder / "model.keras")
        note = "untrained model of the benchmarked config (random weights, same cost)"
    png = write_png(folder / f"slice{png_size}.png", png_size)
    volume = write_volume(folder / "volume.nii.gz", volume_size, volume_slices)
    return InferInputs(model, note, png, png_size, volume, [volume_size, volume_size, volume_slices])


def describe_config(config) -> dict[str, Any]:
    """The parts of the config that decide speed, for the report."""
    return {
        "backbone": config.model.backbone,
        "image_size": config.data.image_size,
        "channels": config.data.input_channels,
        "batch_size": config.train.batch_size,
        "precision": config.train.precision,
        "decoder_filters": list(config.model.decoder_filters),
        "num_parallel_calls": config.data.num_parallel_calls,
        "workers": config.data.workers,
        "augment": config.data.augment.enabled,
        "sources": [{"format": s.format, "root": s.root, "options": s.options}
                    for s in config.data.sources],
    }
