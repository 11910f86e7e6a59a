"""Stage card: the model card (reports/model_card.md and its PNG figures) from the stage outputs,
and, as the last stage of the pipeline, a closing summary of where things stand."""

from __future__ import annotations

from pathlib import Path

from pneumo.atomic import write_bytes
from pneumo.card_figures import write_figures
from pneumo.card_inputs import read_card_inputs
from pneumo.layout import (
    CARD_FIGURES,
    DETAIL,
    EXPORT_METRICS,
    MODEL,
    MODEL_CARD,
    ONNX_MODEL,
)
from pneumo.model_card import closing_summary, render_card

PLOTS_EVAL, PLOTS_CAM = Path("plots/eval"), Path("plots/cam")


def main() -> None:
    names = write_figures(PLOTS_EVAL, PLOTS_CAM, CARD_FIGURES)
    rel = CARD_FIGURES.relative_to(MODEL_CARD.parent)
    figures = {k: f"{rel.as_posix()}/{v}" for k, v in names.items()}
    inputs = read_card_inputs(MODEL, ONNX_MODEL, DETAIL, EXPORT_METRICS, figures)
    write_bytes(MODEL_CARD, render_card(inputs).encode())
    plots = ["`dvc plots show` (dvc_plots/index.html)", f"{PLOTS_CAM}/"]
    print(closing_summary(inputs, str(MODEL_CARD), plots))


if __name__ == "__main__":
    main()
