"""Int8 versions of the exported ONNX model, through onnxruntime's quantization tools.

``static`` calibrates the activation ranges on train images (min-max over ``n`` of them, evenly
spaced through ``train.npy``) and stores weights and activations as int8 in QDQ form; ``dynamic``
stores the weights as int8 and measures each activation's range at run time. Both keep the head
(mean pooling, the linear logit) in float32: it is a few hundred multiply-adds, and a quantized
logit would move every probability. Weights are quantized per tensor: per channel, the int8
model shifted every logit of this network by about +3 (median |delta p| 0.43 on the test split,
against 0.005 per tensor; measured with ``bench/onnx.py``'s code on this repository's model).

The int8 file's metadata is the float model's, with ``quantization`` saying which kind it is.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from pneumo.runtime import normalize
from pneumo.runtime.onnx_model import LOGIT

MODES = ("static", "dynamic")
BATCH = 32  # calibration images per forward pass


def calibration_rows(n_images: int, n: int) -> np.ndarray:
    """``n`` row indices spread evenly over ``n_images`` (all of them when n >= n_images)."""
    if n_images < 1 or n < 1:
        raise ValueError(f"need at least one image and one row, got {n_images} and {n}")
    return np.unique(np.linspace(0, n_images - 1, min(n, n_images)).round().astype(np.int64))


def _head_nodes(path: Path) -> list[str]:
    """The graph's nodes after the last convolution's output (pooling, linear, reshape)."""
    import onnx

    graph = onnx.load(str(path)).graph
    produced = {out: node for node in graph.node for out in node.output}
    head, frontier = [], [LOGIT]
    while frontier:
        node = produced.get(frontier.pop())
        if node is None or node.op_type in ("Relu", "Conv", "Add") or node.name in head:
            continue
        head.append(node.name)
        frontier.extend(node.input)
    return head


def quantize(
    fp32: str | Path,
    out: str | Path,
    mode: str,
    calibration: np.ndarray | None,
    mean: float,
    std: float,
) -> None:
    """Write the int8 model of the float ONNX file ``fp32`` to ``out`` (atomically).

    ``calibration``: uint8 images (N, S, S) for ``static`` (None for ``dynamic``), standardised
    with the model's ``mean`` and ``std`` as prediction does.
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from pneumo.onnx_export import save_onnx, set_metadata

    if mode not in MODES:
        raise ValueError(f"unknown quantization {mode!r}; choose one of {', '.join(MODES)}")
    if mode == "static" and (calibration is None or len(calibration) == 0):
        raise ValueError("static quantization needs calibration images")

    class Batches(CalibrationDataReader):
        def __init__(self, images: np.ndarray) -> None:
            self.batches: Iterator[np.ndarray] = (
                normalize(np.ascontiguousarray(images[i : i + BATCH]), mean, std)
                for i in range(0, len(images), BATCH)
            )

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {"image": batch}

    with tempfile.TemporaryDirectory(prefix="pneumo-quantize-") as tmp:
        prepared, quantized = Path(tmp) / "prepared.onnx", Path(tmp) / "int8.onnx"
        quant_pre_process(str(fp32), str(prepared))  # shape inference and graph folding
        common = {"per_channel": False, "nodes_to_exclude": _head_nodes(prepared)}
        if mode == "static":
            quantize_static(
                str(prepared),
                str(quantized),
                Batches(calibration),
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
                **common,
            )
        else:
            # only the convolutions: the dynamic quantizer rewrites the head's Gemm into a MatMul
            # of another name, which would slip past nodes_to_exclude
            quantize_dynamic(
                str(prepared),
                str(quantized),
                weight_type=QuantType.QUInt8,
                op_types_to_quantize=["Conv"],
                **common,
            )
        proto = onnx.load(str(quantized))
    source = onnx.load(str(fp32))
    set_metadata(proto, {p.key: p.value for p in source.metadata_props} | {"quantization": mode})
    save_onnx(proto, out)
