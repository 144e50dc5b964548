"""``mtl train``: parse, call :func:`mtl.train.train`, print where the run folder went.

Registered on the ``mtl`` group in :mod:`mtl.cli` with ``main.add_command(train)``; the training
code is imported inside the command (``mtl --help`` does not load TensorFlow).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click


@click.command()
@click.option("--config", "-c", "config_path", type=click.Path(dir_okay=False),
              help="Experiment YAML (default: built-in phantom demo settings).")
@click.option("--name", help="Run name; the run folder is <runs-dir>/<name>[N].")
@click.option("--epochs", type=int, help="Number of epochs (train.epochs).")
@click.option("--time-budget", "time_budget", type=float, metavar="MINUTES",
              help="End training within this many minutes: as many of the epochs as fit, the "
                   "schedule fitted to them (train.time_budget_minutes).")
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
def train(config_path, name, epochs, time_budget, batch_size, backbone, image_size, seed, runs_dir, strategy,
          overrides, resume_dir, quiet) -> None:
    """Train the multi-task network; writes one run folder."""
    from mtl.config import ConfigError, load_config
    from mtl.data.adapters import DataError

    named = {
        "name": name, "train.epochs": epochs, "train.time_budget_minutes": time_budget,
        "train.batch_size": batch_size,
        "model.backbone": backbone, "data.image_size": image_size, "seed": seed,
        "train.runs_dir": runs_dir, "train.strategy": strategy,
    }
    cli_overrides = [f"{k}={v}" for k, v in named.items() if v is not None] + list(overrides)
    try:
        from mtl.train import resume_config, train as run_training

        if resume_dir:
            if config_path:
                raise click.ClickException(
                    "--resume continues a run with its saved config; drop --config")
            run_dir = Path(resume_dir)
            config = resume_config(run_dir, cli_overrides)
            click.echo(f"resuming {run_dir}")
        else:
            run_dir = None
            config = load_config(config_path, cli_overrides)
        result = run_training(config, run_dir=run_dir, resume=bool(resume_dir),
                              verbose=2 if quiet else "auto")
    except (ConfigError, DataError) as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        click.echo("\ninterrupted: the last finished epoch is saved; continue with "
                   "`mtl train --resume <run folder>`", err=True)
        sys.exit(130)
    click.echo(f"\n{best_line(result)}")
    click.echo(f"results: {result.run_dir}")
    for item in ("best.keras", "last.keras", "history.csv", "plots/curves.png", "metrics.json"):
        click.echo(f"  {result.run_dir / item}")


def best_line(result) -> str:
    """"8 epochs done; best val_loss 0.5607 at epoch 7": the metric is named (train.monitor);
    a run the time budget ended says so ("8 epochs done (the time budget of 140 min held 8
    of 20); ...")."""
    from mtl.runfolder import read_state

    state = read_state(result.run_dir)
    monitor = state.get("monitor") or "monitored value"
    done = f"{result.epochs_done} epochs done"
    budget = state.get("time_budget") or {}
    if budget.get("stopped"):
        config = result.run_dir / "config.yaml"
        ceiling = _configured_epochs(config)
        done += (f" (the time budget of {budget['minutes']:g} min held {result.epochs_done}"
                 f"{f' of {ceiling}' if ceiling else ''})")
    if result.best is None:
        return f"{done}; no best {monitor} (not finite)"
    return f"{done}; best {monitor} {result.best:.4f} at epoch {result.best_epoch}"


def _configured_epochs(config: Path) -> int | None:
    """train.epochs of a run's config.yaml, or None where it cannot be read."""
    import yaml

    try:
        return int(yaml.safe_load(config.read_text())["train"]["epochs"])
    except (OSError, KeyError, TypeError, ValueError, yaml.YAMLError):
        return None
