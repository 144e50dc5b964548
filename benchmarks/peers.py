"""mtl against the same network in PyTorch/MONAI, side by side, in one run.

    python benchmarks/peers.py                                  # 128 px, batch 16, 3 rounds
    python benchmarks/peers.py --out benchmarks/results/peers.json
    python benchmarks/peers.py --quick                          # tiny: checks the script works
    python benchmarks/peers.py --set train.jit_compile=true     # mtl with a train.* setting

The peer is what a user would pick instead of mtl: MONAI's ``FlexibleUNet`` (resnet18 encoder,
1 input channel, one mask channel, the same decoder widths, no pretrained weights) with the same
presence/type heads on the pooled bottleneck (global average + max pooling, dropout, a dense
layer, two linear outputs), a loss of the same shape (mask: pixel BCE + soft Dice per image;
presence: BCE; type: cross-entropy), Adam, in PyTorch's default eager mode on the CPU. It needs
the optional extra ``pip install -e ".[bench]"`` (torch and monai; mtl itself never imports
them).

Each side runs in its own child process (``python benchmarks/peers.py --child mtl|peer``, one
JSON line back), rounds interleaved ``mtl, peer, mtl, peer, ...``, so machine noise hits both
alike; the two processes of a round run back to back, never at the same time. Per child:

- training: random images with blob masks held in memory, ``--warmup`` + ``--steps`` training
  steps after 2 untimed ones (tracing, oneDNN primitive creation); images/s over the ``--steps``
  after the first ``--warmup``, from per-step timestamps. mtl: ``model.fit`` of
  ``mtl.train.build_model`` (mtl's default training step as users run it, with its defaults
  for ``train.jit_compile`` and ``train.steps_per_execution`` unless ``--set`` changes them;
  ``train.precision: float32``), as ``benchmarks/train_budget.py`` times it; peer:
  ``zero_grad``, forward, loss, ``backward``, ``step``.
- inference, the network alone on prepared inputs: batch 1 latency (median over
  ``--latency-repeats`` calls) and batch ``--batch`` throughput (images/s from the median call
  over ``--throughput-repeats``). mtl: ``mtl.model.inference.compiled_forward``, what
  ``mtl infer`` / ``mtl serve`` run; peer: ``eval()`` under ``torch.inference_mode()``, sigmoid
  and softmax applied, outputs as numpy arrays.
- FLOPs and parameters (first round only, after timing): mtl through ``benchmarks/flops.py``
  (TF's profiler, and the Conv2D/Dense layer count), the peer through
  ``torch.utils.flop_counter.FlopCounterMode`` (convolutions and matrix products). Both count
  a multiply-accumulate as 2 FLOPs.

PyTorch gets ``torch.set_num_threads(--threads)``, by default the CPUs this process may use
(affinity, capped by a cgroup quota); TensorFlow keeps its default (one thread per usable core).
Both children see no GPU (``CUDA_VISIBLE_DEVICES=""``): the comparison is CPU against CPU.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

if __package__ in (None, ""):  # run as a file: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from benchmarks.common import (  # noqa: E402
    ROOT, _cgroup_cpu_limit, _cpuinfo, add_int_options, git_revision, isa_caps, loadavg, log,
    parse_with_defaults, publish, require_at_least, results_head, script_parser, stats,
    table_footer,
)

SIDES = ("mtl", "peer")
#: the decoder of experiments/reference.yaml and shared_real.yaml (issue 18's comparison)
DECODER = (128, 64, 32, 16, 16)
CLASSES = 4
HEAD_UNITS = 256
HEAD_DROPOUT = 0.3
LEARNING_RATE = 1e-3
RESULT_MARK = "PEERS-RESULT "
EXTRA_HINT = 'pip install -e ".[bench]"'

FULL = {"size": 128, "batch": 16, "steps": 10, "warmup": 3, "rounds": 3,
        "latency_repeats": 30, "throughput_repeats": 5}
#: --quick: proves the script runs end to end in seconds of work; measures nothing
QUICK = {"size": 32, "batch": 2, "steps": 2, "warmup": 1, "rounds": 1,
         "latency_repeats": 3, "throughput_repeats": 2}
#: two FLOP counts within this fraction of each other count as "the same"
FLOPS_TOLERANCE = 0.02


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity, capped by a cgroup v2 quota."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:
        n = os.cpu_count() or 1
    quota = _cgroup_cpu_limit()
    if quota:
        n = min(n, max(1, math.ceil(quota)))
    return n


def missing_extra() -> list[str]:
    """The peer's packages that are not installed."""
    return [name for name in ("torch", "monai") if importlib.util.find_spec(name) is None]


