"""Temperature scaling of the presence and type heads (Guo et al., ICML 2017).

One scalar per head, fitted at the end of ``mtl train`` on the validation split by minimising
the negative log-likelihood of the labelled items: presence ``sigmoid(z / T)`` on the presence
logit ``z``, type ``softmax(z / T)`` on the type logits. A temperature only rescales
confidence: decisions at 0.5 and the arg-max type never change. The temperatures live in the
model's config (``MultiTaskModel.calibration``), and :func:`mtl.model.inference.compiled_forward`
applies them, the one prediction path of ``mtl infer``, ``mtl serve`` and ``mtl evaluate``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: search range of a temperature (log-uniform bounded search)
BOUNDS = (0.05, 20.0)
#: fewer labelled validation items than this: the head keeps temperature 1
MIN_ITEMS = 10


def _log_sigmoid(z: np.ndarray) -> np.ndarray:
    return -np.logaddexp(0.0, -z)


def presence_nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean binary cross-entropy of ``sigmoid(logits / T)`` against 0/1 labels."""
    z = np.asarray(logits, np.float64).ravel() / temperature
    y = np.asarray(labels, np.float64).ravel()
    return float(-np.mean(y * _log_sigmoid(z) + (1 - y) * _log_sigmoid(-z)))


def type_nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean cross-entropy of ``softmax(logits / T)`` against class indices."""
    z = np.asarray(logits, np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-np.mean(log_p[np.arange(len(z)), np.asarray(labels, int).ravel()]))


def fit_temperature(nll, logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature in :data:`BOUNDS` minimising ``nll(logits, labels, T)``."""
    from scipy.optimize import minimize_scalar

    result = minimize_scalar(lambda log_t: nll(logits, labels, float(np.exp(log_t))),
                             bounds=tuple(np.log(BOUNDS)), method="bounded",
                             options={"xatol": 1e-4})
    return float(np.exp(result.x))


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(z, np.float64)))


def softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def fit_calibration(presence_logits: np.ndarray, presence_labels: np.ndarray,
                    type_logits: np.ndarray, type_labels: np.ndarray,
                    split: str = "val") -> dict[str, Any]:
    """Temperatures of both heads from labelled items only (callers drop missing labels);
    a head with fewer than :data:`MIN_ITEMS` items (or, for presence, one class only) keeps
    temperature 1, with the reason under ``notes``. Returns the ``calibration`` config."""
    out: dict[str, Any] = {"presence_temperature": 1.0, "type_temperature": 1.0,
                           "split": split, "method": "temperature scaling, NLL",
                           "items": {}, "nll": {}, "notes": []}
    heads = (("presence", presence_nll, presence_logits, presence_labels),
             ("type", type_nll, type_logits, type_labels))
    for head, nll, logits, labels in heads:
        logits, labels = np.asarray(logits, np.float64), np.asarray(labels)
        n = int(len(labels))
        out["items"][head] = n
        if n < MIN_ITEMS or (head == "presence" and len(np.unique(labels)) < 2):
            out["notes"].append(f"{head}: {n} labelled {split} item(s)"
                                + (" of one class" if n >= MIN_ITEMS else "")
                                + ", temperature left at 1")
            continue
        t = fit_temperature(nll, logits, labels)
        if np.isclose(t, BOUNDS[0], rtol=1e-3):
            out["notes"].append(f"{head}: temperature at the lower search bound {t:.3g}: the "
                                f"{split} items are separated perfectly")
        elif np.isclose(t, BOUNDS[1], rtol=1e-3):
            out["notes"].append(f"{head}: temperature at the upper search bound {t:.3g}: the "
                                f"head's confidence tells little on the {split} items")
        out[f"{head}_temperature"] = round(t, 5)
        out["nll"][head] = {"before": round(nll(logits, labels), 5),
                            "after": round(nll(logits, labels, t), 5)}
    return out


def calibrate_on_split(model: Any, sources: list, config: Any, split: str = "val",
                       batch_size: int | None = None) -> dict[str, Any]:
    """Fit both temperatures of ``model`` on ``split`` of ``sources`` (items whose label of a
    head is missing, task weight 0, are left out of that head's fit)."""
    from mtl.data.pipeline import LoadErrors, SampleEncoder, make_dataset, plan_split
    from mtl.model.inference import compiled_forward, jit_for_batches

    plan = plan_split(sources, split)
    empty = np.zeros((0,)), np.zeros((0,))
    if not len(plan):
        return fit_calibration(*empty, np.zeros((0, len(config.data.classes))), empty[1], split)
    batch_size = batch_size or config.train.batch_size
    ds = make_dataset(sources, plan, SampleEncoder(config, augment=False),
                      batch_size=batch_size,
                      on_error=config.data.on_error,
                      num_parallel_calls=config.data.num_parallel_calls,
                      workers=config.data.workers, errors=LoadErrors())
    forward = compiled_forward(model, config.data.image_size, config.data.input_channels,
                               jit_compile=jit_for_batches(batch_size))
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("zp", "yp", "wp", "zt", "yt", "wt")}
    for x, y, w in ds:
        out = forward(x.numpy())
        if "presence_logit" not in out:
            raise ValueError("calibration needs mtl's network (presence and type logits)")
        parts["zp"].append(out["presence_logit"].reshape(-1))
        parts["zt"].append(out["type_logits"])
        parts["yp"].append(y["presence"].numpy().reshape(-1))
        parts["yt"].append(y["type"].numpy().reshape(-1))
        parts["wp"].append(w["presence"].numpy().reshape(-1))
        parts["wt"].append(w["type"].numpy().reshape(-1))
    a = {k: np.concatenate(v) for k, v in parts.items()}
    sel_p, sel_t = a["wp"] > 0, a["wt"] > 0
    return fit_calibration(a["zp"][sel_p], (a["yp"][sel_p] > 0.5).astype(int),
                           a["zt"][sel_t], a["yt"][sel_t], split)


def temperatures(model: Any) -> tuple[float, float]:
    """(presence, type) temperatures stored in a model; (1, 1) when it has none."""
    cal = getattr(model, "calibration", None)
    cal = cal if isinstance(cal, dict) else {}
    return (float(cal.get("presence_temperature", 1.0)), float(cal.get("type_temperature", 1.0)))


__all__ = ["BOUNDS", "calibrate_on_split", "fit_calibration", "fit_temperature", "presence_nll", "sigmoid",
           "softmax", "temperatures", "type_nll"]
