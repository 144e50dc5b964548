"""``mtl evaluate``: parse, call :func:`mtl.evaluate.evaluation.evaluate`, print the headline.

Registered on the ``mtl`` group in :mod:`mtl.cli` with ``main.add_command(evaluate)``.
"""

from __future__ import annotations

import click

from mtl.infer.command import (
    ensemble_option, largest_component_option, mask_rule_option, presence_threshold_option,
    threshold_option,
)


@click.command()
@click.argument("run_or_model", type=click.Path(exists=True))
@click.option("--data", "data_specs", multiple=True, metavar="FORMAT=PATH|YAML",
              help="Dataset(s) to evaluate on (default: the run's own datasets), repeatable.")
@click.option("--split", default="test", show_default=True,
              help="train, val, test (the run's saved patient-safe split) or all.")
@threshold_option
@presence_threshold_option
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
@largest_component_option("image (3-D per volume for the slices of a volume: lgg, brats)")
@ensemble_option
def evaluate(run_or_model, data_specs, split, threshold, presence_threshold, out, n_resamples,
             weights, batch_size, skip_bad, healthy_volumes, healthy_orientation, tta, mask_rule,
             largest_component, ensemble) -> None:
    """Score a model per task: metrics.json, report.md and plots in an evaluation folder."""
    from mtl.config import ConfigError
    from mtl.data.adapters import DataError
    from mtl.evaluate.evaluation import evaluate as run_evaluation
    from mtl.evaluate.report import headline_rows
    from mtl.infer.predict import ModelError

    try:
        result, out_dir = run_evaluation(
            run_or_model, data=list(data_specs) or None, split=split, threshold=threshold,
            presence_threshold=presence_threshold, largest_component=largest_component,
            out=out, n_resamples=n_resamples, weights=weights, batch_size=batch_size,
            on_error="skip" if skip_bad else None,
            healthy_volumes=list(healthy_volumes) or None,
            healthy_orientations=(("upright", "native") if healthy_orientation == "both"
                                  else (healthy_orientation,)),
            tta=tta, mask_rule=mask_rule, ensemble=ensemble)
    except (ConfigError, DataError, ModelError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
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
    for name in ["metrics.json", "report.md", "predictions.csv", *result["plots"]]:
        click.echo(f"  {out_dir / name}")
