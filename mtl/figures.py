"""Figures written into run folders: training curves, and :func:`save_figure` for every figure
mtl writes (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from mtl.files import atomic_write  # noqa: E402

# panels of the training-curve figure: (title, metric names without the val_ prefix)
CURVE_PANELS = (
    ("total loss", ["loss"]),
    ("task losses", ["presence_loss", "type_loss", "mask_loss", "box_loss"]),
    ("accuracy", ["presence_acc", "type_acc"]),
    ("Dice (tumor images)", ["dice"]),
)


def plot_history(history_csv: str | Path, out_png: str | Path) -> Path | None:
    """Training curves from history.csv (train solid, validation dashed); atomic write."""
    history_csv, out_png = Path(history_csv), Path(out_png)
    if not history_csv.is_file():
        return None
    df = pd.read_csv(history_csv)
    if df.empty:
        return None
    # history.csv counts epochs from 1; files from before counted from 0
    epochs = df["epoch"] + 1 if df["epoch"].iloc[0] == 0 else df["epoch"]
    fig, axes = plt.subplots(1, len(CURVE_PANELS), figsize=(4.2 * len(CURVE_PANELS), 3.4))
    for ax, (title, names) in zip(axes, CURVE_PANELS):
        for i, name in enumerate(n for n in names if n in df):
            color = f"C{i}"
            ax.plot(epochs, df[name], color=color, marker=".", label=name)
            if f"val_{name}" in df:
                ax.plot(epochs, df[f"val_{name}"], color=color, ls="--", marker=".", label=f"val_{name}")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        if "loss" in title and ax.lines:
            ax.set_yscale("log")  # early validation losses can be orders of magnitude larger
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    return save_figure(fig, out_png)


def save_figure(fig: plt.Figure, path: str | Path, dpi: int = 110) -> Path:
    """tight_layout, write atomically (temporary file, then rename), close."""
    fig.tight_layout()
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format="png"), force=True)
    finally:
        plt.close(fig)
