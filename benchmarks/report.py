"""The results JSON -> headline figures (with the issue's targets) -> a Markdown table.

Every row names the JSON entry it comes from; the caption under the table gives the command,
date, commit and machine that produced all of them.
"""

from __future__ import annotations

from typing import Any

#: the targets of the performance issue, checked where the figure exists
TARGETS = {
    "pipeline_over_memory": 0.90,  # real pipeline within 10% of in-memory tensors
    "pipeline_over_naive": 2.0,  # at least 2x the naive baseline
    "train_fraction_of_peak": 0.40,  # default model: >= 40% of the measured conv GFLOP/s
    "slice_median_ms": 150.0,
    "volume_seconds": 10.0,
    "train_rss_gb": 4.0,
}


def _get(tree: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return tree


def efficiency(results: dict[str, Any]) -> dict[str, Any]:
    """Achieved training GFLOP/s per model and variant, and its fraction of the conv peak."""
    sections = results.get("sections", {})
    peak = _get(sections, "flops", "conv_peak", "peak_gflops")
    out: dict[str, Any] = {"peak_gflops": peak, "models": {}}
    for role, model in (_get(sections, "train", "models") or {}).items():
        counted = _get(sections, "flops", "models", role)
        if not counted:
            continue
        per_image = counted["train_gflop_per_image"]
        row: dict[str, Any] = {"train_gflop_per_image": per_image}
        for variant, s in model["images_per_s"].items():
            if s["median"] is None:
                continue
            achieved = per_image * s["median"]
            row[variant] = {"gflops": achieved,
                            "fraction_of_peak": achieved / peak if peak else None}
        out["models"][role] = row
    out["convention"] = ("achieved GFLOP/s = 3 x profiled forward GFLOP per image x median "
                         "images/s; fraction = achieved / conv peak_gflops")
    return out


def headline_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows: figure, value, target, status, source (JSON path)."""
    s = results.get("sections", {})
    quick = bool(results.get("quick"))
    rows: list[dict[str, Any]] = []

    def add(figure: str, value: str | None, source: str, target: str = "",
            met: bool | None = None) -> None:
        if value is None:
            return
        if not target:
            status = ""
        elif quick:
            status = "n/a (quick)"
        else:
            status = "met" if met else "NOT met"
        rows.append({"figure": figure, "value": value, "target": target, "status": status,
                     "source": source})

    conv = _get(s, "flops", "conv_peak")
    if conv:
        shape = "x".join(str(v) for v in conv["input_shape"])
        add(f"conv peak: 3x3 Conv2D on {shape}, forward+backward",
            f"{conv['gflops_forward_backward']['median']:.1f} GFLOP/s",
            "flops.conv_peak.gflops_forward_backward")
        add("conv peak: same, forward only", f"{conv['gflops_forward']['median']:.1f} GFLOP/s",
            "flops.conv_peak.gflops_forward")
    for role, counted in (_get(s, "flops", "models") or {}).items():
        size = counted["input_shape"][0]
        add(f"{role} model ({counted.get('backbone', '?')}, {size} px): forward FLOPs per image",
            f"{counted['forward_gflop_per_image']:.2f} GFLOP (training 3x: "
            f"{counted['train_gflop_per_image']:.2f})", f"flops.models.{role}")
    eff = results.get("efficiency") or {}
    for role, model in (_get(s, "train", "models") or {}).items():
        cfg = model["config"]
        precision = cfg.get("precision", "float32")
        name = (f"{role} model ({cfg['backbone']}, {cfg['image_size']} px, batch "
                f"{model['batch_size']}{'' if precision == 'float32' else ', ' + precision})")
        ips = model["images_per_s"]
        add(f"train {name}: real pipeline", f"{ips['pipeline']['median']:.2f} img/s",
            f"train.models.{role}.images_per_s.pipeline")
        add(f"train {name}: tensors in memory", f"{ips['memory']['median']:.2f} img/s",
            f"train.models.{role}.images_per_s.memory")
        add(f"train {name}: naive generator baseline", f"{ips['naive']['median']:.2f} img/s",
            f"train.models.{role}.images_per_s.naive")
        r = model["ratios"]["pipeline_over_memory"]["median"]
        add(f"train {role}: pipeline / in-memory", f"{r:.2f}",
            f"train.models.{role}.ratios.pipeline_over_memory", ">= 0.90",
            r >= TARGETS["pipeline_over_memory"])
        ratios = model["ratios"]
        r = ratios["pipeline_over_naive"]["median"]
        ceiling = _get(ratios, "memory_over_naive", "median")
        add(f"train {role}: pipeline / naive", f"{r:.2f}"
            + (f" (ceiling: in-memory / naive = {ceiling:.2f})" if ceiling else ""),
            f"train.models.{role}.ratios.pipeline_over_naive", ">= 2.0",
            r >= TARGETS["pipeline_over_naive"])
        alone = model.get("input_only_images_per_s")
        if alone:
            add(f"input only, no model ({cfg['image_size']} px, batch {model['batch_size']}): "
                "pipeline / naive",
                f"{alone['pipeline']['median']:.0f} / {alone['naive']['median']:.0f} img/s = "
                f"{ratios['input_only_pipeline_over_naive']['median']:.2f}",
                f"train.models.{role}.input_only_images_per_s")
        e = _get(eff, "models", role)
        if e and "pipeline" in e and e["pipeline"]["fraction_of_peak"] is not None:
            frac = e["pipeline"]["fraction_of_peak"]
            mem = e.get("memory", {})
            value = (f"{e['pipeline']['gflops']:.1f} GFLOP/s = {100 * frac:.0f}% of peak"
                     + (f" (in memory: {mem['gflops']:.1f} = {100 * mem['fraction_of_peak']:.0f}%)"
                        if mem.get("fraction_of_peak") is not None else ""))
            if role == "default":
                add(f"train {role}: achieved GFLOP/s, real pipeline", value,
                    f"efficiency.models.{role}", ">= 40% of peak",
                    frac >= TARGETS["train_fraction_of_peak"])
            else:
                add(f"train {role}: achieved GFLOP/s, real pipeline", value,
                    f"efficiency.models.{role}")
    inf = s.get("infer")
    if inf:
        lat = inf["slice_latency"]
        add(f"infer: one {lat['size']}x{lat['size']} PNG slice, file to mask, median",
            f"{lat['median_ms']:.0f} ms", "infer.slice_latency.seconds.median", "<= 150 ms",
            lat["median_ms"] <= TARGETS["slice_median_ms"])
        add("infer: same, p95", f"{lat['p95_ms']:.0f} ms", "infer.slice_latency.seconds.p95")
        tp = inf["throughput"]
        add(f"infer: throughput, batch {inf['batch_size']} (preprocess + network)",
            f"{tp['predict_slices_per_s']['median']:.1f} slices/s",
            "infer.throughput.predict_slices_per_s")
        add(f"infer: throughput, batch {inf['batch_size']}, network only",
            f"{tp['network_only_slices_per_s']['median']:.1f} slices/s",
            "infer.throughput.network_only_slices_per_s")
        vol = inf["volume"]
        shape = "x".join(str(v) for v in vol["shape"])
        add(f"infer: {vol['slices']}-slice NIfTI volume ({shape}), file to mask",
            f"{vol['seconds']['median']:.2f} s", "infer.volume.seconds.median", "<= 10 s",
            vol["seconds"]["median"] <= TARGETS["volume_seconds"])
    mem = s.get("memory")
    if mem:
        tr = mem["train"]
        cache = tr.get("data_cache") or {}
        extra = (f" (data.cache off; on, it adds {cache['full_gb']:.1f} GB for these "
                 f"{cache['items']} items)" if cache.get("in_config") else "")
        add(f"peak RSS: {tr['what']}", f"{tr['peak_rss_gb']:.2f} GB{extra}",
            "memory.train.peak_rss_bytes",
            "<= 4 GB" if (tr["image_size"], tr["batch_size"]) == (256, 16) or quick else "",
            tr["peak_rss_gb"] <= TARGETS["train_rss_gb"])
        add(f"peak RSS: {mem['infer']['what']}", f"{mem['infer']['peak_rss_gb']:.2f} GB",
            "memory.infer.peak_rss_bytes")
    return rows


def markdown(results: dict[str, Any]) -> str:
    rows = headline_rows(results)
    machine = results.get("machine", {})
    cpu = machine.get("cpu", {})
    git = machine.get("git", {})
    date = (results.get("started") or "")[:10]
    lines = []
    if results.get("quick"):
        lines.append("**QUICK MODE: tiny sizes to check the script works; these are not "
                     "measurements.**\n")
    lines.append("| figure | value | target | status | JSON entry |")
    lines.append("| --- | --- | --- | --- | --- |")
    for r in rows:
        cells = [r["figure"], r["value"], r["target"], r["status"], f"`{r['source']}`"]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    load = results.get("loadavg", {})
    caption = (
        f"\nAll figures: `{results.get('command', '?')}` on {date}, commit "
        f"{git.get('commit') or '?'}{' (with local changes)' if git.get('dirty') else ''}; "
        f"{cpu.get('model', '?')}, {machine.get('cpus_usable', '?')} usable CPUs, "
        f"TensorFlow {machine.get('versions', {}).get('tensorflow', '?')}; "
        f"medians over {results.get('settings', {}).get('repeats', '?')} interleaved repeats; "
        f"load average {load.get('start')} at start, {load.get('end')} at end."
    )
    lines.append(caption)
    notes = [n for n in results.get("notes", []) if n]
    if notes:
        lines.append("")
        lines.extend(f"- {n}" for n in notes)
    if results.get("errors"):
        lines.append("")
        lines.extend(f"- **section {k} failed**: {v.strip().splitlines()[-1]}"
                     for k, v in results["errors"].items())
    return "\n".join(lines) + "\n"
