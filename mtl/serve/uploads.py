"""Uploaded bytes -> a server-owned input file for :func:`mtl.infer.readers.load_case`.

The type of an upload is decided by its *content* (magic bytes), never by the name the client
sent; that name is only ever shown back as text. Accepted:

========== ====================================================== ==================
type       recognised by                                          read as
========== ====================================================== ==================
png        ``89 50 4E 47 0D 0A 1A 0A``                            image
jpeg       ``FF D8 FF``                                           image
tiff       ``II*\\0`` / ``MM\\0*`` (BigTIFF ``II+\\0`` / ``MM\\0+``) image
nifti      ``sizeof_hdr`` = 348 (either byte order), magic ``n+1`` volume
nifti-gz   gzip magic ``1F 8B``, then the NIfTI test on the decompressed header  volume
dicom      ``DICM`` at byte 128 (DICOM Part 10 file)              one-file series
nrrd       ``NRRD000`` magic line (a ``.nrrd`` holding its data)  volume
========== ====================================================== ==================

Before anything is decoded, the size the content *declares* is checked against the limits
(image width x height from the header, NIfTI dimensions, DICOM rows x columns x frames), and
gzip is decompressed in bounded steps that stop as soon as the output passes what the NIfTI
header announced (or an absolute cap): a small file that unpacks into gigabytes is refused
without ever being unpacked. The same header figures give the memory that analysing the upload
will take (:func:`request_cost`, measured per pixel or voxel); an upload that would need more than
``Limits.max_request_bytes`` is refused (413) before it is decoded. Deflate-compressed DICOM
(whose whole data set would be inflated on reading) is refused. A gzip- or bzip2-encoded NRRD
is unpacked the same bounded way (its header's sizes and type announce the bytes) and stored
raw; a NRRD header that points to a
separate data file (``data file:``, as a ``.nhdr`` does) is refused, so an upload never makes the
server read another file.

The checked content is written under a folder the server made, with a name the server chose
(``upload.png``, ``upload.nii``, ...), and handed to the readers as an
:class:`~mtl.infer.readers.InputItem`.
"""

from __future__ import annotations

import gzip
import io
import re
import struct
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from mtl.infer.case import InputItem

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
GZIP_MAGIC = b"\x1f\x8b"
NIFTI1_HEADER = 348
NIFTI1_MAGIC = b"n+1\x00"
NIFTI1_PAIR_MAGIC = b"ni1\x00"
DICOM_MAGIC_OFFSET = 128
NRRD_MAGIC = b"NRRD000"
#: DICOM transfer syntax whose whole data set is deflate-compressed
DEFLATED_TRANSFER_SYNTAX = "1.2.840.10008.1.2.1.99"
#: bytes a NIfTI file may hold beyond what its header announces
NIFTI_SLACK = 1 << 20

ACCEPTED = ("PNG", "JPEG", "TIFF", "NIfTI-1 (.nii, .nii.gz)", "NRRD (.nrrd)", "DICOM")
#: detected type -> (reader kind, server-chosen file name)
FILE_NAMES = {
    "png": ("image", "upload.png"),
    "jpeg": ("image", "upload.jpg"),
    "tiff": ("image", "upload.tif"),
    "nifti": ("nifti", "upload.nii"),
    "nifti-gz": ("nifti", "upload.nii"),  # stored decompressed
    "dicom": ("dicom", "upload.dcm"),
    "nrrd": ("nrrd", "upload.nrrd"),  # compressed data stored raw
}


