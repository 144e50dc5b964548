"""``mtl serve``: a web page and JSON API around one trained model.

Registered on the ``mtl`` group in :mod:`mtl.cli` with ``main.add_command(serve)``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import re
import socket
from pathlib import Path
from typing import Any, Iterator

import click

from mtl.infer.command import (
    checked, ensemble_option, largest_component_option, mask_rule_option, threshold_value,
)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("SM_FRAMEWORK", "tf.keras")

from mtl.serve.deadline import DEFAULT_REQUEST_TIMEOUT  # noqa: E402 - no heavy imports
from mtl.serve.uploads import (  # noqa: E402
    DEFAULT_MAX_ACTIVE,
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_WAITING,
    DEFAULT_REQUEST_BYTES,
    DEFAULT_RESULT_BYTES,
)

#: seconds an idle keep-alive connection stays open (uvicorn's default)
KEEP_ALIVE_SECONDS = 5.0


def bind_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to host:port (port 0: a free one); ClickException if impossible."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise click.ClickException(f"--host {host}: cannot resolve ({exc.strerror})") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise click.ClickException(f"cannot listen on {host}:{port} ({exc.strerror})") from None
    sock.set_inheritable(True)
    return sock


def is_loopback(host: str, sock: socket.socket) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(sock.getsockname()[0]).is_loopback
    except ValueError:
        return False


def url_for(sock: socket.socket) -> str:
    address, port = sock.getsockname()[:2]
    shown = f"[{address}]" if ":" in address else address
    return f"http://{shown}:{port}/"


@contextlib.contextmanager
def mtl_log_level(level: str) -> Iterator[None]:
    """``--log-level`` for mtl's own messages too (the server's: uvicorn's), while serving:
    ``error`` hides mtl's warnings, ``debug`` shows why each refused upload was refused, with
    the traceback of a file that could not be read."""
    logger = logging.getLogger("mtl")
    before = logger.level
    logger.setLevel(getattr(logging, level.upper()))
    try:
        yield
    finally:
        logger.setLevel(before)


def make_server(app: Any, log_level: str = "warning",
                request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
                keep_alive: float = KEEP_ALIVE_SECONDS) -> Any:
    """The uvicorn server for ``app``: a whole request must arrive within ``request_timeout``
    seconds (:mod:`mtl.serve.deadline`), idle keep-alive connections close after
    ``keep_alive``."""
    import uvicorn

    from mtl.serve.deadline import base_protocol, deadline_protocol

    config = uvicorn.Config(app, log_level=log_level, access_log=log_level in ("info", "debug"),
                            timeout_graceful_shutdown=5, timeout_keep_alive=keep_alive,
                            http=deadline_protocol(base_protocol("auto"), request_timeout))
    return uvicorn.Server(config)


def run_server(app: Any, sock: socket.socket, log_level: str = "warning",
               request_timeout: float = DEFAULT_REQUEST_TIMEOUT) -> None:
    """Serve ``app`` on the bound socket until interrupted (one process: one model)."""
    make_server(app, log_level, request_timeout).run(sockets=[sock])


@click.command("serve", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model", type=click.Path(exists=True, dir_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Anything but a loopback address lets other machines "
                   "upload scans: there is no authentication.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535),
              help="TCP port (0: any free port).")
@click.option("--max-upload-mb", default=64.0, show_default=True,
              type=click.FloatRange(0, min_open=True), help="Largest accepted upload.")
@click.option("--max-megapixels", default=DEFAULT_MAX_PIXELS / 1e6, show_default=True,
              type=click.FloatRange(0, min_open=True),
              help="Largest image (million pixels) or volume (million voxels) accepted.")
@click.option("--max-request-mb", default=DEFAULT_REQUEST_BYTES / 2**20, show_default=True,
              type=click.FloatRange(0, min_open=True),
              help="Memory one analysis may take, estimated from the file's header before "
                   "decoding; larger uploads are refused (413).")
@click.option("--max-active", default=DEFAULT_MAX_ACTIVE, show_default=True,
              type=click.IntRange(min=1),
              help="Uploads analysed at the same time (each within --max-request-mb).")
@click.option("--max-waiting", default=DEFAULT_MAX_WAITING, show_default=True,
              type=click.IntRange(min=0),
              help="Uploads that may wait for their turn; more get 503 with Retry-After.")
@click.option("--result-memory-mb", default=DEFAULT_RESULT_BYTES / 2**20, show_default=True,
              type=click.FloatRange(0, min_open=True),
              help="Memory for the results kept for download (the oldest go first).")
@click.option("--request-timeout", default=DEFAULT_REQUEST_TIMEOUT, show_default=True,
              type=click.FloatRange(0, min_open=True),
              help="Seconds a whole request (headers and upload) may take to arrive; slower "
                   "ones get 408 and are closed.")
@click.option("--allow-origin", "allow_origins", multiple=True, metavar="URL",
              help="Another web origin (http://host:port) whose pages may POST here "
                   "(repeatable). By default only the server's own page may; requests "
                   "without an Origin header (curl, scripts) are not affected.")
@click.option("--keep-results", default=20, show_default=True, type=click.IntRange(min=1),
              help="Results kept in memory for download (the newest).")
@click.option("--result-minutes", default=60.0, show_default=True,
              type=click.FloatRange(0, min_open=True),
              help="How long a result can be downloaded.")
@click.option("--threshold", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              default=0.5, show_default=True, callback=checked(threshold_value),
              help="Tumor probability threshold (mask and "
                                                   "presence decision).")
@click.option("--tta", is_flag=True, help="Flip test-time augmentation.")
@mask_rule_option
@largest_component_option("case (3-D for volumes)")
@ensemble_option
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True,
              help="Slices per network call.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
              default="warning", show_default=True,
              help="Log level of the server and of mtl's own messages (info: access log; "
                   "debug: why each refused upload was refused).")
def serve(model, host, port, max_upload_mb, max_megapixels, max_request_mb, max_active,
          max_waiting, result_memory_mb, request_timeout, allow_origins, keep_results,
          result_minutes, threshold, tta, mask_rule, largest_component, ensemble,
          batch_size, log_level) -> None:
    """Serve MODEL: a web page and a JSON API (POST /predict) for uploaded scans.

    Upload a slice image (PNG, JPEG, TIFF), a NIfTI volume (.nii, .nii.gz) or a DICOM file;
    get presence and type probabilities, tumor area or volume, an overlay, and the mask and
    findings to download. The model is loaded once. Research use, not a diagnosis.
    """
    from mtl.infer.predict import ModelError, Predictor
    from mtl.model.card import card_line, model_card, short_model_path
    from mtl.serve.app import LOOPBACK_HOSTS, create_app, normal_origin
    from mtl.serve.uploads import Limits

    for origin in allow_origins:
        if not re.fullmatch(r"https?://(\[[^\]/]+\]|[^:/\[\]]+):\d+", normal_origin(origin)):
            raise click.BadParameter(f"{origin!r}: give an origin as http://host:port",
                                     param_hint="--allow-origin")

    ensemble_files = (model, *ensemble)
    sock = bind_socket(host, port)
    try:
        try:
            predictor = Predictor.from_file(model, ensemble=ensemble, threshold=threshold,
                                            tta=tta, largest_component=largest_component,
                                            batch_size=batch_size, mask_rule=mask_rule)
        except (ModelError, ValueError) as exc:  # ValueError: members that cannot be averaged
            raise click.ClickException(str(exc)) from None
        predictor.warm_up()  # the first upload should not wait for tracing and compiling
        loopback = is_loopback(host, sock)
        limits = Limits(max_bytes=int(max_upload_mb * (1 << 20)),
                        max_pixels=int(max_megapixels * 1e6),
                        max_request_bytes=int(max_request_mb * (1 << 20)))
        app = create_app(predictor, limits=limits, max_results=keep_results,
                         result_ttl_seconds=result_minutes * 60,
                         max_result_bytes=int(result_memory_mb * (1 << 20)),
                         allowed_hosts=LOOPBACK_HOSTS if loopback else None,
                         model_name=" + ".join(short_model_path(m) for m in ensemble_files)
                         if ensemble else Path(model).name,
                         max_active=max_active,
                         max_waiting=max_waiting, allowed_origins=allow_origins)
        url = url_for(sock)
        click.echo(f"mtl serve: {url}")
        shown = " + ".join(str(m) for m in ensemble_files)
        click.echo(f"  model {shown}: classes {', '.join(predictor.classes)}; "
                   f"input {predictor.image_size} px")
        click.echo(f"  {card_line(model_card(predictor.model))}")
        click.echo(f"  API: POST {url}predict  (schema {url}openapi.json)")
        click.echo(f"  limits: {max_active} upload(s) analysed at a time, {max_waiting} waiting "
                   f"(then 503); {max_request_mb:g} MB memory per analysis, "
                   f"{result_memory_mb:g} MB for kept results")
        if not loopback:
            click.echo(f"  warning: listening on {host}, not a loopback address: anyone who "
                       "can reach this machine can upload scans (no authentication)", err=True)
        click.echo("  Ctrl+C to stop")
        with mtl_log_level(log_level):
            run_server(app, sock, log_level, request_timeout)
    finally:
        sock.close()


__all__ = ["KEEP_ALIVE_SECONDS", "bind_socket", "make_server", "run_server", "serve", "url_for"]
