"""The model card a ``.keras`` file carries: where the model came from and what it is for.

``mtl train`` builds the card (:func:`training_card`) and stores it in the model's config
(:class:`~mtl.model.multitask.MultiTaskModel`'s ``card``), so it is inside every ``.keras``
file the run writes (``last.keras``, ``best.keras``); at the end of training it adds the best
epoch's validation metrics, and ``mtl evaluate <run>`` replaces them with the test split's.
A card holds::

    name, created (UTC date the file was written by mtl train), mtl_version, git_commit,
    intended_use, demo (True: trained on synthetic phantoms only), warning,
    training_data {datasets: [{name, format, items: {train, val, test}}], items: {...}},
    classes, metrics {split, source, epoch?, values {...}}, calibration (temperatures)

:func:`card_line` is the one line ``mtl infer``, ``findings.json``, the overlays' footer and
the web page show; a model without a card (older files) says ``no model card``. The card can
be read from a file without TensorFlow (:func:`read_card`) and updated in place without
loading the weights (:func:`update_model_config`).
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import zipfile
from pathlib import Path
from typing import Any, Mapping

from mtl.files import atomic_write

#: format of the built-in synthetic demo data
DEMO_FORMATS = ("phantoms",)
DEMO_WARNING = "demo model, synthetic data: not for real scans"
NO_CARD = "no model card"
INTENDED_USE = ("research and teaching: tumor presence, type and mask on 2-D brain MRI slices "
                "like its training data; not a medical device, not a diagnosis")
DEMO_USE = "demonstration of the software only; " + DEMO_WARNING
#: the headline metrics a card keeps, in the order the line shows them
HEADLINE = (("presence_accuracy", "presence acc"), ("type_accuracy", "type acc"),
            ("dice", "Dice"))


def git_commit(path: str | Path | None = None) -> str | None:
    """The commit of the checkout holding ``path`` (default: this package); None outside one."""
    folder = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True,
                             text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    sha = out.stdout.strip()
    return sha if len(sha) == 40 else None


def _today() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def training_card(name: str, summary: Mapping[str, Any], formats: Mapping[str, str],
                  classes: list[str]) -> dict[str, Any]:
    """A card for a model trained on ``summary`` (``data_summary.json``: items per source and
    split) whose sources have the data formats ``formats`` (source name -> format)."""
    import mtl

    datasets, total = [], {}
    for source, entry in summary.items():
        if source.startswith("_"):
            continue
        items = {split: int(v["items"]) for split, v in entry["splits"].items()}
        for split, n in items.items():
            total[split] = total.get(split, 0) + n
        datasets.append({"name": source, "format": formats.get(source), "items": items})
    demo = bool(datasets) and all(d["format"] in DEMO_FORMATS for d in datasets)
    return {
        "name": name,
        "created": _today(),
        "mtl_version": mtl.__version__,
        "git_commit": git_commit(),
        "intended_use": DEMO_USE if demo else INTENDED_USE,
        "demo": demo,
        "warning": DEMO_WARNING if demo else None,
        "training_data": {"datasets": datasets, "items": total},
        "classes": list(classes),
        "metrics": None,
    }


def card_metrics(values: Mapping[str, Any], split: str, source: str,
                 **extra: Any) -> dict[str, Any]:
    """The card's ``metrics`` entry: headline values (None dropped) measured on ``split``."""
    kept = {k: round(float(v), 4) for k, v in values.items() if v is not None}
    return {"split": split, "source": source, **extra, "values": kept}


def card_line(card: Mapping[str, Any] | None) -> str:
    """One line: the demo warning first where it applies, then data, metrics, version, date.
    An ensemble's card (:mod:`mtl.model.ensemble`) gives each member's, after its file name."""
    if not card:
        return NO_CARD
    members = card.get("ensemble")
    if members:
        # the warning leads the line once; a demo member is marked "(demo)" after its name
        shown = " | ".join(f"{short_model_path(m.get('path'))}"
                           + (" (demo)" if is_demo(m.get("card")) else "") + ": "
                           + card_line(m.get("card")).removeprefix("model: ")
                           .removeprefix(f"{DEMO_WARNING}; ") for m in members)
        line = f"ensemble of {len(members)} models, outputs averaged: {shown}"
        return f"{DEMO_WARNING}; {line}" if is_demo(card) else line
    parts = []
    if card.get("demo"):
        parts.append(DEMO_WARNING)
    data = card.get("training_data") or {}
    names = ", ".join(f"{d.get('format')}" + (f" ({d['name']})" if d.get("name") != d.get("format")
                                               else "")
                      for d in data.get("datasets", []))
    items = data.get("items") or {}
    counts = "/".join(str(items.get(s, 0)) for s in ("train", "val", "test"))
    parts.append(f"trained on {names or 'unknown data'} (train/val/test {counts} items)")
    metrics = card.get("metrics")
    if metrics and metrics.get("values"):
        values = metrics["values"]
        # three decimals: "Dice 0.80" would round 0.795 onto a 0.80 target
        shown = ", ".join(f"{label} {values[key]:.3f}" for key, label in HEADLINE if key in values)
        parts.append(f"{metrics.get('split', '?')}: {shown}")
    else:
        parts.append("no test metrics")
    commit = card.get("git_commit")
    parts.append(f"mtl {card.get('mtl_version', '?')}"
                 + (f" @{commit[:8]}" if commit else "")
                 + f", {str(card.get('created', '?'))[:10]}")
    return "model: " + "; ".join(parts)


def short_model_path(path: Any) -> str:
    """``runs/x/best.keras`` -> ``x/best.keras``: the run folder and file name."""
    path = Path(str(path or "?"))
    return f"{path.parent.name}/{path.name}" if path.parent.name else path.name