class UploadRejected(Exception):
    """An upload refused before reading: ``status`` is the HTTP status (400, 413 or 415)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


#: Peak memory of analysing one upload (``mtl serve``: read, predict, findings, mask files,
#: overlay), measured as the peak RSS increase of one ``Service.analyse`` + overlay in a fresh
#: process, every pixel predicted tumor (the worst case), 4-25 M pixels: 8-bit grey images 34,
#: RGB 36, 16-bit 40 bytes a pixel; volumes 21-24 bytes a voxel (uint8 to float64 files). The
#: estimate adds twice the decoded sample size to these and a fixed part, so it stays above
#: what was measured (benchmarks/README.md, serve_load.py, checks the whole server).
IMAGE_BYTES_PER_PIXEL = 36
VOLUME_BYTES_PER_VOXEL = 22
REQUEST_FIXED_BYTES = 64 << 20
#: default memory budget of one analysis; the default pixel limit is what it affords for an
#: 8-bit grey image (25 M pixels: about 1.0 GiB by request_cost)
DEFAULT_REQUEST_BYTES = 1 << 30
DEFAULT_MAX_PIXELS = 25_000_000
#: ``mtl serve``: uploads analysed at once, uploads waiting for their turn (beyond: 503), and
#: the memory of the results kept for download. Peak memory stays under the model's own
#: (TensorFlow and weights) + DEFAULT_MAX_ACTIVE x DEFAULT_REQUEST_BYTES + DEFAULT_RESULT_BYTES.
DEFAULT_MAX_ACTIVE = 1
DEFAULT_MAX_WAITING = 3
DEFAULT_RESULT_BYTES = 128 << 20


@dataclass(frozen=True)
class Limits:
    """``max_bytes``: upload size; ``max_pixels``: pixels of an image or voxels of a volume;
    ``max_decompressed_bytes``: absolute cap on what a gzip upload may unpack to;
    ``max_request_bytes``: memory one analysis may take, estimated from the header
    (:func:`request_cost`)."""

    max_bytes: int = 64 << 20
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_decompressed_bytes: int = 1 << 30
    max_request_bytes: int = DEFAULT_REQUEST_BYTES


def share(limits: Limits, n: int) -> Limits:
    """The limits of one of ``n`` files analysed together (one per MR sequence of a model with
    named input channels), or of one channel of an ``n``-channel image: each gets 1/n of the
    variable part of ``max_request_bytes`` (the fixed part counted once), so the whole analysis
    stays within the request budget; the other limits apply to every file as they are."""
    if n <= 1:
        return limits
    variable = max(0, limits.max_request_bytes - REQUEST_FIXED_BYTES)
    return replace(limits, max_request_bytes=REQUEST_FIXED_BYTES + variable // n)


def request_cost(kind: str, pixels: int, sample_bytes: int, upload_bytes: int = 0) -> int:
    """Estimated peak memory (bytes) of analysing an upload: ``kind`` "image" (``pixels``) or
    a volume (voxels), ``sample_bytes`` per decoded pixel (all channels), the upload's size."""
    per = IMAGE_BYTES_PER_PIXEL if kind == "image" else VOLUME_BYTES_PER_VOXEL
    return REQUEST_FIXED_BYTES + int(upload_bytes) + int(pixels) * (per + 2 * max(1, sample_bytes))


def check_budget(what: str, shape: str, kind: str, pixels: int, sample_bytes: int,
                 upload_bytes: int, limits: Limits) -> None:
    """413 when :func:`request_cost` is above ``limits.max_request_bytes``."""
    cost = request_cost(kind, pixels, sample_bytes, upload_bytes)
    if cost > limits.max_request_bytes:
        raise UploadRejected(413, f"the {what} is too large to analyse here: {shape} "
                                  f"({sample_bytes} byte(s) a pixel) would need about "
                                  f"{cost / 2**20:,.0f} MB of server memory, more than the "
                                  f"{limits.max_request_bytes / 2**20:,.0f} MB one request may "
                                  "use; send a smaller or lower-bit-depth file")


def unsupported() -> UploadRejected:
    return UploadRejected(415, "unsupported file type: accepted are " + ", ".join(ACCEPTED)
                          + " (recognised by their content, not by the file name)")


def _nifti1_endian(head: bytes) -> str | None:
    """"<" or ">" if ``head`` starts a single-file NIfTI-1 header, else None."""
    if len(head) < NIFTI1_HEADER:
        return None
    for endian in "<>":
        if struct.unpack(endian + "i", head[:4])[0] == NIFTI1_HEADER:
            return endian if head[344:348] == NIFTI1_MAGIC else None
    return None


def detect(data: bytes) -> str:
    """The type of an upload from its first bytes (see the module table); raises 400/415."""
    if not data:
        raise UploadRejected(400, "the file is empty")
    # DICOM Part 10 first: its free 128-byte preamble may itself start with TIFF (or other) magic
    if data[DICOM_MAGIC_OFFSET:DICOM_MAGIC_OFFSET + 4] == b"DICM":
        return "dicom"
    if data.startswith(PNG_MAGIC):
        return "png"
    if data.startswith(JPEG_MAGIC):
        return "jpeg"
    if data[:4] in TIFF_MAGICS:
        return "tiff"
    if data.startswith(GZIP_MAGIC):
        return "nifti-gz"  # confirmed (or refused) while decompressing
    if data.startswith(NRRD_MAGIC):
        return "nrrd"
    if _nifti1_endian(data[:NIFTI1_HEADER]):
        return "nifti"
    if len(data) >= NIFTI1_HEADER and data[344:348] == NIFTI1_PAIR_MAGIC:
        raise UploadRejected(415, "a NIfTI header of a .hdr/.img pair: upload one .nii or "
                                  ".nii.gz file that holds header and data")
    raise unsupported()


