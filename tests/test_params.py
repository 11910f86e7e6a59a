"""params.yaml validation: every key typed and ranged in one place, one line per bad key naming
it, no traceback from any stage script, and the repository's own file valid."""

from __future__ import annotations

import copy
import inspect
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from check_params import check
from conftest import ROOT, run_stage, write_params
from pneumo.params import SECTIONS, ParamsError, kwargs_for, load_section

BASE = yaml.safe_load((ROOT / "params.yaml").read_text())


def errors_for(tmp_path: Path, mutate) -> str:
    params = copy.deepcopy(BASE)
    mutate(params)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    with pytest.raises(ParamsError) as e:
        check(path)
    return str(e.value).replace(str(path), "params.yaml")


def test_the_committed_params_are_valid_and_complete() -> None:
    check(ROOT / "params.yaml")
    sections = {name: load_section(name, ROOT / "params.yaml") for name in SECTIONS}
    assert sections["train"].precision == "32" and sections["train"].pos_weight == "auto"
    # no defaults in code: every key of every model is in params.yaml
    for name, model in SECTIONS.items():
        assert set(model.model_fields) == set(BASE[name]), name


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (
            lambda d: d["train"].update(lrr=1),
            "params.yaml: unknown key train.lrr; known in train: arch",
        ),
        (lambda d: d["train"].update(lr="fast"), "params.yaml: train.lr must be a valid number"),
        (
            lambda d: d["data"].update(source="kaggle"),
            "params.yaml: data.source must be 'synthetic', 'rsna' or 'folder', got 'kaggle'",
        ),
        (
            lambda d: d["train"].update(batch_size=-4),
            "params.yaml: train.batch_size must be greater than or equal to 1, got -4",
        ),
        (
            lambda d: d["data"]["synthetic"].update(image_size=0),
            "params.yaml: data.synthetic.image_size must be greater than or equal to 32, got 0",
        ),
        (
            lambda d: d["data"]["synthetic"].update(n_patients=0),
            "params.yaml: data.synthetic.n_patients must be greater than or equal to 1, got 0",
        ),
        (
            lambda d: d["train"].update(lr=-0.5),
            "params.yaml: train.lr must be greater than 0, got -0.5",
        ),
        (lambda d: d["train"].pop("lr"), "params.yaml: train.lr is missing"),
        (
            lambda d: d["train"]["augment"].update(rotatio=3),
            "params.yaml: unknown key train.augment.rotatio; known in train.augment: rotation_deg",
        ),
        (
            lambda d: d["split"].update(val_fraction=0.0),
            "params.yaml: split.val_fraction must be greater than 0, got 0.0",
        ),
        (
            lambda d: d["split"].update(test_fraction=1.0),
            "params.yaml: split.test_fraction must be less than 1, got 1.0",
        ),
        (
            lambda d: d["split"].update(val_fraction=0.6, test_fraction=0.5),
            "params.yaml: split: val_fraction + test_fraction must be below 1, got 0.6 + 0.5",
        ),
        (
            lambda d: d["cam"].update(thresholds=[0, 0.5]),
            "params.yaml: cam.thresholds[0] must be greater than 0, got 0",
        ),
        (
            lambda d: d["train"].update(pos_weight="x"),
            "params.yaml: train.pos_weight must be 'auto' or a valid number",
        ),
        (
            lambda d: d["train"].update(pos_weight=-1),
            "params.yaml: train.pos_weight must be 'auto' or greater than 0, got -1",
        ),
        (
            lambda d: d["data"]["folder"].update(classes={"NORMAL": 0, "PNEUMONIA": 2}),
            "params.yaml: data.folder.classes.PNEUMONIA must be 0 or 1, got 2",
        ),
        (lambda d: d["data"]["folder"].update(classes={}), "params.yaml: data.folder.classes must"),
        (
            lambda d: d["evaluate"].update(target_sensitivity=0.0),
            "params.yaml: evaluate.target_sensitivity must be greater than 0, got 0.0",
        ),
        (
            lambda d: d["evaluate"].update(bootstrap=-1),
            "params.yaml: evaluate.bootstrap must be greater than or equal to 0, got -1",
        ),
        (
            lambda d: d["evaluate"].update(calibration_bins=0),
            "params.yaml: evaluate.calibration_bins must be greater than or equal to 1, got 0",
        ),
        (
            lambda d: d["evaluate"].update(age_bands=[0, 60, 40]),
            "params.yaml: evaluate: age_bands must be increasing, got [0, 60, 40]",
        ),
        (
            lambda d: d["cam"].update(alpha=1.5),
            "params.yaml: cam.alpha must be less than or equal to 1",
        ),
        (
            lambda d: d["preprocess"].update(resize_mode="zoom"),
            "params.yaml: preprocess.resize_mode must be 'pad', 'crop' or 'stretch', got 'zoom'",
        ),
        (
            lambda d: d["preprocess"].update(chunk_size=0),
            "params.yaml: preprocess.chunk_size must be greater than or equal to 1, got 0",
        ),
        (lambda d: d.update(foo=1), "params.yaml: unknown section(s) foo; known: data, split"),
        (lambda d: d.pop("cam"), "params.yaml: section 'cam' is missing"),
    ],
)
def test_bad_key_gives_one_line_naming_it(tmp_path: Path, mutate, expected: str) -> None:
    message = errors_for(tmp_path, mutate)
    assert message.startswith(expected), message
    assert "\n" not in message


