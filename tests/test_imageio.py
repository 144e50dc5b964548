"""Training adapters and inference read image files identically (mtl.data.imageio)."""

import numpy as np
import pytest
from PIL import Image

from mtl.data.adapters.base import read_gray_image
from mtl.data.imageio import ImageReadError, read_gray
from mtl.infer.readers import InputError, read_image


@pytest.mark.parametrize("mode", ["I;16", "L", "RGB", "RGBA"])
def test_training_and_inference_read_the_same_pixels(tmp_path, mode):
    ramp = np.arange(64 * 256, dtype=np.uint16).reshape(64, 256)
    if mode == "I;16":
        image = Image.fromarray(ramp)
    else:
        image = Image.fromarray((ramp // 64).astype(np.uint8)).convert(mode)
    path = tmp_path / "x.png"
    image.save(path)
    train_side, infer_side = read_gray_image(path), read_image(path)
    np.testing.assert_array_equal(train_side, infer_side)
    if mode == "I;16":  # 16-bit values are kept, never clipped to 255
        np.testing.assert_array_equal(train_side, ramp)


def test_bad_files_name_the_file(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(ImageReadError, match="bad.jpg"):
        read_gray(bad)
    with pytest.raises(InputError, match="bad.jpg"):
        read_image(bad)
