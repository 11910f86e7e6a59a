"""The web service's answers as pydantic models, so that ``/openapi.json`` (and ``/docs``)
documents them: the prediction record of ``pneumo.results.record``, the same with its heat map,
``/health``, and the ``{"detail": reason}`` body of a refused request.

The service validates what it returns against these models and leaves out only what the answer
did not set (``response_model_exclude_unset``), so its JSON keeps exactly the keys of the
command's ``--json`` line. The model and provenance objects allow keys not declared here: a
model file that says more about itself is not cut short by this schema.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from pneumo.intended_use import NO_HEADER, OFF, PASSED
from pneumo.results import REPORT_THRESHOLDS


class ModelIdentity(BaseModel):
    """What names the model in every answer (``pneumo.deployment.model_identity``)."""

    model_config = ConfigDict(extra="allow")

    id: str = Field(description="the first hex digits of the loaded model file's sha256")
    source_id: str = Field(
        description="the same of the trained model.pt it comes from (equal for both runtimes)"
    )
    runtime: Literal["onnxruntime", "torch"] = Field(description="what runs the network")
    arch: str
    image_size: int = Field(description="side of the square image the model reads, in pixels")
    resize_mode: str = Field(description="how the image was brought to a square: pad, crop, ...")
    members: int = Field(description="models whose mean prob is: 1, or an ensemble's k folds")


class LoadedModel(ModelIdentity):
    """The identity, with the model file's whole sha256."""

    sha256: str


# one field per reported threshold, named as the record names them ("0.5", "0.25")
Decisions = create_model(
    "Decisions",
    operating_point=(bool, Field(description="prob >= the operating point's threshold")),
    **{
        f"at_{t}".replace(".", "_"): (bool, Field(alias=str(t), description=f"prob >= {t}"))
        for t in REPORT_THRESHOLDS
    },
)


class Record(BaseModel):
    """One prediction: the service's answer and the line of ``predict.py --json``."""

    file: str = Field(description="the uploaded file's name (its last component only)")
    prob: float = Field(ge=0, le=1, description="the model's probability of pneumonia")
    prob_sd: float | None = Field(
        description="with an ensemble (model.members), the sd of the members' probabilities, "
        "prob being their mean: how much the fold models disagree; null for one model"
    )
    positive: bool = Field(description="prob >= threshold: the decision at the operating point")
    threshold: float = Field(description="the operating point's decision threshold")
    threshold_source: str = Field(description="where the threshold comes from")
    decisions: Decisions  # type: ignore[valid-type]
    model: ModelIdentity
    cam: str | None = Field(description="the heat-map file the command wrote; null here")
    notes: list[str] = Field(
        description="what reading the file took (colour converted, a frame picked, a window "
        "ignored, ...) and, with the gate off, what the gate would have refused"
    )
    gate: Literal[PASSED, NO_HEADER, OFF] = Field(  # type: ignore[valid-type]
        description="the intended-use gate: passed (a frontal chest radiograph's DICOM header), "
        "no header (PNG or JPEG: nothing checked) or off (research use)"
    )
    ood_score: float | None = Field(
        description="Mahalanobis distance of the image's pooled features to the training films "
        "(pneumo.ood); null on the torch runtime"
    )
    out_of_distribution: bool | None = Field(
        description="the score lies above the export stage's threshold (/health's "
        "ood_threshold): the decision is unreliable"
    )
    warning: str | None = Field(
        description="set when the model was trained on synthetic data: its predictions mean "
        "nothing for real patients"
    )


class Explained(Record):
    """A prediction with its heat map, from the same forward pass."""

    heatmap: str = Field(
        description="the X-ray as the model saw it beside its heat-map overlay, with a caption: "
        "a PNG as a data:image/png;base64 URL"
    )


class SplitSummary(BaseModel):
    """Count, positives and prevalence of a training split."""

    n: int
    positives: int
    prevalence: float | None


class Provenance(BaseModel):
    """What the model was trained on (``pneumo.provenance.training_provenance``)."""

    model_config = ConfigDict(extra="allow")

    data_source: str = Field(description="params.yaml's data.source: synthetic, rsna, folders")
    train: SplitSummary | None = None
    val: SplitSummary | None = None
    data_processed_md5: str | None = Field(None, description="dvc.lock's hash of data/processed")
    params: dict[str, Any] | None = Field(None, description="the train params")


class Health(BaseModel):
    """The service's status and what it predicts with."""

    status: Literal["ok"]
    model: LoadedModel
    threshold: float
    threshold_source: str
    cam_method: str
    max_bytes: int = Field(description="the upload size limit")
    provenance: Provenance | None = Field(description="null for a model file from before it")
    ood_threshold: float | None = Field(
        description="scores above it are out of distribution: the export stage's quantile of "
        "the validation split's scores; null on the torch runtime"
    )
    warning: str | None = Field(description="as in every answer of this model")


class Error(BaseModel):
    """A refused request: the reason, as FastAPI's own errors give it, in ``detail``."""

    detail: str = Field(description="one line: why the request was refused")
    refused: str | None = Field(None, description="the intended-use gate's reason, when it refused")
    file: str | None = Field(None, description="the uploaded file's name, once it was received")


class ValidationErrors(BaseModel):
    """FastAPI's own answer to a malformed query parameter: a list of what was wrong."""

    detail: list[dict[str, Any]]


# the OpenAPI documents of what the routes take and give besides their response models
UPLOAD_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {"file": {"type": "string", "format": "binary"}},
                "required": ["file"],
            }
        }
    },
}
_HEADER = {"schema": {"type": "string"}}
_PNG_HEADERS = {
    "X-Probability": {**_HEADER, "description": "prob"},
    "X-Positive": {**_HEADER, "description": "positive: true or false"},
    "X-Threshold": {**_HEADER, "description": "threshold"},
    "X-Model-Id": {**_HEADER, "description": "model.id"},
    "X-Gate": {**_HEADER, "description": "gate"},
    "X-Warning": {**_HEADER, "description": "warning, when there is one"},
}


def _png_ok(description: str) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI document of a 200 that is (or may be) the heat-map PNG."""
    png = {"image/png": {"schema": {"type": "string", "format": "binary"}}}
    return {200: {"description": description, "content": png, "headers": _PNG_HEADERS}}


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": Error, "description": "an empty file, no `file` field or a malformed body"},
    413: {"model": Error, "description": "larger than the upload limit (/health's max_bytes)"},
    415: {"model": Error, "description": "not multipart/form-data"},
    422: {
        "model": Error | ValidationErrors,
        "description": "not a readable DICOM, PNG or JPEG, a degenerate image (under 32 px, "
        "blank), or a DICOM file the intended-use gate refuses (`refused` says why); a query "
        "parameter that is not a boolean gets FastAPI's list of validation errors",
    },
    500: {"model": Error, "description": "the prediction failed (the service logs why)"},
}
PREDICT_RESPONSES = ERROR_RESPONSES | _png_ok(
    "the record (JSON); with cam=true, the X-ray as the model saw it beside its heat-map overlay, "
    "with a caption (PNG), and the record's main fields in the headers"
)
CAM_RESPONSES = ERROR_RESPONSES | _png_ok(
    "the X-ray as the model saw it beside its heat-map overlay, with a caption; the record's main "
    "fields in the headers"
)
