"""Class activation maps (CAM, Grad-CAM, Grad-CAM++), their overlays, and localization scores.

Conventions used throughout:
- A map is a float32 array (S, S) in [0, 1] in the frame of the preprocessed image (the frame of
  ``data/processed`` and of the boxes in its index files).
- A box is ``[x, y, w, h]`` in that frame, in continuous pixel coordinates: pixel ``(r, c)`` covers
  ``[c, c + 1) x [r, r + 1)``. A pixel belongs to a box when its centre ``(c + 0.5, r + 0.5)``
  lies in the half-open box ``[x, x + w) x [y, y + h)``; a box too thin to hold any pixel centre
  gets the pixel that holds its own centre, so no box vanishes when rasterised.
- Every network supported here ends in global average pooling and one linear logit
  (``pneumo.model.split_network``), so the gradient of the logit with respect to the last feature
  maps comes from the head alone: Grad-CAM needs no backward pass through the backbone.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pneumo.atomic import atomic_path
from pneumo.bootstrap import mean_interval
from pneumo.model import Exported, build_network, normalize, split_network

if TYPE_CHECKING:
    import pandas as pd

Method = Literal["cam", "gradcam", "gradcam++"]
METHODS: tuple[str, ...] = ("cam", "gradcam", "gradcam++")
GROUPS: tuple[str, ...] = ("tp", "fp", "fn", "tn")
GROUP_TITLES = {
    "tp": "True positives",
    "fp": "False positives",
    "fn": "False negatives",
    "tn": "True negatives",
}
BASELINE_SIGMA = 0.25  # the centred Gaussian's sigma as a fraction of the image side
PROB_TOLERANCE = 1e-3  # model vs predictions file; larger means the predictions are stale

# Gallery layout in pixels (saved at DPI, so figure inches = pixels / DPI exactly).
DPI = 100
PANEL = 256  # side of one displayed image, whatever S is
INNER = 4  # between the X-ray and its overlay
GAP = 16  # between tiles and around the grid
CAPTION = 32
HEADER = 48
COLS = 2  # tiles per row; each tile is two panels wide


# ----------------------------------------------------------------------------------------------
# Maps


def class_activation_maps(features: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Raw CAM: feature maps (B, C, h, w) weighted by the logit's weights (C,), summed over C."""
    return torch.einsum("bchw,c->bhw", features, weights.reshape(-1).to(features.dtype))


def normalize_maps(maps: torch.Tensor) -> torch.Tensor:
    """Min-max normalise each map of (B, h, w) to [0, 1]; a constant map becomes zeros."""
    flat = maps.flatten(1)
    lo = flat.min(dim=1).values[:, None, None]
    span = flat.max(dim=1).values[:, None, None] - lo
    # where() rather than a division guarded by eps: a constant map must be exactly 0, not NaN
    return torch.where(span > 0, (maps - lo) / span.clamp_min(1e-30), torch.zeros_like(maps))


def _gradcam_weights(acts: torch.Tensor, grads: torch.Tensor, plus_plus: bool) -> torch.Tensor:
    """Channel weights (B, C) of Grad-CAM (mean gradient) or Grad-CAM++ (closed form)."""
    if not plus_plus:
        return grads.mean(dim=(2, 3))
    # Grad-CAM++ with the class score taken as exp(logit): its higher derivatives become powers of
    # the logit's first derivative (exp cancels), the usual closed form of Chattopadhyay et al.
    g2 = grads.pow(2)
    g3 = g2 * grads
    total = acts.sum(dim=(2, 3), keepdim=True)
    denom = 2 * g2 + total * g3
    alpha = torch.where(grads != 0, g2 / torch.where(denom != 0, denom, torch.ones_like(denom)), 0)
    return (alpha * torch.relu(grads)).sum(dim=(2, 3))


