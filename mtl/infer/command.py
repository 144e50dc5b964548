"""``mtl infer``: run a trained model on new scans; parse, call :mod:`mtl.infer.runner`, report.

Registered on the ``mtl`` group in :mod:`mtl.cli` with ``main.add_command(infer)``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import click

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("SM_FRAMEWORK", "tf.keras")


def checked(parse):
    """A click callback from a check of :mod:`mtl.infer.core` (ValueError -> a usage error)."""

    def callback(ctx: click.Context, param: click.Parameter, value):
        try:
            return parse(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None

    return callback


def _spacing(value: str | None):
    from mtl.infer.core import parse_spacing

    return parse_spacing(value)


def threshold_value(value: float | None):
    from mtl.infer.core import check_threshold

    return check_threshold(value, "the threshold")


def _formats(value: str | None):
    from mtl.infer.formats import parse_formats

    return parse_formats(value)


def _axis(value: str):
    from mtl.infer.core import parse_axis

    return parse_axis(value)


def _sequences(values: tuple[str, ...]):
    from mtl.infer.channels import parse_channel_option

    return tuple(parse_channel_option(v) for v in values)


#: ``--mask-rule`` of ``mtl infer``, ``mtl serve`` and ``mtl evaluate``
#: (:data:`mtl.infer.predict.MASK_RULES`)
mask_rule_option = click.option(
    "--mask-rule", type=click.Choice(["presence", "independent"]), default="presence",
    show_default=True,
    help="presence: a slice's mask counts only where its presence decision is yes (every "
         "output follows); independent: the mask head's pixels regardless.")


#: ``--threshold`` and ``--presence-threshold`` of ``mtl infer`` and ``mtl evaluate``: the masks
#: ``mtl evaluate`` scores are the ones ``mtl infer`` exports under the same options
threshold_option = click.option(
    "--threshold", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.5,
    show_default=True, callback=checked(threshold_value),
    help="Tumor probability threshold for mask pixels (and presence, unless "
         "--presence-threshold).")
presence_threshold_option = click.option(
    "--presence-threshold", type=click.FloatRange(0, 1, min_open=True, max_open=True),
    callback=checked(threshold_value),
    help="Threshold of the presence decision (default: --threshold).")


def _members(values: tuple[str, ...]):
    from mtl.model.ensemble import member_file

    return tuple(member_file(v) for v in values)


#: ``--ensemble`` of ``mtl infer``, ``mtl serve`` and ``mtl evaluate`` (:mod:`mtl.model.ensemble`)
ensemble_option = click.option(
    "--ensemble", "ensemble", multiple=True, metavar="MODEL|RUN", callback=checked(_members),
    help="Average the outputs with this model's (a .keras file or a run folder's best.keras), "
         "repeatable: the same classes, input size and MR sequences; the neighbouring slices "
         "read may differ.")


def largest_component_option(unit: str):
    """``--largest-component`` of ``mtl infer``, ``mtl serve`` and ``mtl evaluate``; ``unit``:
    what one connected region is kept per ("case (3-D for volumes)", "slice")."""
    return click.option("--largest-component", is_flag=True,
                        help=f"Keep only the largest connected tumor region per {unit}.")


@click.command("infer", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model", type=click.Path(exists=True, dir_okay=False))
@click.argument("inputs", nargs=-1, type=click.Path())
@click.option("--input", "sequences", multiple=True, metavar="NAME=FILE",
              callback=checked(_sequences),
              help="Models whose input channels are MR sequences: one file per sequence, "
                   "repeated (e.g. --input flair=a.nii.gz --input t1ce=b.nii.gz; names as the "
                   "model records them), read as images, NIfTI, NRRD or DICOM; they must share "
                   "one geometry and are stacked in the model's order into one case.")
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False),
              help="Output folder: findings.csv and one sub-folder per case.")
@click.option("--format", "formats", callback=checked(_formats), metavar="LIST",
              help="Mask formats, comma-separated: png, nifti, nrrd, dicom-seg "
                   "(default: PNG for images, NIfTI for NIfTI, NRRD for NRRD, DICOM SEG for "
                   "DICOM).")
@click.option("--overlay", is_flag=True,
              help="PNG overlays (outline, fill, label, probabilities); contact sheet for volumes.")
@click.option("--overlay-slices", type=click.Choice(["tumor", "all"]), default="tumor",
              show_default=True, help="Volumes: overlay the slices with tumor, or every slice.")
@click.option("--explain", is_flag=True, help="Grad-CAM heat map of the type head beside the overlay.")
@threshold_option
@presence_threshold_option
@click.option("--tta", is_flag=True, help="Flip test-time augmentation (average with the "
                                          "mirrored input's prediction).")
@mask_rule_option
@largest_component_option("case (3-D for volumes)")
@ensemble_option
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True,
              help="Slices per network call.")
@click.option("--axis", default="axial", show_default=True, callback=checked(_axis),
              help="NIfTI/NRRD slicing axis: axial, coronal, sagittal (from the affine) or "
                   "0, 1, 2.")
@click.option("--pixel-spacing", callback=checked(_spacing), metavar="ROW_MM,COL_MM",
              help="Pixel spacing of 2-D image inputs, for areas in mm².")
@click.option("--force", is_flag=True, help="Overwrite existing outputs.")
@click.option("--progress/--no-progress", default=None,
              help="Progress bar (default: when the terminal shows it).")
def infer(model, inputs, sequences, out, formats, overlay, overlay_slices, explain, threshold,
          presence_threshold, tta, mask_rule, largest_component, ensemble, batch_size, axis,
          pixel_spacing, force, progress) -> None:
    """Run MODEL on images, folders, NIfTI/NRRD volumes or DICOM series; write findings and masks.

    Per case: findings.json (presence, type, tumor size and place), the mask in the input's own
    geometry, and with --overlay / --explain pictures to look at. One findings.csv for the run.
    Exit status 1 if any input failed or a requested mask format could not be written for a
    case; the others still run. A --format that an input's kind can never give (dicom-seg for
    an image or NIfTI, nifti for an image) is refused before anything runs. Research use, not
    a diagnosis.

    A model whose input channels are named MR sequences (e.g. pre-contrast, flair,
    post-contrast) takes an image holding them as its channels, in that order (a 3-channel
    TIFF/PNG, as the LGG set ships it), or one file per sequence with --input NAME=FILE; a
    grey image or a single volume is refused, naming the sequences it needs.
    """
    from mtl.infer.discovery import discover
    from mtl.infer.formats import format_refusals
    from mtl.infer.predict import ModelError, Predictor
    from mtl.infer.runner import InferOptions, run
    from mtl.infer.writers import OutputExistsError
    from mtl.model.card import card_line, model_card
    from mtl.model.inference import XLA_BELOW_BATCH, jit_for_single_slices

    options = InferOptions(formats=formats, overlay=overlay, overlay_slices=overlay_slices,
                           explain=explain, presence_threshold=presence_threshold, axis=axis,
                           pixel_spacing=pixel_spacing, force=force)
    if explain and ensemble:
        raise click.UsageError("--explain draws Grad-CAM of one network, not of an ensemble: "
                               "drop --ensemble or --explain")
    if not inputs and not sequences:
        raise click.UsageError("give INPUTS (images, folders, volumes, DICOM series) or, for a "
                               "model of named MR sequences, --input NAME=FILE per sequence")
    out_dir = Path(out)
    if (out_dir / "findings.csv").exists() and not force:
        raise click.ClickException(f"{out_dir / 'findings.csv'} exists (an earlier run); use "
                                   "--force to overwrite or choose another --out")
    if sequences:  # wrong, repeated or missing names: refused before the model is loaded
        from mtl.data.preprocess import sequence_names
        from mtl.infer.channels import channel_item
        from mtl.model.card import read_model_config

        try:
            stored = read_model_config(model).get("preprocessing")
        except Exception:  # noqa: BLE001 - not readable here: loading the model says why
            stored = None
        if isinstance(stored, dict):
            try:
                channel_item(sequences, sequence_names(stored))
            except ValueError as exc:
                raise click.ClickException(str(exc)) from None
    discovered = discover(inputs)  # no pixels decoded (DICOM headers are); handed on to run()
    items = discovered[0]
    if formats:  # refuse before the model is loaded; run() checks again
        refused = format_refusals(items, formats)
        if refused:
            raise click.UsageError("; ".join(refused) + ". Nothing was run.")
    # XLA only where enough small network calls pay for its compile: one per 2-D image (two
    # with --tta), and a volume's many under --batch-size 1-3
    images = sum(item.kind == "image" for item in items)
    many_small = len(items) > images and batch_size < XLA_BELOW_BATCH
    jit = "auto" if many_small else jit_for_single_slices(images * (2 if tta else 1))
    try:
        predictor = Predictor.from_file(model, ensemble=ensemble, threshold=threshold, tta=tta,
                                        largest_component=largest_component,
                                        batch_size=batch_size, mask_rule=mask_rule,
                                        presence_threshold=presence_threshold,
                                        jit_compile=jit)
        result = run(predictor, inputs, out_dir, options, progress=progress, model_path=model,
                     sequences=sequences, discovered=discovered)
    except (ModelError, OutputExistsError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(card_line(model_card(predictor.model)))  # where the model came from
    click.echo(summary_table(result.cases))
    failed = result.failures
    click.echo(f"\nresults: {result.out}")
    if result.csv_path:
        click.echo(f"  {result.csv_path}")
    for case in result.cases:
        if case.status == "ok" and case.folder is not None:
            click.echo(f"  {case.folder}/  {output_names(case.folder, case.outputs)}")
    # what findings.json records under "warnings" (header repairs, SEG attribute repairs, ...)
    for case in result.cases:
        if case.status == "ok" and case.record:
            for note in case.record.get("warnings", []):
                if note not in case.not_written:
                    click.echo(f"warning: {case.name}: {note}", err=True)
    if result.not_written:
        click.echo(f"\n{len(result.not_written)} requested output(s) not written:", err=True)
        for note in result.not_written:
            click.echo(f"  {note}", err=True)
    if failed:
        click.echo(f"\n{len(failed)} of {len(result.cases)} input(s) failed:", err=True)
        for case in failed:
            click.echo(f"  {case.error}", err=True)
    if failed or result.not_written:
        raise SystemExit(1)


def output_names(folder: Path, paths) -> str:
    """"mask.nii.gz, overlay_slice_*.png (12), ..." for a case's files."""
    counts: dict[str, int] = {}
    for path in paths:
        rel = path.relative_to(folder).as_posix()
        rel = re.sub(r"slice_\d+", "slice_*", rel)
        rel = rel.split("/")[0] + "/" if "/" in rel else rel
        counts[rel] = counts.get(rel, 0) + 1
    return ", ".join(k if n == 1 else f"{k} ({n})" for k, n in sorted(counts.items()))


def _num(value) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def summary_table(cases) -> str:
    """One line per case: presence, label, size, hemisphere or the failure."""
    header = ("case", "kind", "tumor", "label", "size", "side")
    rows = []
    for c in cases:
        if c.status != "ok" or not c.record:
            rows.append((c.name, c.kind or "-", "FAILED", "-", "-", "-"))
            continue
        f = c.record["findings"]
        p = f["presence"]
        t = f["tumor"]
        label = f["type"]["label"]
        prob = f["type"]["probabilities"].get(label)
        presence = f"{'yes' if p['decision'] else 'no'} {_num(p['probability'])}"
        if t["volume_ml"] is not None:
            size = f"{t['volume_ml']:.2f} mL"
        elif t["area_mm2"] is not None:
            size = f"{t['area_mm2']:.1f} mm²"
        else:
            size = f"{t['pixels']} px"
        side = (t.get("hemisphere") or {}).get("side") or "-"
        rows.append((c.name, c.kind, presence, f"{label} {_num(prob)}", size, side))
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip()
             for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


__all__ = ["infer", "summary_table"]