def test_every_bad_key_is_reported_at_once(tmp_path: Path) -> None:
    def two(d: dict) -> None:
        d["train"]["lr"] = -1
        d["cam"]["k"] = -1

    lines = errors_for(tmp_path, two).splitlines()
    assert [ln.split(" must ")[0] for ln in lines] == [
        "params.yaml: train.lr",
        "params.yaml: cam.k",
    ]


def test_lenient_yaml_spellings_are_accepted(tmp_path: Path) -> None:
    path = write_params(tmp_path, {"train": {"lr": "1e-4", "precision": 32}})
    train = load_section("train", path)
    assert train.lr == 1e-4 and train.precision == "32"
    with pytest.raises(ValueError):
        train.lr = 1.0  # frozen: what a stage read is what it uses


def test_check_params_stage_and_a_stage_script_fail_in_one_line(tmp_path: Path) -> None:
    write_params(tmp_path, {"train": {"batch_size": -4}})
    check = run_stage("check_params.py", tmp_path)
    assert check.returncode != 0
    assert check.stderr.strip() == (
        "params.yaml: train.batch_size must be greater than or equal to 1, got -4"
    )
    assert not (tmp_path / "data" / "params.ok").exists()
    train = run_stage("train.py", tmp_path)
    assert train.returncode != 0 and "Traceback" not in train.stderr
    assert train.stderr.strip().splitlines()[-1].startswith("params.yaml: train.batch_size")
    write_params(tmp_path, {})
    ok = run_stage("check_params.py", tmp_path)
    assert ok.returncode == 0, ok.stderr
    first = (tmp_path / "data" / "params.ok").read_bytes()
    write_params(tmp_path, {"train": {"lr": 0.5}})
    assert run_stage("check_params.py", tmp_path).returncode == 0
    assert (tmp_path / "data" / "params.ok").read_bytes() == first  # constant: re-runs nothing


def test_train_reports_bad_params_before_importing_torch(tmp_path: Path) -> None:
    write_params(tmp_path, {"train": {"lrr": 1}})
    probe = (
        "import runpy, sys; sys.argv = ['train.py'];"
        "code = 0\n"
        "try:\n"
        f"    runpy.run_path({str(ROOT / 'src' / 'train.py')!r}, run_name='__main__')\n"
        "except SystemExit as e:\n"
        "    code = e.code\n"
        "print('torch' in sys.modules, code)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert proc.stdout.split()[0] == "False", proc.stdout + proc.stderr
    assert "unknown key train.lrr" in proc.stdout


def test_a_section_passes_whole_into_the_calls_it_configures() -> None:
    import lightning as L

    from pneumo.data.datamodule import XrayDataModule
    from pneumo.training.module import PneumoniaClassifier

    train = load_section("train", ROOT / "params.yaml")
    # a Lightning upgrade adding a Trainer argument named like a train key would show here
    assert set(kwargs_for(L.Trainer, train)) == {
        "accelerator",
        "devices",
        "num_nodes",
        "strategy",
        "precision",
        "max_epochs",
        "deterministic",
        "limit_train_batches",
        "limit_val_batches",
    }
    assert set(kwargs_for(XrayDataModule, train)) == {
        "batch_size",
        "num_workers",
        "balanced_sampling",
        "seed",
        "augment",
        "permute_labels",
    }
    module = kwargs_for(PneumoniaClassifier, train, pos_weight=2.0)
    assert set(module) == set(inspect.signature(PneumoniaClassifier).parameters)  # all given
    assert module["pos_weight"] == 2.0 and module["lr"] == train.lr
    assert kwargs_for(XrayDataModule, train)["augment"] == train.augment.model_dump()
