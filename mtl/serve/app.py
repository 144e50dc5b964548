"""The FastAPI application of ``mtl serve``: the page, ``POST /predict`` and the result files.

Routes (the OpenAPI schema is at ``/openapi.json``; there is no ``/docs`` page: Swagger UI
would load its scripts from a CDN, which a server used offline cannot reach):

=========================================== ==================================================
``GET /``                                   the page (one static HTML file, plain JavaScript)
``GET /api/info``                           model card line, classes, input size, calibration,
                                            limits, accepted types
``POST /predict``                           multipart form: ``file`` (+ ``axis``,
                                            ``pixel_spacing``) -> findings JSON with an ``id``;
                                            a model of named MR sequences: one field per
                                            sequence, named as the model names it (e.g.
                                            ``flair``), or one image holding them in ``file``
``GET /results/{id}``                       the same JSON again
``GET /results/{id}/findings.json``         the findings record (as ``mtl infer`` writes it)
``GET /results/{id}/mask.png``              images (and one-file DICOM): 0/255 mask, image size
``GET /results/{id}/mask.nii.gz``           volumes: uint8 label volume in the input's geometry
``GET /results/{id}/mask.nrrd``             NRRD uploads: uint8 label NRRD in the input's geometry
``GET /results/{id}/seg.dcm``               DICOM with position and orientation: a DICOM SEG
                                            referencing the uploaded file
``GET /results/{id}/overlay.png``           scan + mask outline, default slice
``GET /results/{id}/slices/{i}/overlay.png`` the same for slice ``i`` of a volume
``GET /results/{id}/slices/{i}/mask.png``   the mask of slice ``i``
=========================================== ==================================================

Errors are JSON ``{"detail": "..."}`` with 400 (unreadable or unusable file, bad option), 413
(too large: bytes, pixels, what a gzip file unpacks to, or the memory its analysis would take),
415 (not an accepted type by content), 404 (unknown or expired result), 422 (no ``file``
field), 403 (a POST from a web page of another origin), 503 with ``Retry-After`` (the server is
busy: ``max_active`` uploads are being analysed and ``max_waiting`` more wait their turn), 408
(the request did not arrive in time; see :mod:`mtl.serve.deadline`).
"""

from __future__ import annotations

import inspect
import json
import logging
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any, Callable, Iterable
from urllib.parse import urlsplit

from fastapi import FastAPI, File, Form, HTTPException, UploadFile
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel, ConfigDict, Field

import mtl
from mtl.data.preprocess import sequence_names
from mtl.infer.predict import Predictor
from mtl.infer.channels import display_channel
from mtl.serve.results import ID_PATTERN, ResultStore, StoredResult
from mtl.serve.service import BadRequest, Service
from mtl.serve.uploads import (
    ACCEPTED,
    DEFAULT_MAX_ACTIVE,
    DEFAULT_MAX_WAITING,
    DEFAULT_RESULT_BYTES,
    Limits,
)

log = logging.getLogger(__name__)

#: multipart boundaries and the small form fields on top of the file itself
FORM_OVERHEAD = 64 << 10
PAGE_CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
            "img-src 'self' blob: data:; connect-src 'self'; form-action 'self'; "
            "base-uri 'none'; frame-ancestors 'none'")
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")


# --------------------------------------------------------------------------- schema models


class ErrorBody(BaseModel):
    detail: str = Field(description="What is wrong, for people.")


