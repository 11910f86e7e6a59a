"""Where the stages read and write, relative to the repository root (the paths of ``dvc.yaml``),
and the predictions files' columns: the facts two or more stages or commands share."""

from __future__ import annotations

from pathlib import Path

PARAMS_OK = Path("data/params.ok")
RAW = Path("data/raw")
DOWNLOADS = Path("data/downloads")  # the Kaggle zip stays here between runs (not a DVC out)
SPLIT = Path("data/split")
PROCESSED = Path("data/processed")
MODEL_DIR = Path("data/model")
MODEL = MODEL_DIR / "model.pt"
EXPORT_DIR = Path("data/export")  # the export stage: the model as ONNX, for torch-free prediction
ONNX_MODEL = EXPORT_DIR / "model.onnx"
INT8_MODEL = EXPORT_DIR / "model.int8.onnx"  # only with export.int8 other than none
EXPORT_METRICS = Path("metrics/export.json")
PREDICTIONS = Path("data/predictions")
OPERATING_POINT = Path("data/operating_point.json")
CALIBRATION = Path("data/calibration.json")  # evaluate's temperature, which export stores
CV_DIR = Path("data/cv")  # cv.folds > 1: data/cv/fold<f>/ per fold (pneumo.cv)
CV_OPERATING_POINT = Path("data/cv_operating_point.json")  # the fold ensemble's threshold


def cv_fold_dir(fold: int) -> Path:
    """Where cross-validation fold ``fold`` writes (``dvc.yaml``: ``data/cv/fold${item.fold}``)."""
    return CV_DIR / f"fold{fold}"


# data/predictions/<split>.csv: the splits infer scores and the columns evaluate and cam read
PREDICTED_SPLITS = ("val", "test")
# (prob is the network's sigmoid, uncalibrated; logit its float32 input, which evaluate's
# temperature divides: pneumo.calibration)
PREDICTION_COLUMNS = ("patientId", "target", "prob", "logit", "view", "sex", "age", "class")
PREDICTIONS_MODEL = "model.json"  # beside them: the sha256 of the model.pt that made them

# The headline figures (the top-level `metrics:` of dvc.yaml, what `dvc metrics diff` prints) and
# the detail behind them: every interval, subgroup, count and val, read by the model card. The
# detail files are DVC-cached outputs (not git): cached, they keep train and cam run-cached.
METRICS_DIR = Path("metrics")
DETAIL = Path("data/detail")
SPLIT_SUMMARY = DETAIL / "split.json"
REPORTS = Path("reports")  # git-tracked: the model card and its figures
MODEL_CARD = REPORTS / "model_card.md"
CARD_FIGURES = REPORTS / "figures"
