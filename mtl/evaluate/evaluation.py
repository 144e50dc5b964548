"""What ``mtl evaluate`` does: resolve a run or model and the data, predict, score, write a
report (the command itself: :mod:`mtl.evaluate.command`)."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from pathlib import Path
from typing import Any

import keras

from mtl.config import Config, ConfigError, SourceConfig, load_config
from mtl.data.pipeline import Source, open_source
from mtl.data.preprocess import context_slices, sequence_names
from mtl.data.splits import match_case_ids, split_records
from mtl.evaluate.healthy import check_grey_model, healthy_volume_check, resolve_healthy_volume
from mtl.evaluate.predict import predict_split
from mtl.infer.predict import Predictor
from mtl.model.card import card_line, card_metrics, model_card, update_model_config
from mtl.model.inference import jit_for_batches
from mtl.model.multitask import MultiTaskModel  # noqa: F401 - registers the class that saved models name
from mtl.evaluate.report import evaluate_predictions
from mtl.runfolder import CONFIG, SPLITS, RunFolder, read_splits


def resolve_model(target: str | Path, weights: str = "best") -> tuple[Path, Path | None]:
    """(model file, run folder or None) for a run folder or a .keras file."""
    target = Path(target)
    if target.is_dir():
        model_path = target / f"{weights}.keras"
        if not model_path.is_file():
            raise ConfigError(f"{target} has no {weights}.keras (is it a finished run folder?)")
        return model_path, target
    if target.suffix == ".keras" and target.is_file():
        parent = target.parent
        return target, parent if (parent / CONFIG).is_file() else None
    raise ConfigError(f"not a run folder or a .keras model file: {target}")


def parse_data_spec(spec: str) -> list[SourceConfig]:
    """``FORMAT=PATH`` (e.g. ``br35h=../shared/data/br35h``) or an experiment YAML's sources."""
    if spec.endswith((".yaml", ".yml")):
        return list(load_config(spec).data.sources)
    if "=" not in spec:
        raise ConfigError(f"--data {spec!r}: use FORMAT=PATH (e.g. br35h=data/br35h) or a YAML file")
    fmt, root = spec.split("=", 1)
    return [SourceConfig(format=fmt.strip(), root=root.strip() or None)]


def config_for(model: keras.Model, run_dir: Path | None) -> Config:
    """The run's config (or defaults), with the classes and preprocessing the model stores.

    The model file is the authority: its class order and input preprocessing override whatever
    a config says, so targets are never encoded differently from what the model learned.
    """
    pre = model.preprocessing
    sequences = sequence_names(pre)
    stored = {
        "data.image_size": pre["image_size"],
        "data.channels": len(sequences) if sequences else pre["channels"],
        "data.intensity_percentiles": pre["intensity_percentiles"], "data.classes": model.classes,
        # named input channels (MR sequences) and their order, or None for a grey model, and
        # the neighbouring slices read on either side of each slice
        "data.channel_names": sequences,
        "data.context_slices": context_slices(pre),
        "model.backbone": model.spec.backbone,
    }
    return load_config(run_dir / CONFIG if run_dir is not None else None, stored)


def _saved_splits(run_dir: Path | None) -> dict[str, Any]:
    return (read_splits(run_dir / SPLITS) if run_dir is not None else None) or {}


def _same_root(a: str | None, b: str | None) -> bool:
    if a is None or b is None:
        return a == b
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def saved_entry_for(source: Source, saved: dict[str, Any]) -> dict[str, Any] | None:
    """The run's saved split entry for this dataset: same format and folder (however the path
    is written), under the same name or, failing that, the one entry that matches whatever its
    position in the config; None when the run never saw it."""
    def same(entry: Any) -> bool:
        return (isinstance(entry, dict) and entry.get("format") == source.config.format
                and _same_root(entry.get("root"), source.config.root))

    if same(saved.get(source.name)):
        return saved[source.name]
    matches = [entry for entry in saved.values() if same(entry)]
    return matches[0] if len(matches) == 1 else None