def nifti_declared(head: bytes, limits: Limits, upload_bytes: int = 0) -> int | None:
    """Bytes a NIfTI-1 file with this header holds (None if the header's dimensions are broken:
    the reader then reports them); raises 413 when the volume has too many voxels or would
    take more memory than a request may use."""
    endian = _nifti1_endian(head)
    if endian is None:
        raise UploadRejected(415, "not a NIfTI-1 file (no n+1 header)")
    dims = struct.unpack(endian + "8h", head[40:56])
    bitpix = struct.unpack(endian + "h", head[72:74])[0]
    vox_offset = struct.unpack(endian + "f", head[108:112])[0]
    ndim = dims[0]
    if not 1 <= ndim <= 7 or any(d <= 0 for d in dims[1 : ndim + 1]) or bitpix <= 0:
        return None
    voxels = int(np.prod([int(d) for d in dims[1 : ndim + 1]], dtype=object))
    if voxels > limits.max_pixels:
        shape = "x".join(str(d) for d in dims[1 : ndim + 1])
        raise UploadRejected(413, f"the NIfTI volume is too large: {shape} = {voxels:,} voxels "
                                  f"(limit {limits.max_pixels:,})")
    check_budget("NIfTI volume", "x".join(str(d) for d in dims[1 : ndim + 1]), "volume", voxels,
                 (bitpix + 7) // 8, upload_bytes, limits)
    offset = int(vox_offset) if np.isfinite(vox_offset) and vox_offset >= 352 else 352
    return offset + voxels * ((bitpix + 7) // 8)


def gunzip_nifti(data: bytes, dest: Path, limits: Limits) -> None:
    """Decompress a gzip upload into ``dest`` in bounded steps; it must be a NIfTI-1 file and
    may unpack to no more than its header announces (plus a little) nor the absolute cap."""
    chunk = 1 << 20
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as gz, dest.open("wb") as out:
            head = gz.read(NIFTI1_HEADER)
            if _nifti1_endian(head) is None:
                raise UploadRejected(415, "a gzip file that does not hold a NIfTI-1 volume; "
                                          + unsupported().message)
            declared = nifti_declared(head, limits, len(data))
            cap = limits.max_decompressed_bytes
            if declared is not None:
                cap = min(cap, declared + NIFTI_SLACK)
            out.write(head)
            total = len(head)
            while True:
                block = gz.read(chunk)
                if not block:
                    break
                total += len(block)
                if total > cap:
                    raise UploadRejected(413, "the gzip file unpacks to more than "
                                              f"{cap:,} bytes, more than its NIfTI header "
                                              "announces or the server accepts")
                out.write(block)
    except UploadRejected:
        raise
    except EOFError:
        raise UploadRejected(400, "the gzip data is truncated (incomplete upload?)") from None
    except (OSError, zlib.error) as exc:
        raise UploadRejected(400, f"the gzip data is corrupt ({exc})") from None


#: bytes a decoded pixel takes, by PIL mode (others: one byte a band)
PIL_SAMPLE_BYTES = {"P": 3, "PA": 4, "I": 4, "F": 4, "I;16": 2, "I;16B": 2, "I;16L": 2,
                    "I;16N": 2}


def check_image_size(path: Path, kind: str, limits: Limits, upload_bytes: int = 0) -> None:
    """Width x height from the image header (nothing decoded); 413 above ``max_pixels`` or
    above the memory budget of a request."""
    from PIL import Image

    shape: tuple[int, ...] | None = None
    sample_bytes = 1
    try:
        with Image.open(path) as img:  # lazy: reads the header only
            shape = (int(img.size[1]), int(img.size[0]))
            sample_bytes = PIL_SAMPLE_BYTES.get(img.mode, len(img.getbands()))
    except Image.DecompressionBombError as exc:  # PIL's own, far higher limit
        raise UploadRejected(413, f"the image is too large ({exc})") from None
    except Exception:  # noqa: BLE001 - the reader reports unreadable images
        if kind == "tiff":
            try:
                import tifffile

                with tifffile.TiffFile(path) as tif:
                    shape = tuple(int(s) for s in tif.pages.first.shape)
                    sample_bytes = int(np.dtype(tif.pages.first.dtype).itemsize)
            except Exception:  # noqa: BLE001
                shape = None
    if shape is None:
        return
    pixels = int(np.prod(shape, dtype=object))  # channels count too where PIL cannot tell
    if pixels > limits.max_pixels:
        size = "x".join(str(s) for s in shape)
        raise UploadRejected(413, f"the image is too large: {size} = {pixels:,} pixels "
                                  f"(limit {limits.max_pixels:,})")
    channels = min(shape) if len(shape) == 3 and min(shape) <= 4 else 1  # tifffile's shapes
    check_budget("image", "x".join(str(s) for s in shape), "image", pixels // channels,
                 sample_bytes * channels, upload_bytes, limits)


def check_dicom(path: Path, limits: Limits, upload_bytes: int = 0) -> None:
    """Refuse deflated data sets and pixel data above the limit (file meta and header only)."""
    import pydicom
    from pydicom.filereader import read_file_meta_info

    try:
        meta = read_file_meta_info(path)
    except Exception as exc:  # noqa: BLE001
        raise UploadRejected(400, f"cannot read the DICOM file meta information ({exc})") from None
    if str(getattr(meta, "TransferSyntaxUID", "")) == DEFLATED_TRANSFER_SYNTAX:
        raise UploadRejected(415, "deflate-compressed DICOM data sets are not accepted; "
                                  "send the file uncompressed")
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as exc:  # noqa: BLE001
        raise UploadRejected(400, f"cannot read the DICOM header ({exc})") from None
    rows, cols = int(getattr(ds, "Rows", 0) or 0), int(getattr(ds, "Columns", 0) or 0)
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    samples = int(getattr(ds, "SamplesPerPixel", 1) or 1)
    pixels = rows * cols * frames * samples
    if pixels > limits.max_pixels:
        raise UploadRejected(413, f"the DICOM image is too large: {frames} frame(s) of "
                                  f"{rows}x{cols} (limit {limits.max_pixels:,} pixels)")
    bits = int(getattr(ds, "BitsAllocated", 16) or 16)
    check_budget("DICOM image", f"{frames} frame(s) of {rows}x{cols}",
                 "image" if frames == 1 else "volume", rows * cols * frames,
                 samples * max(1, (bits + 7) // 8), upload_bytes, limits)


def stage_nrrd(data: bytes, dest: Path, limits: Limits) -> None:
    """Check a NRRD upload's header (attached data only, size within the limits) and write it to
    ``dest``; gzip/bzip2 data is unpacked in bounded steps and stored raw."""
    import nrrd

    stream = io.BytesIO(data)
    try:
        header = nrrd.read_header(stream)
    except Exception as exc:  # noqa: BLE001 - pynrrd raises NRRDError, ValueError, ...
        raise UploadRejected(400, f"cannot read the NRRD header ({' '.join(str(exc).split())})"
                             ) from None
    offset = stream.tell()
    if header.get("data file", header.get("datafile")) is not None:
        raise UploadRejected(415, "a NRRD header that refers to a separate data file (.nhdr): "
                                  "upload one .nrrd file that holds header and data")
    try:
        sizes = [int(v) for v in header["sizes"]]
    except Exception:  # noqa: BLE001 - missing or broken field
        raise UploadRejected(400, "broken NRRD header: no valid 'sizes' field") from None
    voxels = int(np.prod(sizes, dtype=object)) if sizes else 0
    if voxels > limits.max_pixels:
        raise UploadRejected(413, f"the NRRD volume is too large: {'x'.join(map(str, sizes))} "
                                  f"= {voxels:,} voxels (limit {limits.max_pixels:,})")
    check_budget("NRRD volume", "x".join(map(str, sizes)), "volume", voxels,
                 nrrd_sample_bytes(header.get("type")), len(data), limits)
    encoding = str(header.get("encoding", "")).lower()
    if encoding not in ("gzip", "gz", "bzip2", "bz2"):
        dest.write_bytes(data)  # raw or text: no bigger than the upload
        return
    if int(header.get("line skip", header.get("lineskip", 0)) or 0):
        raise UploadRejected(415, "a compressed NRRD with 'line skip' is not accepted")
    skip = max(int(header.get("byte skip", header.get("byteskip", 0)) or 0), 0)
    # 8 bytes: the widest NRRD scalar type (the reader then checks the exact size)
    cap = min(limits.max_decompressed_bytes, skip + voxels * 8 + NIFTI_SLACK)
    head = re.sub(rb"(?mi)^encoding:[ \t]*\S+[ \t]*(?=\r?$)", b"encoding: raw", data[:offset],
                  count=1)
    total = 0
    try:
        with dest.open("wb") as out:
            out.write(head)
            for block in _unpack(encoding, data[offset:]):
                total += len(block)
                if total > cap:
                    raise UploadRejected(413, f"the NRRD data unpacks to more than {cap:,} "
                                              "bytes, more than its header announces or the "
                                              "server accepts")
                out.write(block)
    except UploadRejected:
        raise
    except (OSError, EOFError, zlib.error, ValueError) as exc:
        raise UploadRejected(400, f"the NRRD's compressed data is corrupt ({exc})") from None


def nrrd_sample_bytes(kind: Any) -> int:
    """Bytes of one NRRD sample from its header's ``type`` (8 when unknown: the widest)."""
    text = str(kind or "").lower()
    if any(k in text for k in ("double", "64", "long")):
        return 8
    if any(k in text for k in ("float", "32")) or text in ("int", "uint", "signed int",
                                                          "unsigned int"):
        return 4
    if any(k in text for k in ("short", "16")):
        return 2
    if any(k in text for k in ("char", "8")):
        return 1
    return 8


def _unpack(encoding: str, payload: bytes, chunk: int = 1 << 20):
    """Decompressed blocks of at most ``chunk`` bytes; 400 if the data ends before its end."""
    import bz2

    if encoding in ("gzip", "gz"):
        gz = zlib.decompressobj(zlib.MAX_WBITS | 16)
        pending = payload
        while not gz.eof:
            block = gz.decompress(pending, chunk)
            pending = gz.unconsumed_tail
            if block:
                yield block
            elif not pending:
                break
        complete = gz.eof
    else:
        bz = bz2.BZ2Decompressor()
        block = bz.decompress(payload, chunk)
        while True:
            if block:
                yield block
            if bz.eof or bz.needs_input:
                break
            block = bz.decompress(b"", chunk)
        complete = bz.eof
    if not complete:
        raise UploadRejected(400, "the NRRD's compressed data is truncated (incomplete upload?)")


def stage_upload(data: bytes, folder: Path, name: str, limits: Limits) -> tuple[InputItem, str]:
    """Check ``data`` and write it into ``folder`` (the server's) under a name the server
    chooses; returns the reader's input item (named ``name``) and the detected type."""
    if len(data) > limits.max_bytes:
        raise UploadRejected(413, f"the file is larger than the {limits.max_bytes:,}-byte limit")
    detected = detect(data)
    kind, file_name = FILE_NAMES[detected]
    path = folder / file_name
    if detected == "nifti-gz":
        gunzip_nifti(data, path, limits)
    elif detected == "nrrd":
        stage_nrrd(data, path, limits)
    else:
        if detected == "nifti":
            declared = nifti_declared(data[:NIFTI1_HEADER], limits, len(data))
            if declared is not None and len(data) > declared + NIFTI_SLACK:
                raise UploadRejected(400, f"the NIfTI file holds {len(data):,} bytes, more "
                                          f"than the {declared:,} its header announces")
        path.write_bytes(data)
        if kind == "image":
            check_image_size(path, detected, limits, len(data))
        elif kind == "dicom":
            check_dicom(path, limits, len(data))
    return InputItem(name, kind, path, (path,)), detected


__all__ = ["ACCEPTED", "DEFAULT_MAX_ACTIVE", "DEFAULT_MAX_PIXELS", "DEFAULT_MAX_WAITING",
           "DEFAULT_REQUEST_BYTES", "DEFAULT_RESULT_BYTES", "Limits", "UploadRejected",
           "check_budget", "detect", "gunzip_nifti", "nifti_declared", "request_cost",
           "share", "stage_nrrd", "stage_upload"]
