"""The cam stage's one pass: maps of the rows the scores and the gallery need, scored with CIs.

Localization is scored on the positives with at least one box, for the model's maps and for the
centred-Gaussian baseline alike, each binarised at the threshold tuned for it on validation; the
sanity check correlates each map with the map of the same architecture with random weights.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from pneumo.bootstrap import mean_interval
from pneumo.cam.gallery import select_cases
from pneumo.cam.inputs import CamInputs
from pneumo.cam.localization import SCORE_KEYS, gaussian_map, iou_dice, pearson, score_map
from pneumo.cam.maps import compute_maps
from pneumo.model import Exported, build_network, normalize
from pneumo.progress import track_batches

PROB_TOLERANCE = 1e-3  # model vs predictions file; larger means the predictions are stale


def random_network(arch: str, seed: int, last_stride: int) -> nn.Module:
    """The architecture with seeded random weights, for the model-dependence sanity check."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = build_network(arch, pretrained=False, weights_path=None, last_stride=last_stride)
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
    shift: int,
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
    for batch in track_batches(len(rows), batch_size, "cam: tune on val", "images"):
        idx = rows[batch]
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
    shift: int,
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
    for batch in track_batches(len(rows), batch_size, "cam: test maps", "images"):
        idx = rows[batch]
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
