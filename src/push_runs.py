"""Upload the outputs of every recorded stage run to the DVC remote, then the run records.

    dvc push && python src/push_runs.py     # [-r REMOTE] [-j JOBS]

DVC 3's `dvc push --run-cache` uploads the run records but not the outputs they name (see
pneumo.runcache), so a teammate's `dvc repro --pull` of a params combination you ran would
re-run it. After this, it restores the run's outputs instead ("Stage 'train' is cached").
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dvc.exceptions import DvcException

from pneumo.runcache import push_run_outputs


def main(argv: list[str] | None = None) -> None:
    """Push the run-cache's outputs of the repository in the current directory."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("-r", "--remote", help="DVC remote name (default: the default remote)")
    p.add_argument("-j", "--jobs", type=int, help="parallel uploads (default: DVC's)")
    args = p.parse_args(argv)
    try:
        done = push_run_outputs(Path.cwd(), remote=args.remote, jobs=args.jobs)
    except DvcException as e:  # no remote configured, an unknown one, not a DVC repository...
        sys.exit(f"push_runs: {e}")
    print(
        f"{done.runs} runs name {done.objects} objects: {done.transferred} uploaded, "
        f"{done.missing} missing, {done.failed} failed; {done.records} run records sent"
    )
    if done.incomplete or done.missing:
        print(
            f"{done.incomplete} runs have outputs that are neither in the local cache nor on "
            f"the remote (after `dvc gc`, or records fetched without their outputs); "
            f"a teammate's `dvc repro` re-runs those ({done.missing} objects missing)",
            file=sys.stderr,
        )
    if done.failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