def activation_maps(
    acts: torch.Tensor, linear: nn.Linear, method: Method = "cam", size: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits (B,), maps (B, size, size) in [0, 1]) from last feature maps and a GAP + linear head.

    ``cam`` min-max normalises the raw weighted sum (as the reference pipelines do, no ReLU, so
    the weakest evidence maps to 0 even when it is positive); ``gradcam`` and ``gradcam++`` apply
    ReLU to the weighted sum first, then the same normalisation. Maps are normalised at feature
    resolution and then upsampled bilinearly, which keeps them in [0, 1].
    """
    if method not in METHODS:
        raise ValueError(f"unknown CAM method {method!r}; choose one of {', '.join(METHODS)}")
    acts = acts.detach().float()
    if method == "cam":
        with torch.no_grad():
            logits = linear(acts.mean(dim=(2, 3))).reshape(-1)
            raw = class_activation_maps(acts, linear.weight[0])
    else:
        with torch.enable_grad():
            leaf = acts.clone().requires_grad_(True)
            logits = linear(leaf.mean(dim=(2, 3))).reshape(-1)
            # each image's logit depends only on its own maps, so one grad of the sum gives all
            (grads,) = torch.autograd.grad(logits.sum(), leaf)
        weights = _gradcam_weights(acts, grads, plus_plus=method == "gradcam++")
        raw = torch.relu(torch.einsum("bchw,bc->bhw", acts, weights))
    maps = normalize_maps(raw.detach())
    if size is not None:
        maps = F.interpolate(maps[:, None], size=(size, size), mode="bilinear", align_corners=False)
        maps = maps[:, 0].clamp(0.0, 1.0)
    return logits.detach(), maps


def compute_maps(
    net: nn.Module, arch: str, x: torch.Tensor, method: Method = "cam", shift: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities (B,) float64 and maps (B, S, S) float32 in [0, 1] for a normalised batch.

    ``x`` is (B, 1, S, S) as ``pneumo.model.normalize`` makes it; the network is put in eval mode.
    With ``shift`` > 0 the map is shift-averaged: the mean of the maps of the image moved by
    each of (-shift, 0, shift) pixels down and across (circularly), each moved back, then
    normalised again. A final feature grid is coarse (6 x 6 cells of 16 px at 96 px) and where
    a finding falls against the cells decides how much of it the upsampled map covers; the
    average over sub-cell shifts removes that accident (test-time augmentation). The
    probabilities are always those of the unshifted image.
    """
    if x.ndim != 4 or x.shape[1] != 1 or x.shape[2] != x.shape[3]:
        raise ValueError(f"expected a batch (B, 1, S, S), got shape {tuple(x.shape)}")
    net.eval()
    features, linear = split_network(net, arch)
    device = next(net.parameters()).device
    x = x.to(device)
    offsets = (-shift, 0, shift) if shift > 0 else (0,)
    total, probs = None, None
    for dy in offsets:
        for dx in offsets:
            with torch.no_grad():
                acts = features(torch.roll(x, (dy, dx), dims=(2, 3)))
            logits, maps = activation_maps(acts, linear, method, size=x.shape[-1])
            maps = torch.roll(maps, (-dy, -dx), dims=(1, 2))
            total = maps if total is None else total + maps
            if dy == dx == 0:
                probs = torch.sigmoid(logits.double()).cpu().numpy()
    if len(offsets) > 1:
        total = normalize_maps(total)
    return probs, total.cpu().numpy().astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Localization scores (one map, one image's boxes)


def as_boxes(boxes: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    """Boxes as a float (K, 4) array of [x, y, w, h]; rejects bad shapes and negative sizes."""
    arr = np.asarray(boxes, dtype=np.float64).reshape(-1, 4) if len(boxes) else np.zeros((0, 4))
    if not np.isfinite(arr).all() or (arr[:, 2:] < 0).any():
        raise ValueError(f"boxes must be finite [x, y, w, h] with w, h >= 0, got {arr.tolist()}")
    return arr


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
    cam_map: np.ndarray, boxes: Sequence[Sequence[float]] | np.ndarray, tolerance: float = 0.0
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


# ----------------------------------------------------------------------------------------------
# Overlays and the gallery


def overlay(img: np.ndarray, cam_map: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """RGB uint8 (S, S, 3): the gray image blended with the jet-coloured map (weight ``alpha``)."""
    if img.shape != cam_map.shape or img.ndim != 2:
        raise ValueError(f"image {img.shape} and map {cam_map.shape} must be the same 2-D shape")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    jet = matplotlib.colormaps["jet"](np.clip(cam_map, 0.0, 1.0))[..., :3]
    gray = np.repeat(img.astype(np.float64)[..., None] / 255.0, 3, axis=2)
    out = (1.0 - alpha) * gray + alpha * jet
    return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)


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


def render_gallery(path: Path, title: str, tiles: Sequence[Tile], alpha: float) -> None:
    """Write one PNG grid: per tile the X-ray and the overlay, boxes outlined on both, a caption.

    With no tiles the PNG says "no cases", so every declared output exists.
    """
    # imported here, as pandas in _read_csv: the predict command's heat maps need neither
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


def caption(patient_id: str, prob: float, target: int) -> str:
    """A tile caption: short patient id, probability and label."""
    return f"{str(patient_id)[:8]}  p={prob:.3f}  label {int(target)}"


# ----------------------------------------------------------------------------------------------
# The stage's work: inputs, one pass of maps, scores, gallery


@dataclass(frozen=True)
class CamInputs:
    """The processed test split with its predictions, row-aligned."""

    images: np.ndarray  # uint8 (N, S, S), possibly a memmap
    patient_ids: list[str]
    targets: np.ndarray  # int (N,)
    boxes: list[np.ndarray]  # (K, 4) per row, S frame
    probs: np.ndarray  # float64 (N,) from the predictions file


def parse_boxes(text: object, where: str) -> np.ndarray:
    """A JSON list of [x, y, w, h] from an index file cell; errors name ``where``."""
    if text is None or (isinstance(text, float) and math.isnan(text)) or text == "":
        return np.zeros((0, 4))
    try:
        return as_boxes(json.loads(str(text)))
    except (json.JSONDecodeError, ValueError, TypeError) as e:
        raise ValueError(
            f"{where}: boxes {text!r} are not a JSON list of [x, y, w, h]: {e}"
        ) from None


def read_test_set(processed_dir: Path, predictions_csv: Path, split: str = "test") -> CamInputs:
    """Load <split>.npy + <split>.csv from ``processed_dir``; check the predictions file matches."""
    npy, csv = processed_dir / f"{split}.npy", processed_dir / f"{split}.csv"
    images = np.load(npy, mmap_mode="r")
    if images.ndim != 3 or images.dtype != np.uint8 or images.shape[1] != images.shape[2]:
        raise ValueError(f"{npy}: expected uint8 (N, S, S), got {images.dtype} {images.shape}")
    index = _read_csv(csv, ["patientId", "target", "boxes"])
    preds = _read_csv(predictions_csv, ["patientId", "prob"])
    if len(index) != len(images):
        raise ValueError(f"{csv} has {len(index)} rows but {npy} has {len(images)} images")
    if (
        len(preds) != len(index)
        or not (preds["patientId"].values == index["patientId"].values).all()
    ):
        raise ValueError(
            f"{predictions_csv} does not list the patients of {csv} in the same order "
            "(stale predictions? run `dvc repro infer`)"
        )
    probs = preds["prob"].to_numpy(dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(probs) | (probs < 0) | (probs > 1))
    if bad.size:
        raise ValueError(
            f"{predictions_csv} row {bad[0] + 2}: prob {probs[bad[0]]!r} not in [0, 1]"
        )
    boxes = [parse_boxes(b, f"{csv} row {i + 2}") for i, b in enumerate(index["boxes"])]
    return CamInputs(
        images=images,
        patient_ids=[str(p) for p in index["patientId"]],
        targets=index["target"].to_numpy(dtype=np.int64),
        boxes=boxes,
        probs=probs,
    )


def _read_csv(path: Path, columns: list[str]) -> pd.DataFrame:
    import pandas as pd

    df = pd.read_csv(path, dtype={"patientId": str})
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)}")
    return df