def assign_eval_split(source: Source, split: str, saved: dict[str, Any], config: Config) -> str:
    """Give ``source.splits[split]``; returns how the split was obtained (for the report).

    A source the run trained on (same format and folder, :func:`saved_entry_for`) uses the
    run's saved split, so evaluation sees exactly the held-out patients and their near-copies
    in the run's other datasets stay out; other data use every item (``all``) or a
    patient-safe split recomputed with the config's seed, which knows nothing of copies of
    the run's training items in them (said in the report).
    """
    if split == "all":
        source.splits = {"all": list(range(len(source.records)))}
        return "every item"
    entry = saved_entry_for(source, saved)
    if entry is not None:
        cases = entry["case_ids"].get(split)
        if cases is None:
            raise ConfigError(f"the run has no {split!r} split; it has {sorted(entry['case_ids'])}")
        if not cases and split == "val" and config.data.refit:
            raise ConfigError(
                "this run trained on its validation patients (data.refit: true), so it has no "
                "validation split to score; its choices (presence gate, epochs) come from the "
                "runs it was refit after, e.g. the cross-validation folds' out-of-fold "
                "evaluations")
        source.splits, missing = match_case_ids(source.records, {split: cases})
        if missing:
            return (f"the run's saved split, less {len(missing)} case id(s) no longer in the "
                    f"data (e.g. {', '.join(missing[:3])})")
        return "the run's saved split"
    source.splits = split_records(source.records, config.data.split, seed=config.seed,
                                  cv=config.data.cv, refit=config.data.refit)
    if split not in source.splits:
        raise ConfigError(f"unknown split {split!r}; use train, val, test or all")
    return (f"patient-safe split recomputed with seed {config.seed} (data the run did not "
            "train on: copies of its training items are not excluded)")


def open_eval_sources(config: Config, run_dir: Path | None, split: str
                      ) -> tuple[list[Source], dict[str, str]]:
    """The config's datasets opened, each with ``split`` assigned (:func:`assign_eval_split`,
    the run's saved split where it has one); returns (sources, how each split was obtained)."""
    saved = _saved_splits(run_dir)
    sources, how = [], {}
    for i, sc in enumerate(config.data.sources):
        source = open_source(sc, config.data.on_error, config.data.classes, i,
                             config.data.context_slices)
        how[source.name] = assign_eval_split(source, split, saved, config)
        sources.append(source)
    return sources, how


def evaluate(
    target: str | Path,
    *,
    data: list[str] | None = None,
    split: str = "test",
    threshold: float = 0.5,
    presence_threshold: float | None = None,
    out: str | Path | None = None,
    n_resamples: int = 1000,
    weights: str = "best",
    batch_size: int | None = None,
    on_error: str | None = None,
    healthy_volumes: list[str] | None = None,
    healthy_orientations: tuple[str, ...] = ("upright",),
    tta: bool = False,
    mask_rule: str = "presence",
    largest_component: bool = False,
    ensemble: tuple[str | Path, ...] | list[str | Path] = (),
) -> tuple[dict[str, Any], Path]:
    """Evaluate a run or model on a split; ``healthy_volumes`` (``mni152`` or NIfTI paths) are
    also checked for slices called tumor (:mod:`mtl.evaluate.healthy`), once per orientation
    in ``healthy_orientations``; ``tta`` averages every prediction with the mirrored input's.

    The masks scored are those ``mtl infer`` exports under the same options: ``threshold`` for
    mask pixels, ``presence_threshold`` (None: ``threshold``) for the presence decision,
    ``mask_rule`` (whether a mask counts where presence says no) and ``largest_component``
    (only the largest connected region of each image's mask, one 3-D region per volume for
    the slices of a volume).

    ``ensemble`` (model files or run folders) averages the model's outputs with theirs
    (:mod:`mtl.model.ensemble`); the split is the run's, and a member whose own run trained on
    a patient of the split scored is refused (ConfigError). The run's model card is then
    left as it is: the scores are the ensemble's."""
    from mtl.model.ensemble import Ensemble, member_file

    model_path, run_dir = resolve_model(target, weights)
    member_paths = [member_file(m) for m in ensemble]
    healthy_paths = [resolve_healthy_volume(v) for v in healthy_volumes or []]  # fail early
    model = keras.models.load_model(model_path)
    if member_paths:
        from mtl.infer.predict import load_model

        model = Ensemble([model, *(load_model(p) for p in member_paths)],
                         [model_path, *member_paths])
    if healthy_paths:
        check_grey_model(model)  # before minutes of prediction, not after
    config = config_for(model, run_dir)
    if data:
        config.data.sources = [s for spec in data for s in parse_data_spec(spec)]
    if on_error:
        config.data = replace(config.data, on_error=on_error)
    sources, how = open_eval_sources(config, run_dir, split)
    for path in member_paths:
        check_member_split(path, sources, split)
    batch_size = batch_size or config.train.batch_size
    presence_threshold = threshold if presence_threshold is None else presence_threshold
    pred = predict_split(model, sources, config, split, batch_size=batch_size, threshold=threshold,
                         tta=tta, largest_component=largest_component,
                         presence_threshold=presence_threshold)
    # no largest_component here: the healthy check predicts batches of unrelated slices, over
    # which it would keep one 3-D region; per slice it never empties a mask, so the share of
    # slices with tumor pixels is the same without it
    predictor = Predictor(model, threshold=threshold, tta=tta, mask_rule=mask_rule,
                          presence_threshold=presence_threshold, batch_size=batch_size,
                          jit_compile=jit_for_batches(batch_size)) if healthy_paths else None
    healthy = [healthy_volume_check(predictor, path, name=str(spec), threshold=presence_threshold,
                                    orientation=orientation)
               for spec, path in zip(healthy_volumes or [], healthy_paths)
               for orientation in healthy_orientations]
    if out is not None:
        out_dir = Path(out)
        out_dir.mkdir(parents=True, exist_ok=True)
    else:
        out_dir = RunFolder.create(run_dir if run_dir is not None else Path("runs"),
                                   f"eval-{split}").path
    context = {
        "model": str(model_path),
        "split": split,
        "data": {s.name: {"format": s.config.format, "root": s.config.root, "items": how[s.name]}
                 for s in sources},
        "evaluated_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "tta": tta,
        "mask_rule": mask_rule,
        "largest_component": largest_component,
    }
    if member_paths:
        context["ensemble"] = [str(p) for p in (model_path, *member_paths)]
    context["model_card"] = card_line(model_card(model))
    context["calibration"] = model.calibration if member_paths else {
        "presence_temperature": pred.temperatures.get("presence", 1.0),
        "type_temperature": pred.temperatures.get("type", 1.0)}
    result = evaluate_predictions(pred, config.data.classes, out_dir, threshold=threshold,
                                  presence_threshold=presence_threshold,
                                  n_resamples=n_resamples, context=context, mask_rule=mask_rule,
                                  healthy=healthy or None)
    if run_dir is not None and not data and split == "test" and not member_paths:
        result["model_card_updated"] = record_test_metrics(model_path, model, result)
    return result, out_dir