class Info(BaseModel):
    name: str = "mtl"
    version: str
    classes: list[str] = Field(description="Tumor type classes of the model's type head.")
    image_size: int = Field(description="Side of the network input in pixels.")
    threshold: float
    max_upload_bytes: int
    max_pixels: int = Field(description="Largest image (pixels) or volume (voxels) accepted.")
    max_request_bytes: int = Field(description="Memory one analysis may take, estimated from "
                                               "the file's header; larger uploads get 413.")
    max_active: int = Field(description="Uploads analysed at the same time.")
    max_waiting: int = Field(description="Uploads that may wait for their turn; beyond, 503 "
                                         "with Retry-After.")
    uploads_in_progress: int = Field(description="Uploads being analysed or waiting now.")
    accepted: list[str]
    result_ttl_seconds: float
    max_results: int
    disclaimer: str
    model_card: str = Field(description="The model card in one line (training data, metrics "
                                        "and their split, version), or 'no model card'.")
    demo: bool = Field(description="True for a demo model trained on synthetic data only: "
                                   "not for real scans.")
    model_card_details: dict[str, Any] | None = Field(
        description="The full model card stored in the model file (None: none).")
    calibration: dict[str, Any] | None = Field(
        description="Temperatures applied to the presence and type probabilities (None: the "
                    "model is uncalibrated).")
    channels: list[str] | None = Field(
        None, description="The MR sequences the model takes as input channels, in order: "
                          "POST /predict takes one upload per sequence in multipart fields of "
                          "these names, or one image holding them as its channels in 'file'. "
                          "None: one grey image per slice, in 'file'.")
    overlay_channel: str | None = Field(
        None, description="The sequence overlays are drawn on (FLAIR where one is named so, "
                          "else the first); None for a grey model.")


class SliceInfo(BaseModel):
    index: int
    evaluated: bool = Field(description="False for constant slices, which are not run.")
    presence: float | None = Field(description="Presence probability of this slice.")
    area_px: int = Field(description="Tumor pixels on this slice.")
    area_mm2: float | None = Field(description="Tumor area on this slice, when the pixel "
                                               "size is known.")


class MaskLinks(BaseModel):
    png: str | None
    nifti: str | None
    dicom_seg: str | None = Field(None, description="DICOM uploads with position and "
                                                    "orientation: a DICOM SEG (seg.dcm).")
    nrrd: str | None = Field(None, description="NRRD uploads: a NRRD label volume with the "
                                               "input's geometry (mask.nrrd).")


class Links(BaseModel):
    self: str
    findings: str
    mask: str | None = Field(description="The mask in the input's own format (PNG for images, "
                                         "NIfTI for NIfTI volumes, NRRD for NRRD volumes).")
    masks: MaskLinks
    overlay: str
    slice_overlay: str = Field(description="Template: replace {index} by a slice index.")
    slice_mask: str = Field(description="Template: replace {index} by a slice index.")


class PredictResult(BaseModel):
    """The findings record of ``mtl infer`` (``findings.json``) plus what the page needs."""

    model_config = ConfigDict(extra="allow")

    id: str = Field(description="Result id (random) for the /results/{id}/... downloads.")
    case: str = Field(description="A safe short name made from the uploaded file's name.")
    source: str = Field(description="The uploaded file's name as sent (display only).")
    kind: str = Field(description="image, nifti, nrrd or dicom.")
    detected_type: str = Field(description="png, jpeg, tiff, nifti, nifti-gz, nrrd or dicom, "
                                           "from the content.")
    input: dict[str, Any]
    settings: dict[str, Any]
    findings: dict[str, Any] = Field(description=(
        "presence {probability, decision, threshold, slice}, type {label, probabilities}, "
        "tumor {pixels, area_px, area_mm2, volume_ml, largest_slice, centroid, bbox, slices, "
        "hemisphere}, pixel_area_mm2, ...; see mtl.infer.findings."))
    warnings: list[str]
    n_slices: int
    default_slice: int = Field(description="The slice to show first (largest tumor area, or "
                                           "highest presence probability).")
    slices: list[SliceInfo]
    links: Links
    expires_in_seconds: int
    disclaimer: str


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "Unreadable or unusable file, or a bad option."},
    413: {"model": ErrorBody, "description": "Too large: bytes, pixels/voxels, or what a gzip "
                                             "file unpacks to."},
    415: {"model": ErrorBody, "description": "Not an accepted type (checked by content)."},
    403: {"model": ErrorBody, "description": "Sent by a web page of another origin."},
    503: {"model": ErrorBody, "description": "Busy: too many uploads in progress; retry after "
                                             "the Retry-After header's seconds."},
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "Unknown or expired result, or no such file."}}


