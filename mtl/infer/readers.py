"""Inputs of ``mtl infer`` -> cases: 2-D slices plus the geometry needed to map results back.

:func:`load_case` reads one input item with the reader of its kind (:mod:`mtl.infer.formats`:
``image`` PNG/JPEG/TIFF/BMP, ``nifti``, ``nrrd``, ``dicom``) and turns a volume's slices
upright where its orientation is known, as the training pictures are
(:mod:`mtl.data.orientation`); results are turned back into the file's array order
(:meth:`~mtl.infer.case.Case.to_native`). The default axis of a volume is the axial one;
``axis`` may name an array axis (0, 1, 2) or ``axial``/``coronal``/``sagittal``
(:mod:`mtl.infer.axes`).

A model whose input channels are named MR sequences gets them from one multi-channel image or
one file per sequence (:mod:`mtl.infer.channels`). Inputs are found by
:func:`mtl.infer.discovery.discover`.

Problems raise :class:`InputError` whose message starts with the offending file's path.

The names below are also importable from here as they were before the readers were split by
concern (discovery, formats, axes, channels).
"""

from __future__ import annotations

from typing import Sequence

from mtl.data.orientation import upright_transform
from mtl.infer.axes import AXIS_NAMES, axis_from_option, format_axis
from mtl.infer.case import MIN_SIDE, Case, InputError, InputItem, check_pixels
from mtl.infer.channels import (
    channel_item,
    display_channel,
    load_channel_image,
    load_sequence_image,
    parse_channel_option,
    refuse_single_volume,
    sequence_hint,
    stack_channels,
    with_context,
)
from mtl.infer.discovery import discover, path_problem, safe_name
from mtl.infer.formats import FORMATS, Format, kind_of
from mtl.infer.formats.dicom import is_dicom_file, load_dicom_case
from mtl.infer.formats.image import read_image
from mtl.infer.formats.nifti import load_nifti_case
from mtl.infer.formats.nrrd import load_nrrd_case


def load_case(item: InputItem, *, axis: int | str = "axial",
              pixel_spacing: tuple[float, float] | None = None, upright: bool = True,
              channels: Sequence[str] | None = None, hint: str | None = None,
              context: int = 0) -> Case:
    """Read one input item. Raises InputError naming the file on any problem.

    ``upright``: turn a volume's slices upright where its orientation is known (the default,
    what the network was trained on); False keeps the file's array order. ``channels``: the
    model's named input sequences (None: a grey model): one multi-channel image holding them in
    that order, or an item of one file per sequence (:func:`channel_item`); a single volume or
    a grey image is refused. ``hint``: how to give one file per sequence, for that message
    (default: ``mtl infer``'s ``--input NAME=FILE``). ``context``: the neighbouring slices a
    model of named sequences reads on either side of each slice (:func:`with_context`): a
    volume's slices get them as channels, a 2-D image is refused."""
    if item.channels is not None:
        names = [n for n, _i in item.channels]
        if channels is not None and [n.lower() for n in names] != [n.lower() for n in channels]:
            raise InputError(f"{item.source}: sequences {names} given, the model needs "
                             f"{list(channels)}")
        cases = [(name, load_case(part, axis=axis, pixel_spacing=pixel_spacing, upright=upright)
                  if _format(part).is_volume else load_sequence_image(name, part, pixel_spacing))
                 for name, part in item.channels]
        return with_context(stack_channels(item, cases), context, hint)
    if channels:
        fmt = FORMATS.get(item.kind)
        if fmt is None or fmt.is_volume:
            refuse_single_volume(item, channels, hint)
        return with_context(load_channel_image(item, pixel_spacing, list(channels), hint),
                            context, hint)
    case = _format(item).read(item, axis=axis, pixel_spacing=pixel_spacing)
    return turn_upright(case) if upright else case


def _format(item: InputItem) -> Format:
    fmt = FORMATS.get(item.kind)
    if fmt is None:
        raise InputError(f"{item.source}: unknown input kind {item.kind!r}")
    return fmt


def turn_upright(case: Case) -> Case:
    """The case with its slices turned upright (see :mod:`mtl.data.orientation`); ``to_native``
    turns results back. Cases of unknown orientation, DICOM and images are returned as they are."""
    if not case.is_volume or case.upright.moves_pixels:
        return case
    transform = upright_transform(case.kind, case.affine, case.slice_axis, case.orientation_known)
    if not transform.moves_pixels:
        return case
    case.slices = transform.apply_stack(case.slices)
    case.upright = transform
    return case


def load_image_case(item: InputItem, spacing: tuple[float, float] | None = None,
                    channels: Sequence[str] | None = None, hint: str | None = None) -> Case:
    """One image file. ``channels``: the model's named sequences: the image's own channels are
    kept (:func:`mtl.data.imageio.read_channels`) and must be exactly those, in that order."""
    if channels:
        return load_channel_image(item, spacing, list(channels), hint)
    return FORMATS["image"].read(item, pixel_spacing=spacing)


__all__ = [
    "AXIS_NAMES", "Case", "InputError", "InputItem", "MIN_SIDE", "axis_from_option",
    "channel_item", "check_pixels", "discover", "display_channel", "format_axis",
    "is_dicom_file", "kind_of", "load_case", "load_dicom_case", "load_image_case",
    "load_nifti_case", "load_nrrd_case", "parse_channel_option", "path_problem", "read_image",
    "refuse_single_volume", "safe_name", "sequence_hint", "stack_channels", "turn_upright",
]
