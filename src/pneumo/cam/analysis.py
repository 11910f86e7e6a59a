"""The cam stage's one pass: maps of the rows the scores and the gallery need, scored with CIs.

The protocol of CheXlocalize (Saporta et al. 2022) and Arun et al. (2021), on the RSNA boxes:
- localization is scored on the positives with at least one box, for the model's maps and for
  the centred-Gaussian baseline alike, each binarised at the threshold tuned for it on the
  validation positives (the best mean IoU);
- the full-split mIoU gates the mask by the predicted probability (a probability below the gate
  gives an empty mask), with the gate tuned on validation too: an empty mask where there is no
  box counts 1, a region where there is none 0, so false positives cost what they should;
- every CAM method is scored from the same forward passes (the method table), and the
  configured one gets the intervals, the gallery and the sanity check, which correlates each
  map with the map of the same architecture with random weights.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from pneumo.bootstrap import mean_interval
from pneumo.cam.gallery import select_cases
from pneumo.cam.head import METHODS
from pneumo.cam.inputs import CamInputs
from pneumo.cam.localization import SCORE_KEYS, gaussian_map, iou_dice, pearson, score_map
from pneumo.cam.maps import SINGLE, compute_maps, stitched_maps
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


def gated_ious(
    probs: np.ndarray, scored: Sequence[int], ious: np.ndarray, gates: Sequence[float]
) -> np.ndarray:
    """(len(gates), N): each image's IoU on the whole split with the mask gated at each gate.

    ``ious`` are the ungated IoUs of the ``scored`` rows (positives with boxes). A row whose
    probability is below the gate gets an empty mask: IoU 0 against boxes, 1 against none; a
    row above it keeps its IoU, or 0 where there is no box (a region where there is nothing).
    """
    probs = np.asarray(probs, dtype=np.float64)
    has_box = np.zeros(len(probs), dtype=bool)
    has_box[list(scored)] = True
    iou = np.zeros(len(probs))
    iou[list(scored)] = ious
    out = np.empty((len(gates), len(probs)))
    for g, gate in enumerate(gates):
        on = probs >= gate
        out[g] = np.where(has_box, np.where(on, iou, 0.0), np.where(on, 0.0, 1.0))
    return out


@dataclass(frozen=True)
class Tuning:
    """What validation chose: per map kind (each method, ``baseline``) a threshold and a gate."""

    thresholds: dict[str, float]
    gates: dict[str, float]
    table: dict[str, dict[str, Any]]  # per map kind: val IoU by threshold, val mIoU by gate


def _tune(
    candidates: Sequence[float],
    gates: Sequence[float],
    data: CamInputs,
    rows: list[int],
    ious: np.ndarray,
) -> dict[str, Any]:
    """One map kind: the threshold of the best val IoU, then the gate of the best gated mIoU
    (the lowest candidate on ties), from per-image IoUs (rows x thresholds)."""
    mean_iou = ious.mean(axis=0)
    best = int(np.argmax(mean_iou))
    miou = gated_ious(data.decisions(), rows, ious[:, best], gates).mean(axis=1)
    g = int(np.argmax(miou))
    return {
        "threshold": float(candidates[best]),
        "val_iou": float(mean_iou[best]),
        "val_iou_by_threshold": [round(float(v), 4) for v in mean_iou],
        "gate": float(gates[g]),
        "val_miou_gated": float(miou[g]),
        "val_miou_by_gate": [round(float(v), 4) for v in miou],
    }


def tune_on_val(
    model: Exported,
    val: CamInputs,
    candidates: Sequence[float],
    gates: Sequence[float],
    *,
    stitch: int,
    batch_size: int,
) -> Tuning:
    """The binarisation threshold and the probability gate of every method's maps and of the
    baseline, chosen on validation (CheXlocalize's protocol).

    The threshold is the candidate fraction of the map's maximum with the highest mean IoU over
    the validation positives with boxes; the gate then maximises the gated mIoU over the whole
    validation split. A fixed fraction favours whichever model happens to spread its maps to
    suit it; tuning each on held-out data compares the maps, not that accident.
    """
    rows = _scored_rows(val)
    if not rows:
        raise ValueError("no validation positive has a box: cannot tune the map threshold")
    baseline = gaussian_map(val.images.shape[1])
    kinds = (*map_kinds(stitch), "baseline")
    ious = {k: np.zeros((len(rows), len(candidates))) for k in kinds}
    for batch in track_batches(len(rows), batch_size, "cam: tune on val", "images"):
        idx = rows[batch]
        x = normalize(np.ascontiguousarray(val.images[idx]), model.mean, model.std)
        probs, maps = stitched_maps(model.net, model.arch, x, METHODS, stitch, single=True)
        _check_probs(probs, val, idx)
        for j in range(len(idx)):
            pos = batch.start + j
            for kind in kinds:
                m = baseline if kind == "baseline" else maps[kind][j]
                ious[kind][pos] = [iou_dice(m, val.boxes[idx[j]], t)[0] for t in candidates]
    table = {k: _tune(candidates, gates, val, rows, ious[k]) for k in kinds}
    for t in table.values():
        t["n_val_images"] = len(rows)
    return Tuning(
        thresholds={k: t["threshold"] for k, t in table.items()},
        gates={k: t["gate"] for k, t in table.items()},
        table=table,
    )


def analyse(
    model: Exported,
    test: CamInputs,
    tuning: Tuning,
    *,
    decision_threshold: float,
    method: str,
    k: int,
    pointing_tolerance: float,
    stitch: int,
    batch_size: int,
    bootstrap: int,
    seed: int,
) -> CamResult:
    """One pass of maps over the rows the gallery and the scores need; scores with bootstrap CIs.

    Scored rows are the positives with at least one box; every method is scored, each at the
    threshold ``tuning`` chose for it, and ``method`` (with the baseline) also gets intervals,
    the gated full-split mIoU, the gallery maps and the sanity check: on the scored rows, each
    map against the map of the same architecture with random weights (seeded by ``seed``).
    ``pointing_tolerance`` is a fraction of the image side.
    """
    size = test.images.shape[1]
    if model.image_size != size:
        raise ValueError(f"the model expects {model.image_size} px images, test.npy has {size} px")
    groups = select_cases(test.decisions(), test.targets, decision_threshold, k)
    scored_rows = _scored_rows(test)
    scored = set(scored_rows)
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
        probs, by_method = stitched_maps(model.net, model.arch, x, METHODS, stitch, single=True)
        _check_probs(probs, test, idx)
        keep = [j for j, i in enumerate(idx) if i in scored]
        rand_maps = compute_maps(rand, model.arch, x[keep], method, stitch)[1] if keep else []
        for j, rand_map in zip(keep, rand_maps, strict=True):
            boxes = test.boxes[idx[j]]
            kinds = {**{m: by_method[m][j] for m in map_kinds(stitch)}, "baseline": baseline}
            for kind, m in kinds.items():
                scores = score_map(m, boxes, threshold=tuning.thresholds[kind], tolerance=tolerance)
                for key, v in scores.items():
                    per_image.setdefault(_key(kind, key), []).append(v)
            per_image.setdefault("random_corr", []).append(pearson(by_method[method][j], rand_map))
        maps.update({i: by_method[method][j] for j, i in enumerate(idx) if i in wanted})
    for kind, prefix in ((method, "cam"), ("baseline", "baseline")):
        for key in SCORE_KEYS:  # under the headline's names: cam.* is the configured method
            per_image[f"{prefix}.{key}"] = per_image.get(_key(kind, key), [])
        gated = gated_ious(
            test.decisions(),
            scored_rows,
            np.asarray(per_image[f"{prefix}.iou"]),
            [tuning.gates[kind]],
        )[0]
        per_image[f"{prefix}.miou_gated"] = list(gated)
    metrics = {
        "method": method,
        "stitch": stitch,
        "map_threshold": tuning.thresholds[method],
        "baseline.map_threshold": tuning.thresholds["baseline"],
        "gate": tuning.gates[method],
        "baseline.gate": tuning.gates["baseline"],
        "pointing_tolerance_px": round(tolerance, 3),
        "decision_threshold": round(decision_threshold, 6),
        "n_gated_images": len(test.probs),
        **summarize(per_image, len(scored), bootstrap=bootstrap, seed=seed),
        "methods": _method_table(per_image, tuning, stitch),
    }
    return CamResult(metrics=metrics, groups=groups, maps=maps)


def _key(kind: str, score: str) -> str:
    """The per-image list of one map kind's score (a method's, or the baseline's)."""
    return f"by_kind/{kind}/{score}"


def map_kinds(stitch: int) -> tuple[str, ...]:
    """The maps scored: every method stitched, and (stitch > 1) every method in one pass."""
    return (*METHODS, *(m + SINGLE for m in METHODS)) if stitch > 1 else METHODS


def _method_table(per_image: dict[str, list[float]], tuning: Tuning, stitch: int) -> dict[str, Any]:
    """Per map kind (method, or ``method/single`` beside a stitch): its val-tuned threshold,
    its val IoU there, and its mean test scores."""
    out: dict[str, Any] = {}
    for m in map_kinds(stitch):
        t = tuning.table[m]
        row = {"map_threshold": t["threshold"], "val_iou": round(t["val_iou"], 6)}
        for key in SCORE_KEYS:
            values = per_image.get(_key(m, key), [])
            row[key] = round(float(np.mean(values)), 6) if values else None
        out[m] = row
    return out


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
        for key in (*SCORE_KEYS, "miou_gated"):
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