# --------------------------------------------------------------------------- ASGI middleware


SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class UploadQueue:
    """How many ``POST /predict`` requests are in progress (analysed or waiting for their
    turn), out of ``limit``; ``retry_after(in_flight)``: seconds a refused client should wait.
    Changed only on the event loop's thread."""

    def __init__(self, limit: int, retry_after: Callable[[int], int] | None = None) -> None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        self.limit = int(limit)
        self.retry_after = retry_after or (lambda in_flight: 5)
        self.in_flight = 0


class Guard:
    """Pure ASGI middleware: request body limit, Host and Origin checks, the upload queue, and
    safety headers.

    A declared ``Content-Length`` above ``max_body`` is answered 413 before anything is read;
    a body that streams past it (chunked uploads) stops with 413 as soon as it does. With
    ``allowed_hosts``, other ``Host`` headers get 400 (DNS-rebinding guard for a local server).

    Requests other than GET/HEAD/OPTIONS that carry an ``Origin`` header (browsers send one)
    must come from the server's own origin (the ``Origin``'s host and port are the ``Host``
    header's) or one of ``allowed_origins``; others get 403, so a page on another site cannot
    make a visitor's browser upload to this server. Requests without ``Origin`` (curl, scripts)
    are not affected.

    ``queue``: ``POST /predict`` requests accepted at once (:class:`UploadQueue`), counted from
    their headers to their answer (analysed or waiting for their turn); one more gets 503 with
    ``Retry-After``, its body received and dropped (not kept anywhere), or not even received
    when the client sent ``Expect: 100-continue`` (curl does for large files).
    """

    def __init__(self, app: Any, max_body: int, allowed_hosts: Iterable[str] | None = None,
                 *, allowed_origins: Iterable[str] = (), queue: UploadQueue | None = None
                 ) -> None:
        self.app = app
        self.max_body = int(max_body)
        self.allowed_hosts = None if allowed_hosts is None else {h.lower() for h in allowed_hosts}
        self.allowed_origins = {normal_origin(o) for o in allowed_origins}
        self.queue = queue

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        if self.allowed_hosts is not None:
            host = _host_name(headers.get(b"host", b"").decode("latin-1"))
            if host not in self.allowed_hosts:
                await _error(send, 400, "invalid Host header")
                return
        method = scope.get("method", "GET").upper()
        origin = headers.get(b"origin")
        if method not in SAFE_METHODS and origin is not None and not self._origin_ok(
                origin.decode("latin-1"), headers.get(b"host", b"").decode("latin-1")):
            await _error(send, 403, "cross-origin request refused: this server accepts uploads "
                                    "from its own page (mtl serve --allow-origin adds others)")
            return
        queue = self.queue if method == "POST" and scope.get("path") == "/predict" else None
        if queue is not None:
            if queue.in_flight >= queue.limit:
                seconds = queue.retry_after(queue.in_flight)
                if b"100-continue" not in headers.get(b"expect", b"").lower():
                    # read (and drop) what the client is sending: closing with unread data
                    # would reset the connection, and the client would never see the answer
                    await _discard_body(receive, self.max_body)
                await _error(send, 503, f"the server is busy: {queue.in_flight} uploads are "
                                        f"being analysed or waiting; retry in {seconds} s",
                             [(b"retry-after", str(seconds).encode())])
                return
            queue.in_flight += 1
        try:
            await self._checked(scope, receive, send, headers)
        finally:
            if queue is not None:
                queue.in_flight -= 1

    def _origin_ok(self, origin: str, host: str) -> bool:
        wanted = normal_origin(origin)
        if wanted in self.allowed_origins:
            return True
        scheme, _, name_port = wanted.partition("://")
        if scheme not in ("http", "https") or not host:
            return False  # "null" (sandboxed pages, file://) and other schemes
        default = "443" if scheme == "https" else "80"
        return name_port == _host_port(host, default)

    async def _checked(self, scope: dict, receive: Any, send: Any, headers: dict) -> None:
        length = headers.get(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                await _error(send, 400, "invalid Content-Length header")
                return
            if declared > self.max_body:
                await _error(send, 413, f"the upload is larger than the "
                                        f"{self.max_body - FORM_OVERHEAD:,}-byte limit")
                return
        received = 0

        async def limited_receive() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise HTTPException(413, f"the upload is larger than the "
                                             f"{self.max_body - FORM_OVERHEAD:,}-byte limit")
            return message

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                extra = [(b"x-content-type-options", b"nosniff"),
                         (b"x-frame-options", b"DENY"),
                         (b"referrer-policy", b"no-referrer")]
                names = {k.lower() for k, _ in message.get("headers", [])}
                if b"cache-control" not in names:
                    extra.append((b"cache-control", b"no-store"))
                message = {**message, "headers": list(message.get("headers", [])) + extra}
            await send(message)

        await self.app(scope, limited_receive, send_with_headers)


async def _discard_body(receive: Any, limit: int) -> None:
    """Receive a request's body and drop it, up to ``limit`` bytes (the request deadline of
    :mod:`mtl.serve.deadline` bounds the time)."""
    received = 0
    while received <= limit:
        message = await receive()
        if message["type"] != "http.request":
            return
        received += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


def normal_origin(origin: str) -> str:
    """``scheme://host:port`` in lower case with the port always written (an allow-list
    entry or an ``Origin`` header); anything unparsable comes back lower-cased as it was."""
    text = origin.strip().lower().rstrip("/")
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        return text
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return text
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    port = port or (443 if parts.scheme == "https" else 80)
    return f"{parts.scheme}://{host}:{port}"


def _host_port(header: str, default_port: str) -> str:
    """A ``Host`` header as ``host:port`` (lower case; the scheme's port when none is given)."""
    header = header.strip().lower()
    if header.startswith("["):
        end = header.find("]")
        name, rest = header[: end + 1], header[end + 1 :]
        return f"{name}:{rest[1:] or default_port}" if rest.startswith(":") or not rest else header
    name, _, port = header.partition(":")
    return f"{name}:{port or default_port}"


def _host_name(header: str) -> str:
    header = header.strip().lower()
    if header.startswith("["):
        return header[: header.find("]") + 1] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


async def _error(send: Any, status: int, detail: str,
                 extra: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close"),
                            (b"cache-control", b"no-store"),
                            (b"x-content-type-options", b"nosniff"), *(extra or [])]})
    await send({"type": "http.response.body", "body": body})