def random_network(arch: str, seed: int, last_stride: int = 2) -> nn.Module:
    """The architecture with seeded random weights, for the model-dependence sanity check."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = build_network(arch, pretrained=False, last_stride=last_stride)
    return net.eval()


@dataclass(frozen=True)
class CamResult:
    """Everything the stage writes: flat metrics and the gallery's cases with their maps."""

    metrics: dict[str, float | int | str | None]
    groups: dict[str, np.ndarray]  # row indices per group, most confident first
    maps: dict[int, np.ndarray]  # row -> map, for the gallery rows


def _scored_rows(data: CamInputs) -> list[int]:
    """The rows localization is scored on: positives with at least one box."""
    return [
        i for i, (t, b) in enumerate(zip(data.targets, data.boxes, strict=True)) if t and len(b)
    ]


def tune_map_thresholds(
    model: Exported,
    val: CamInputs,
    candidates: Sequence[float],
    *,
    method: str,
    batch_size: int,
    shift: int = 0,
) -> dict[str, dict[str, float | int | list[float]]]:
    """The binarisation threshold of the maps, chosen on validation (CheXlocalize's protocol).

    For the model's maps and for the centred-Gaussian baseline alike: the candidate fraction of
    the map's maximum with the highest mean IoU over the validation positives with boxes (the
    lowest candidate on ties). A fixed fraction favours whichever model happens to spread its
    maps to suit it; tuning each on held-out data compares the maps, not that accident.
    """
    rows = _scored_rows(val)
    if not rows:
        raise ValueError("no validation positive has a box: cannot tune the map threshold")
    baseline = gaussian_map(val.images.shape[1])
    totals = {"cam": np.zeros(len(candidates)), "baseline": np.zeros(len(candidates))}
    for start in range(0, len(rows), batch_size):
        idx = rows[start : start + batch_size]
        x = normalize(np.ascontiguousarray(val.images[idx]), model.mean, model.std)
        probs, maps = compute_maps(model.net, model.arch, x, method, shift)
        _check_probs(probs, val, idx)
        for j, i in enumerate(idx):
            for prefix, m in (("cam", maps[j]), ("baseline", baseline)):
                totals[prefix] += [iou_dice(m, val.boxes[i], t)[0] for t in candidates]
    out: dict[str, dict[str, float | int | list[float]]] = {}
    for prefix, total in totals.items():
        mean_iou = total / len(rows)
        best = int(np.argmax(mean_iou))
        out[prefix] = {
            "threshold": float(candidates[best]),
            "val_iou": float(mean_iou[best]),
            "n_val_images": len(rows),
            "val_iou_by_threshold": [round(float(v), 4) for v in mean_iou],
        }
    return out