def is_demo(card: Mapping[str, Any] | None) -> bool:
    """Whether a card is a demo model's, or an ensemble's with a demo member."""
    if not card:
        return False
    return bool(card.get("demo")) or any(is_demo(m.get("card")) for m in card.get("ensemble", []))


def model_card(model: Any) -> dict[str, Any] | None:
    """The card of a loaded model (None: none)."""
    card = getattr(model, "card", None)
    return dict(card) if isinstance(card, dict) and card else None


def provenance(model: Any) -> dict[str, Any]:
    """What outputs say about a loaded model (None: unknown, e.g. a test's fake network):
    ``card_line`` (the one line), ``demo``, ``card`` and the ``calibration`` applied."""
    card = model_card(model) if model is not None else None
    calibration = getattr(model, "calibration", None)
    calibration = calibration if isinstance(calibration, dict) and calibration else None
    if calibration is None:
        applied = None
    elif "ensemble" in calibration:  # each member's own temperatures (mtl.model.ensemble)
        applied = {"members": calibration["ensemble"],
                   "note": "each member's presence and type probabilities are divided in "
                           "logit space by its own temperatures, then averaged"}
    else:
        applied = {
            "presence_temperature": calibration.get("presence_temperature", 1.0),
            "type_temperature": calibration.get("type_temperature", 1.0),
            "split": calibration.get("split"),
            "note": "presence and type probabilities are divided in logit space by these "
                    "temperatures (fitted on the validation split by mtl train)"}
    return {"card_line": card_line(card), "demo": is_demo(card),
            "card": dict(card) if card else None, "calibration": applied}


def history_metrics(row: Mapping[str, Any] | None, validated: bool) -> dict[str, Any]:
    """Headline values of one ``history.csv`` row (``val_*`` when there was validation)."""
    prefix = "val_" if validated else ""
    names = {"presence_accuracy": "presence_acc", "type_accuracy": "type_acc", "dice": "dice"}
    out = {}
    for key, logged in names.items():
        try:
            out[key] = float((row or {})[prefix + logged])
        except (KeyError, TypeError, ValueError):
            continue
    return out


def finish_run_models(run_dir: Path, model: Any, sources: list, config: Any, card: dict[str, Any],
                      history: list[Mapping[str, Any]], state: Mapping[str, Any],
                      validated: bool) -> dict[str, Any]:
    """At the end of ``mtl train``: fit the temperatures on the validation split and write
    them, with the card and the headline metrics of each file's epoch, into ``last.keras``
    (``model``, the weights in memory) and ``best.keras``. Returns {file: calibration}."""
    from mtl.model.calibration import calibrate_on_split

    def calibrate(weights: Any) -> dict[str, Any]:
        if not validated:
            return {"presence_temperature": 1.0, "type_temperature": 1.0, "split": None,
                    "notes": ["no validation split: not calibrated"]}
        weights.calibration = None
        return calibrate_on_split(weights, sources, config, "val")

    done = int(state.get("epoch", len(history)))
    best_epoch = state.get("best_epoch")
    fitted: dict[str, Any] = {}
    split = "val" if validated else "train"
    for name, epoch in (("last.keras", done), ("best.keras", best_epoch)):
        path = run_dir / name
        if not path.is_file() or not epoch:
            continue
        if name == "best.keras" and epoch != done:
            from mtl.infer.predict import load_model

            calibration = calibrate(load_model(path))
        else:
            calibration = fitted.get("last.keras") or calibrate(model)
        fitted[name] = calibration
        row = history[int(epoch) - 1] if 0 < int(epoch) <= len(history) else None
        values = history_metrics(row, validated)
        file_card = {**card, "created": _today(),
                     "metrics": card_metrics(values, split, "mtl train", epoch=int(epoch))
                     if values else None,
                     "calibration": {k: calibration.get(k) for k in
                                     ("presence_temperature", "type_temperature", "split")}}
        update_model_config(path, card=file_card, calibration=calibration)
    return fitted


# --------------------------------------------------------------------------- the .keras file


def read_model_config(path: str | Path) -> dict[str, Any]:
    """The model's own config (``get_config``) from a ``.keras`` file, without TensorFlow."""
    with zipfile.ZipFile(path) as archive:
        return json.loads(archive.read("config.json"))["config"]


def read_card(path: str | Path) -> dict[str, Any] | None:
    return read_model_config(path).get("card") or None


def update_model_config(path: str | Path, **fields: Any) -> None:
    """Set ``fields`` (e.g. ``card=...``, ``calibration=...``) in the model config of a
    ``.keras`` file, copying the weights unchanged; atomic (temporary file, then rename)."""
    path = Path(path)

    def rewrite(tmp: Path) -> None:
        with zipfile.ZipFile(path) as src, zipfile.ZipFile(tmp, "w") as dst:
            for info in src.infolist():
                if info.filename == "config.json":
                    config = json.loads(src.read(info))
                    config["config"].update(fields)
                    dst.writestr(info, json.dumps(config))
                else:
                    big = info.file_size > 1 << 30
                    with src.open(info) as fin, dst.open(info, "w", force_zip64=big) as fout:
                        while chunk := fin.read(1 << 24):
                            fout.write(chunk)

    atomic_write(path, rewrite, force=True)


__all__ = ["DEMO_WARNING", "NO_CARD", "card_line", "card_metrics", "finish_run_models",
           "git_commit", "is_demo", "model_card", "provenance", "read_card", "read_model_config",
           "short_model_path", "training_card", "update_model_config"]