# --------------------------------------------------------------------------- the app


FILE_DESCRIPTION = ("A slice image (PNG, JPEG, TIFF), a NIfTI-1 volume (.nii or .nii.gz), a NRRD "
                    "volume (.nrrd) or a DICOM file; the type is taken from the content.")
AXIS_DESCRIPTION = "Volumes: slicing axis, axial, coronal, sagittal (from the affine) or 0, 1, 2."
SPACING_DESCRIPTION = "Images: ROW_MM,COL_MM (or one value) for areas in mm²."


def sequences_description(names: list[str] | None, context: int = 0) -> str:
    """What ``POST /predict`` takes from a model of named MR sequences ("" for a grey model);
    ``context``: the neighbouring slices it reads per side (it then takes volumes only)."""
    if not names:
        return ""
    fields = ", ".join(f"'{n}'" for n in names)
    if context:
        return (f" This model's input channels are the MR sequences {', '.join(names)}, each "
                f"slice read with the {context} slice(s) on either side of it: send one volume "
                f"per sequence in the multipart fields {fields} (NIfTI, NRRD or DICOM series of "
                "one geometry; each within the upload limits). A missing sequence is a 400 that "
                "names it; a 2-D image or a single volume is refused. Overlays are drawn on "
                f"{names[display_channel(names)]}.")
    return (f" This model's input channels are the MR sequences {', '.join(names)}, in this "
            f"order: send one file per sequence in the multipart fields {fields} (images, "
            "NIfTI, NRRD or DICOM files of one geometry; each within the upload limits), or "
            f"one {len(names)}-channel image holding them in this order in the field 'file'. "
            "A missing sequence is a 400 that names it; a grey image or a single volume is "
            f"refused. Overlays are drawn on {names[display_channel(names)]}.")


