"""``mtl data``: list the dataset cards, inspect a dataset folder, write its volumes as NIfTI.

Registered on the ``mtl`` group in :mod:`mtl.cli` with ``main.add_command(data)``.
"""

from __future__ import annotations

from pathlib import Path

import click

#: where ``mtl data inspect`` writes its mosaic unless --out says otherwise
INSPECT_DIR = Path("runs") / "inspect"


@click.group()
def data() -> None:
    """Supported datasets: list their cards, inspect a folder, write its volumes as NIfTI."""


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
    from mtl.files import safe_file_name

    try:
        opts = dict(parse_override(o) for o in options)
        adapter = get_adapter(name, path, on_error="skip" if skip_bad else "raise", **opts)
        summary = summarize(adapter)
        mosaic = f"{safe_file_name(name, 'dataset')}_mosaic.png"
        out_path = Path(out) if out else INSPECT_DIR / mosaic
        write_mosaic(adapter, out_path, n=n_samples)
    except (ConfigError, DataError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps(summary, indent=1, default=str))
    click.echo(f"mosaic: {out_path.resolve()}")


@data.command("to-nifti")
@click.argument("name")
@click.argument("path")
@click.option("--out", type=click.Path(file_okay=False), required=True,
              help="Folder for <volume>/<volume>_<sequence>.nii.gz and <volume>_mask.nii.gz.")
@click.option("--volume", "volumes", multiple=True, metavar="NAME",
              help="Only this volume or patient, e.g. TCGA_CS_4941 (repeatable; default: all).")
@click.option("--option", "options", multiple=True, metavar="KEY=VALUE",
              help="Adapter option (repeatable).")
def data_to_nifti(name, path, out, volumes, options) -> None:
    """Stack a dataset's slices back into volumes: one NIfTI per sequence, plus the mask, as
    mtl infer --input NAME=FILE reads them (e.g. the TCGA-LGG patients of kaggle_3m)."""
    from tqdm import tqdm

    from mtl.config import ConfigError, parse_override
    from mtl.data.adapters import DataError, get_adapter
    from mtl.data.volumes import write_volumes

    try:
        opts = dict(parse_override(o) for o in options)
        adapter = get_adapter(name, path, **opts)
        written = write_volumes(adapter, Path(out), volumes,
                                progress=lambda xs: tqdm(xs, desc="volumes", unit="volume"))
    except (ConfigError, DataError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"{exc.filename or out}: {exc.strerror or exc}") from None
    for volume in written:
        click.echo(f"{volume.name}: {volume.slices} slices -> "
                   f"{', '.join(p.name for p in volume.files.values())}")
    click.echo(f"{len(written)} volume(s) in {Path(out).resolve()}")
    if any(not v.spacing_known for v in written):
        click.echo("note: the dataset gives no voxel size; the files say 1 mm, so areas and "
                   "volumes that mtl infer reports for them count voxels, not mm", err=True)
    elif written:
        click.echo("note: the files say 1 mm between slices (the slices carry their in-plane "
                   "pixel size only)", err=True)
    if written:
        click.echo(f"mtl infer <model> {written[0].infer_inputs()} --out <folder>")
