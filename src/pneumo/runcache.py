"""Share DVC's run-cache completely: upload the outputs that the run records name.

On DVC 3 (3.67.1 here) ``dvc push --run-cache`` uploads only the run records
(``.dvc/cache/runs/``), not the outputs they name: ``dvc/repo/push.py`` counts the records and
never collects their objects, which DVC 2 did through ``used_objs(used_run_cache=...)``. A run's
cached outputs reach the remote only when a pushed commit's ``dvc.lock`` names them, and its
``cache: false`` metrics and plots, which the run-cache keeps in the local cache to restore them,
never do. A teammate's ``dvc repro --pull`` then finds the record, cannot fetch the outputs, and
silently re-runs the stage. :func:`push_run_outputs` uploads those objects, as DVC 2 did.

It uses DVC's internals (``stage_cache.get_used_objs`` and ``push``, ``cloud.get_remote_odb``,
``cloud.status``, ``cloud.push``), which is one reason ``dvc`` is pinned to an exact version.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml
from dvc.repo import Repo


@dataclass(frozen=True)
class RunPush:
    """What :func:`push_run_outputs` did."""

    runs: int  # run records in the local run-cache
    records: int  # records sent (DVC sends every record, present on the remote or not)
    incomplete: int  # records with an output neither in the local cache nor on the remote
    objects: int  # objects (files and directory listings) the complete records name
    transferred: int  # objects uploaded (the others were already on the remote)
    missing: int  # objects of those records found neither locally nor on the remote
    failed: int  # objects whose upload failed


def run_entries(runs_dir: Path) -> list[tuple[str, str]]:
    """The ``(key, value)`` of each run record under a DVC cache's ``runs/`` directory."""
    # Layout: runs/<key[:2]>/<key>/<value>, the key hashing a stage's command, deps and params.
    return sorted((p.parent.name, p.name) for p in runs_dir.glob("*/*/*") if p.is_file())


def _named_hashes(record: Path) -> set[str]:
    """The hashes of the outputs a run record names (``<md5>.dir`` for a directory)."""
    entry = yaml.safe_load(record.read_text()) or {}
    return {out["md5"] for out in entry.get("outs") or [] if out.get("md5")}


def push_run_outputs(root: Path, remote: str | None = None, jobs: int | None = None) -> RunPush:
    """Upload to the DVC remote every object of the local cache that a run record names, then
    the records themselves (what ``dvc push --run-cache`` sends).

    A record whose outputs are gone (``dvc gc``, or a record ``dvc repro --pull`` fetched without
    its outputs) is counted as incomplete and skipped instead of stopping the others.
    """
    with Repo(str(root)) as repo, repo.lock:
        repo.cloud.get_remote_odb(remote, "push")  # no remote, or an unknown one: fail first
        runs_dir = Path(repo.stage_cache.cache_dir)
        entries = run_entries(runs_dir)
        objs: set = set()
        incomplete = 0
        for key, value in entries:
            # force: a directory listing found nowhere drops that output rather than prompting
            # (on a terminal) or raising (without one); the comparison below catches it
            used = repo.stage_cache.get_used_objs(
                [(key, value)], remote=remote, jobs=jobs, force=True
            )
            found = set().union(*used.values())
            if not _named_hashes(runs_dir / key[:2] / key / value) <= {h.value for h in found}:
                incomplete += 1
                continue
            objs |= found
        missing = repo.cloud.status(objs, jobs=jobs, remote=remote).missing
        result = repo.cloud.push(objs, jobs=jobs, remote=remote)
        # the records last, as `dvc push --run-cache` would: a teammate who fetches a record
        # then finds its outputs already there
        records = repo.stage_cache.push(remote)
    return RunPush(
        runs=len(entries),
        records=len(records),
        incomplete=incomplete,
        objects=len(objs),
        transferred=len(result.transferred),
        missing=len(missing),
        failed=len(result.failed),
    )
