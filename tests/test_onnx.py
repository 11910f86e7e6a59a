"""The ONNX export and the torch-free runtime: parity with torch (probabilities and heat maps at
any batch size), the metadata contract, deterministic bytes, int8 files, foreign files refused,
and the predict command and the service running without importing torch."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import matplotlib
import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F

from conftest import TINY_MODEL_SIZE
from pneumo.cam.head import METHODS, head_maps, resize_matrix
from pneumo.cam.maps import activation_maps
from pneumo.cam.overlay import jet, jet_table
from pneumo.deployment import UsageError, load_model, model_identity
from pneumo.exporting import add_ood
from pneumo.model import build_network, export_model, load_exported
from pneumo.onnx_export import export_onnx
from pneumo.ood import fit, pool
from pneumo.ood_sets import KINDS, generated
from pneumo.provenance import training_provenance
from pneumo.quantization import calibration_rows, quantize
from pneumo.runtime.onnx_model import load_onnx
from pneumo.runtime.torch_model import TorchModel
from pneumo.synthetic import generate

ROOT = Path(__file__).resolve().parents[1]
SIZE = TINY_MODEL_SIZE
pytestmark = pytest.mark.usefixtures("one_thread")


def _images(n: int, size: int = SIZE, seed: int = 0) -> np.ndarray:
    """Smooth random uint8 images: blobs, so the maps have structure to compare."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = []
    for _ in range(n):
        cy, cx, r = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.05, 0.2)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
        img = 80 + 150 * blob + rng.normal(0, 8, (size, size))
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return np.stack(out)


@pytest.fixture(scope="module")
def stride1(tmp_path_factory) -> tuple[Path, Path]:
    """A last_stride=1 model (the pipeline's default) with provenance, and its ONNX export."""
    torch.manual_seed(1)
    root = tmp_path_factory.mktemp("stride1")
    net = build_network("resnet18", pretrained=False, weights_path=None, last_stride=1)
    prov = training_provenance("synthetic", np.array([0, 1, 1]), np.array([0, 1]), "x.dir", {})
    export_model(root / "model.pt", net, "resnet18", 48, "crop", 0.5, 0.2, provenance=prov)
    export_onnx(load_exported(root / "model.pt"), root / "model.onnx")
    return root / "model.pt", root / "model.onnx"


@pytest.mark.parametrize("which", ["conftest", "stride1"])
def test_onnx_matches_torch_at_any_batch_size_with_every_cam_method(
    which, torch_model_path, model_path, stride1
):
    pt, onnx_file = (torch_model_path, model_path) if which == "conftest" else stride1
    torch_model, onnx_model = TorchModel(load_exported(pt)), load_onnx(onnx_file)
    images = _images(7, onnx_model.image_size)
    reference, _ = torch_model.predict(images, None)
    assert np.ptp(reference) > 1e-4  # the probabilities differ, so the comparison could fail
    for batch in (1, 3, 7):  # the batch dimension is dynamic
        got = np.concatenate(
            [onnx_model.predict(images[i : i + batch], None)[0] for i in range(0, 7, batch)]
        )
        assert np.max(np.abs(got - reference)) <= 1e-5
    for method in METHODS:
        p_t, maps_t = torch_model.predict(images, method)
        p_o, maps_o = onnx_model.predict(images, method)
        assert maps_o.shape == maps_t.shape == images.shape and maps_o.dtype == np.float32
        assert np.max(np.abs(p_o - p_t)) <= 1e-5
        np.testing.assert_allclose(maps_o, maps_t, rtol=0, atol=1e-4, err_msg=method)
        if method == "cam":  # min-max normalised without ReLU: every map has structure
            assert np.ptp(maps_t, axis=(1, 2)).min() > 0.5


def test_metadata_is_the_preprocessing_contract_and_the_source(stride1):
    pt, onnx_file = stride1
    exported, onnx_model = load_exported(pt), load_onnx(onnx_file)
    for key in ("arch", "image_size", "resize_mode", "mean", "std", "provenance"):
        assert getattr(onnx_model, key) == getattr(exported, key), key
    assert onnx_model.source_sha256 == hashlib.sha256(pt.read_bytes()).hexdigest()
    assert onnx_model.sha256 == hashlib.sha256(onnx_file.read_bytes()).hexdigest()
    assert onnx_model.quantization == "none" and onnx_model.runtime == "onnxruntime"
    torch_id, onnx_id = (model_identity(load_model(p)) for p in (pt, onnx_file))
    assert onnx_id["source_id"] == torch_id["source_id"] == torch_id["id"] != onnx_id["id"]
    assert (onnx_id["runtime"], torch_id["runtime"]) == ("onnxruntime", "torch")
    # the graph as other tools see it: a symbolic batch, the two named outputs, opset pinned
    proto = onnx.load(str(onnx_file))
    assert [i.name for i in proto.graph.input] == ["image"]
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [1, 48, 48]
    assert [o.name for o in proto.graph.output] == ["logit", "features"]
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["resize_mode"] == "crop" and float(meta["std"]) == 0.2
    assert json.loads(meta["provenance"])["data_source"] == "synthetic"


