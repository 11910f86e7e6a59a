"""The seed study: how far the headline figures move when only ``train.seed`` changes.

    python src/seed_study.py                 # queue seeds 1-5, run them one at a time, report
    python src/seed_study.py --seeds 1 2 3   # other seeds
    python src/seed_study.py --report        # only report the experiments already run
    python src/seed_study.py --name e3 -S train.max_epochs=3   # the study of another profile,
                                             # before committing it: e3-1 ... e3-5

Each seed is a DVC experiment (``dvc exp run --queue -n seed-<s> -S train.seed=<s>``, plus any
``-S`` given) on the committed data, so download, split and preprocess are restored from the
run-cache (or run once, for a study that changes them) and only train, infer, evaluate and cam
run. The report reads ``dvc exp show --json``: the mean, sd and
range of each headline metric over the seed experiments, their largest distance from the mean,
and the tolerance that the README promises for it.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

# metric file, key path, the README's tolerance (largest distance from the seeds' mean)
HEADLINE = {
    "test AUROC": ("metrics/eval.json", ("test", "auroc"), 0.01),
    "test sensitivity at the operating point": (
        "metrics/eval.json",
        ("test", "op", "recall"),
        None,
    ),
    "test specificity at the operating point": (
        "metrics/eval.json",
        ("test", "op", "specificity"),
        None,
    ),
    "operating threshold (chosen on val)": ("metrics/eval.json", ("test", "op", "threshold"), None),
    "CAM pointing": ("metrics/cam.json", ("cam.pointing",), 0.05),
    "CAM IoU": ("metrics/cam.json", ("cam.iou",), 0.05),
    "baseline IoU": ("metrics/cam.json", ("baseline.iou",), None),
}
PREFIX = "seed"


def dvc(*args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"seed_study: dvc {' '.join(args)} failed:\n{proc.stderr.strip()}")
    return proc.stdout


def queue_and_run(
    seeds: list[int], prefix: str, overrides: list[str], poll_s: float = 10.0
) -> None:
    """Queue one experiment per seed (``overrides`` are more ``-S`` values, the same for every
    seed), start one worker, wait until the queue is empty."""
    sets = [arg for o in overrides for arg in ("-S", o)]
    for s in seeds:
        dvc("exp", "run", "--queue", "-n", f"{prefix}-{s}", "-S", f"train.seed={s}", *sets)
    # not dvc(): the worker it starts inherits the pipes, and capture_output would wait for the
    # worker to exit (the whole queue) before the progress below could print
    start = [sys.executable, "-m", "dvc", "queue", "start", "-j", "1"]
    if subprocess.run(start, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode:
        sys.exit("seed_study: `dvc queue start -j 1` failed (run it to see why)")
    t0 = time.monotonic()
    while True:
        status = dvc("queue", "status")
        waiting = pending_tasks(status)
        if failed_tasks(status, {f"{prefix}-{s}" for s in seeds}):
            sys.exit("seed_study: experiments failed (see `dvc queue logs <name>`):\n" + status)
        if not waiting:
            break
        print(f"{len(waiting)} experiment(s) to go ({time.monotonic() - t0:.0f} s)", flush=True)
        time.sleep(poll_s)


def pending_tasks(status: str) -> list[str]:
    """The lines of ``dvc queue status`` of queued or running tasks (the status is the last
    column, with no padding after it)."""
    return [ln for ln in status.splitlines() if ln.split()[-1:] in (["Queued"], ["Running"])]


def failed_tasks(status: str, names: set[str]) -> list[str]:
    """The lines of ``dvc queue status`` (task, name, created, status) of failed tasks among
    ``names``: a failed task of another study, still listed, is not this study's to stop on."""
    return [
        ln
        for ln in status.splitlines()
        if ln.split()[1:2] and ln.split()[1] in names and ln.split()[-1] == "Failed"
    ]


def _experiments(commit: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(name, data) of every finished experiment of one commit of ``dvc exp show --json``
    (a queued or running one is listed with its baseline's metrics)."""
    for exp in commit.get("experiments") or []:
        if (exp.get("executor") or {}).get("state", "success") != "success":
            continue
        for rev in exp.get("revs") or []:
            if rev.get("name") and rev.get("data"):
                yield rev["name"], rev["data"]


def seed_runs(
    show: list[dict[str, Any]], prefix: str = PREFIX
) -> tuple[str | None, dict[str, dict[str, Any]]]:
    """The newest commit with ``<prefix>-<seed>`` experiments (``exp show -A`` lists newest
    first) and those experiments by name; the study belongs to one baseline, not to several."""
    for commit in show:
        runs = {n: d for n, d in _experiments(commit) if _seed_of(n, prefix) is not None}
        if runs:
            return commit.get("rev"), runs
    return None, {}


def _seed_of(name: str, prefix: str) -> int | None:
    head, _, seed = name.rpartition("-")
    return int(seed) if head == prefix and seed.isdigit() else None


def _lookup(data: dict[str, Any], path: str, keys: tuple[str, ...]) -> float | None:
    value: Any = (data.get("metrics") or {}).get(path, {}).get("data")
    for k in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(k)
    return float(value) if isinstance(value, (int, float)) else None


def report(show: list[dict[str, Any]], prefix: str = PREFIX) -> list[str]:
    """Lines of the report: one per headline metric over the ``<prefix>-*`` experiments."""
    baseline, runs = seed_runs(show, prefix)
    if not runs:
        return [f"no {prefix}-* experiments: run `python src/seed_study.py` first"]
    names = sorted(runs, key=lambda n: _seed_of(n, prefix) or 0)
    lines = [
        f"{len(names)} runs ({', '.join(names)}) on commit {str(baseline)[:7]}: same data, "
        "only train.seed differs",
        "",
    ]
    lines.append(f"{'metric':42s} {'mean':>7s} {'sd':>7s} {'min':>7s} {'max':>7s} {'max |d|':>8s}")
    for label, (path, keys, tol) in HEADLINE.items():
        values = [v for n in names if (v := _lookup(runs[n], path, keys)) is not None]
        if not values:
            continue
        mean = sum(values) / len(values)
        sd = math.sqrt(sum((v - mean) ** 2 for v in values) / max(len(values) - 1, 1))
        dev = max(abs(v - mean) for v in values)
        within = dev <= tol + 1e-9 if tol is not None else None  # 0.01 away is within 0.01
        verdict = "" if tol is None else f"  {'within' if within else 'OUTSIDE'} +-{tol}"
        lines.append(
            f"{label:42s} {mean:7.4f} {sd:7.4f} {min(values):7.4f} {max(values):7.4f} "
            f"{dev:8.4f}{verdict}"
        )
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    ap.add_argument("--report", action="store_true", help="only report the existing experiments")
    ap.add_argument("--name", default=PREFIX, help="experiments are named NAME-<seed>")
    ap.add_argument(
        "-S",
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a params override for every seed, as dvc exp run -S (repeatable)",
    )
    args = ap.parse_args()
    if not args.report:
        queue_and_run(args.seeds, args.name, args.overrides)
    show = json.loads(dvc("exp", "show", "--json", "--all-commits"))
    print("\n".join(report(show, args.name)))


if __name__ == "__main__":
    main()
