"""Share DVC's run-cache completely: upload the outputs that the run records name.

On DVC 3 (3.67.1 here) ``dvc push --run-cache`` uploads only the run records
(``.dvc/cache/runs/``), not the outputs they name: ``dvc/repo/push.py`` counts the records and
never collects their objects, which DVC 2 did through ``used_objs(used_run_cache=...)``. A run's
cached outputs reach the remote only when a pushed commit's ``dvc.lock`` names them, and its
``cache: false`` metrics and plots, which the run-cache keeps in the local cache to restore them,
never do. A teammate's ``dvc repro --pull`` then finds the record, cannot fetch the outputs, and
silently re-runs the stage. :func:`push_run_outputs` uploads those objects, as DVC 2 did.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dvc.repo import Repo


@dataclass(frozen=True)
class RunPush:
    """What :func:`push_run_outputs` did."""

    runs: int  # run records in the local run-cache
    objects: int  # objects (files and directory listings) they name
    transferred: int  # objects uploaded (the others were already on the remote, or missing)
    failed: int  # objects whose upload failed


def run_entries(runs_dir: Path) -> list[tuple[str, str]]:
    """The ``(key, value)`` of each run record under a DVC cache's ``runs/`` directory."""
    # Layout: runs/<key[:2]>/<key>/<value>, the key hashing a stage's command, deps and params.
    return sorted((p.parent.name, p.name) for p in runs_dir.glob("*/*/*") if p.is_file())


def push_run_outputs(root: Path, remote: str | None = None, jobs: int | None = None) -> RunPush:
    """Upload to the DVC remote every object of the local cache that a run record names."""
    with Repo(str(root)) as repo, repo.lock:
        entries = run_entries(Path(repo.stage_cache.cache_dir))
        used = repo.stage_cache.get_used_objs(entries, remote=remote, jobs=jobs)
        # Keyed by the remote an output names (`remote:` in dvc.yaml); run records keep no such
        # field, so every object goes to the default remote or the one given.
        objs = set().union(*used.values())
        result = repo.cloud.push(objs, jobs=jobs, remote=remote)
    return RunPush(len(entries), len(objs), len(result.transferred), len(result.failed))