def test_the_same_model_exports_to_the_same_bytes(stride1, tmp_path):
    pt, onnx_file = stride1
    export_onnx(load_exported(pt), tmp_path / "again.onnx")
    assert (tmp_path / "again.onnx").read_bytes() == onnx_file.read_bytes()


def test_numpy_maps_and_resize_are_torchs():
    rng = np.random.default_rng(0)
    acts = np.maximum(rng.normal(size=(3, 16, 3, 5)), 0).astype(np.float32)  # not square
    linear = torch.nn.Linear(16, 1)
    weight = linear.weight.detach().numpy()[0]
    for method in METHODS:
        logits, maps = activation_maps(torch.from_numpy(acts), linear, method, size=37)
        np.testing.assert_allclose(
            head_maps(acts, weight, method, 37), maps.numpy(), atol=1e-5, err_msg=method
        )
    for n_in, n_out in ((3, 37), (6, 96), (12, 96), (5, 4), (1, 8)):
        x = rng.random((2, n_in, n_in)).astype(np.float32)
        expected = F.interpolate(
            torch.from_numpy(x)[:, None], size=(n_out, n_out), mode="bilinear", align_corners=False
        )[:, 0].numpy()
        r = resize_matrix(n_in, n_out)
        np.testing.assert_allclose(np.einsum("ih,bhw,jw->bij", r, x, r), expected, atol=1e-6)
    with pytest.raises(ValueError, match="unknown CAM method 'x'"):
        head_maps(acts, weight, "x", 8)


def test_the_colour_table_is_matplotlibs_jet():
    reference = matplotlib.colormaps["jet"]
    values = np.concatenate([np.linspace(0, 1, 10001), np.random.default_rng(0).random(10000)])
    for dtype in (np.float32, np.float64):
        v = values.astype(dtype)
        np.testing.assert_array_equal(jet(v), reference(v)[..., :3])
    np.testing.assert_array_equal(jet_table(), reference(np.arange(256))[:, :3])


def test_foreign_and_torn_onnx_files_are_usage_errors(tmp_path):
    x = onnx.helper.make_tensor_value_info("image", onnx.TensorProto.FLOAT, [1, 1, 4, 4])
    y = onnx.helper.make_tensor_value_info("logit", onnx.TensorProto.FLOAT, [1, 1, 4, 4])
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["image"], ["logit"])], "g", [x], [y]
    )
    foreign = tmp_path / "foreign.onnx"
    onnx.save(onnx.helper.make_model(graph), str(foreign))
    with pytest.raises(UsageError, match="not an ONNX model exported by this pipeline"):
        load_model(foreign)
    (tmp_path / "torn.onnx").write_bytes(foreign.read_bytes()[:20])
    with pytest.raises(UsageError, match="cannot load the model .*torn.onnx"):
        load_model(tmp_path / "torn.onnx")


@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_int8_files_keep_the_contract_and_a_float_head(mode, stride1, tmp_path):
    pt, onnx_file = stride1
    fp32 = load_onnx(onnx_file)
    train = _images(40, fp32.image_size, seed=1)
    rows = calibration_rows(len(train), 16)
    assert len(rows) == 16 and rows[0] == 0 and rows[-1] == 39
    calibration = train[rows] if mode == "static" else None
    out = tmp_path / f"{mode}.onnx"
    quantize(onnx_file, out, mode, calibration, fp32.mean, fp32.std)
    int8 = load_onnx(out)
    assert int8.quantization == mode and int8.source_sha256 == fp32.source_sha256
    assert (int8.image_size, int8.resize_mode, int8.provenance) == (48, "crop", fp32.provenance)
    assert out.stat().st_size < onnx_file.stat().st_size / 3  # int8 weights
    graph = onnx.load(str(out)).graph
    assert ("QuantizeLinear" if mode == "static" else "DynamicQuantizeLinear") in {
        n.op_type for n in graph.node
    }
    head = _head_ops(graph)  # the pooling and the linear logit stay in float
    assert "ReduceMean" in head and not any(q in op for op in head for q in INT8_OPS), head
    images = _images(12, 48, seed=2)
    p8, maps = int8.predict(images, "cam")
    p32, _ = fp32.predict(images, None)
    assert np.all((p8 > 0) & (p8 < 1)) and maps.shape == images.shape
    assert np.max(np.abs(p8 - p32)) < 0.25
    if mode == "static":  # calibrated on the same images: the same file
        quantize(onnx_file, tmp_path / "again.onnx", mode, calibration, fp32.mean, fp32.std)
        assert (tmp_path / "again.onnx").read_bytes() == out.read_bytes()