# --------------------------------------------------------------------------- data (both sides)


def random_batches(n_batches: int, batch: int, size: int, seed: int = 0) -> list[dict[str, Any]]:
    """Random images in [0, 1) with one disc-shaped mask each, random presence and type: the
    shapes of mtl's training batches, NHWC, as numpy."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    out = []
    for _ in range(n_batches):
        centres = rng.uniform(0.3, 0.7, (batch, 2)) * size
        mask = (((yy[None] - centres[:, :1, None]) ** 2 + (xx[None] - centres[:, 1:, None]) ** 2)
                < (size / 8) ** 2).astype(np.float32)[..., None]
        out.append({
            "image": rng.random((batch, size, size, 1), dtype=np.float32),
            "mask": mask,
            "presence": rng.integers(0, 2, (batch, 1)).astype(np.float32),
            "type": rng.integers(0, CLASSES, batch).astype(np.int64),
        })
    return out


def mtl_config(size: int, batch: int, backbone: str, overrides: dict[str, Any] | None = None):
    """The network both sides build, as an mtl config (1 channel, :data:`DECODER`, the heads,
    float32, Adam at :data:`LEARNING_RATE`), with further ``overrides`` (``train.*``)."""
    from mtl.config import load_config

    config = load_config(None, {
        "data.image_size": size, "data.channels": 1, "train.batch_size": batch,
        "model.backbone": backbone, "model.decoder_filters": list(DECODER),
        "model.head_units": HEAD_UNITS, "model.head_dropout": HEAD_DROPOUT,
        "train.precision": "float32", "train.learning_rate": LEARNING_RATE, **(overrides or {}),
    })
    if len(config.data.classes) != CLASSES:
        raise RuntimeError(f"mtl's default class list changed: {config.data.classes}")
    return config


def mtl_inputs(batch: dict[str, Any]) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """(image, targets, sample weights) of a :func:`random_batches` batch as mtl's pipeline
    makes them: presence, type and mask labelled, no box, no pixel spacing."""
    n = len(batch["image"])
    targets = {"presence": batch["presence"], "type": batch["type"].astype(np.int32),
               "mask": batch["mask"], "box": np.zeros_like(batch["mask"]),
               "spacing": np.full((n, 2), np.nan, np.float32)}
    weights = {k: np.ones(n, np.float32) for k in ("presence", "type", "mask")}
    weights["box"] = np.zeros(n, np.float32)
    return batch["image"], targets, weights


class Phases:
    """Wall and CPU seconds of a child's phases (import, build, tracing, ...), for the JSON:
    where a child's time goes besides the timed figures."""

    def __init__(self) -> None:
        self._last = (time.perf_counter(), time.process_time())
        self.seconds: dict[str, dict[str, float]] = {}

    def mark(self, name: str) -> None:
        now = (time.perf_counter(), time.process_time())
        self.seconds[name] = {"wall": round(now[0] - self._last[0], 3),
                              "cpu": round(now[1] - self._last[1], 3)}
        self._last = now


