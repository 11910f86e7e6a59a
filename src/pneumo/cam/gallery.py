"""The CAM gallery: the TP / FP / FN / TN cases and their PNG grids of maps over X-rays."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pneumo.atomic import atomic_path
from pneumo.cam.overlay import overlay

if TYPE_CHECKING:
    from pneumo.cam.analysis import CamResult
    from pneumo.cam.inputs import CamInputs

GROUPS: tuple[str, ...] = ("tp", "fp", "fn", "tn")
GROUP_TITLES = {
    "tp": "True positives",
    "fp": "False positives",
    "fn": "False negatives",
    "tn": "True negatives",
}

# Gallery layout in pixels (saved at DPI, so figure inches = pixels / DPI exactly).
DPI = 100
PANEL = 256  # side of one displayed image, whatever S is
INNER = 4  # between the X-ray and its overlay
GAP = 16  # between tiles and around the grid
CAPTION = 32
HEADER = 48
COLS = 2  # tiles per row; each tile is two panels wide


def select_cases(
    probs: np.ndarray, targets: np.ndarray, threshold: float, k: int
) -> dict[str, np.ndarray]:
    """Row indices of the k most confident TP, FP, FN and TN at ``threshold`` (prob >= t: positive).

    Most confident means highest probability among predicted positives and lowest among
    predicted negatives; ties keep the row order.
    """
    probs = np.asarray(probs, dtype=np.float64)
    targets = np.asarray(targets)
    pred = probs >= threshold
    desc = np.argsort(-probs, kind="stable")
    asc = np.argsort(probs, kind="stable")
    members = {
        "tp": desc[(pred & (targets == 1))[desc]],
        "fp": desc[(pred & (targets == 0))[desc]],
        "fn": asc[(~pred & (targets == 1))[asc]],
        "tn": asc[(~pred & (targets == 0))[asc]],
    }
    return {g: members[g][:k] for g in GROUPS}


def gallery_size(n_tiles: int) -> tuple[int, int]:
    """Pixel (width, height) of a gallery PNG with ``n_tiles`` tiles (0 tiles: one empty row)."""
    rows = max(1, math.ceil(n_tiles / COLS))
    width = GAP + COLS * (2 * PANEL + INNER + GAP)
    height = HEADER + rows * (PANEL + CAPTION + GAP)
    return width, height


@dataclass(frozen=True)
class Tile:
    """One gallery case: the image, its map, its boxes (S frame) and its caption."""

    image: np.ndarray
    cam_map: np.ndarray
    boxes: np.ndarray
    caption: str


def render_gallery(
    path: Path, title: str, tiles: Sequence[Tile], alpha: float, region: float | None = None
) -> None:
    """Write one PNG grid: per tile the X-ray and the overlay, boxes outlined on both, a caption.

    With ``region``, the overlay also outlines the binarised map (where it reaches ``region`` of
    its maximum: the region IoU and Dice score). With no tiles the PNG says "no cases", so every
    declared output exists.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    width, height = gallery_size(len(tiles))
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, facecolor="white")
    FigureCanvasAgg(fig)
    fig.text(GAP / width, 1 - HEADER / 2 / height, title, va="center", fontsize=14, weight="bold")
    if not tiles:
        fig.text(
            0.5,
            (height - HEADER) / 2 / height,
            "no cases",
            ha="center",
            va="center",
            fontsize=20,
            color="0.4",
        )
    for i, tile in enumerate(tiles):
        row, col = divmod(i, COLS)
        left = GAP + col * (2 * PANEL + INNER + GAP)
        top = HEADER + row * (PANEL + CAPTION + GAP)
        for j, rgb in enumerate((tile.image, overlay(tile.image, tile.cam_map, alpha))):
            x0 = left + j * (PANEL + INNER)
            ax = fig.add_axes(
                (x0 / width, 1 - (top + PANEL) / height, PANEL / width, PANEL / height)
            )
            _draw_panel(ax, rgb, tile.boxes)
            if j == 1 and region is not None:
                _draw_region(ax, tile.cam_map, region)
        fig.text(
            (left + PANEL + INNER / 2) / width,
            1 - (top + PANEL + CAPTION / 2) / height,
            tile.caption,
            ha="center",
            va="center",
            fontsize=11,
            family="monospace",
        )
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)


def _draw_panel(ax, rgb: np.ndarray, boxes: np.ndarray) -> None:
    from matplotlib import patheffects
    from matplotlib.patches import Rectangle

    s = rgb.shape[0]
    # extent puts pixel (r, c) on [c, c + 1) x [r, r + 1): boxes are drawn in their own frame
    ax.imshow(rgb, cmap="gray", vmin=0, vmax=255, extent=(0, s, s, 0), interpolation="bilinear")
    for x, y, w, h in boxes:
        rect = Rectangle((x, y), w, h, fill=False, edgecolor="white", linewidth=1.6)
        # a dark halo keeps the outline visible on bright bone and on every jet colour
        rect.set_path_effects([patheffects.withStroke(linewidth=3.2, foreground="black")])
        ax.add_patch(rect)
    ax.set_xlim(0, s)
    ax.set_ylim(s, 0)
    ax.set_axis_off()


def _draw_region(ax, cam_map: np.ndarray, fraction: float) -> None:
    """Outline {map >= fraction * max} in dashed cyan (pixel centres at c + 0.5, as the boxes)."""
    from matplotlib import patheffects

    top = float(cam_map.max())
    if top <= 0:
        return  # a zero map has no region (iou_dice: empty)
    s = cam_map.shape[0]
    centres = np.arange(s) + 0.5
    cs = ax.contour(
        centres,
        centres,
        cam_map,
        levels=[fraction * top],
        colors="cyan",
        linewidths=1.4,
        linestyles="dashed",
    )
    cs.set(path_effects=[patheffects.withStroke(linewidth=2.6, foreground="black")])


def caption(patient_id: str, prob: float, target: int) -> str:
    """A tile caption: short patient id, probability and label."""
    return f"{str(patient_id)[:8]}  p={prob:.3f}  label {int(target)}"


def write_gallery(out_dir: Path, result: CamResult, test: CamInputs, alpha: float) -> list[Path]:
    """Write tp.png, fp.png, fn.png and tn.png into ``out_dir``; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    t = result.metrics["decision_threshold"]
    paths = []
    for group in GROUPS:
        rows = result.groups[group]
        tiles = [
            Tile(
                image=np.asarray(test.images[i]),
                cam_map=result.maps[int(i)],
                boxes=test.boxes[i],
                caption=caption(test.patient_ids[i], test.decisions()[i], test.targets[i]),
            )
            for i in rows
        ]
        side = "highest" if group in ("tp", "fp") else "lowest"
        what = f"{len(rows)} with the {side} probability" if len(rows) else "none"
        region = result.metrics["map_threshold"]
        title = (
            f"{GROUP_TITLES[group]} at {t:.3f}: {what}   [{result.metrics['method']}, "
            f"dashed: >= {region:g} max]"
        )
        path = out_dir / f"{group}.png"
        render_gallery(path, title, tiles, alpha, region)
        paths.append(path)
    return paths
