"""Helpers for the ``mtl serve`` tests (no tests in this file).

The app runs around a :class:`~mtl.infer.predict.Predictor` whose network is the fake perfect
segmenter of ``test_infer_support``: the predicted mask is exactly the synthetic tumor, so every
number a response gives can be checked to the pixel.
"""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from mtl.infer.predict import Predictor
from test_infer_support import (
    CLASSES,
    PREPROCESSING,
    TUMOR,
    fake_forward,
    head_volume,
    oblique_las_affine,
    save_nifti,
    tumor_image,
)


def fake_predictor(forward: Callable[[np.ndarray], Any] = fake_forward, **options: Any) -> Predictor:
    return Predictor(forward=forward, preprocessing=PREPROCESSING, classes=CLASSES, **options)


def make_client(predictor: Predictor | None = None, **app_options: Any):
    from fastapi.testclient import TestClient

    from mtl.serve.app import create_app

    app = create_app(predictor or fake_predictor(), **app_options)
    return TestClient(app), app


def image_bytes(array: np.ndarray, fmt: str = "PNG") -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(array)).save(buffer, format=fmt)
    return buffer.getvalue()


def tumor_png(box: tuple[int, int, int, int] = (10, 20, 30, 45), rows: int = 64,
              cols: int = 64, seed: int = 0) -> bytes:
    """A 64x64 head slice with a tumor box (r0, r1, c0, c1): the fake mask is exactly the box."""
    return image_bytes(tumor_image(rows, cols, box, seed))


def box_area(box: tuple[int, int, int, int]) -> int:
    r0, r1, c0, c1 = box
    return (r1 - r0) * (c1 - c0)


def tumor_nifti(folder: Path, name: str = "brain.nii.gz") -> tuple[bytes, np.ndarray]:
    """An oblique L-A-S volume (48x64x8, 0.9x1.1x2.5 mm) with a tumor on slices 2-4 (k)."""
    vol = head_volume((48, 64, 8))
    vol[30:38, 20:30, 2:5] = TUMOR
    truth = np.zeros(vol.shape, np.uint8)
    truth[30:38, 20:30, 2:5] = 1
    path = save_nifti(folder / name, vol, oblique_las_affine())
    return path.read_bytes(), truth


def png_array(content: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(content)))


def slow_forward(delay: float = 0.01) -> Callable[[np.ndarray], Any]:
    """The fake segmenter, a little slow, recording how many calls ever overlapped."""
    state = {"inside": 0, "most": 0}

    def forward(x: np.ndarray) -> Any:
        state["inside"] += 1
        state["most"] = max(state["most"], state["inside"])
        try:
            time.sleep(delay)
            return fake_forward(x)
        finally:
            state["inside"] -= 1

    forward.state = state  # type: ignore[attr-defined]
    return forward