def _grey_predict(app: FastAPI, service: Service) -> None:
    """``POST /predict`` of a model that takes one grey image per slice: the field ``file``."""

    @app.post("/predict", response_model=PredictResult, responses=ERRORS,
              summary="Run the model on one uploaded scan")
    def predict(
        file: UploadFile = File(description=FILE_DESCRIPTION),
        axis: str = Form("axial", description=AXIS_DESCRIPTION),
        pixel_spacing: str | None = Form(None, description=SPACING_DESCRIPTION),
    ) -> dict[str, Any]:
        try:  # the file is read once this upload's turn comes (Service.analyse)
            result = service.analyse(file.file, file.filename, axis=axis,
                                     pixel_spacing=pixel_spacing)
        except BadRequest as exc:
            raise HTTPException(exc.status, exc.message) from None
        return result.payload


def sequences_endpoint(service: Service, names: list[str]) -> Callable[..., dict[str, Any]]:
    """``POST /predict`` of a model of named MR sequences: an optional ``file`` (one image
    holding every sequence as its channels) and one optional file field per sequence, named as
    the model names it (the names need not be Python identifiers, so the signature is built
    here; FastAPI reads it for parsing and for the OpenAPI schema)."""
    keys = [f"sequence_{i}" for i in range(len(names))]

    def predict(**form: Any) -> dict[str, Any]:
        file = form.get("file")
        given = {n: form[k] for n, k in zip(names, keys) if form.get(k) is not None}
        try:
            if file is not None and given:
                raise BadRequest(400, "give either one image holding every sequence in the "
                                      "field file, or one file per sequence in the fields "
                                      f"{', '.join(names)}, not both")
            if file is not None:
                result = service.analyse(file.file, file.filename, axis=form["axis"],
                                         pixel_spacing=form["pixel_spacing"])
            else:
                result = service.analyse_sequences(
                    {n: (f.file, f.filename) for n, f in given.items()}, axis=form["axis"],
                    pixel_spacing=form["pixel_spacing"])
        except BadRequest as exc:
            raise HTTPException(exc.status, exc.message) from None
        return result.payload

    keyword = inspect.Parameter.KEYWORD_ONLY
    params = [inspect.Parameter(
        "file", keyword, annotation=UploadFile | None,
        default=File(None, description=f"One {len(names)}-channel image holding the sequences "
                                       f"{', '.join(names)} as its channels, in this order "
                                       "(e.g. a TIFF slice of the LGG set); or leave it out "
                                       "and send one file per sequence."))]
    for name, key in zip(names, keys):
        params.append(inspect.Parameter(key, keyword, annotation=UploadFile | None, default=File(
            None, alias=name, description=f"The {name} sequence: " + FILE_DESCRIPTION)))
    params += [
        inspect.Parameter("axis", keyword, annotation=str,
                          default=Form("axial", description=AXIS_DESCRIPTION)),
        inspect.Parameter("pixel_spacing", keyword, annotation=str | None,
                          default=Form(None, description=SPACING_DESCRIPTION)),
    ]
    predict.__signature__ = inspect.Signature(params, return_annotation=dict[str, Any])  # type: ignore[attr-defined]
    return predict


