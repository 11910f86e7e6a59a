"""What the model card is made of (``CardInputs``) and how it writes a figure.

Every number in the card goes through ``num`` (three decimals unless said otherwise) or
``interval``, so a test can read the numbers back from the Markdown and compare them with the
stage outputs.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

NUMBER = re.compile(r"-?\d|n/a")


@dataclass(frozen=True)
class CardInputs:
    """What the card is made of: the model files' identity and the stages' detail outputs."""

    model_sha256: str
    onnx_sha256: str | None  # None when data/export has no model.onnx
    model: Mapping[str, Any]  # arch, image_size, resize_mode, mean, std, last_stride
    provenance: Mapping[str, Any] | None  # model.pt's (pneumo.provenance); None in old files
    split: Mapping[str, Any]  # data/detail/split.json
    train: Mapping[str, Any]  # data/detail/train.json
    evaluation: Mapping[str, Any]  # data/detail/eval.json
    cam: Mapping[str, Any]  # data/detail/cam.json
    export: Mapping[str, Any]  # metrics/export.json
    figures: Mapping[str, str]  # figure name -> path relative to the card


def num(value: Any, digits: int = 3) -> str:
    """A figure as the card prints it: fixed decimals, "n/a" for a missing one."""
    if value is None:
        return "n/a"
    if isinstance(value, int):  # bool too
        return str(value)
    return f"{value:.{digits}f}"


def interval(
    block: Mapping[str, Any], key: str, lo: str | None = None, hi: str | None = None
) -> str:
    """``value [lo, hi]`` from a block's ``key``, ``key_lo`` and ``key_hi``."""
    lo_v, hi_v = block.get(lo or f"{key}_lo"), block.get(hi or f"{key}_hi")
    tail = f" [{num(lo_v)}, {num(hi_v)}]" if lo_v is not None or hi_v is not None else ""
    return num(block.get(key)) + tail


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub Markdown table; a column whose every cell starts with a number is right-aligned."""

    def align(col: int) -> str:
        numeric = rows and all(NUMBER.match(r[col]) for r in rows)
        return "---:" if numeric else "---"

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(map(align, range(len(header)))) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def source_of(inputs: CardInputs) -> str:
    """data.source as the model file records it ("unknown" for files from before provenance)."""
    return (inputs.provenance or {}).get("data_source") or "unknown"


def decision_label(key: str, block: Mapping[str, Any]) -> str:
    """A decision's row label: a fixed threshold, the operating point or Youden's threshold."""
    if key == "op":
        return f"operating point (val sensitivity >= {num(block.get('target'), 2)})"
    if key == "youden":
        return "Youden's J on val"
    return f"fixed {num(block['threshold'], 2)}"