def analyse(
    model: Exported,
    test: CamInputs,
    *,
    decision_threshold: float,
    method: str,
    k: int,
    map_thresholds: dict[str, float],
    pointing_tolerance: float,
    shift: int = 0,
    batch_size: int,
    bootstrap: int,
    seed: int,
) -> CamResult:
    """One pass of maps over the rows the gallery and the scores need; scores with bootstrap CIs.

    Scored rows are the positives with at least one box. ``map_thresholds`` gives the IoU/Dice
    binarisation fraction for the maps (``cam``) and for the baseline (``baseline``), as
    ``tune_map_thresholds`` chose them. ``pointing_tolerance`` is a fraction of the image side.
    The sanity check compares, on the scored rows, each map with the map of the same
    architecture with random weights (seeded by ``seed``).
    """
    size = test.images.shape[1]
    if model.image_size != size:
        raise ValueError(f"the model expects {model.image_size} px images, test.npy has {size} px")
    groups = select_cases(test.probs, test.targets, decision_threshold, k)
    scored = set(_scored_rows(test))
    wanted = {int(i) for g in groups.values() for i in g}
    rows = sorted(scored | wanted)
    rand = random_network(model.arch, seed, model.last_stride) if scored else None
    baseline = gaussian_map(size)
    tolerance = pointing_tolerance * size
    per_image: dict[str, list[float]] = {}
    maps: dict[int, np.ndarray] = {}
    for start in range(0, len(rows), batch_size):
        idx = rows[start : start + batch_size]
        x = normalize(np.ascontiguousarray(test.images[idx]), model.mean, model.std)
        probs, batch_maps = compute_maps(model.net, model.arch, x, method, shift)
        _check_probs(probs, test, idx)
        keep = [j for j, i in enumerate(idx) if i in scored]
        rand_maps = compute_maps(rand, model.arch, x[keep], method, shift)[1] if keep else []
        for j, rand_map in zip(keep, rand_maps, strict=True):
            boxes = test.boxes[idx[j]]
            for prefix, m in (("cam", batch_maps[j]), ("baseline", baseline)):
                scores = score_map(m, boxes, threshold=map_thresholds[prefix], tolerance=tolerance)
                for key, v in scores.items():
                    per_image.setdefault(f"{prefix}.{key}", []).append(v)
            per_image.setdefault("random_corr", []).append(pearson(batch_maps[j], rand_map))
        maps.update({i: batch_maps[j] for j, i in enumerate(idx) if i in wanted})
    metrics = {
        "method": method,
        "map_shift_px": shift,
        "map_threshold": map_thresholds["cam"],
        "baseline.map_threshold": map_thresholds["baseline"],
        "pointing_tolerance_px": round(tolerance, 3),
        "decision_threshold": round(decision_threshold, 6),
        **summarize(per_image, len(scored), bootstrap=bootstrap, seed=seed),
    }
    return CamResult(metrics=metrics, groups=groups, maps=maps)


