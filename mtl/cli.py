"""The ``mtl`` command line: parse, call, print where the outputs went. No logic lives here."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from mtl.quiet import quiet_tensorflow

# quieter TensorFlow start-up unless the user asked otherwise (TF_CPP_MIN_LOG_LEVEL, no cuInit
# error on machines without an NVIDIA GPU); before anything imports TF
quiet_tensorflow()
os.environ.setdefault("SM_FRAMEWORK", "tf.keras")

from mtl.infer.command import mask_rule_option  # noqa: E402


#: where ``mtl data inspect`` writes its mosaic unless --out says otherwise
INSPECT_DIR = Path("runs") / "inspect"


def safe_file_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text) or "dataset"


def _fail(message: str) -> None:
    raise click.ClickException(message)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mtl")
def main() -> None:
    """mtl: one network for brain MRI tumor presence, type and mask."""


@main.command()
@click.option("--config", "-c", "config_path", type=click.Path(dir_okay=False),
              help="Experiment YAML (default: built-in phantom demo settings).")
@click.option("--name", help="Run name; the run folder is <runs-dir>/<name>[N].")
@click.option("--epochs", type=int, help="Number of epochs (train.epochs).")
@click.option("--batch-size", type=int, help="Batch size (train.batch_size).")
@click.option("--backbone", help="Encoder, e.g. resnet18, resnet34, efficientnetb0 (model.backbone).")
@click.option("--image-size", type=int, help="Input side in pixels, a multiple of 32.")
@click.option("--seed", type=int, help="Seed for splits, sampling, augmentation and weights.")
@click.option("--runs-dir", type=click.Path(file_okay=False), help="Parent folder of run folders.")
@click.option("--strategy", type=click.Choice(["auto", "default", "mirrored", "multiworker"]),
              help="tf.distribute strategy (train.strategy); multiworker reads TF_CONFIG.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Any config key, e.g. --set loss.uncertainty=true (repeatable).")
@click.option("--resume", "resume_dir", type=click.Path(file_okay=False, exists=True),
              help="Continue the run in this folder from its last finished epoch.")
@click.option("--quiet", "-q", is_flag=True, help="One line per epoch instead of progress bars.")
def train(config_path, name, epochs, batch_size, backbone, image_size, seed, runs_dir, strategy,
          overrides, resume_dir, quiet) -> None:
    """Train the multi-task network; writes one run folder."""
    from mtl.config import ConfigError, load_config
    from mtl.data.adapters import DataError

    named = {
        "name": name, "train.epochs": epochs, "train.batch_size": batch_size,
        "model.backbone": backbone, "data.image_size": image_size, "seed": seed,
        "train.runs_dir": runs_dir, "train.strategy": strategy,
    }
    cli_overrides = [f"{k}={v}" for k, v in named.items() if v is not None] + list(overrides)
    try:
        from mtl.train import resume_config, train as run_training

        if resume_dir:
            if config_path:
                _fail("--resume continues a run with its saved config; drop --config")
            run_dir = Path(resume_dir)
            config = resume_config(run_dir, cli_overrides)
            click.echo(f"resuming {run_dir}")
        else:
            run_dir = None
            config = load_config(config_path, cli_overrides)
        result = run_training(config, run_dir=run_dir, resume=bool(resume_dir),
                              verbose=2 if quiet else "auto")
    except (ConfigError, DataError) as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        click.echo("\ninterrupted: the last finished epoch is saved; continue with "
                   "`mtl train --resume <run folder>`", err=True)
        sys.exit(130)
    click.echo(f"\n{best_line(result)}")
    click.echo(f"results: {result.run_dir}")
    for item in ("best.keras", "last.keras", "history.csv", "plots/curves.png", "metrics.json"):
        click.echo(f"  {result.run_dir / item}")


def best_line(result) -> str:
    """"8 epochs done; best val_loss 0.5607 at epoch 7": the metric is named (train.monitor)."""
    from mtl.train import read_state

    monitor = read_state(result.run_dir).get("monitor") or "monitored value"
    if result.best is None:
        return f"{result.epochs_done} epochs done; no best {monitor} (not finite)"
    return (f"{result.epochs_done} epochs done; best {monitor} {result.best:.4f} at epoch "
            f"{result.best_epoch}")


@main.command()
@click.argument("run_or_model", type=click.Path(exists=True))
@click.option("--data", "data_specs", multiple=True, metavar="FORMAT=PATH|YAML",
              help="Dataset(s) to evaluate on (default: the run's own datasets), repeatable.")
@click.option("--split", default="test", show_default=True,
              help="train, val, test (the run's saved patient-safe split) or all.")
@click.option("--threshold", type=float, default=0.5, show_default=True,
              help="Probability threshold for presence and mask decisions.")
@click.option("--out", type=click.Path(file_okay=False), help="Output folder (default: <run>/eval-<split>).")
@click.option("--bootstrap", "n_resamples", type=int, default=1000, show_default=True,
              help="Bootstrap resamples for the 95% confidence intervals (0: none).")
@click.option("--weights", type=click.Choice(["best", "last"]), default="best", show_default=True,
              help="Which checkpoint of a run folder.")
@click.option("--batch-size", type=int, help="Batch size for prediction.")
@click.option("--skip-bad", is_flag=True, help="Skip and count unreadable items instead of stopping.")
@click.option("--healthy-volume", "healthy_volumes", multiple=True, metavar="PATH|mni152",
              help="Also run every brain slice (3 planes, upright) of a tumor-free NIfTI volume "
                   "and report the share called tumor; mni152 = the template shipped with "
                   "nilearn. Repeatable.")
@click.option("--healthy-orientation", type=click.Choice(["upright", "native", "both"]),
              default="upright", show_default=True,
              help="Healthy-volume slices as a radiologist views them (upright), in the file's "
                   "array order (native, as mtl infer feeds volumes today), or both.")
@click.option("--tta", is_flag=True, help="Flip test-time augmentation, as mtl infer --tta.")
@mask_rule_option
def evaluate(run_or_model, data_specs, split, threshold, out, n_resamples, weights, batch_size,
             skip_bad, healthy_volumes, healthy_orientation, tta, mask_rule) -> None:
    """Score a model per task: metrics.json, report.md and plots in an evaluation folder."""
    from mtl.config import ConfigError
    from mtl.data.adapters import DataError
    from mtl.evaluate.report import headline_rows
    from mtl.evaluate.runner import evaluate as run_evaluation

    try:
        result, out_dir = run_evaluation(
            run_or_model, data=list(data_specs) or None, split=split, threshold=threshold,
            out=out, n_resamples=n_resamples, weights=weights, batch_size=batch_size,
            on_error="skip" if skip_bad else None,
            healthy_volumes=list(healthy_volumes) or None,
            healthy_orientations=(("upright", "native") if healthy_orientation == "both"
                                  else (healthy_orientation,)),
            tta=tta, mask_rule=mask_rule)
    except (ConfigError, DataError, ValueError) as exc:
        _fail(str(exc))
    rows = headline_rows(result)
    width = max(len(k) for k, _ in rows) if rows else 10
    click.echo(f"\n{result['overall']['n_items']} items, split {split}")
    for key, value in rows:
        click.echo(f"  {key:<{width}}  {value}")
    if result.get("healthy_volumes"):
        from mtl.evaluate.healthy import format_summary

        click.echo("\nhealthy volumes (share of brain slices called tumor):")
        for entry in result["healthy_volumes"]:
            click.echo(f"  {format_summary(entry)}")
    click.echo(f"\n{result['model_card']}")
    if result.get("model_card_updated"):
        click.echo(result["model_card_updated"])
    click.echo(f"\nresults: {out_dir}")
    for name in ["metrics.json", "report.md", *result["plots"]]:
        click.echo(f"  {out_dir / name}")


@main.group()
def data() -> None:
    """Supported datasets: list their cards, inspect a folder."""


@data.command("list")
def data_list() -> None:
    """Show the dataset cards in datasets/."""
    from mtl.data.cards import format_card_table, load_cards

    click.echo(format_card_table(load_cards()))


@data.command("inspect")
@click.argument("name")
@click.argument("path", required=False)
@click.option("--out", type=click.Path(dir_okay=False),
              help="Mosaic PNG (default: runs/inspect/<name>_mosaic.png, beside the run folders).")
@click.option("-n", "n_samples", type=int, default=16, show_default=True, help="Samples in the mosaic.")
@click.option("--option", "options", multiple=True, metavar="KEY=VALUE",
              help="Adapter option, e.g. --option modalities=[flair,t1ce] (repeatable).")
@click.option("--skip-bad", is_flag=True, help="Skip and count unreadable items instead of stopping.")
def data_inspect(name, path, out, n_samples, options, skip_bad) -> None:
    """Count labels per task in a dataset folder and write a mosaic of samples with masks."""
    import json

    from mtl.config import ConfigError, parse_override
    from mtl.data.adapters import DataError, get_adapter
    from mtl.data.inspect import summarize, write_mosaic

    try:
        opts = dict(parse_override(o) for o in options)
        adapter = get_adapter(name, path, on_error="skip" if skip_bad else "raise", **opts)
        summary = summarize(adapter)
        out_path = Path(out) if out else INSPECT_DIR / f"{safe_file_name(name)}_mosaic.png"
        write_mosaic(adapter, out_path, n=n_samples)
    except (ConfigError, DataError, ValueError) as exc:
        _fail(str(exc))
    click.echo(json.dumps(summary, indent=1, default=str))
    click.echo(f"mosaic: {out_path.resolve()}")


# registered here; their heavy imports happen inside the commands
from mtl.infer.command import infer  # noqa: E402
from mtl.serve.command import serve  # noqa: E402

main.add_command(infer)
main.add_command(serve)


if __name__ == "__main__":  # pragma: no cover
    main()
