"""The model card's figures: small PNGs that read anywhere (GitHub, a PDF, an offline page).

ROC and calibration curves drawn with matplotlib from the evaluate stage's plot data, and
thumbnails of the CAM gallery's first row (its two most confident cases) of each group. The
bytes depend only on the inputs and the library versions: no date in the PNG metadata.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from PIL import Image

from pneumo.atomic import atomic_dir
from pneumo.cam.gallery import COLS, GROUP_TITLES, gallery_size

DPI = 100
CURVE_INCHES = (4.0, 3.6)
THUMB_SCALE = 0.5  # of the gallery's pixels: two cases per group in 530 x 176 px
THUMB_GROUPS = ("tp", "fp", "fn")  # true negatives show nothing a reader looks for
SPLIT_STYLE = {"val": ("tab:blue", "--"), "test": ("tab:orange", "-")}
NO_METADATA = {"Software": None}  # matplotlib writes its version otherwise: keep bytes stable


def _figure():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=CURVE_INCHES, dpi=DPI, facecolor="white")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def roc_figure(plots_eval: Path, path: Path) -> None:
    """ROC curves of val and test (``plots/eval/roc_<split>.csv``) with the chance diagonal."""
    fig, ax = _figure()
    for split, (colour, style) in SPLIT_STYLE.items():
        roc = pd.read_csv(plots_eval / f"roc_{split}.csv")
        ax.plot(roc["fpr"], roc["tpr"], color=colour, linestyle=style, label=split)
    ax.plot([0, 1], [0, 1], color="0.6", linewidth=0.8, label="chance")
    _finish(fig, ax, ("False positive rate", "Sensitivity", "ROC"), "lower right", path)


def calibration_figure(plots_eval: Path, path: Path) -> None:
    """Reliability diagram (``plots/eval/calibration_<split>.csv``) against the diagonal, after
    the temperature (markers) and before it (faint, ``calibration_<split>_uncalibrated.csv``)."""
    fig, ax = _figure()
    for split, (colour, style) in SPLIT_STYLE.items():
        for suffix, alpha, label in (("_uncalibrated", 0.35, " before calibration"), ("", 1, "")):
            cal = pd.read_csv(plots_eval / f"calibration_{split}{suffix}.csv")
            ax.plot(
                cal["mean_prob"],
                cal["frac_pos"],
                color=colour,
                linestyle=style,
                marker="o",
                markersize=3,
                alpha=alpha,
                label=split + label,
            )
    ax.plot([0, 1], [0, 1], color="0.6", linewidth=0.8, label="perfect")
    labels = ("Mean predicted probability (bin)", "Fraction positive", "Calibration")
    _finish(fig, ax, labels, "upper left", path)


def _finish(fig, ax, labels: tuple[str, str, str], legend: str, path: Path) -> None:
    xlabel, ylabel, title = labels
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(color="0.9")
    ax.legend(loc=legend, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=DPI, metadata=NO_METADATA)


def gallery_thumbnail(gallery_png: Path, path: Path) -> None:
    """The title and first row of a CAM gallery PNG, scaled by ``THUMB_SCALE``."""
    width, height = gallery_size(COLS)  # one full row
    with Image.open(gallery_png) as im:
        row = im.convert("RGB").crop((0, 0, min(width, im.width), min(height, im.height)))
    size = (round(row.width * THUMB_SCALE), round(row.height * THUMB_SCALE))
    row.resize(size, Image.Resampling.LANCZOS).save(path, format="PNG", optimize=True)


def write_figures(plots_eval: Path, plots_cam: Path, out_dir: Path) -> dict[str, str]:
    """Write every figure into ``out_dir`` (replaced whole); {name: file name} for the card."""
    names = {"roc": "roc.png", "calibration": "calibration.png"}
    names |= {f"cam_{g}": f"cam_{g}.png" for g in THUMB_GROUPS}
    with atomic_dir(out_dir) as tmp:
        roc_figure(plots_eval, tmp / names["roc"])
        calibration_figure(plots_eval, tmp / names["calibration"])
        for group in THUMB_GROUPS:
            gallery_thumbnail(plots_cam / f"{group}.png", tmp / names[f"cam_{group}"])
    return names


THUMB_TITLES = {g: GROUP_TITLES[g] for g in THUMB_GROUPS}