def _latencies(fn: Callable[[], Any], repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def _infer_figures(predict: Callable[[Any], Any], images: Any, args: argparse.Namespace,
                   phases: Phases) -> dict[str, Any]:
    """Batch-1 latency and batch throughput of ``predict`` on the first image and the first
    ``--batch`` images of ``images``, after 3 untimed calls of each; marks the phase "infer"."""
    x1, xb = images[:1], images[: args.batch]
    for _ in range(3):  # warm-up: tracing, primitive creation, both shapes
        predict(x1)
        predict(xb)
    lat = _latencies(lambda: predict(x1), args.latency_repeats)
    thr = _latencies(lambda: predict(xb), args.throughput_repeats)
    phases.mark("infer")
    return {
        "batch1_seconds": lat,
        "batch1_ms": float(np.median(lat) * 1000),
        "batch_seconds": thr,
        "batch_images_per_s": float(args.batch / np.median(thr)),
    }


def _child_result(args: argparse.Namespace, phases: Phases, figures: dict[str, Any],
                  count: Callable[[], tuple[dict[str, Any], dict[str, Any]]]) -> dict[str, Any]:
    """A child's result: ``figures`` (side, what, training and inference figures, versions,
    threads); with ``--flops``, its FLOPs and parameters from ``count()`` (the phase "flops");
    the seconds of its phases."""
    out = dict(figures)
    if args.flops:
        out["flops"], out["parameters"] = count()
        phases.mark("flops")
    out["phase_seconds"] = phases.seconds
    return out


# --------------------------------------------------------------------------- the mtl child


def child_mtl(args: argparse.Namespace) -> dict[str, Any]:
    phases = Phases()
    os.environ.setdefault("SM_FRAMEWORK", "tf.keras")
    import mtl  # noqa: F401 - before TensorFlow, as the mtl command imports it (mtl.kernels)
    import keras
    import tensorflow as tf

    from benchmarks.flops import analytic_flops, model_flops
    from benchmarks.train_speed import fit_steps
    from mtl.config import parse_override
    from mtl.kernels import onednn_enabled
    from mtl.model.inference import compiled_forward
    from mtl.model.inference_copy import inference_copy
    from mtl.model.weight_gradient import resolve_weight_gradient
    from mtl.train import build_model

    phases.mark("import")
    config = mtl_config(args.size, args.batch, args.backbone,
                        dict(parse_override(o) for o in args.set))  # train.* only (parse_args)
    keras.utils.set_random_seed(0)
    model = build_model(config)
    phases.mark("build")
    batches = random_batches(args.warmup + args.steps, args.batch, args.size)
    stacked = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
    data = (tf.data.Dataset.from_tensor_slices(mtl_inputs(stacked))
            .batch(args.batch, drop_remainder=True).cache().repeat())

    # whole executions where train.steps_per_execution is N > 1: steps rounded up to multiples
    per = int(model.steps_per_execution)
    whole = lambda n: -(-n // per) * per  # noqa: E731
    fit_steps(model, data, warmup=0, steps=whole(2), batch=args.batch)  # untimed: tracing
    phases.mark("train_warmup")
    train = fit_steps(model, data, warmup=whole(args.warmup), steps=whole(args.steps),
                      batch=args.batch)
    phases.mark("train_timed")

    infer = _infer_figures(compiled_forward(model, args.size, 1), stacked["image"], args, phases)

    def count() -> tuple[dict[str, Any], dict[str, Any]]:
        counted = model_flops(model.net, (args.size, args.size, 1))
        flops = {
            "method": "benchmarks/flops.py: " + counted["method"]
                      + "; conv_dense = its Conv2D/Dense layer count",
            "forward_per_image": counted["forward_flops_per_image"],
            "forward_per_image_conv_dense": int(round(
                counted["analytic_forward_gflop_per_image"] * 1e9)),
            # as compiled_forward runs it: batch norm folded, the decoder's upsampled
            # convolutions at the coarse resolution (mtl.model.inference_copy)
            "inference_per_image_conv_dense": analytic_flops(inference_copy(model.net))["total"],
            "by_op": counted["profiler_by_op_type"],
        }
        size_of = lambda ws: int(sum(int(np.prod(w.shape)) for w in ws))  # noqa: E731
        return flops, {"trainable": size_of(model.net.trainable_weights),
                       "batchnorm_statistics": size_of(model.net.non_trainable_weights)}

    return _child_result(args, phases, {
        "side": "mtl",
        "what": f"mtl.train.build_model: segmentation-models Unet({args.backbone}), decoder "
                f"{list(DECODER)}, presence/type heads; model.fit; train.precision float32"
                f"{''.join('; ' + o for o in args.set)}; jit_compile {bool(model.jit_compile)}, "
                f"steps_per_execution {per}, weight gradients "
                f"{resolve_weight_gradient(config.train.weight_gradient)}; inference: "
                "mtl.model.inference.compiled_forward",
        "train_images_per_s": train["images_per_s"],
        "train_step_seconds": train["step_seconds"],
        **infer,
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
        "onednn": onednn_enabled(),
        "threads": {"tf_intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
                    "tf_inter_op": tf.config.threading.get_inter_op_parallelism_threads(),
                    "note": "0: TensorFlow's default, one thread per usable core"},
    }, count)


# --------------------------------------------------------------------------- the peer child


def build_peer(backbone: str = "resnet18", classes: int = CLASSES):
    """MONAI FlexibleUNet with mtl's presence/type heads on its pooled bottleneck."""
    import torch
    from monai.networks.nets import FlexibleUNet
    from torch import nn

    class PeerNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.unet = FlexibleUNet(in_channels=1, out_channels=1, backbone=backbone,
                                     pretrained=False, decoder_channels=DECODER)
            with torch.no_grad():
                channels = self.unet.encoder(torch.zeros(1, 1, 64, 64))[-1].shape[1]
            self.head = nn.Sequential(nn.Dropout(HEAD_DROPOUT), nn.Linear(2 * channels, HEAD_UNITS),
                                      nn.ReLU(inplace=True))
            self.presence_head = nn.Linear(HEAD_UNITS, 1)
            self.type_head = nn.Linear(HEAD_UNITS, classes)  # not .type: a Module method

        def forward(self, x):
            """x (B, 1, H, W) -> presence logit (B, 1), type logits (B, K), mask logit (B, 1, H, W)."""
            features = self.unet.encoder(x)
            decoded = self.unet.decoder(features, self.unet.skip_connect)
            mask = self.unet.segmentation_head(decoded)
            deepest = features[-1]
            pooled = torch.cat([deepest.mean(dim=(2, 3)), deepest.amax(dim=(2, 3))], dim=1)
            shared = self.head(pooled)
            return self.presence_head(shared), self.type_head(shared), mask

    return PeerNet()


def peer_loss(outputs, presence, type_, mask, smooth: float = 1.0):
    """mtl's default loss, same terms and weights: BCE (presence) + CE (type) + soft Dice per
    image + mean pixel BCE (mask)."""
    import torch
    import torch.nn.functional as F

    z_presence, z_type, z_mask = outputs
    prob = torch.sigmoid(z_mask)
    inter = (prob * mask).sum(dim=(1, 2, 3))
    total = prob.sum(dim=(1, 2, 3)) + mask.sum(dim=(1, 2, 3))
    dice = 1.0 - (2.0 * inter + smooth) / (total + smooth)
    bce = F.binary_cross_entropy_with_logits(z_mask, mask, reduction="none").mean(dim=(1, 2, 3))
    return (F.binary_cross_entropy_with_logits(z_presence, presence)
            + F.cross_entropy(z_type, type_) + (dice + bce).mean())


def child_peer(args: argparse.Namespace) -> dict[str, Any]:
    phases = Phases()
    import monai
    import monai.networks.nets  # noqa: F401 - imported here so that "import" counts it
    import torch

    phases.mark("import")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    net = build_peer(args.backbone)
    phases.mark("build")
    optimizer = torch.optim.Adam(net.parameters(), lr=LEARNING_RATE)
    batches = [{k: torch.from_numpy(np.ascontiguousarray(
                    v.transpose(0, 3, 1, 2) if v.ndim == 4 else v)) for k, v in b.items()}
               for b in random_batches(args.warmup + args.steps, args.batch, args.size)]

    def step(b) -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = peer_loss(net(b["image"]), b["presence"], b["type"], b["mask"])
        loss.backward()
        optimizer.step()

    net.train()
    for i in range(2):  # untimed, as mtl's tracing fit
        step(batches[i % len(batches)])
    phases.mark("train_warmup")
    t = [time.perf_counter()]
    for i in range(args.warmup + args.steps):
        step(batches[i])
        t.append(time.perf_counter())
    measured = t[args.warmup + args.steps] - t[args.warmup]
    phases.mark("train_timed")

    net.eval()

    def predict(x):
        with torch.inference_mode():
            z_presence, z_type, z_mask = net(x)
            return {"presence": torch.sigmoid(z_presence).numpy(),
                    "type": torch.softmax(z_type, dim=-1).numpy(),
                    "mask": torch.sigmoid(z_mask).numpy()}

    infer = _infer_figures(predict, torch.cat([b["image"] for b in batches]), args, phases)

    def count() -> tuple[dict[str, Any], dict[str, Any]]:
        from torch.utils.flop_counter import FlopCounterMode

        x = torch.zeros(1, 1, args.size, args.size)
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            net(x)
        by_op = {str(op): int(n) for op, n in counter.get_flop_counts()["Global"].items()}
        flops = {
            "method": "torch.utils.flop_counter.FlopCounterMode over the eval forward pass, "
                      "batch 1 (convolutions and matrix products)",
            "forward_per_image": int(counter.get_total_flops()),
            "forward_per_image_conv_dense": int(counter.get_total_flops()),
            "by_op": by_op,
        }
        return flops, {
            "trainable": int(sum(p.numel() for p in net.parameters() if p.requires_grad)),
            "batchnorm_statistics": int(sum(b.numel() for name, b in net.named_buffers()
                                            if name.endswith(("running_mean", "running_var")))),
        }

    return _child_result(args, phases, {
        "side": "peer",
        "what": f"MONAI FlexibleUNet({args.backbone}, in_channels=1, out_channels=1, "
                f"decoder_channels={DECODER}, pretrained=False) + presence/type heads on the "
                "pooled bottleneck; Adam; eager PyTorch; inference under torch.inference_mode()",
        "train_images_per_s": args.steps * args.batch / measured,
        "train_step_seconds": np.diff(t[args.warmup:]).round(6).tolist(),
        **infer,
        "versions": {"torch": torch.__version__, "monai": monai.__version__},
        "threads": {"torch_intra_op": torch.get_num_threads(),
                    "torch_inter_op": torch.get_num_interop_threads(),
                    "mkldnn": bool(torch.backends.mkldnn.is_available())},
    }, count)


# --------------------------------------------------------------------------- the parent


def child_command(side: str, args: argparse.Namespace, flops: bool) -> list[str]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", side,
           "--size", str(args.size), "--batch", str(args.batch), "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--latency-repeats", str(args.latency_repeats),
           "--throughput-repeats", str(args.throughput_repeats), "--threads", str(args.threads),
           "--backbone", args.backbone]
    for override in args.set if side == "mtl" else ():
        cmd += ["--set", override]
    return cmd + (["--flops"] if flops else [])


def run_child(side: str, args: argparse.Namespace, flops: bool) -> dict[str, Any]:
    """One child process; its result is the JSON line after RESULT_MARK on its stdout."""
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", SM_FRAMEWORK="tf.keras")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    t = time.perf_counter()
    try:
        proc = subprocess.run(child_command(side, args, flops), cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=args.child_timeout)
    except subprocess.TimeoutExpired:
        raise ChildError(f"the {side} child ran past --child-timeout {args.child_timeout:g} s")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_MARK)]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
        print("\n".join(tail), file=sys.stderr)
        last = tail[-1] if tail else "no output"
        raise ChildError(f"the {side} child failed (exit {proc.returncode}): {last}")
    result = json.loads(lines[-1][len(RESULT_MARK):])
    result["process_seconds"] = time.perf_counter() - t
    return result