def check_member_split(path: Path, sources: list[Source], split: str) -> None:
    """Refuse (ConfigError) an ensemble member whose run trained on a patient of ``split``
    (``val`` or ``test``) of the opened ``sources``, or, scoring ``test``, chose its weights and
    temperatures on one (its validation split); warn where the member has no ``splits.json``
    beside it to tell. Scoring ``val``, a member that chose its weights on those patients is in
    the main model's own position (it chose its best epoch on them too): the replicates of one
    recipe, same split and seed, are averaged there to pick a gate for the test split. The
    ``train`` and ``all`` splits hold the run's own training patients: not checked."""
    from mtl.model.warm_start import used_held_out

    if split not in ("val", "test"):
        return
    used = ("train", "val") if split == "test" else ("train",)
    leaked = used_held_out(path, sources, (split,), used=used,
                           what=f"--ensemble {path}", against="the patients scored here")
    if leaked:
        how = "trained or validated" if split == "test" else "trained"
        raise ConfigError(f"--ensemble {path}: its run {how} on {len(leaked)} "
                          f"patient(s) of the split scored here (e.g. {', '.join(leaked[:3])}); "
                          "the scores would not be honest. Use models of runs with the same "
                          "data.split and seed (the folds of one cross-validation share the "
                          "test split only)")


def record_test_metrics(model_path: Path, model: keras.Model, result: dict[str, Any]
                        ) -> str | None:
    """Put the headline test metrics of a run's own test split into the card of the model
    file evaluated (a model without a card is left alone); returns what was done."""
    card = model_card(model)
    if card is None:
        return None
    o = result["overall"]
    values = {"presence_accuracy": o.get("presence", {}).get("accuracy"),
              "type_accuracy": o.get("type", {}).get("accuracy"),
              "dice": o.get("mask", {}).get("dice_mean")}
    card = {**card, "metrics": card_metrics(
        values, "test", "mtl evaluate", items=o["n_items"], evaluated_at=result["evaluated_at"],
        mask_rule=result.get("mask_rule"), tta=result.get("tta"),
        threshold=result.get("threshold"), presence_threshold=result.get("presence_threshold"),
        largest_component=result.get("largest_component"))}
    try:
        update_model_config(model_path, card=card)
    except OSError as exc:
        return f"{model_path}: model card not updated ({exc.strerror or exc})"
    model.card = card
    return f"{model_path}: model card updated with the test metrics"