def _check_probs(probs: np.ndarray, test: CamInputs, idx: list[int]) -> None:
    diff = np.abs(probs - test.probs[idx])
    if diff.max(initial=0.0) > PROB_TOLERANCE:
        j = int(np.argmax(diff))
        raise ValueError(
            f"predictions file row {idx[j] + 2} ({test.patient_ids[idx[j]]}): prob "
            f"{test.probs[idx[j]]:.4f} but the model gives {probs[j]:.4f}; the predictions are "
            "stale or from another model (run `dvc repro infer`)"
        )


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


SCORE_KEYS = ("pointing", "iou", "dice", "mass")


def summarize(
    per_image: dict[str, list[float]], n_images: int, *, bootstrap: int, seed: int
) -> dict[str, float | int | None]:
    """Flat metrics: mean and 95 % bootstrap bounds per score; None where there is no image."""
    out: dict[str, float | int | None] = {"n_images": n_images}
    for prefix in ("cam", "baseline"):
        for key in SCORE_KEYS:
            name = f"{prefix}.{key}"
            values = np.asarray(per_image.get(name, []), dtype=np.float64)
            lo, hi = mean_interval(values, bootstrap, seed)
            out[name] = _num(values.mean() if values.size else math.nan)
            out[f"{name}_lo"], out[f"{name}_hi"] = _num(lo), _num(hi)
    corr = np.asarray(per_image.get("random_corr", []), dtype=np.float64)
    out["sanity.random_corr"] = _num(corr.mean() if corr.size else math.nan)
    return out


def _num(v: float) -> float | None:
    return None if not math.isfinite(v) else round(float(v), 6)


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
                caption=caption(test.patient_ids[i], test.probs[i], test.targets[i]),
            )
            for i in rows
        ]
        side = "highest" if group in ("tp", "fp") else "lowest"
        what = f"{len(rows)} with the {side} probability" if len(rows) else "none"
        title = f"{GROUP_TITLES[group]} at threshold {t:.3f}: {what}   [{result.metrics['method']}]"
        path = out_dir / f"{group}.png"
        render_gallery(path, title, tiles, alpha)
        paths.append(path)
    return paths