class ChildError(RuntimeError):
    pass


def run_rounds(rounds: int, measure: Callable[[str, int, bool], dict[str, Any]]
               ) -> list[dict[str, Any]]:
    """``rounds`` x (mtl, peer), interleaved; FLOPs are counted in the first round only."""
    runs = []
    for r in range(rounds):
        for side in SIDES:
            result = measure(side, r, r == 0)
            runs.append({"round": r, "side": side, **result})
            log(f"round {r + 1}/{rounds} {side}: train {result['train_images_per_s']:.2f} img/s, "
                f"batch 1 {result['batch1_ms']:.1f} ms, "
                f"batch {result.get('batch', '')} {result['batch_images_per_s']:.1f} img/s")
    return runs


#: figure -> (unit, True where higher is faster)
FIGURES = {
    "train_images_per_s": ("images/s", True),
    "batch1_ms": ("ms", False),
    "batch_images_per_s": ("images/s", True),
}


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians per side and the speed ratio mtl / peer (> 1: mtl faster) of each figure, per
    round (the two runs of a round are back to back) and as the median over rounds."""
    by_side = {side: [r for r in runs if r["side"] == side] for side in SIDES}
    sides: dict[str, Any] = {side: {fig: stats(r[fig] for r in rs) for fig in FIGURES}
                             for side, rs in by_side.items()}
    ratios: dict[str, Any] = {}
    for fig, (_, higher_is_faster) in FIGURES.items():
        pairs = zip(by_side["mtl"], by_side["peer"])
        per_round = [(m[fig] / p[fig]) if higher_is_faster else (p[fig] / m[fig])
                     for m, p in pairs]
        med_m, med_p = sides["mtl"][fig]["median"], sides["peer"][fig]["median"]
        ratios[fig] = {
            **stats(per_round),
            "of_medians": (med_m / med_p if higher_is_faster else med_p / med_m)
            if med_m and med_p else None,
        }
    ratios["note"] = ("speed of mtl / speed of the peer: > 1 means mtl is faster (for the "
                      "batch-1 latency, peer ms / mtl ms); per round, median over rounds")
    first = {r["side"]: r for r in runs if r["round"] == 0}
    flops = {side: first[side].get("flops") for side in SIDES if side in first}
    params = {side: first[side].get("parameters") for side in SIDES if side in first}
    comparison: dict[str, Any] = {}
    if all(flops.get(s) for s in SIDES):
        m, p = flops["mtl"]["forward_per_image_conv_dense"], flops["peer"]["forward_per_image_conv_dense"]
        comparison["forward_flops_conv_dense"] = {
            "mtl": m, "peer": p, "mtl_over_peer": m / p,
            "same": abs(m / p - 1) <= FLOPS_TOLERANCE, "tolerance": FLOPS_TOLERANCE}
        # arithmetic done per second in training: compares the two frameworks' efficiency
        # where the nets' FLOPs differ (training = 3 x forward, as benchmarks/flops.py)
        gflops = {side: 3 * n * sides[side]["train_images_per_s"]["median"] / 1e9
                  for side, n in (("mtl", m), ("peer", p))}
        comparison["train_gflop_per_s"] = {**gflops, "mtl_over_peer": gflops["mtl"] / gflops["peer"],
                                           "convention": "3 x forward FLOPs (convolutions + "
                                                         "dense) x median training images/s"}
        # inference as each side runs it: mtl's inference copy, the peer's network as it is
        mi = flops["mtl"].get("inference_per_image_conv_dense", m)
        comparison["inference_flops_conv_dense"] = {"mtl": mi, "peer": p, "mtl_over_peer": mi / p}
        ips = {side: n * sides[side]["batch_images_per_s"]["median"] / 1e9
               for side, n in (("mtl", mi), ("peer", p))}
        comparison["inference_gflop_per_s"] = {
            **ips, "mtl_over_peer": ips["mtl"] / ips["peer"],
            "convention": "inference FLOPs per image (convolutions + dense) x median images/s at "
                          "the throughput batch"}
    if all(params.get(s) for s in SIDES):
        comparison["parameters"] = {
            key: {"mtl": params["mtl"][key], "peer": params["peer"][key],
                  "mtl_over_peer": params["mtl"][key] / params["peer"][key]}
            for key in ("trainable", "batchnorm_statistics")}
    return {"sides": sides, "ratios": ratios, "flops": flops, "parameters": params,
            "comparison": comparison,
            "versions": {s: first[s].get("versions") for s in SIDES if s in first},
            "threads": {s: first[s].get("threads") for s in SIDES if s in first},
            "what": {s: first[s].get("what") for s in SIDES if s in first}}


def markdown(results: dict[str, Any]) -> str:
    s, ratios, cmp_ = results["sides"], results["ratios"], results["comparison"]
    b = results["settings"]["batch"]
    lines = []
    if results.get("quick"):
        lines.append("**--quick run: tiny sizes, the figures measure nothing.**\n")
    lines += ["| figure | mtl | MONAI peer | mtl / peer (speed) |", "| --- | --- | --- | --- |"]
    labels = {"train_images_per_s": "training, images/s",
              "batch1_ms": "inference, batch 1, ms (median)",
              "batch_images_per_s": f"inference, batch {b}, images/s"}
    for fig, label in labels.items():
        r = ratios[fig]["median"]
        lines.append(f"| {label} | {s['mtl'][fig]['median']:.1f} | {s['peer'][fig]['median']:.1f} "
                     f"| {r:.2f}{' (mtl faster)' if r > 1 else ''} |")
    flops = cmp_.get("forward_flops_conv_dense")
    if flops:
        lines.append(f"| forward GFLOP per image (convolutions + dense) | {flops['mtl'] / 1e9:.3f} "
                     f"| {flops['peer'] / 1e9:.3f} | {flops['mtl_over_peer']:.3f} (FLOPs, not "
                     f"speed{': same' if flops['same'] else ''}) |")
    inference = cmp_.get("inference_flops_conv_dense")
    if inference:
        lines.append(f"| inference GFLOP per image as run (mtl: batch norm folded, sub-pixel "
                     f"decoder) | {inference['mtl'] / 1e9:.3f} | {inference['peer'] / 1e9:.3f} | "
                     f"{inference['mtl_over_peer']:.3f} (FLOPs, not speed) |")
    achieved = cmp_.get("train_gflop_per_s")
    if achieved:
        lines.append(f"| training, achieved GFLOP/s (3 x forward FLOPs x images/s) | "
                     f"{achieved['mtl']:.1f} | {achieved['peer']:.1f} | "
                     f"{achieved['mtl_over_peer']:.2f} |")
    achieved = cmp_.get("inference_gflop_per_s")
    if achieved:
        lines.append(f"| inference at batch {b}, achieved GFLOP/s | {achieved['mtl']:.1f} | "
                     f"{achieved['peer']:.1f} | {achieved['mtl_over_peer']:.2f} |")
    for key, label in (("trainable", "parameters, trainable"),
                       ("batchnorm_statistics", "batch-norm statistics (not trained)")):
        p = cmp_.get("parameters", {}).get(key)
        if p:
            lines.append(f"| {label} | {p['mtl']:,} | {p['peer']:,} | {p['mtl_over_peer']:.3f} "
                         "(count, not speed) |")
    st, v = results["settings"], results["versions"]
    lines += table_footer(results, (
        f"torch threads {st['threads']}; {st['backbone']} U-Net, {st['size']} px, 1 channel, "
        f"decoder {list(DECODER)}, batch {st['batch']}, float32; medians over {st['rounds']} "
        f"interleaved rounds of {st['steps']} timed training steps; TensorFlow "
        f"{(v.get('mtl') or {}).get('tensorflow')}, torch {(v.get('peer') or {}).get('torch')}, "
        f"MONAI {(v.get('peer') or {}).get('monai')}"), "these timings are not meaningful.")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = script_parser("peers.py", "mtl against the same network in PyTorch/MONAI: training "
                      "images/s, inference latency and throughput, FLOPs and parameters, in one "
                      "run.", "tiny sizes, 1 round: proves the script runs, measures nothing")
    add_int_options(p, FULL, {
        "size": "image size in px", "batch": "training and throughput batch",
        "steps": "timed training steps per round", "warmup": "training steps excluded before them",
        "rounds": "interleaved mtl/peer rounds", "latency_repeats": "batch-1 calls per round",
        "throughput_repeats": "full-batch calls per round"})
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads (default: the CPUs this process may use)")
    p.add_argument("--backbone", default="resnet18",
                   help="encoder of both nets (a name both segmentation-models and MONAI know)")
    p.add_argument("--set", action="append", default=[], metavar="train.KEY=VALUE",
                   help="a train.* setting of mtl's side, as mtl train --set (repeatable), e.g. "
                        "train.jit_compile=true; default: mtl's defaults, as users run it")
    p.add_argument("--child-timeout", type=float, default=1800.0)
    p.add_argument("--out", help="results JSON (e.g. benchmarks/results/peers.json); the Markdown "
                                 "table goes next to it with .md. Without it only the table is printed")
    p.add_argument("--child", choices=SIDES, help=argparse.SUPPRESS)
    p.add_argument("--flops", action="store_true", help=argparse.SUPPRESS)
    args = parse_with_defaults(p, argv, QUICK, FULL)
    if args.threads is None:
        args.threads = usable_cpus()
    if args.size % 32:
        p.error(f"--size must be a multiple of 32, got {args.size}")
    require_at_least(p, args, 1, "batch", "steps", "rounds", "latency_repeats",
                     "throughput_repeats", "threads")
    require_at_least(p, args, 0, "warmup")
    for override in args.set:
        if not override.startswith("train.") or "=" not in override:
            p.error(f"--set {override}: only train.KEY=VALUE settings (the networks stay the same)")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.child:
        result = (child_mtl if args.child == "mtl" else child_peer)(args)
        result["batch"] = args.batch
        print(RESULT_MARK + json.dumps(result), flush=True)
        return 0
    missing = missing_extra()
    if missing:
        print(f"benchmarks/peers.py: the peer needs {' and '.join(missing)}, not installed: "
              f"{EXTRA_HINT}", file=sys.stderr)
        return 2
    started = datetime.now(timezone.utc)
    load_start = loadavg()
    log(f"{args.rounds} round(s) of mtl, peer: {args.backbone}, {args.size} px, batch "
        f"{args.batch}, {args.warmup}+{args.steps} steps")
    try:
        runs = run_rounds(args.rounds, lambda side, r, flops: run_child(side, args, flops))
    except ChildError as exc:
        print(f"benchmarks/peers.py: {exc}", file=sys.stderr)
        return 1
    results = {
        **results_head(
            "mtl against MONAI FlexibleUNet + the same heads in PyTorch, side by side",
            "peers.py", argv, started, args,
            ("size", "batch", "steps", "warmup", "rounds", "latency_repeats",
             "throughput_repeats", "threads", "backbone", "set"),
            decoder=list(DECODER), precision="float32",
            order=[f"{r['side']}{r['round'] + 1}" for r in runs]),
        "machine": {"cpu": _cpuinfo(), "cpus_usable": usable_cpus(),
                    "cgroup_cpu_limit": _cgroup_cpu_limit(), "git": git_revision(),
                    "python": sys.version.split()[0], "isa_caps": isa_caps(),
                    # TensorFlow's CPU kernels in the mtl child (mtl.kernels)
                    "onednn": next((r.get("onednn") for r in runs
                                    if r["side"] == "mtl"), None)},
        "loadavg": {"start": load_start, "end": loadavg()},
        **summarise(runs),
        "runs": runs,
    }
    publish(results, markdown(results), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