def page_html() -> str:
    return (resources.files("mtl.serve") / "static" / "index.html").read_text(encoding="utf-8")


def create_app(
    predictor: Predictor,
    *,
    limits: Limits = Limits(),
    max_results: int = 20,
    result_ttl_seconds: float = 3600.0,
    max_result_bytes: int = DEFAULT_RESULT_BYTES,
    allowed_hosts: Iterable[str] | None = None,
    model_name: str | None = None,
    presence_threshold: float | None = None,
    max_active: int = DEFAULT_MAX_ACTIVE,
    max_waiting: int = DEFAULT_MAX_WAITING,
    allowed_origins: Iterable[str] = (),
) -> FastAPI:
    """The web app around one loaded :class:`Predictor` (shared by all requests).

    ``allowed_hosts``: accepted ``Host`` header names (None: any); ``mtl serve`` passes the
    loopback names when it binds to a loopback address. ``max_active`` uploads are analysed at
    once and ``max_waiting`` more may wait; beyond, 503 + ``Retry-After``. ``allowed_origins``:
    web origins besides the server's own that may POST (``http://host:port``).
    """
    if max_waiting < 0:
        raise ValueError(f"max_waiting must be >= 0, got {max_waiting}")
    names = sequence_names(predictor.preprocessing)
    store = ResultStore(max_items=max_results, ttl_seconds=result_ttl_seconds,
                        max_bytes=max_result_bytes)
    service = Service(predictor, limits=limits, store=store, model_name=model_name,
                      presence_threshold=presence_threshold, max_active=max_active)
    page = page_html()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        try:
            yield
        finally:
            service.close()

    app = FastAPI(
        title="mtl serve",
        version=mtl.__version__,
        description=(
            "Run an mtl multi-task model (tumor presence, tumor type, tumor mask) on an "
            "uploaded brain MRI slice image (PNG, JPEG, TIFF), NIfTI volume (.nii, .nii.gz), "
            "NRRD volume (.nrrd) or DICOM file. Types are recognised by content. Results stay in the server's "
            "memory for a limited time under a random id. Research software: not a medical "
            "device, outputs are not a diagnosis." + sequences_description(names, service.context)),
        lifespan=lifespan,
        docs_url=None,  # Swagger UI and ReDoc load from a CDN: blank pages offline
        redoc_url=None,
    )
    app.state.service = service
    queue = UploadQueue(max_active + max_waiting, service.retry_after)
    app.state.queue = queue
    # one file per sequence: each may be as large as one upload
    app.add_middleware(Guard, max_body=limits.max_bytes * max(1, len(names or ())) + FORM_OVERHEAD,
                       allowed_hosts=allowed_hosts, allowed_origins=allowed_origins, queue=queue)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index() -> HTMLResponse:
        return HTMLResponse(page, headers={"content-security-policy": PAGE_CSP})

    @app.get("/api/info", response_model=Info, summary="Model and server limits")
    def info() -> Info:
        return Info(version=mtl.__version__, classes=list(predictor.classes),
                    image_size=predictor.image_size, threshold=predictor.threshold,
                    max_upload_bytes=limits.max_bytes, max_pixels=limits.max_pixels,
                    max_request_bytes=limits.max_request_bytes, max_active=service.max_active,
                    max_waiting=max_waiting, uploads_in_progress=queue.in_flight,
                    accepted=list(ACCEPTED), result_ttl_seconds=store.ttl_seconds,
                    max_results=store.max_items,
                    disclaimer="Research software: not a medical device; results are not a "
                               "diagnosis.",
                    model_card=service.model_info["card_line"],
                    demo=service.model_info["demo"],
                    model_card_details=service.model_info["card"],
                    calibration=service.model_info["calibration"],
                    channels=names,
                    overlay_channel=names[display_channel(names)] if names else None)

    if names:
        app.post("/predict", response_model=PredictResult, responses=ERRORS,
                 summary="Run the model on one scan: one upload per MR sequence, or one "
                         "image holding them as its channels",
                 description=sequences_description(names, service.context).strip())(
            sequences_endpoint(service, names))
    else:
        _grey_predict(app, service)

    def _result(result_id: str) -> StoredResult:
        result = store.get(result_id)
        if result is None:
            raise HTTPException(404, "no such result: unknown id, or expired (results are kept "
                                     f"{store.ttl_seconds / 60:g} min, the last {store.max_items})")
        return result

    def _file(content: bytes, media_type: str, filename: str, inline: bool = False) -> Response:
        disposition = "inline" if inline else "attachment"
        return Response(content, media_type=media_type, headers={
            "content-disposition": f'{disposition}; filename="{filename}"'})

    def _slice_png(result_id: str, index: int, draw: Callable[[StoredResult, int], bytes],
                   what: str, inline: bool = False) -> Response:
        """The PNG ``draw`` makes of slice ``index`` of a result (404: no such slice)."""
        result = _result(result_id)
        if not 0 <= index < result.n_slices:
            raise HTTPException(404, f"no slice {index}: the case has slices 0 to "
                                     f"{result.n_slices - 1}")
        return _file(draw(result, index), "image/png", f"{result.name}_{what}_{index:03d}.png",
                     inline=inline)

    id_param = PathParam(description="The id returned by POST /predict.", max_length=64)

    @app.get("/results/{result_id}", response_model=PredictResult, responses=NOT_FOUND,
             summary="A stored result's JSON")
    def get_result(result_id: str = id_param) -> dict[str, Any]:
        result = _result(result_id)
        return {**result.payload, "expires_in_seconds": round(store.expires_in(result))}

    png = {"content": {"image/png": {}}, "description": "PNG image"}

    @app.get("/results/{result_id}/overlay.png", response_class=Response, summary="Overlay",
             responses={200: png, **NOT_FOUND})
    def overlay(result_id: str = id_param) -> Response:
        result = _result(result_id)
        return _file(service.overlay_png(result), "image/png", f"{result.name}_overlay.png",
                     inline=True)

    @app.get("/results/{result_id}/slices/{index}/overlay.png", response_class=Response,
             summary="Overlay of one slice", responses={200: png, **NOT_FOUND})
    def slice_overlay(index: int, result_id: str = id_param) -> Response:
        return _slice_png(result_id, index, service.overlay_png, "overlay", inline=True)

    @app.get("/results/{result_id}/slices/{index}/mask.png", response_class=Response,
             summary="Mask of one slice (0/255 PNG)", responses={200: png, **NOT_FOUND})
    def slice_mask(index: int, result_id: str = id_param) -> Response:
        return _slice_png(result_id, index, service.slice_mask_png, "mask")

    @app.get("/results/{result_id}/{file_name}", response_class=Response,
             summary="findings.json, mask.png, mask.nii.gz, mask.nrrd or seg.dcm of a result",
             responses={200: {"content": {"application/json": {}, "image/png": {},
                                          "application/gzip": {}, "application/dicom": {},
                                          "application/octet-stream": {}}},
                        **NOT_FOUND})
    def result_file(file_name: str, result_id: str = id_param) -> Response:
        result = _result(result_id)
        download = result.files.get(file_name)
        if download is None:
            raise HTTPException(404, f"no {file_name!r} for this result; it has "
                                     + ", ".join(sorted(result.files)) + ", overlay.png")
        return _file(download.content, download.media_type, download.filename)

    return app


__all__ = ["DEFAULT_MAX_ACTIVE", "DEFAULT_MAX_WAITING", "DEFAULT_RESULT_BYTES", "FORM_OVERHEAD",
           "Guard", "LOOPBACK_HOSTS", "UploadQueue", "create_app", "normal_origin", "page_html"]
