"""The Trainer the training benchmarks time: the train stage's loop without validation,
logging, checkpoints or progress output, so the clock sees only training steps."""

from __future__ import annotations

from typing import Any

import lightning as L

QUIET = dict(
    limit_val_batches=0,
    num_sanity_val_steps=0,
    logger=False,
    enable_checkpointing=False,
    enable_progress_bar=False,
    enable_model_summary=False,
)


def timing_trainer(**settings: Any) -> L.Trainer:
    """``L.Trainer(**settings)`` over the quiet defaults above (``settings`` win)."""
    return L.Trainer(**(QUIET | settings))
