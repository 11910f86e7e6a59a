"""params.yaml sections -> frozen, typed dataclasses.

Each stage script calls ``load_section(<name>)`` once in ``main()`` and passes the fields down as
arguments. An unknown or misspelt key, or a value of the wrong type, is an error that names the key.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

PARAMS_FILE = Path("params.yaml")


class ParamsError(ValueError):
    """A params.yaml key is unknown, missing or of the wrong type."""


# ----------------------------------------------------------------------------------------------
# Sections. Defaults here are the library's; params.yaml sets the committed profile.


@dataclasses.dataclass(frozen=True)
class SyntheticParams:
    n_patients: int = 2000
    image_size: int = 1024
    seed: int = 0
    workers: int = 0  # 0 = all cores


@dataclasses.dataclass(frozen=True)
class RsnaParams:
    archive: str | None = None  # local copy of the zip or its unpacked folder; None = Kaggle client
    competition: str = "rsna-pneumonia-detection-challenge"
    keep_test_images: bool = False


@dataclasses.dataclass(frozen=True)
class FolderParams:
    path: str | None = None
    classes: dict[str, int] = dataclasses.field(
        default_factory=lambda: {"NORMAL": 0, "PNEUMONIA": 1}
    )


@dataclasses.dataclass(frozen=True)
class DataParams:
    source: Literal["synthetic", "rsna", "folder"] = "synthetic"
    synthetic: SyntheticParams = dataclasses.field(default_factory=SyntheticParams)
    rsna: RsnaParams = dataclasses.field(default_factory=RsnaParams)
    folder: FolderParams = dataclasses.field(default_factory=FolderParams)


@dataclasses.dataclass(frozen=True)
class SplitParams:
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    seed: int = 42
    max_age: int = 120  # older ages are flagged as data errors (RSNA has five, up to 155)


@dataclasses.dataclass(frozen=True)
class PreprocessParams:
    image_size: int = 224
    resize_mode: Literal["pad", "crop", "stretch"] = "pad"
    max_rejected_fraction: float = 0.01
    workers: int = 0  # 0 = all cores
    chunk_size: int = 64  # files per worker task
    file_timeout_s: int = 120  # a file taking longer (a stuck decoder) is rejected; 0 = no limit


@dataclasses.dataclass(frozen=True)
class AugmentParams:
    rotation_deg: float = 10.0
    translate: float = 0.06  # fraction of the image size
    scale: float = 0.1  # zoom in [1 - scale, 1 + scale]
    brightness: float = 0.1
    contrast: float = 0.1
    hflip: bool = False  # a flipped chest moves the heart


@dataclasses.dataclass(frozen=True)
class TrainParams:
    arch: Literal["resnet18", "densenet121", "efficientnet_v2_s"] = "resnet18"
    last_stride: Literal[1, 2] = 2  # 1: finer final feature maps for CAM (see model.build_network)
    pretrained: bool = False
    weights_path: str | None = None  # ImageNet weights file; None = torchvision's cache
    lr: float = 1e-4
    weight_decay: float = 1e-5
    scheduler: Literal["cosine", "plateau", "none"] = "cosine"
    max_epochs: int = 20
    batch_size: int = 32
    loss: Literal["bce", "focal"] = "bce"
    pos_weight: float | Literal["auto"] = "auto"
    focal_gamma: float = 2.0
    balanced_sampling: bool = False
    early_stopping_patience: int = 5
    plateau_patience: int = 2  # scheduler: plateau; epochs without a better val AUROC
    augment: AugmentParams = dataclasses.field(default_factory=AugmentParams)
    accelerator: str = "auto"
    devices: int | str = "auto"
    strategy: str = "auto"
    precision: Literal["32", "bf16-mixed", "16-mixed"] = "32"
    num_workers: int = 0
    threads: int = 0  # torch CPU threads; 0 = torch's default (all cores)
    deterministic: bool = True
    seed: int = 42
    # small profiles: an int is a number of batches per epoch, a float a fraction of them
    limit_train_batches: int | float = 1.0
    limit_val_batches: int | float = 1.0
    compile: bool = False


@dataclasses.dataclass(frozen=True)
class EvaluateParams:
    thresholds: list[float] = dataclasses.field(default_factory=lambda: [0.5, 0.25])
    target_sensitivity: float = 0.9
    bootstrap: int = 1000
    seed: int = 0
    calibration_bins: int = 10
    # band edges; the last band is closed ([60, 120]) and older ages (data errors) are unknown
    age_bands: list[int] = dataclasses.field(default_factory=lambda: [0, 40, 60, 120])
    batch_size: int = 64


@dataclasses.dataclass(frozen=True)
class CamParams:
    method: Literal["cam", "gradcam", "gradcam++"] = "cam"
    k: int = 8
    alpha: float = 0.4
    # IoU/Dice: the map region is where it reaches this fraction of its max; the candidate with
    # the best mean IoU on the validation positives is used on test (for the baseline likewise)
    thresholds: list[float] = dataclasses.field(
        default_factory=lambda: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    )
    pointing_tolerance: float = 0.067  # fraction of the side: 15 px at 224 (Zhang et al. 2016)
    bootstrap: int = 1000
    seed: int = 0  # bootstrap resamples and the random-weights sanity network
    batch_size: int = 32

    def __post_init__(self) -> None:
        checks = {
            "k": self.k >= 0,
            "alpha": 0.0 <= self.alpha <= 1.0,
            "thresholds": bool(self.thresholds) and all(0.0 < t <= 1.0 for t in self.thresholds),
            "pointing_tolerance": 0.0 <= self.pointing_tolerance < 1.0,
            "bootstrap": self.bootstrap >= 0,
            "batch_size": self.batch_size >= 1,
        }
        bad = [f"cam.{k}={getattr(self, k)!r}" for k, ok in checks.items() if not ok]
        if bad:
            raise ParamsError(
                f"out of range: {', '.join(bad)} (k, bootstrap >= 0; alpha in [0, 1]; "
                "thresholds: a non-empty list in (0, 1]; pointing_tolerance in [0, 1); "
                "batch_size >= 1)"
            )


SECTIONS: dict[str, type] = {
    "data": DataParams,
    "split": SplitParams,
    "preprocess": PreprocessParams,
    "train": TrainParams,
    "evaluate": EvaluateParams,
    "cam": CamParams,
}


# ----------------------------------------------------------------------------------------------
# Loading


def load_section(name: str, path: str | Path = PARAMS_FILE) -> Any:
    """Read one section of params.yaml into its dataclass, rejecting unknown keys by name."""
    if name not in SECTIONS:
        raise ParamsError(f"unknown params section {name!r}; known: {', '.join(SECTIONS)}")
    raw = read_yaml(path)
    if name not in raw:
        raise ParamsError(f"{path}: section {name!r} is missing")
    return build(SECTIONS[name], raw[name], prefix=name, source=str(path))


def load_all(path: str | Path = PARAMS_FILE) -> dict[str, Any]:
    """Read and validate every section (unknown top-level sections are errors too)."""
    raw = read_yaml(path)
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise ParamsError(
            f"{path}: unknown section(s) {', '.join(unknown)}; known: {', '.join(SECTIONS)}"
        )
    return {
        name: build(cls, raw.get(name, {}), prefix=name, source=str(path))
        for name, cls in SECTIONS.items()
    }


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Load a YAML mapping, with the file named in any error."""
    path = Path(path)
    try:
        with path.open() as f:
            raw = yaml.safe_load(f)
    except FileNotFoundError:
        raise ParamsError(f"{path} not found (run from the repository root)") from None
    except yaml.YAMLError as e:
        raise ParamsError(f"{path} is not valid YAML: {e}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    return raw


def build(cls: type, raw: Any, prefix: str, source: str = "params") -> Any:
    """Build dataclass ``cls`` from a mapping; errors name the dotted key (``train.lr``)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: {prefix} must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        keys = ", ".join(f"{prefix}.{k}" for k in unknown)
        raise ParamsError(
            f"{source}: unknown key(s) {keys}; known in {prefix}: {', '.join(fields)}"
        )
    values = {}
    for name, value in raw.items():
        values[name] = _convert(hints[name], value, f"{prefix}.{name}", source)
    return cls(**values)


def _convert(tp: Any, value: Any, key: str, source: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, key, source)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arg in args:  # first alternative that accepts the value wins
            try:
                return _convert(arg, value, key, source)
            except ParamsError as e:
                errors.append(str(e))
        raise ParamsError(f"{source}: {key}={value!r} matches none of {_name(tp)}")
    if origin is Literal:
        if value in args:
            return value
        # YAML reads 32 as an int where a precision literal wants "32"
        if str(value) in [str(a) for a in args]:
            return str(value)
        raise ParamsError(f"{source}: {key}={value!r} must be one of {list(args)}")
    if tp is type(None):
        if value is None:
            return None
        raise ParamsError(f"{source}: {key}={value!r} is not null")
    if origin is list:
        if not isinstance(value, list):
            raise ParamsError(f"{source}: {key}={value!r} must be a list")
        return [_convert(args[0], v, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ParamsError(f"{source}: {key}={value!r} must be a mapping")
        return {
            _convert(args[0], k, key, source): _convert(args[1], v, f"{key}.{k}", source)
            for k, v in value.items()
        }
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ParamsError(f"{source}: {key}={value!r} must be true or false")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ParamsError(f"{source}: {key}={value!r} must be an integer")
    if tp is float:
        # YAML 1.1 reads 1e-4 (no dot) as a string; accept it as the number a user meant
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ParamsError(f"{source}: {key}={value!r} must be a number")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ParamsError(f"{source}: {key}={value!r} must be a string")
    raise TypeError(f"unsupported params type {tp!r} for {key}")  # a bug in this module


def _name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def as_dict(section: Any) -> dict[str, Any]:
    """A section as a plain dict (for logging and for hyperparameters in checkpoints)."""
    return dataclasses.asdict(section)
