"""The export stage's work: ``model.pt`` as ONNX (and, with ``export.int8``, as int8 ONNX), each
checked on the test split against the probabilities the evaluate stage's figures come from, and
each carrying its out-of-distribution statistics (:mod:`pneumo.ood`).

Each file carries the temperature evaluate fitted (``data/calibration.json``), and the
probabilities compared are the calibrated ones, sigmoid(logit / T), from the infer stage's
logits. The float file must agree with torch to ``export.max_prob_diff`` on every test image, or
the stage fails and writes nothing: a prediction on onnxruntime is then the prediction the metrics
describe. An int8 file is approximate by nature: its largest difference and its test AUROC go to
``metrics/export.json`` beside the float file's, for the reader to judge.

The out-of-distribution statistics come from the file's own features (an int8 file's differ): the
training split's class means and covariance, and the ``export.ood_quantile`` of the validation
split's scores as the threshold. The metrics say how often the test split is flagged and how well
the score tells the test split from generated non-chest images (:mod:`pneumo.ood_sets`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from pneumo.atomic import atomic_dir
from pneumo.calibration import read_calibration
from pneumo.layout import INT8_MODEL, ONNX_MODEL
from pneumo.model import Exported, load_exported
from pneumo.onnx_export import export_onnx, save_onnx, set_metadata
from pneumo.ood import OodStats, fit
from pneumo.ood_sets import KINDS, generated
from pneumo.quantization import calibration_rows, quantize
from pneumo.runtime import apply_temperature
from pneumo.runtime.onnx_model import load_onnx, ood_metadata
from pneumo.scores import threshold_free

ONNX_NAME, INT8_NAME = ONNX_MODEL.name, INT8_MODEL.name
BATCH = 64


class ExportError(RuntimeError):
    """The ONNX model does not reproduce the torch model's test probabilities."""


def reference(
    processed: Path, predictions: Path, temperature: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(test images, targets, torch's calibrated probabilities) in the processed row order."""
    index = pd.read_csv(processed / "test.csv", dtype={"patientId": str})
    preds = pd.read_csv(predictions / "test.csv", dtype={"patientId": str})
    if not index["patientId"].equals(preds["patientId"]):
        raise ExportError(
            f"{predictions / 'test.csv'} is not in the row order of {processed / 'test.csv'}: "
            "run `dvc repro infer`"
        )
    images = np.load(processed / "test.npy", mmap_mode="r")
    calibrated = apply_temperature(preds["logit"].to_numpy(dtype=np.float64), temperature)
    return images, preds["target"].to_numpy(), calibrated


def fitted_temperature(calibration: Path, model: Exported) -> float:
    """The temperature evaluate fitted for ``model`` (its calibration file)."""
    temperature, sha256 = read_calibration(calibration)
    if sha256 != model.sha256:
        raise ExportError(
            f"{calibration} holds a temperature fitted for another model.pt than "
            f"{model.sha256[:12]}: run `dvc repro evaluate`"
        )
    return temperature


def add_ood(path: Path, processed: Path, quantile: float) -> OodStats:
    """Fit the file's out-of-distribution statistics on the train and val splits; store them."""
    import onnx

    model = load_onnx(path)
    train_targets = pd.read_csv(processed / "train.csv")["target"].to_numpy()
    _, train = model.scan(np.load(processed / "train.npy", mmap_mode="r"), BATCH)
    _, val = model.scan(np.load(processed / "val.npy", mmap_mode="r"), BATCH)
    stats = fit(train, train_targets, val, quantile)
    proto = onnx.load(str(path))
    set_metadata(proto, ood_metadata(stats))
    save_onnx(proto, path)
    return stats


def compare(
    path: Path, images: np.ndarray, targets: np.ndarray, torch_prob: np.ndarray, params: Any
) -> dict:
    """An ONNX file's test probabilities against torch's (largest |delta|, AUROC), and its
    out-of-distribution score on the test split and on generated non-chest images."""
    model = load_onnx(path)
    prob, pooled = model.scan(images, BATCH)
    test_scores = model.ood.score(pooled)
    size = model.image_size
    other = np.concatenate(
        [
            model.ood.score(model.scan(generated(k, params.ood_images, size, i), BATCH)[1])
            for i, k in enumerate(KINDS)
        ]
    )
    is_other = np.r_[np.zeros(len(test_scores)), np.ones(len(other))]
    return {
        "max_abs_prob_diff": float(np.max(np.abs(prob - torch_prob))),
        "test_auroc": threshold_free(targets, prob, n_bins=10)["auroc"],
        "ood_test_flagged": float(np.mean(model.ood.flag(test_scores))),
        "ood_auroc_generated": float(roc_auc_score(is_other, np.r_[test_scores, other])),
    }


def run(
    model_path: Path,
    processed: Path,
    predictions: Path,
    calibration: Path,
    out_dir: Path,
    params: Any,
) -> dict[str, Any]:
    """Write ``out_dir`` (``model.onnx``, and ``model.int8.onnx`` unless ``params.int8`` is
    none) whole or not at all; the metrics of ``metrics/export.json``."""
    model = load_exported(model_path)
    temperature = fitted_temperature(calibration, model)
    images, targets, torch_prob = reference(processed, predictions, temperature)
    metrics: dict[str, Any] = {}
    with atomic_dir(out_dir) as tmp:
        export_onnx(model, tmp / ONNX_NAME, temperature)
        add_ood(tmp / ONNX_NAME, processed, params.ood_quantile)
        metrics["onnx"] = compare(tmp / ONNX_NAME, images, targets, torch_prob, params)
        del metrics["onnx"]["test_auroc"]  # evaluate's, to float rounding: not a second headline
        worst = metrics["onnx"]["max_abs_prob_diff"]
        if not worst <= params.max_prob_diff:
            raise ExportError(
                f"the ONNX model's test probabilities differ from torch's by up to {worst:.3g}, "
                f"more than export.max_prob_diff = {params.max_prob_diff:g}: nothing written"
            )
        if params.int8 != "none":
            train = np.load(processed / "train.npy", mmap_mode="r")
            calibration = (
                np.asarray(train[calibration_rows(len(train), params.calibration_images)])
                if params.int8 == "static"
                else None
            )
            quantize(
                tmp / ONNX_NAME, tmp / INT8_NAME, params.int8, calibration, model.mean, model.std
            )
            add_ood(tmp / INT8_NAME, processed, params.ood_quantile)  # on its own features
            int8 = compare(tmp / INT8_NAME, images, targets, torch_prob, params)
            metrics["int8"] = {"mode": params.int8} | {
                k: int8[k] for k in ("max_abs_prob_diff", "test_auroc")
            }
    return metrics
