"""The seed study's report over `dvc exp show --json`: finished seed runs of one baseline only,
mean / sd / largest distance from the mean against the README's tolerances."""

from __future__ import annotations

import statistics

import seed_study


def _exp(name: str, auroc: float, iou: float, state: str = "success") -> dict:
    metrics = {
        "metrics/eval.json": {"data": {"test": {"auroc": auroc, "op": {"threshold": 0.8}}}},
        "metrics/cam.json": {"data": {"cam.iou": iou, "cam.pointing": 0.95}},
    }
    return {
        "executor": {"state": state},
        "name": name,
        "revs": [{"name": name, "data": {"metrics": metrics}}],
    }


def test_report_takes_the_newest_baselines_finished_seed_runs() -> None:
    show = [
        {"rev": "workspace", "experiments": None},
        {
            "rev": "bbbbbbbbbb",
            "experiments": [
                _exp("seed-1", 0.98, 0.41),
                _exp("seed-2", 0.99, 0.30),
                _exp("seed-3", 0.97, 0.35),
                _exp("seed-4", 0.5, 0.0, state="running"),  # carries its baseline's metrics
                _exp("lr-1e-4", 0.5, 0.0),  # not a seed run
            ],
        },
        {"rev": "aaaaaaaaaa", "experiments": [_exp("seed-1", 0.1, 0.1)]},  # an older study
    ]
    lines = seed_study.report(show)
    assert lines[0].startswith("3 runs (seed-1, seed-2, seed-3) on commit bbbbbbb")
    auroc = next(ln for ln in lines if ln.startswith("test AUROC"))
    fields = auroc.split()
    mean, sd = float(fields[2]), float(fields[3])
    assert mean == round(statistics.mean([0.98, 0.99, 0.97]), 4)
    assert sd == round(statistics.stdev([0.98, 0.99, 0.97]), 4)
    assert auroc.endswith("within +-0.01")  # 0.01 away exactly: within
    iou = next(ln for ln in lines if ln.startswith("CAM IoU"))
    assert iou.endswith("OUTSIDE +-0.05")  # 0.30 is 0.053 from the mean 0.353
    assert not any(ln.startswith("baseline IoU") for ln in lines)  # no value: no line


def test_report_without_seed_runs_says_what_to_run() -> None:
    assert "run `python src/seed_study.py`" in seed_study.report([{"rev": "x"}])[0]


def test_a_named_study_reports_only_its_own_runs() -> None:
    """`--name e3 -S train.max_epochs=3` studies another profile beside the seed-* runs."""
    show = [
        {
            "rev": "cccccccccc",
            "experiments": [
                _exp("seed-1", 0.98, 0.41),
                _exp("e3-1", 0.90, 0.20),
                _exp("e3-2", 0.92, 0.22),
                _exp("e3x-1", 0.5, 0.5),  # another prefix that starts the same
            ],
        }
    ]
    lines = seed_study.report(show, "e3")
    assert lines[0].startswith("2 runs (e3-1, e3-2) on commit ccccccc")
    auroc = next(ln for ln in lines if ln.startswith("test AUROC"))
    assert float(auroc.split()[2]) == 0.91


def test_only_this_studys_failed_tasks_stop_it():
    status = (
        "Task     Name            Created    Status\n"
        "0e27687  ps-2            11:44 AM   Failed\n"
        "15a0e9d  seed-1          05:57 PM   Success\n"
        "f8c301d  seed-2          05:57 PM   Failed\n"
        "6111d14  seed-3          05:57 PM   Running\n"
    )
    names = {"seed-1", "seed-2", "seed-3"}
    assert seed_study.failed_tasks(status, names) == ["f8c301d  seed-2          05:57 PM   Failed"]
    assert seed_study.failed_tasks(status, {"e3-1"}) == []


def test_queued_and_running_tasks_are_waited_for_without_trailing_padding():
    # dvc prints the status as the last column with nothing after it: "Queued" ends the line
    status = (
        "Task     Name            Created    Status\n"
        "11254ca  seed-1          10:11 AM   Success\n"
        "cc250a9  dct-1           09:04 PM   Running\n"
        "9ec6eff  dct-2           09:04 PM   Queued\n"
        "\n"
        "Worker status: 1 active, 0 idle\n"
    )
    assert [ln.split()[1] for ln in seed_study.pending_tasks(status)] == ["dct-1", "dct-2"]
    assert seed_study.pending_tasks(status.replace("Running", "Success")) == [
        "9ec6eff  dct-2           09:04 PM   Queued"
    ]
