"""End to end: the real `dvc` CLI on a tiny profile in a temporary git repository.

One repository is built per module and the tests run in file order against it, each leaving it
in a committed, reproduced state: repro and no-op repro, an experiment, a queued sweep, diffs
between commits, and a shared remote with the run-cache. The last test builds its own small
repository to show why `src/push_runs.py` exists.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from sklearn.metrics import roc_auc_score

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.e2e

# Small enough for seconds per stage, large enough that every split has both classes.
TINY = {
    "data": {"synthetic": {"n_patients": 160, "image_size": 128, "workers": 2}},
    "preprocess": {"image_size": 32, "workers": 2},
    "train": {"max_epochs": 1, "batch_size": 16, "lr": 1e-3},
    "evaluate": {"bootstrap": 50},
    "cam": {"k": 2, "bootstrap": 50},
}
CHECK = "params"  # the params.yaml check every stage depends on; re-runs on any params change
UPSTREAM = ("download", "split", "preprocess")
DOWNSTREAM = ("train", "infer", "evaluate", "cam", "export", "card")


def _merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = _merge(base[key], value) if isinstance(value, dict) else value
    return out


def _env() -> dict[str, str]:
    env = dict(os.environ)
    # Stage commands say `python`: make it the interpreter running the tests.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("PYTHONPATH", None)
    env["DVC_NO_ANALYTICS"] = "1"
    env["GIT_AUTHOR_NAME"] = env["GIT_COMMITTER_NAME"] = "e2e"
    env["GIT_AUTHOR_EMAIL"] = env["GIT_COMMITTER_EMAIL"] = "e2e@example.com"
    return env


def run(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run a command, failing the test with its output when it fails."""
    proc = subprocess.run(args, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=900)
    if check and proc.returncode != 0:
        pytest.fail(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def dvc(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run(cwd, sys.executable, "-m", "dvc", *args, check=check)


def ran_stages(output: str) -> set[str]:
    """Stages that `dvc repro` / `dvc exp run` actually executed (not restored, not skipped)."""
    return {
        line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")
    }


def set_params(repo: Path, override: dict) -> None:
    path = repo / "params.yaml"
    params = _merge(yaml.safe_load(path.read_text()), override)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def commit(repo: Path, message: str) -> None:
    run(repo, "git", "add", "-A")
    run(repo, "git", "commit", "-q", "-m", message)


def tiny_project(repo: Path) -> Path:
    """The project's pipeline copied into ``repo``, a new git + dvc repository, with the tiny
    profile (not committed yet)."""
    repo.mkdir()
    for name in ("src", "dvc.yaml", "params.yaml", ".gitignore", ".dvcignore"):
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, repo / name)
    set_params(repo, TINY)
    run(repo, "git", "init", "-q", "-b", "main")
    dvc(repo, "init", "-q")
    return repo


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project copied into a fresh git + dvc repository with the tiny profile, reproduced."""
    repo = tiny_project(tmp_path_factory.mktemp("e2e") / "project")
    dvc(repo, "config", "core.autostage", "true")
    # The team remote is committed first, as the README says: `dvc push --all-commits` reads
    # each commit's own .dvc/config and silently skips the commits that name no remote.
    dvc(repo, "remote", "add", "-d", "shared", str(repo.parent / "remote"))
    commit(repo, "tiny profile")
    return repo


def test_repro_runs_every_stage_then_nothing(repo: Path) -> None:
    out = dvc(repo, "repro").stdout
    assert ran_stages(out) == {CHECK, *UPSTREAM, *DOWNSTREAM}, out
    for path in (
        "data/raw",
        "data/split",
        "data/processed",
        "data/model/model.pt",
        "data/predictions",
        "metrics/eval.json",
        "metrics/cam.json",
        "plots/cam",
        "data/export/model.onnx",
        "metrics/export.json",
        "data/detail/eval.json",
        "reports/model_card.md",
    ):
        assert (repo / path).exists(), path
    # the headline: what `dvc metrics show` prints fits the budget (the detail is elsewhere)
    shown = json.loads(dvc(repo, "metrics", "show", "--json").stdout)
    files = next(iter(shown.values()))["data"]
    keys = [k for f in files.values() for k in _flat(f["data"])]
    assert 20 <= len(keys) <= 30, keys
    assert not any(k.startswith("val.") for k in keys), keys
    status = dvc(repo, "status", "--json").stdout
    assert json.loads(status) == {}, status
    again = dvc(repo, "repro").stdout
    assert ran_stages(again) == set(), again
    assert "up to date" in again
    commit(repo, "reproduce the tiny profile")


def test_the_model_is_a_registry_artifact(repo: Path, tmp_path: Path) -> None:
    """dvc.yaml's `artifacts:` entry: a release tag in DVC's registry form gets the model file."""
    run(repo, "git", "tag", "-a", "pneumonia-resnet18@v0.1.0", "-m", "registered")
    out = tmp_path / "model.pt"
    dvc(
        repo, "artifacts", "get", str(repo), "pneumonia-resnet18", "--rev", "v0.1.0", "-o", str(out)
    )
    assert out.read_bytes() == (repo / "data" / "model" / "model.pt").read_bytes()


def test_the_onnx_export_is_the_torch_model_on_the_test_split(repo: Path, tmp_path: Path) -> None:
    """The export stage's file, on onnxruntime, against model.pt on torch over the whole test
    split: probabilities within 1e-5, heat maps alike; and the stage refuses a looser export."""
    from pneumo import exporting
    from pneumo.calibration import read_calibration
    from pneumo.params import load_section
    from pneumo.runtime.onnx_model import load_onnx
    from pneumo.runtime.torch_model import load_torch

    images = np.load(repo / "data/processed/test.npy")
    onnx_model = load_onnx(repo / "data/export/model.onnx")
    # both calibrated by evaluate's temperature: the ONNX file carries it, model.pt is given it
    temperature, fitted_for = read_calibration(repo / "data/calibration.json")
    assert onnx_model.temperature == temperature and fitted_for == onnx_model.source_sha256
    torch_model = load_torch(repo / "data/model/model.pt", temperature)
    for method in (None, "cam"):
        p_onnx, maps_onnx = onnx_model.predict(images, method)
        p_torch, maps_torch = torch_model.predict(images, method)
        assert np.max(np.abs(p_onnx - p_torch)) <= 1e-5
        if method:
            np.testing.assert_allclose(maps_onnx, maps_torch, rtol=0, atol=1e-4)
    reported = json.loads((repo / "metrics/export.json").read_text())["onnx"]
    assert reported["max_abs_prob_diff"] <= 1e-5
    targets = np.loadtxt(repo / "data/predictions/test.csv", delimiter=",", skiprows=1, usecols=1)
    p_onnx, _ = onnx_model.predict(images, None)
    evaluated = json.loads((repo / "metrics/eval.json").read_text())["test"]["auroc"]
    assert roc_auc_score(targets, p_onnx) == pytest.approx(evaluated, abs=1e-3)
    # out-of-distribution: generated non-chest images score apart from the test split, and a PNG
    # of noise given to the predict command is flagged, its decision marked unreliable
    assert reported["ood_auroc_generated"] > 0.9 and reported["ood_test_flagged"] < 0.2
    noise = np.random.default_rng(0).integers(0, 256, (256, 256), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "noise.png")
    out = run(repo, sys.executable, "src/predict.py", str(tmp_path / "noise.png"), "--json")
    (rec,) = [json.loads(line) for line in out.stdout.splitlines()]
    assert rec["out_of_distribution"] is True and rec["ood_score"] > onnx_model.ood.threshold
    assert rec["model"]["runtime"] == "onnxruntime"
    text = run(repo, sys.executable, "src/predict.py", str(tmp_path / "noise.png")).stdout
    assert "OUT OF DISTRIBUTION" in text and "unreliable" in text
    # the service says the same, and /health gives the threshold
    from fastapi.testclient import TestClient

    import serve

    with TestClient(serve.create_app(repo / "data/export/model.onnx")) as client:
        upload = {"file": ("noise.png", (tmp_path / "noise.png").read_bytes())}
        answer = client.post("/predict", files=upload).json()
        assert answer["out_of_distribution"] is True and answer["ood_score"] == rec["ood_score"]
        assert client.get("/health").json()["ood_threshold"] == onnx_model.ood.threshold
    params = load_section("export", repo / "params.yaml")
    inputs = [
        repo / "data/model/model.pt",
        repo / "data/processed",
        repo / "data/predictions",
        repo / "data/calibration.json",
    ]
    # export.int8: an int8 file beside the float one, with its own figures and statistics
    metrics = exporting.run(
        *inputs, tmp_path / "int8", params.model_copy(update={"int8": "static"})
    )
    int8 = load_onnx(tmp_path / "int8" / "model.int8.onnx")
    assert int8.quantization == "static" and int8.ood is not None
    assert metrics["int8"]["mode"] == "static" and 0.5 < metrics["int8"]["test_auroc"] <= 1
    assert metrics["onnx"] == reported
    # a bar below float32 rounding: the stage fails and writes nothing
    out = tmp_path / "export"
    with pytest.raises(exporting.ExportError, match="more than export.max_prob_diff"):
        exporting.run(*inputs, out, params.model_copy(update={"max_prob_diff": 1e-12}))
    assert not out.exists()


def test_exp_run_reruns_only_training_and_after(repo: Path) -> None:
    out = dvc(repo, "exp", "run", "-n", "lr3e-4", "-S", "train.lr=3e-4").stdout
    assert ran_stages(out) == {CHECK, *DOWNSTREAM}, out
    shown = json.loads(dvc(repo, "exp", "show", "--json").stdout)
    runs = _experiment_runs(shown)
    lrs = {r["params"]["train"]["lr"] for r in runs}
    assert {0.001, 0.0003} <= lrs, lrs
    # the Brier score, not AUROC: a rank statistic of a one-epoch model can tie on some CPUs
    briers = {r["metrics"]["test"]["brier"] for r in runs}
    assert len(briers) >= 2, f"the experiment's test Brier score equals the baseline's: {briers}"


def test_queued_sweep_completes(repo: Path) -> None:
    dvc(repo, "exp", "run", "--queue", "-S", "train.lr=1e-4,2e-3")
    dvc(repo, "queue", "start", "-j", "1")
    deadline = time.monotonic() + 480
    while time.monotonic() < deadline:
        status = dvc(repo, "queue", "status").stdout
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(3)
    else:
        pytest.fail(f"queue did not finish:\n{status}")
    assert "Failed" not in status, dvc(repo, "queue", "logs", "--help", check=False).stdout + status
    runs = _experiment_runs(json.loads(dvc(repo, "exp", "show", "--json").stdout))
    lrs = {r["params"]["train"]["lr"] for r in runs}
    assert {0.0001, 0.002} <= lrs, lrs


def test_diffs_between_commits(repo: Path) -> None:
    set_params(repo, {"train": {"lr": 2e-3}, "evaluate": {"thresholds": [0.5, 0.25, 0.1]}})
    out = dvc(repo, "repro").stdout
    assert not (ran_stages(out) & set(UPSTREAM)), out
    commit(repo, "lr 2e-3, one more threshold")
    params = json.loads(dvc(repo, "params", "diff", "HEAD~1", "--json").stdout)
    lr = params["params.yaml"]["train.lr"]
    assert (lr["old"], lr["new"]) == (0.001, 0.002), lr
    metrics = json.loads(dvc(repo, "metrics", "diff", "HEAD~1", "--json").stdout)
    changed = metrics["metrics/eval.json"]
    assert "test.brier" in changed and "test.t010.recall" in changed, sorted(changed)
    md = dvc(repo, "metrics", "diff", "HEAD~1", "--md").stdout
    assert "test.brier" in md
    page = repo / "plots_diff"
    proc = dvc(repo, "plots", "diff", "HEAD~1", "-o", str(page))
    assert (page / "index.html").is_file(), proc.stdout + proc.stderr
    assert "WARNING" not in proc.stderr, proc.stderr


def test_a_params_typo_stops_the_dag_and_loses_no_output(repo: Path) -> None:
    # DVC deletes a stage's outputs before running it: the check stage, upstream of every
    # stage, must fail first, so that train's model and git-tracked metrics survive a typo
    kept = ["data/model/model.pt", "metrics/train.json", "metrics/eval.json", "dvc.lock"]
    kept += [str(p.relative_to(repo)) for p in sorted((repo / "plots" / "train").iterdir())]
    before = {path: (repo / path).read_bytes() for path in kept}
    good = (repo / "params.yaml").read_text()
    for typo, message in (
        ({"train": {"lrr": 0.1}}, "params.yaml: unknown key train.lrr; known in train: "),
        ({"train": {"batch_size": -4}}, "params.yaml: train.batch_size must be greater than"),
    ):
        set_params(repo, typo)
        proc = dvc(repo, "repro", check=False)
        assert proc.returncode != 0
        assert message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
        assert ran_stages(proc.stdout) == {CHECK}, proc.stdout
        after = {path: (repo / path).read_bytes() for path in kept}
        assert after == before, [p for p in kept if after[p] != before[p]]
        (repo / "params.yaml").write_text(good)
    out = dvc(repo, "repro").stdout
    assert ran_stages(out) <= {CHECK}, out  # the check's output is the same bytes: nothing else
    assert json.loads(dvc(repo, "status", "--json").stdout) == {}
    assert (repo / "dvc.lock").read_bytes() == before["dvc.lock"]


def test_shared_remote_and_run_cache(repo: Path, tmp_path: Path) -> None:
    # The README's recipe. DVC 3's `push --run-cache` would send the run records but not the
    # outputs they name (pneumo.runcache): push_runs sends both, the records last.
    dvc(repo, "push", "--all-commits")
    pushed = run(repo, sys.executable, "src/push_runs.py").stdout
    assert " 0 missing, 0 failed; " in pushed, pushed

    clone = tmp_path / "clone"
    run(tmp_path, "git", "clone", "-q", str(repo), str(clone))
    dvc(clone, "pull")
    assert json.loads(dvc(clone, "status", "--json").stdout) == {}
    again = dvc(clone, "repro").stdout
    assert ran_stages(again) == set(), again


def test_run_cache_restores_a_teammates_run(repo: Path, tmp_path: Path) -> None:
    # the repository's default remote, which the previous test pushed to
    clone = tmp_path / "clone"
    run(tmp_path, "git", "clone", "-q", str(repo), str(clone))
    dvc(clone, "pull")
    # A params combination that the first repository already ran (its first reproduction):
    # restored from the run-cache instead of recomputed. `--pull` fetches the run records and
    # the outputs they name, which `dvc pull` of HEAD did not bring.
    set_params(clone, {"train": {"lr": 1e-3}, "evaluate": {"thresholds": [0.5, 0.25]}})
    out = dvc(clone, "repro", "--pull").stdout
    # evaluate and card (seconds) are not run-cached: DVC skips stages with uncached non-plot
    # outputs (plots/eval, the git-tracked card)
    assert ran_stages(out) <= {"evaluate", "card"}, out
    for stage in ("train", "infer", "cam"):
        assert f"Stage '{stage}' is cached - skipping run, checking out outputs" in out, out
    assert json.loads(dvc(clone, "status", "--json").stdout) == {}
    first = run(repo, "git", "rev-parse", ":/reproduce the tiny profile").stdout.strip()
    theirs = yaml.safe_load(run(repo, "git", "show", f"{first}:dvc.lock").stdout)["stages"]
    ours = yaml.safe_load((clone / "dvc.lock").read_text())["stages"]
    for stage in DOWNSTREAM:
        assert ours[stage]["outs"] == theirs[stage]["outs"], stage


def _flat(obj: dict, prefix: str = "") -> list[str]:
    """Dotted leaf paths of a nested dict, as `dvc metrics show` names them."""
    out = []
    for key, value in obj.items():
        path = f"{prefix}{key}"
        out += _flat(value, f"{path}.") if isinstance(value, dict) else [path]
    return out


def _experiment_runs(shown: list[dict]) -> list[dict]:
    """Flatten `dvc exp show --json` into the data dicts of the workspace, baseline and each exp."""
    runs = []

    def data_of(entry: dict) -> dict | None:
        data = entry.get("data") or {}
        params = (data.get("params") or {}).get("params.yaml", {}).get("data")
        metrics = (data.get("metrics") or {}).get("metrics/eval.json", {}).get("data")
        if params and metrics:
            return {"params": params, "metrics": metrics}
        return None

    for rev in shown:
        for entry in [rev] + [
            e for exp in rev.get("experiments") or [] for e in exp.get("revs", [])
        ]:
            found = data_of(entry)
            if found:
                runs.append(found)
    return runs


SQUARE = """\
import json, pathlib, yaml
n = yaml.safe_load(open("params.yaml"))["n"]
pathlib.Path("out").mkdir(exist_ok=True)
pathlib.Path("out/square.txt").write_text(str(n * n))
pathlib.Path("metrics.json").write_text(json.dumps({"square": n * n}))
"""


def test_push_runs_makes_every_run_restorable(tmp_path: Path) -> None:
    """One cached and one `cache: false` output, like train: the run records alone, even with
    --all-commits, restore nothing; with `src/push_runs.py` a clone restores an earlier run."""
    origin = tmp_path / "origin"
    origin.mkdir()
    (origin / "square.py").write_text(SQUARE)
    (origin / "params.yaml").write_text("n: 3\n")
    stage = {
        "cmd": "python square.py",
        "deps": ["square.py"],
        "params": ["n"],
        "outs": ["out"],
        "metrics": [{"metrics.json": {"cache": False}}],
    }
    (origin / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"square": stage}}))
    run(origin, "git", "init", "-q", "-b", "main")
    dvc(origin, "init", "-q")
    dvc(origin, "config", "core.autostage", "true")
    dvc(origin, "remote", "add", "-d", "shared", str(tmp_path / "remote"))
    dvc(origin, "repro")
    commit(origin, "n=3")
    (origin / "params.yaml").write_text("n: 4\n")
    dvc(origin, "repro")
    commit(origin, "n=4")
    dvc(origin, "push", "--run-cache", "--all-commits")

    def teammate_repro_n3(name: str) -> str:
        clone = tmp_path / name
        run(tmp_path, "git", "clone", "-q", str(origin), str(clone))
        dvc(clone, "pull")
        (clone / "params.yaml").write_text("n: 3\n")
        out = dvc(clone, "repro", "--pull").stdout
        assert (clone / "out" / "square.txt").read_text() == "9"
        assert json.loads((clone / "metrics.json").read_text()) == {"square": 9}
        return out

    # Documents why src/push_runs.py exists: when a DVC upgrade makes this fail, drop it.
    out = teammate_repro_n3("before")
    assert ran_stages(out) == {"square"}, out
    push_runs = (sys.executable, str(ROOT / "src" / "push_runs.py"))
    pushed = run(origin, *push_runs).stdout
    assert pushed.startswith("2 runs name ") and " 0 missing, 0 failed; 2 run" in pushed, pushed
    out = teammate_repro_n3("after")
    assert ran_stages(out) == set(), out
    assert "Stage 'square' is cached - skipping run, checking out outputs" in out, out

    # A lost local cache (or `dvc gc`): the records stay, their outputs are gone. Each such run
    # is reported and skipped, and what can be pushed still is.
    shutil.rmtree(origin / ".dvc" / "cache" / "files")
    dvc(origin, "remote", "add", "other", str(tmp_path / "other"))
    done = run(origin, *push_runs, "-r", "other")
    assert done.stdout.startswith("2 runs name 0 objects"), done.stdout
    assert "2 runs have outputs that are neither in the local cache nor on the remote" in (
        done.stderr
    ), done.stderr
    # a remote that does not exist: one line that names it, not a traceback
    bad = run(origin, *push_runs, "-r", "nosuch", check=False)
    assert bad.returncode == 1 and "nosuch" in bad.stderr, bad.stderr
    assert "Traceback" not in bad.stderr, bad.stderr
