"""Localization scores of one map against one image's boxes, and the centred-Gaussian baseline.

A map is float (S, S) in [0, 1]; a box is ``[x, y, w, h]`` in the same frame, in continuous
pixel coordinates: pixel ``(r, c)`` covers ``[c, c + 1) x [r, r + 1)``. A pixel belongs to a box
when its centre ``(c + 0.5, r + 0.5)`` lies in the half-open box ``[x, x + w) x [y, y + h)``; a
box too thin to hold any pixel centre gets the pixel that holds its own centre, so no box
vanishes when rasterised.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from pneumo.boxes import as_boxes

BASELINE_SIGMA = 0.25  # the centred Gaussian's sigma as a fraction of the image side
SCORE_KEYS = ("pointing", "iou", "dice", "mass")


def box_mask(boxes: Sequence[Sequence[float]] | np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Boolean (H, W) mask of the union of boxes, by the pixel-centre rule of the module doc."""
    mask = np.zeros(shape, dtype=bool)
    for x, y, w, h in as_boxes(boxes):
        if w == 0 or h == 0:
            continue
        r0, r1 = _span(y, h)
        c0, c1 = _span(x, w)
        mask[max(r0, 0) : max(r1, 0), max(c0, 0) : max(c1, 0)] = True
    return mask


def _span(start: float, length: float) -> tuple[int, int]:
    """Pixels i with start <= i + 0.5 < start + length; at least the one holding the centre."""
    lo, hi = math.ceil(start - 0.5), math.ceil(start + length - 0.5)
    if hi <= lo:
        lo = math.floor(start + length / 2)
        hi = lo + 1
    return lo, hi


def _mask_for(boxes: Sequence[Sequence[float]] | np.ndarray, cam_map: np.ndarray) -> np.ndarray:
    mask = box_mask(boxes, cam_map.shape)
    if not mask.any():
        raise ValueError("no box covers any pixel of the map: nothing to score against")
    return mask


def peak(cam_map: np.ndarray) -> tuple[int, int]:
    """(row, col) of the map's maximum; ties go to the tied pixel nearest the image centre.

    Bilinear upsampling replicates the border cells of the feature grid, so a maximum in a border
    cell is a plateau reaching the image edge; its end nearest the centre is the cell's own
    centre, where the feature actually sits (row-major argmax would pick the image corner).
    """
    top = float(cam_map.max())
    rows, cols = np.nonzero(cam_map >= top - 1e-6 * max(abs(top), 1.0))
    h, w = cam_map.shape
    d = (rows - (h - 1) / 2) ** 2 + (cols - (w - 1) / 2) ** 2
    i = int(np.argmin(d))  # first of equals in row-major order
    return int(rows[i]), int(cols[i])


def pointing_game(
    cam_map: np.ndarray, boxes: Sequence[Sequence[float]] | np.ndarray, tolerance: float
) -> bool:
    """Whether the map's peak lies inside a box, or within ``tolerance`` pixels of one.

    The tolerance is the pointing game's own (Zhang et al. 2016: 15 px at 224 px): a CAM's peak
    is only known to within its feature cell. Distances are between pixel centres. A constant map
    (no evidence anywhere, e.g. a Grad-CAM that is all zero) points nowhere: a miss.
    """
    mask = _mask_for(boxes, cam_map)
    if cam_map.max() <= cam_map.min():
        return False
    r, c = peak(cam_map)
    if mask[r, c]:
        return True
    if tolerance <= 0:
        return False
    rows, cols = np.nonzero(mask)
    return bool(((rows - r) ** 2 + (cols - c) ** 2).min() <= tolerance**2)


def iou_dice(
    cam_map: np.ndarray, boxes: Sequence[Sequence[float]] | np.ndarray, threshold: float
) -> tuple[float, float]:
    """IoU and Dice between {map >= threshold * max} and the union of boxes (a zero map: empty)."""
    mask = _mask_for(boxes, cam_map)
    peak = float(cam_map.max())
    pred = cam_map >= threshold * peak if peak > 0 else np.zeros_like(mask)
    inter = float(np.logical_and(pred, mask).sum())
    union = float(np.logical_or(pred, mask).sum())
    return inter / union, 2 * inter / (float(pred.sum()) + float(mask.sum()))


def mass_inside(cam_map: np.ndarray, boxes: Sequence[Sequence[float]] | np.ndarray) -> float:
    """Share of the map's total mass inside the boxes (0 for an all-zero map)."""
    mask = _mask_for(boxes, cam_map)
    total = float(cam_map.sum(dtype=np.float64))
    return float(cam_map[mask].sum(dtype=np.float64)) / total if total > 0 else 0.0


def gaussian_map(size: int, sigma: float = BASELINE_SIGMA) -> np.ndarray:
    """The baseline: a centred Gaussian (sigma a fraction of the side), min-max normalised."""
    centre = (size - 1) / 2
    d = (np.arange(size) - centre) ** 2
    g = np.exp(-(d[:, None] + d[None, :]) / (2 * (sigma * size) ** 2))
    return ((g - g.min()) / (g.max() - g.min())).astype(np.float32)


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two maps' pixels; 0 when either map is constant.

    A constant map (a Grad-CAM whose weighted sum is negative everywhere, say) carries no spatial
    structure, so it shares none with the other map: 0 rather than undefined.
    """
    x = a.astype(np.float64).ravel() - a.mean(dtype=np.float64)
    y = b.astype(np.float64).ravel() - b.mean(dtype=np.float64)
    denom = math.sqrt(float(x @ x) * float(y @ y))
    return float(x @ y) / denom if denom > 0 else 0.0


def score_map(
    cam_map: np.ndarray, boxes: np.ndarray, *, threshold: float, tolerance: float
) -> dict[str, float]:
    """The four localization scores of one map against one image's boxes."""
    iou, dice = iou_dice(cam_map, boxes, threshold)
    return {
        "pointing": float(pointing_game(cam_map, boxes, tolerance)),
        "iou": iou,
        "dice": dice,
        "mass": mass_inside(cam_map, boxes),
    }
