"""Stage params: check the whole of params.yaml before any other stage runs.

DVC deletes a stage's outputs just before it runs the stage's command, so a typo found only by
the stage that reads the key has already cost that stage its outputs (``data/model`` and the
git-tracked ``metrics/train.json`` for a typo in ``train``). Every stage depends on this one's
output: a bad params.yaml stops ``dvc repro`` here, one line per bad key, before anything is
deleted. The output's bytes never change, so re-running this stage re-runs no other.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pneumo.atomic import write_bytes
from pneumo.layout import PARAMS_OK
from pneumo.params import PARAMS_FILE, SECTIONS, ParamsError, load_section, read_yaml


def check(path: str | Path) -> None:
    """Validate every section as its stage will; ``ParamsError`` lists all bad keys at once."""
    raw = read_yaml(path)
    unknown = ", ".join(sorted(set(raw) - set(SECTIONS)))
    known = ", ".join(SECTIONS)
    lines = [f"{path}: unknown section(s) {unknown}; known: {known}"] if unknown else []
    missing, bad = [], []
    for name in SECTIONS:
        try:
            load_section(name, path)
        except ParamsError as e:
            (bad if name in raw else missing).extend(str(e).splitlines())
    if lines + missing + bad:
        raise ParamsError("\n".join(lines + missing + bad))


def main() -> None:
    try:
        check(PARAMS_FILE)
    except ParamsError as e:
        sys.exit(str(e))
    write_bytes(PARAMS_OK, b"params.yaml is valid (src/check_params.py)\n")


if __name__ == "__main__":
    main()
