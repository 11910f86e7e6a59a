"""params.yaml sections -> frozen, validated pydantic models.

``params.yaml`` is the one home of every value: the models below carry the types and the ranges,
no defaults, and the library functions they configure take those values without defaults either,
so a key missing from the file is an error and a library caller cannot get another model than
``dvc repro`` does by leaving one out. Each stage script calls ``load_or_exit(<name>)`` once in
``main()`` and passes the section down whole (``kwargs_for`` picks the fields a constructor
takes); an unknown, missing, mistyped or out-of-range key
ends it with one line per key that names it (``params.yaml: train.batch_size must be greater
than 0, got -4``). The ``params`` stage (``src/check_params.py``) checks the whole file before any
other stage runs, so a typo stops ``dvc repro`` before DVC deletes any stage's outputs.
"""

from __future__ import annotations

import inspect
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

PARAMS_FILE = Path("params.yaml")


class ParamsError(ValueError):
    """A params.yaml key is unknown, missing, of the wrong type or out of range."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


NonNegInt = Annotated[int, Field(ge=0)]
PosInt = Annotated[int, Field(ge=1)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
# YAML reads an unquoted 32 as an int where the precision names are strings
Precision = Annotated[Literal["32", "bf16-mixed", "16-mixed"], BeforeValidator(str)]


# ----------------------------------------------------------------------------------------------
# data


class SyntheticParams(_Section):
    n_patients: PosInt
    image_size: Annotated[int, Field(ge=32, le=4096)]
    seed: NonNegInt
    workers: NonNegInt  # 0 = all cores


class RsnaParams(_Section):
    archive: str | None  # local copy of the zip or its unpacked folder; None = Kaggle client
    competition: Annotated[str, Field(min_length=1)]
    keep_test_images: bool


class FolderParams(_Section):
    path: str | None
    classes: Annotated[dict[str, Literal[0, 1]], Field(min_length=1)]  # folder -> Target


class DataParams(_Section):
    source: Literal["synthetic", "rsna", "folder"]
    synthetic: SyntheticParams
    rsna: RsnaParams
    folder: FolderParams


# ----------------------------------------------------------------------------------------------
# split, preprocess


class SplitParams(_Section):
    val_fraction: Annotated[float, Field(gt=0.0, lt=1.0)]
    test_fraction: Annotated[float, Field(gt=0.0, lt=1.0)]
    seed: NonNegInt
    max_age: PosInt  # older ages are flagged as data errors (RSNA has five, up to 155)

    @model_validator(mode="after")
    def _fractions_leave_a_train_split(self) -> SplitParams:
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError(
                f"val_fraction + test_fraction must be below 1, got "
                f"{self.val_fraction} + {self.test_fraction}"
            )
        return self


class PreprocessParams(_Section):
    image_size: Annotated[int, Field(ge=8, le=4096)]
    resize_mode: Literal["pad", "crop", "stretch"]
    max_rejected_fraction: Fraction
    workers: NonNegInt  # 0 = all cores
    chunk_size: PosInt  # files per worker task
    file_timeout_s: NonNegInt  # a file taking longer (a stuck decoder) is rejected; 0 = no limit


# ----------------------------------------------------------------------------------------------
# train


class AugmentParams(_Section):
    rotation_deg: Annotated[float, Field(ge=0.0, le=180.0)]
    translate: Annotated[float, Field(ge=0.0, lt=0.5)]  # fraction of the image size
    scale: Annotated[float, Field(ge=0.0, lt=1.0)]  # zoom in [1 - scale, 1 + scale]
    brightness: Fraction
    contrast: Fraction
    hflip: bool  # a flipped chest moves the heart


class TrainParams(_Section):
    arch: Literal["resnet18", "densenet121", "efficientnet_v2_s"]
    last_stride: Literal[1, 2]  # 1: finer final feature maps for CAM (see model.build_network)
    pretrained: bool
    weights_path: str | None  # ImageNet weights file; None = torchvision's cache
    lr: Annotated[float, Field(gt=0.0)]
    weight_decay: Annotated[float, Field(ge=0.0)]
    scheduler: Literal["cosine", "plateau", "none"]
    max_epochs: PosInt
    batch_size: PosInt
    loss: Literal["bce", "focal"]
    pos_weight: Literal["auto"] | Annotated[float, Field(gt=0.0)]
    focal_gamma: Annotated[float, Field(ge=0.0)]
    balanced_sampling: bool
    # labels shuffled among the train images: the maps' label-randomisation check (README)
    permute_labels: bool
    early_stopping_patience: NonNegInt
    plateau_patience: PosInt  # scheduler: plateau; epochs without a better val AUROC
    augment: AugmentParams
    accelerator: Annotated[str, Field(min_length=1)]
    devices: PosInt | Annotated[str, Field(min_length=1)]  # per node
    num_nodes: PosInt  # machines; launched by torchrun or srun (README: Scaling out)
    strategy: Annotated[str, Field(min_length=1)]
    precision: Precision
    channels_last: bool  # the network's tensors in NHWC: faster convolutions on a GPU
    num_workers: Literal["auto"] | NonNegInt  # auto: 0 off CUDA, a few per GPU process
    threads: NonNegInt  # torch CPU threads; 0 = torch's default (all cores)
    # warn: Lightning's "deterministic where torch can be"; CUDA has no deterministic backward
    # of the global average pool, which True turns into an error
    deterministic: bool | Literal["warn"]
    seed: NonNegInt
    # small profiles: an int is a number of batches per epoch, a float a fraction of them
    limit_train_batches: PosInt | Annotated[float, Field(gt=0.0, le=1.0)]
    limit_val_batches: NonNegInt | Fraction
    compile: bool


# ----------------------------------------------------------------------------------------------
# evaluate, cam


class EvaluateParams(_Section):
    thresholds: Annotated[list[Fraction], Field(min_length=1)]
    target_sensitivity: Annotated[float, Field(gt=0.0, le=1.0)]
    bootstrap: NonNegInt  # 0 = no intervals
    seed: NonNegInt
    calibration_bins: PosInt
    # band edges; the last band is closed ([60, 120]) and older ages (data errors) are unknown
    age_bands: Annotated[list[NonNegInt], Field(min_length=2)]
    batch_size: PosInt

    @model_validator(mode="after")
    def _bands_increase(self) -> EvaluateParams:
        edges = self.age_bands
        if any(b <= a for a, b in zip(edges[:-1], edges[1:], strict=True)):
            raise ValueError(f"age_bands must be increasing, got {edges}")
        return self


class CamParams(_Section):
    method: Literal["cam", "gradcam", "gradcam++"]
    k: NonNegInt  # gallery tiles per group
    alpha: Fraction
    # IoU/Dice: the map region is where it reaches this fraction of its max; the candidate with
    # the best mean IoU on the validation positives is used on test (for the baseline likewise)
    thresholds: Annotated[list[Annotated[float, Field(gt=0.0, le=1.0)]], Field(min_length=1)]
    pointing_tolerance: Annotated[float, Field(ge=0.0, lt=1.0)]  # fraction of the side
    # shift-and-stitch: the feature grid made this many times finer per axis (1 = off)
    stitch: Annotated[int, Field(ge=1, le=8)]
    # probability gates (a lower probability gives an empty mask) for the full-split mIoU;
    # the candidate with the best val mIoU is used on test
    gates: Annotated[list[Annotated[float, Field(ge=0.0, lt=1.0)]], Field(min_length=1)]
    bootstrap: NonNegInt
    seed: NonNegInt  # bootstrap resamples and the random-weights sanity network
    batch_size: PosInt


class ExportParams(_Section):
    int8: Literal["none", "static", "dynamic"]  # also write data/export/model.int8.onnx
    calibration_images: PosInt  # static int8: train images, evenly spaced, set the ranges
    # the stage fails when an ONNX test probability differs more from the torch model's
    max_prob_diff: Annotated[float, Field(gt=0.0, lt=1.0)]
    # out-of-distribution threshold: this quantile of the validation split's scores
    ood_quantile: Annotated[float, Field(ge=0.5, lt=1.0)]
    ood_images: PosInt  # generated non-chest images per kind for the metric


class CvParams(_Section):
    """Cross-validation: ``folds`` = 1 is the single model only. DVC's ``matrix`` expands lists
    and cannot count, so k > 1 also needs ``fold_ids`` = [0, ..., k-1] and ``ensemble`` =
    [mean] (both empty with 1 fold: then no cv stage exists at all)."""

    folds: PosInt
    fold_ids: list[NonNegInt]  # the cv_fold stage's matrix
    ensemble: list[Literal["mean"]]  # the cv_aggregate stage's foreach: one entry or none
    seed: NonNegInt  # the fold assignment's shuffle

    @model_validator(mode="after")
    def _lists_match_folds(self) -> CvParams:
        want_ids = list(range(self.folds)) if self.folds > 1 else []
        want_ensemble = ["mean"] if self.folds > 1 else []
        if self.fold_ids != want_ids or self.ensemble != want_ensemble:
            ids, ensemble = ",".join(map(str, want_ids)), ",".join(want_ensemble)
            raise ValueError(
                f"with folds = {self.folds}, fold_ids must be [{ids}] and ensemble [{ensemble}] "
                f"(got {self.fold_ids} and {self.ensemble}): dvc exp run -S cv.folds="
                f"{self.folds} -S 'cv.fold_ids=[{ids}]' -S 'cv.ensemble=[{ensemble}]'"
            )
        return self


SECTIONS: dict[str, type[_Section]] = {
    "data": DataParams,
    "split": SplitParams,
    "preprocess": PreprocessParams,
    "train": TrainParams,
    "evaluate": EvaluateParams,
    "cam": CamParams,
    "export": ExportParams,
    "cv": CvParams,
}


# ----------------------------------------------------------------------------------------------
# Loading


def load_section(name: str, path: str | Path = PARAMS_FILE) -> Any:
    """Read and validate one section of params.yaml; ``ParamsError`` names every bad key."""
    if name not in SECTIONS:
        raise ParamsError(f"unknown params section {name!r}; known: {', '.join(SECTIONS)}")
    raw = read_yaml(path)
    if name not in raw:
        raise ParamsError(f"{path}: section {name!r} is missing")
    return build(SECTIONS[name], raw[name], prefix=name, source=str(path))


def load_or_exit(name: str, path: str | Path = PARAMS_FILE) -> Any:
    """``load_section`` for a script: a bad params.yaml ends it with its reasons, no traceback."""
    try:
        return load_section(name, path)
    except ParamsError as e:
        sys.exit(str(e))


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Load a YAML mapping, with the file named in any error."""
    path = Path(path)
    try:
        with path.open() as f:
            raw = yaml.safe_load(f)
    except FileNotFoundError:
        raise ParamsError(f"{path} not found (run from the repository root)") from None
    except yaml.YAMLError as e:
        one_line = " ".join(str(e).split())
        raise ParamsError(f"{path} is not valid YAML: {one_line}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    return raw


def build(cls: type[_Section], raw: Any, prefix: str, source: str = "params") -> Any:
    """Validate mapping ``raw`` as section ``cls``; errors name the dotted key (``train.lr``)."""
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: {prefix} must be a mapping, got {raw!r}")
    try:
        return cls.model_validate(raw)
    except ValidationError as e:
        raise ParamsError("\n".join(_messages(e, cls, prefix, source))) from None


# pydantic's location parts that name a union member, not a key ("float", "literal['auto']")
_TYPE_TAG = re.compile(r"^(int|float|str|bool|none|list|dict)$|^(constrained|function)-|[\[\(]")


def _messages(error: ValidationError, cls: type[_Section], prefix: str, source: str) -> list[str]:
    """One line per bad key: a union's alternatives are merged into "must be A or B"."""
    by_key: dict[str, tuple[str, list[str], Any]] = {}
    for err in error.errors(include_url=False):
        parts = [str(p) for p in err["loc"] if not _TYPE_TAG.search(str(p))]
        key = re.sub(r"\.(\d+)(?=\.|$)", r"[\1]", ".".join([prefix, *parts]))  # list items
        if err["type"] == "extra_forbidden":
            parent = _section_at(cls, parts[:-1])
            known = ", ".join(parent.model_fields) if parent else "?"
            where = ".".join([prefix, *parts[:-1]])
            by_key[key] = ("unknown", [f"known in {where}: {known}"], None)
            continue
        if err["type"] == "missing":
            by_key[key] = ("missing", [], None)
            continue
        message = re.sub(r"^(Input should be|Value error, )\s*", "", err["msg"])
        kind, reasons, _ = by_key.get(key, ("bad", [], None))
        if message not in reasons:
            reasons.append(message)
        by_key[key] = (kind, reasons, err.get("input"))
    lines = []
    for key, (kind, reasons, value) in by_key.items():
        if kind == "unknown":
            lines.append(f"{source}: unknown key {key}; {reasons[0]}")
        elif kind == "missing":
            lines.append(f"{source}: {key} is missing")
        elif key == prefix:  # a check across keys (val_fraction + test_fraction)
            lines.append(f"{source}: {prefix}: {'; '.join(reasons)}")
        else:
            lines.append(f"{source}: {key} must be {' or '.join(reasons)}, got {value!r}")
    return lines


def _section_at(cls: type[_Section], parts: list[str]) -> type[_Section] | None:
    """The nested section model at ``parts`` below ``cls`` (for the list of its known keys)."""
    for part in parts:
        field = cls.model_fields.get(part)
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, _Section)):
            return None
        cls = annotation
    return cls


def kwargs_for(call: Callable[..., Any], section: BaseModel, **given: Any) -> dict[str, Any]:
    """The fields of ``section`` that ``call`` takes by name, as plain values, then ``given``.

    ``XrayDataModule(data_dir, **kwargs_for(XrayDataModule, params))`` passes a section whole into
    the constructor it configures: the signature says which keys it takes, none is restated.
    """
    names = inspect.signature(call).parameters.keys() & type(section).model_fields.keys()
    return section.model_dump(include=names) | given
