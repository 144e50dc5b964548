"""2-D images: PNG, JPEG, TIFF or BMP in; the mask out as an 8-bit PNG (0 / 255).

Read as the training adapters read images (:mod:`mtl.data.imageio`: EXIF orientation applied,
colour -> ITU-R 601 luma, alpha composited onto black); 16-bit and float images keep their
values. One slice; no spacing unless the caller gives it. The PNG mask has the image's own size;
for a volume the PNG "format" is one mask per slice (``mask_slices/slice_NNN.png``, each in the
file's own rows and columns).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from mtl.data.imageio import ImageReadError, read_gray
from mtl.infer.case import Case, InputError, InputItem, check_pixels, check_side
from mtl.infer.formats.base import Format, MaskFile, slice_tag

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"})


def read_image(path: Path) -> np.ndarray:
    """An image file -> (H, W) array, read exactly as training reads it
    (:mod:`mtl.data.imageio`)."""
    try:
        return read_gray(path)
    except ImageReadError as exc:
        raise InputError(str(exc)) from exc


def png_mask_bytes(mask: np.ndarray) -> bytes:
    """(H, W) 0/1 mask -> an 8-bit PNG with 0 / 255 at the same size."""
    from PIL import Image

    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"PNG mask must be 2-D, got shape {mask.shape}")
    image = Image.fromarray(np.where(mask > 0, 255, 0).astype(np.uint8), mode="L")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


class ImageFormat(Format):
    kind = "image"
    what = "an image"
    suffixes = tuple(sorted(IMAGE_SUFFIXES))
    is_volume = False
    index_order = "row, col"
    mask_format = "png"
    mask_name = "mask.png"
    media_type = "image/png"
    mask_label = "png mask"
    downloads = ("png",)
    download_title = "PNG"
    file_types = "PNG, JPEG, TIFF, BMP"

    def read(self, item: InputItem, *, axis: int | str = "axial",
             pixel_spacing: tuple[float, float] | None = None) -> Case:
        """One grey image (a model of named sequences reads its channels:
        :func:`mtl.infer.channels.load_channel_image`)."""
        path = item.paths[0]
        image = read_image(path)
        if image.ndim != 2:
            raise InputError(f"{path}: image of shape {image.shape} is not 2-D")
        check_side(path, image.shape)
        check_pixels(path, image)
        return Case(item.name, "image", item.source, image[None], image.shape,
                    spacing=pixel_spacing)

    def to_native(self, case: Case, stack: np.ndarray) -> np.ndarray:
        return stack[0]

    def write_bytes(self, case: Case, stack: np.ndarray, native: np.ndarray,
                    notes: list[str]) -> bytes:
        return png_mask_bytes(native)

    def write_mask(self, case: Case, stack: np.ndarray, native: np.ndarray,
                   notes: list[str] | None = None) -> list[MaskFile]:
        if not case.is_volume:
            return super().write_mask(case, stack, native, notes)
        return slice_masks(case, stack)


def slice_masks(case: Case, stack: np.ndarray) -> list[MaskFile]:
    """One PNG per slice (``mask_slices/slice_NNN.png``), each in the file's own rows and
    columns: a volume's mask in the pixel grid."""
    native_slices = case.native_slices(stack)  # the file's array order
    return [MaskFile(f"mask_slices/{slice_tag(i, case.n_slices)}.png",
                     png_mask_bytes(native_slices[i]), ImageFormat.media_type, "png")
            for i in range(case.n_slices)]


__all__ = ["IMAGE_SUFFIXES", "ImageFormat", "png_mask_bytes", "read_image", "slice_masks"]