INT8_OPS = ("Quantize", "Integer", "QLinear")


def _head_ops(graph) -> list[str]:
    """The op types from the pooling to the logit output."""
    produced = {out: node for node in graph.node for out in node.output}
    ops, frontier = [], ["logit"]
    while frontier:
        node = produced.get(frontier.pop())
        if node is None:
            continue
        ops.append(node.op_type)
        if node.op_type != "ReduceMean":
            frontier.extend(node.input)
    return ops


def test_the_ood_score_is_the_mahalanobis_distance_to_the_nearer_class():
    from sklearn.covariance import EmpiricalCovariance

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 600)
    x = rng.normal(size=(600, 8)) + 2.0 * y[:, None]
    val = rng.normal(size=(200, 8))
    stats = fit(x, y, val, quantile=0.9)
    means = np.stack([x[y == c].mean(axis=0) for c in (0, 1)])
    cov = EmpiricalCovariance(assume_centered=True).fit(x - means[y])
    probe = np.r_[rng.normal(size=(5, 8)), 30 + rng.normal(size=(5, 8))]
    expected = np.sqrt(np.min([cov.mahalanobis(probe - m) for m in means], axis=0))
    np.testing.assert_allclose(stats.score(probe), expected, rtol=2e-3)  # the ridge, float32
    assert stats.threshold == pytest.approx(np.quantile(stats.score(val), 0.9))
    assert stats.flag(stats.score(probe)).tolist() == [False] * 5 + [True] * 5
    with pytest.raises(ValueError, match="both classes"):
        fit(x[y == 0], y[y == 0], val, 0.9)


def test_ood_statistics_travel_in_the_onnx_file(stride1, tmp_path):
    """add_ood fits on the train split's features, thresholds on val, and stores both: the
    loaded file scores images as the statistics say, and generated non-chest images score
    higher than the films it was fitted on."""
    _, onnx_file = stride1
    processed = tmp_path / "processed"
    processed.mkdir()
    train, val = _images(80, 48, seed=3), _images(40, 48, seed=4)
    np.save(processed / "train.npy", train)
    np.save(processed / "val.npy", val)
    (processed / "train.csv").write_text("target\n" + "\n".join(str(i % 2) for i in range(80)))
    path = tmp_path / "model.onnx"
    path.write_bytes(onnx_file.read_bytes())
    stats = add_ood(path, processed, quantile=0.95)
    model = load_onnx(path)
    assert model.ood is not None and model.ood.threshold == pytest.approx(stats.threshold)
    np.testing.assert_array_equal(model.ood.precision, stats.precision)
    out = model.predict_all(val, None)
    assert np.mean(model.ood.flag(out.ood)) == pytest.approx(0.05, abs=0.03)
    np.testing.assert_allclose(out.ood, stats.score(pool(model.run(val)[1])), rtol=1e-6)
    for i, kind in enumerate(KINDS):
        other = model.predict_all(generated(kind, 20, 48, seed=i), None).ood
        assert np.median(other) > np.median(out.ood), kind
    # the torch runtime has no statistics: its answers carry no score
    assert TorchModel(load_exported(stride1[0])).predict_all(val[:2], None).ood is None


HEAVY = ("torch", "torchvision", "lightning", "matplotlib", "pandas", "sklearn", "scipy", "onnx")


def _modules_after(code: str) -> list[str]:
    """The heavy modules a fresh interpreter has imported after running ``code``."""
    probe = f"{code}\nimport sys\nprint(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    proc = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=env, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1].replace("'", '"'))


@pytest.fixture(scope="module")
def dicom(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("onnx-dicom")
    generate(root / "raw", n_patients=1, image_size=96, seed=1, workers=1)
    return next((root / "raw" / "stage_2_train_images").glob("*.dcm"))


def test_predict_and_serve_import_no_torch(model_path, torch_model_path, dicom, tmp_path):
    predict = (
        "import predict\n"
        f"code = predict.main([{str(dicom)!r}, '--model', {str(model_path)!r}, '--json', "
        f"'--cam', {str(tmp_path)!r}, '--cam-method', 'gradcam++'])\n"
        "assert code == 0, code\n"
    )
    assert _modules_after(predict) == []
    assert len(list(tmp_path.glob("*.cam.png"))) == 1
    serve = (
        "from fastapi.testclient import TestClient\n"
        "import serve\n"
        f"app = serve.create_app(__import__('pathlib').Path({str(model_path)!r}))\n"
        "with TestClient(app) as client:\n"
        f"    files = {{'file': ('x.dcm', open({str(dicom)!r}, 'rb').read())}}\n"
        "    r = client.post('/predict?cam=true', files=files)\n"
        "    assert r.status_code == 200, r.text\n"
    )
    assert _modules_after(serve) == []
    # the fallback does import torch: the probe can tell
    assert "torch" in _modules_after(predict.replace(str(model_path), str(torch_model_path)))
