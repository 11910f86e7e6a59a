"""The trained model as an ONNX graph, for prediction without torch (the export stage's work).

The graph takes the standardised batch ``image`` (B, 1, S, S), B dynamic, and gives two outputs:
``logit`` (B,) and ``features`` (B, C, h, w), the last feature maps, so a class activation map
(the head's weights times those maps) needs no torch either. Everything else prediction needs is
in the file's metadata: the preprocessing contract (size, resize mode, mean, std), the head's
weights, the temperature (``pneumo.calibration``), the sha256 of the ``model.pt`` it was made
from and that file's provenance.

torch's dynamo exporter writes the graph; the same model gives the same bytes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from pneumo.atomic import write_bytes
from pneumo.model import Exported, split_network
from pneumo.runtime.onnx_model import FEATURES, FORMAT_VERSION, INPUT, LOGIT, encode_floats

OPSET = 20  # pinned: a newer exporter's default would change the file's bytes


class _LogitAndFeatures(nn.Module):
    """The network as (logit (B,), last feature maps (B, C, h, w)) from one forward pass."""

    def __init__(self, net: nn.Module, arch: str) -> None:
        super().__init__()
        self.features, self.head = split_network(net, arch)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        acts = self.features(image)
        return self.head(acts.mean(dim=(2, 3))).reshape(-1), acts


def metadata(model: Exported, temperature: float) -> dict[str, str]:
    """The ONNX file's metadata: what :mod:`pneumo.runtime.onnx_model` needs besides the graph."""
    _, head = split_network(model.net, model.arch)
    return {
        "pneumo.format": FORMAT_VERSION,
        "arch": model.arch,
        "image_size": str(model.image_size),
        "resize_mode": model.resize_mode,
        "mean": repr(float(model.mean)),
        "std": repr(float(model.std)),
        "last_stride": str(model.last_stride),
        "head_weight": encode_floats(head.weight.detach().cpu().numpy().reshape(-1)),
        "head_bias": encode_floats(head.bias.detach().cpu().numpy().reshape(-1)),
        "temperature": repr(float(temperature)),  # P = sigmoid(logit / temperature)
        "source_sha256": model.sha256,
        "provenance": json.dumps(model.provenance, sort_keys=True),
        "quantization": "none",
    }


def to_onnx(model: Exported, temperature: float):  # -> onnx.ModelProto
    """The exported graph of ``model`` with its metadata (an ``onnx.ModelProto``)."""
    import onnx

    wrapper = _LogitAndFeatures(model.net, model.arch).eval()
    example = torch.zeros(2, 1, model.image_size, model.image_size)
    program = torch.onnx.export(
        wrapper,
        (example,),
        input_names=[INPUT],
        output_names=[LOGIT, FEATURES],
        dynamic_shapes={INPUT: {0: torch.export.Dim("batch")}},
        opset_version=OPSET,
        dynamo=True,
        verbose=False,
    )
    proto = program.model_proto
    proto.doc_string = (
        f"{model.arch} pneumonia classifier: P(pneumonia) = sigmoid({LOGIT} / temperature); "
        f"CAM = head_weight x {FEATURES}. Input {INPUT}: (B, 1, {model.image_size}, "
        f"{model.image_size}) float32, (uint8 / 255 - mean) / std after a {model.resize_mode} "
        "to a square."
    )
    set_metadata(proto, metadata(model, temperature))
    onnx.checker.check_model(proto)
    return proto


def set_metadata(proto, values: Mapping[str, str]) -> None:
    """Replace the entries of ``values`` in an ``onnx.ModelProto``'s metadata, keeping order."""
    kept = [(p.key, p.value) for p in proto.metadata_props if p.key not in values]
    del proto.metadata_props[:]
    for key, value in [*kept, *values.items()]:
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


def save_onnx(proto, path: str | Path) -> None:
    """Write an ``onnx.ModelProto`` as one self-contained file, atomically."""
    write_bytes(path, proto.SerializeToString(deterministic=True))


def export_onnx(model: Exported, out: str | Path, temperature: float = 1.0) -> None:
    """Export a loaded model file (:func:`pneumo.model.load_exported`) to ``out``, with the
    temperature evaluate fitted for it (1.0: uncalibrated)."""
    save_onnx(to_onnx(model, temperature), out)
