"""Load test of ``mtl serve``: peak server memory under concurrent uploads, and the answer to
one upload too many.

Starts ``mtl serve`` in a child process on a free loopback port (never another address) with a
tiny untrained model (or ``--model``) at its default limits (or the ``--serve`` options given),
reads from ``GET /api/info`` how many uploads it takes at once (``max_active + max_waiting``
= N), then sends N uploads at the same time, each followed by its overlay as the page asks for
it. Once the server reports N uploads in progress, an (N+1)-th is sent: the expected answer is
503 with ``Retry-After``. The server's peak RSS is its ``VmHWM`` (Linux, /proc), read at the
end; its RSS is also sampled while the uploads run, and read again when they are done.

Uploads (``--uploads``):

- ``volume``: a BraTS-shaped phantom NIfTI (240x240x155 int16, .nii.gz; ``--volume-size``);
- ``large-image``: an 8-bit grey PNG at the server's pixel limit (the most expensive image it
  accepts; a few hundred KB on the wire);
- ``mixed`` (default): both, alternating, plus, as the (N+1)-th, an RGB PNG declaring 7000x7000
  pixels that only its header could refuse if there were room.

Bounded in count and time: at most 32 uploads, ``--timeout`` seconds for the whole run (the
server is stopped in any case). Exit status 1 when the peak passes ``--bound-mb`` or the extra
request was not refused with 503 + Retry-After.

    python benchmarks/serve_load.py                       # minutes (10 on a busy 2-core machine)
    python benchmarks/serve_load.py --save    # also benchmarks/results/serve_load-<UTC>.json
    python benchmarks/serve_load.py --uploads large-image --serve=--max-active=2
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # the phantoms import TensorFlow here

from benchmarks.common import ROOT, git_revision, log, machine_facts, proc_status  # noqa: E402

MB = 1 << 20
MAX_UPLOADS = 32
DEFAULT_BOUND_MB = 2048
#: what the benchmark's default model is: small to build, same TensorFlow and encoder as any
TINY_MODEL = ["data.image_size=64", "model.decoder_filters=[16,16,8,8,8]", "model.head_units=8"]


# --------------------------------------------------------------------------- inputs


def build_tiny_model(path: Path) -> None:
    """An untrained model of the tiny config, saved by a child process (this one stays light)."""
    code = ("import sys; from benchmarks.fixtures import save_untrained_model; "
            "from mtl.config import load_config; "
            f"save_untrained_model(load_config(overrides={TINY_MODEL!r}), __import__('pathlib')"
            ".Path(sys.argv[1]))")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "SM_FRAMEWORK": "tf.keras"}
    subprocess.run([sys.executable, "-c", code, str(path)], cwd=ROOT, env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=900)


def volume_upload(folder: Path, side: int = 240, slices: int = 155) -> dict[str, Any]:
    """A phantom int16 NIfTI (.nii.gz), side x side x slices (BraTS' shape by default)."""
    from benchmarks.fixtures import write_volume

    name = f"volume_{side}x{side}x{slices}.nii.gz"
    path = write_volume(folder / name, side, slices)
    return {"name": name, "kind": "volume", "shape": [side, side, slices],
            "content": path.read_bytes()}


def large_png_upload(max_pixels: int) -> dict[str, Any]:
    """An 8-bit grey phantom PNG of side floor(sqrt(max_pixels)): the largest image accepted."""
    from PIL import Image

    from benchmarks.fixtures import phantom_slice

    side = int(max_pixels**0.5)
    image = Image.fromarray(phantom_slice(512)).resize((side, side), Image.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return {"name": f"large_{side}.png", "kind": "large-image", "shape": [side, side],
            "content": buffer.getvalue()}


def declared_png(width: int, height: int) -> dict[str, Any]:
    """An RGB PNG whose header declares width x height, holding almost no data (48 KB-class
    decompression bomb of the issue)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    content = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
               + chunk(b"IDAT", zlib.compress(b"\0" * 4096)) + chunk(b"IEND", b""))
    return {"name": f"declared_{width}x{height}.png", "kind": "declared-image",
            "shape": [height, width], "content": content}


def multipart(upload: dict[str, Any]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"{upload['name']}\"\r\nContent-Type: application/octet-stream\r\n\r\n")
    body = head.encode() + upload["content"] + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


# --------------------------------------------------------------------------- the server


class Server:
    """``mtl serve`` in a child process on 127.0.0.1, port chosen by the system."""

    def __init__(self, model: Path, options: list[str], startup_timeout: float) -> None:
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}
        command = [sys.executable, "-m", "mtl.cli", "serve", str(model), "--host", "127.0.0.1",
                   "--port", "0", *options]
        self.command = command
        self.proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self.url = self._wait_for_url(startup_timeout)
        self._wait_until_ready(startup_timeout)

    def _wait_for_url(self, timeout: float) -> str:
        found: dict[str, str] = {}
        done = threading.Event()

        def read() -> None:
            for line in self.proc.stdout:  # type: ignore[union-attr]
                self.lines.append(line.rstrip())
                match = re.search(r"mtl serve: (http://127\.0\.0\.1:\d+/)", line)
                if match and "url" not in found:
                    found["url"] = match.group(1)
                    done.set()
            done.set()

        threading.Thread(target=read, daemon=True).start()
        threading.Thread(target=lambda: [None for _ in self.proc.stderr], daemon=True).start()
        if not done.wait(timeout) or "url" not in found:
            self.stop()
            raise RuntimeError("mtl serve did not start: " + " | ".join(self.lines[-5:]))
        return found["url"]

    def _wait_until_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.info()
                return
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise RuntimeError("mtl serve does not answer") from None
                time.sleep(0.2)

    def info(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.url + "api/info", timeout=10) as res:
            return json.loads(res.read())

    def rss(self) -> dict[str, int]:
        return proc_status(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def post(url: str, upload: dict[str, Any], timeout: float) -> dict[str, Any]:
    body, content_type = multipart(upload)
    request = urllib.request.Request(url + "predict", data=body, method="POST",
                                     headers={"Content-Type": content_type})
    start = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as res:
            status, headers, payload = res.status, res.headers, json.loads(res.read())
    except urllib.error.HTTPError as exc:
        status, headers = exc.code, exc.headers
        try:
            payload = json.loads(exc.read())
        except ValueError:
            payload = {}
    except OSError as exc:  # a connection reset or refused: no answer at all
        return {"upload": upload["name"], "bytes": len(upload["content"]), "status": None,
                "seconds": round(time.monotonic() - start, 3), "retry_after": None,
                "detail": f"no answer: {exc}"}
    out = {"upload": upload["name"], "bytes": len(upload["content"]), "status": status,
           "seconds": round(time.monotonic() - start, 3),
           "retry_after": headers.get("Retry-After"), "detail": payload.get("detail")}
    if status == 200:  # the page asks for the overlay right after
        start = time.monotonic()
        with urllib.request.urlopen(url + payload["links"]["overlay"].lstrip("/"),
                                    timeout=timeout) as res:
            out["overlay_status"] = res.status
            out["overlay_bytes"] = len(res.read())
        out["overlay_seconds"] = round(time.monotonic() - start, 3)
    return out


# --------------------------------------------------------------------------- the run


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mtl-serve-load-") as tmp:
        folder = Path(tmp)
        if args.model:
            model, model_note = Path(args.model), "given model"
        else:
            log("building the tiny untrained model")
            model = folder / "tiny.keras"
            build_tiny_model(model)
            model_note = "tiny untrained model (" + ", ".join(TINY_MODEL) + ")"
        log("starting mtl serve")
        server = Server(model, args.serve, startup_timeout=args.timeout)
        try:
            info = server.info()
            idle = server.rss()
            # a server from before the upload queue has no such fields: give --clients
            capacity = int(info.get("max_active", 0)) + int(info.get("max_waiting", 0))
            n = min(args.clients or capacity, MAX_UPLOADS)
            if n < 1:
                raise SystemExit("this server does not say how many uploads it takes: "
                                 "give --clients")
            kinds = {"volume": ["volume"], "large-image": ["large-image"],
                     "mixed": ["large-image", "volume"]}[args.uploads]
            made: dict[str, dict[str, Any]] = {}
            if "volume" in kinds:
                made["volume"] = volume_upload(folder, *args.volume_size)
            if "large-image" in kinds:
                made["large-image"] = large_png_upload(int(info["max_pixels"]))
            uploads = [made[kinds[i % len(kinds)]] for i in range(n)]
            extra = (declared_png(7000, 7000) if args.uploads == "mixed"
                     else made[kinds[0]])
            log(f"server {server.url} (idle RSS {idle.get('VmRSS', 0) / MB:.0f} MB); "
                f"{n} concurrent uploads, then one more")

            samples: list[tuple[float, int]] = []
            stop = threading.Event()

            def sample() -> None:
                while not stop.is_set():
                    rss = server.rss().get("VmRSS")
                    if rss:
                        samples.append((round(time.monotonic() - started, 2), rss))
                    stop.wait(0.05)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            remaining = max(10.0, args.timeout - (time.monotonic() - started))
            with ThreadPoolExecutor(n) as pool:
                futures = [pool.submit(post, server.url, u, remaining) for u in uploads]
                seen_full, deadline = False, time.monotonic() + min(remaining, 120)
                full = min(n, capacity) if capacity else n  # uploads the server takes at once
                while time.monotonic() < deadline and not all(f.done() for f in futures):
                    if server.info().get("uploads_in_progress", full) >= full:
                        seen_full = "uploads_in_progress" in info
                        break
                    time.sleep(0.05)
                extra_answer = post(server.url, extra, remaining)
                answers = [f.result(timeout=remaining) for f in futures]
            time.sleep(1.0)
            stop.set()
            sampler.join(5)
            after = server.rss()
            info_after = server.info()
        finally:
            server.stop()
    peak = after.get("VmHWM") or max((r for _, r in samples), default=0)
    refused = extra_answer["status"] == 503 and bool(extra_answer["retry_after"])
    result = {
        "benchmark": "serve_load",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "server_command": " ".join(["mtl serve MODEL --host 127.0.0.1 --port 0", *args.serve]),
        "model": model_note,
        "limits": {k: info.get(k) for k in ("max_upload_bytes", "max_pixels", "max_request_bytes",
                                            "max_active", "max_waiting", "max_results")},
        "uploads": [{k: v for k, v in u.items() if k != "content"} | {"bytes": len(u["content"])}
                    for u in {id(u): u for u in [*uploads, extra]}.values()],
        "concurrent": n,
        "queue_full_seen": seen_full,
        "answers": answers,
        "extra_request": extra_answer,
        "extra_refused_503_retry_after": refused,
        "rss_idle_bytes": idle.get("VmRSS"),
        "rss_peak_bytes": peak,
        "rss_after_bytes": after.get("VmRSS"),
        "rss_samples": samples[:: max(1, len(samples) // 400)],
        "uploads_in_progress_after": info_after.get("uploads_in_progress"),
        "bound_bytes": int(args.bound_mb * MB),
        "peak_within_bound": bool(peak) and peak <= args.bound_mb * MB,
        "seconds": round(time.monotonic() - started, 1),
        "machine": machine_facts(),
        "git": git_revision(),
    }
    return result


def summary(result: dict[str, Any]) -> str:
    statuses = ", ".join(f"{a['upload']}: {a['status']}" for a in result["answers"])
    extra = result["extra_request"]
    return "\n".join([
        f"mtl serve load test ({result['model']}), {result['concurrent']} concurrent uploads "
        f"(queue full seen: {result['queue_full_seen']})",
        f"  answers: {statuses}",
        f"  upload {result['concurrent'] + 1} ({extra['upload']}): {extra['status']} "
        f"Retry-After {extra['retry_after']} - {extra['detail']}",
        f"  server RSS: idle {result['rss_idle_bytes'] / MB:.0f} MB, peak "
        f"{result['rss_peak_bytes'] / MB:.0f} MB (bound {result['bound_bytes'] / MB:.0f} MB: "
        f"{'met' if result['peak_within_bound'] else 'NOT met'}), after "
        f"{result['rss_after_bytes'] / MB:.0f} MB; {result['seconds']} s",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="a .keras model (default: a tiny untrained one)")
    parser.add_argument("--uploads", choices=["mixed", "volume", "large-image"], default="mixed")
    parser.add_argument("--volume-size", type=int, nargs=2, default=[240, 155],
                        metavar=("SIDE", "SLICES"), help="the phantom volume's shape")
    parser.add_argument("--clients", type=int, default=0,
                        help="concurrent uploads (default: what the server takes at once)")
    parser.add_argument("--serve", action="append", default=[], metavar="OPTION",
                        help="an mtl serve option, e.g. --serve=--max-active=2 (repeatable)")
    parser.add_argument("--bound-mb", type=float, default=DEFAULT_BOUND_MB,
                        help="peak server RSS that counts as met")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds for the whole run")
    parser.add_argument("--save", action="store_true",
                        help="write benchmarks/results/serve_load-<UTC>.json")
    parser.add_argument("--out", help="write the JSON here")
    args = parser.parse_args(argv)
    if not 0 <= args.clients <= MAX_UPLOADS:
        parser.error(f"--clients: 1 to {MAX_UPLOADS}")
    if any(re.match(r"--(host|port)\b", o) for o in args.serve):
        parser.error("--serve: the load test always uses 127.0.0.1 and a free port")
    result = run(args)
    print(summary(result))
    out = args.out or (ROOT / "benchmarks" / "results" / (
        "serve_load-" + datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + ".json")
        if args.save else None)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=1) + "\n")
        log(f"wrote {out}")
    return 0 if result["peak_within_bound"] and result["extra_refused_503_retry_after"] else 1


if __name__ == "__main__":
    sys.exit(main())
