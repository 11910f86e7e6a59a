"""The train stage end to end: outputs, determinism, interruption, and DDP on two CPU processes."""

from __future__ import annotations

import csv
import functools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from sklearn.metrics import roc_auc_score

from conftest import write_params
from fixtures import write_blob_dataset
from pneumo.data.dataset import read_targets
from pneumo.model import load_exported, predict_proba
from pneumo.provenance import dvc_dir_md5

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "src" / "train.py"
TIMING = ("train_time_s", "train_images_per_s")
CURVES = [
    "train_loss",
    "train_lr",
    "val_accuracy",
    "val_auroc",
    "val_f1",
    "val_loss",
    "val_precision",
    "val_recall",
]


pytestmark = pytest.mark.usefixtures("one_thread")


def _project(path: Path, sizes: dict[str, int], **train) -> Path:
    """A directory holding params.yaml (train section) and data/processed, as the stage sees it."""
    write_blob_dataset(path / "data" / "processed", sizes, image_size=32, label_noise={"val": 0.2})
    params = {"lr": 0.003, "max_epochs": 2, "batch_size": 16, "accelerator": "cpu", "devices": 1}
    write_params(path, {"train": params | train})
    return path


def _env() -> dict[str, str]:
    return os.environ | {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _run_in_process(path: Path, monkeypatch) -> dict:
    import train  # src/train.py: src is on sys.path through pyproject's pythonpath

    monkeypatch.chdir(path)
    train.main()
    detail = json.loads((path / "data" / "detail" / "train.json").read_text())
    headline = json.loads((path / "metrics" / "train.json").read_text())
    assert headline == {k: detail[k] for k in ("best_val_auroc", "best_epoch", "epochs")}
    return detail


def _val_auroc_of_export(path: Path) -> float:
    exported = load_exported(path / "data" / "model" / "model.pt")
    val = np.load(path / "data" / "processed" / "val.npy")
    prob = predict_proba(exported.net, val, exported.mean, exported.std, batch_size=64)
    return roc_auc_score(read_targets(path / "data" / "processed", "val"), prob)


def test_outputs_and_same_seed_gives_the_same_metrics(tmp_path, monkeypatch):
    sizes = {"train": 64, "val": 31}
    a = _run_in_process(_project(tmp_path / "a", sizes), monkeypatch)
    b = _run_in_process(_project(tmp_path / "b", sizes), monkeypatch)
    assert not set(TIMING) & set(a)  # timing is logged, not a tracked output
    assert a == b  # to the last digit
    train_json = "metrics/train.json"
    assert (tmp_path / "a" / train_json).read_bytes() == (tmp_path / "b" / train_json).read_bytes()
    for name in CURVES:
        assert (tmp_path / "a" / "plots" / "train" / f"{name}.tsv").read_bytes() == (
            tmp_path / "b" / "plots" / "train" / f"{name}.tsv"
        ).read_bytes()
    # data/model hashes the same in two checkouts of one commit: no machine path in the bytes
    for rel in ("data/model/model.pt", "data/model/checkpoints/best.ckpt"):
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    ckpt = torch.load(tmp_path / "a/data/model/checkpoints/best.ckpt", weights_only=False)
    assert str(tmp_path) not in repr(ckpt["callbacks"])

    # data/detail/train.json
    assert set(a) == {"best_val_auroc", "best_epoch", "epochs", "max_epochs", "val_images", "last"}
    assert (
        a["epochs"] == a["max_epochs"] == 2 and a["best_epoch"] in (1, 2) and a["val_images"] == 31
    )
    assert set(a["last"]) == set(CURVES)
    # plots/train: one TSV per curve, indexed by epoch
    plots = tmp_path / "a" / "plots" / "train"
    assert sorted(p.stem for p in plots.iterdir()) == CURVES
    with (plots / "val_auroc.tsv").open() as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert float(rows[-1]["val_auroc"]) == pytest.approx(a["last"]["val_auroc"])
    assert max(float(r["val_auroc"]) for r in rows) == pytest.approx(a["best_val_auroc"])
    # the exported model is the best checkpoint: its AUROC on val is the best logged one
    model = tmp_path / "a" / "data" / "model"
    assert sorted(p.name for p in (model / "checkpoints").iterdir()) == ["best.ckpt"]
    assert _val_auroc_of_export(tmp_path / "a") == pytest.approx(a["best_val_auroc"], abs=1e-6)
    exported = load_exported(model / "model.pt")
    stats = json.loads((tmp_path / "a" / "data" / "processed" / "stats.json").read_text())
    assert (exported.image_size, exported.resize_mode) == (32, "pad")
    assert (exported.mean, exported.std) == (stats["mean"], stats["std"])
    # its provenance: the params' data.source, split counts, DVC's hash of data/processed
    prov = exported.provenance
    assert prov["data_source"] == "synthetic" and prov["train"]["n"] == 64
    assert prov["val"]["n"] == 31 and prov["params"]["train"]["lr"] == 0.003
    assert prov["data_processed_md5"] == dvc_dir_md5(tmp_path / "a" / "data" / "processed")


def _wait(proc: subprocess.Popen, ready, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"train.py ended early ({proc.returncode}):\n{proc.stdout.read()}")
        if time.monotonic() > end:
            proc.kill()
            pytest.fail("train.py did not reach the expected point in time")
        time.sleep(0.002)


def _sigint_default() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _written_since(path: Path, t: float) -> bool:
    return path.exists() and path.stat().st_mtime > t


def _checkpoints_are_readable(ckpt_dir: Path) -> list[str]:
    names = []
    for p in sorted(ckpt_dir.glob("*.ckpt")):
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
        assert "state_dict" in ckpt and "epoch" in ckpt, p
        names.append(p.name)
    return names


def test_interrupted_training_keeps_good_checkpoints_and_a_rerun_completes(tmp_path):
    # far more epochs than the signals need: a run must not finish before its signal lands
    project = _project(tmp_path, {"train": 48, "val": 16}, max_epochs=50, batch_size=8)
    ckpt_dir = project / "data" / "model" / "checkpoints"
    cmd = [sys.executable, str(SCRIPT)]
    run = dict(cwd=project, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for sig in (signal.SIGINT, signal.SIGKILL):  # Ctrl-C, then a kill on top of what it left
        # a run started from a terminal gets Ctrl-C; one started in the background by a shell
        # without job control (``cmd &``, as some CI runners do) inherits SIGINT ignored, and
        # Python then installs no KeyboardInterrupt: give the run a terminal's disposition
        proc = subprocess.Popen(cmd, **run, preexec_fn=_sigint_default)
        try:
            # wait until a checkpoint exists and the next one is mid-write (its temporary file
            # exists beside it): that is when the signal arrives
            started = time.time()
            _wait(proc, functools.partial(_written_since, ckpt_dir / "best.ckpt", started))
            _wait(proc, lambda: any(ckpt_dir.glob("*.tmp")))
            proc.send_signal(sig)
            proc.wait(timeout=60)
        finally:
            proc.kill()
            proc.stdout.close()
        assert proc.returncode != 0
        assert "best.ckpt" in _checkpoints_are_readable(ckpt_dir)
        assert not (project / "data" / "model" / "model.pt").exists()
        assert not (project / "metrics" / "train.json").exists()
        if sig == signal.SIGINT:  # a Python-level interrupt cleans up its temporary file
            assert not list(ckpt_dir.glob("*.tmp"))
        else:  # the kill landed mid-write: the torn file is only the temporary one
            assert list(ckpt_dir.glob("*.ckpt.*.tmp"))

    params_file = project / "params.yaml"
    params = yaml.safe_load(params_file.read_text())
    params["train"]["max_epochs"] = 3
    params_file.write_text(yaml.safe_dump(params))
    done = subprocess.run(cmd, **run, timeout=180)
    assert done.returncode == 0, done.stdout
    assert _checkpoints_are_readable(ckpt_dir) == ["best.ckpt"]
    assert not list(ckpt_dir.glob("*.tmp"))  # the rerun removed what the kill left
    metrics = json.loads((project / "metrics" / "train.json").read_text())
    assert metrics["epochs"] == 3
    assert load_exported(project / "data" / "model" / "model.pt").arch == "resnet18"


def test_ddp_on_two_cpu_processes_validates_on_the_whole_val_set(tmp_path):
    # 33 val images over 2 ranks: DistributedSampler would pad to 34 by repeating one
    project = _project(
        tmp_path, {"train": 48, "val": 33}, batch_size=8, devices=2, strategy="ddp", max_epochs=1
    )
    done = subprocess.run(
        [sys.executable, str(SCRIPT)],
        cwd=project,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout
    assert "Starting with 2 processes" in done.stdout
    metrics = json.loads((project / "data" / "detail" / "train.json").read_text())
    assert metrics["val_images"] == 33
    # not 0 or 1 (the only values all CPUs must agree on after six steps), so a duplicated or a
    # missing validation sample would change it and the comparison below would show it
    assert 0 < metrics["best_val_auroc"] < 1
    assert _val_auroc_of_export(project) == pytest.approx(metrics["best_val_auroc"], abs=1e-6)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_under_torchrun_validate_once_and_only_node_0_writes(tmp_path):
    # Two "machines" on localhost: torchrun once per node (static rendezvous on 127.0.0.1, gloo),
    # each in its own copy of the project, as each node would have its own disk
    train = dict(batch_size=8, num_nodes=2, devices=1, strategy="ddp", max_epochs=1)
    nodes = [_project(tmp_path / f"node{r}", {"train": 48, "val": 33}, **train) for r in (0, 1)]
    torchrun = Path(sys.executable).parent / "torchrun"
    port = _free_port()
    procs = [
        subprocess.Popen(
            [str(torchrun), "--nnodes=2", "--nproc-per-node=1", f"--node-rank={rank}"]
            + ["--master-addr=127.0.0.1", f"--master-port={port}", str(SCRIPT)],
            cwd=node,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank, node in enumerate(nodes)
    ]
    try:
        logs = [p.communicate(timeout=180)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, log in zip(procs, logs, strict=True):
        assert p.returncode == 0, log
    assert "Starting with 2 processes" in logs[0]
    # what it runs on, said once, by global rank 0
    said = [line for log in logs for line in log.splitlines() if line.startswith("training on")]
    assert said == [line for line in logs[0].splitlines() if line.startswith("training on")]
    assert len(said) == 1 and "1 device(s) x 2 node(s)" in said[0] and "DDPStrategy" in said[0]
    metrics = json.loads((nodes[0] / "data" / "detail" / "train.json").read_text())
    assert metrics["val_images"] == 33  # each val image once over both nodes, none repeated
    assert 0 < metrics["best_val_auroc"] < 1  # so a missing or doubled sample would show
    assert _val_auroc_of_export(nodes[0]) == pytest.approx(metrics["best_val_auroc"], abs=1e-6)
    # node 1 trained but wrote nothing: no model, checkpoint, metrics or curves
    written = [p for p in nodes[1].rglob("*") if p.is_file() and "processed" not in p.parts]
    assert [p.name for p in written] == ["params.yaml"]
