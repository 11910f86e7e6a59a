"""The predict command and its library: inputs, batching, decisions, heat maps, exit statuses, and
the same probability as the preprocess + infer path for the same file."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

import predict as predict_script
from conftest import TINY_MODEL_SIZE
from pneumo.deployment import load_model, model_identity, resolve_operating_point
from pneumo.file_inference import find_images, load_images, predict_files
from pneumo.image_io.errors import ImageReadError
from pneumo.imaging import load_for_model, load_square
from pneumo.model import load_exported, predict_logits, predict_proba
from pneumo.onnx_export import export_onnx
from pneumo.preprocessing import build_cache
from pneumo.results import CAM_PANEL, Failure, Prediction, cam_names
from pneumo.runtime import apply_temperature
from pneumo.runtime.onnx_model import load_onnx
from pneumo.split_schema import PREPROCESS_COLUMNS
from pneumo.synthetic import generate

ROOT = Path(__file__).resolve().parents[1]
SIZE = TINY_MODEL_SIZE  # conftest's model_path
ZOO_CHEST = ("torchxrayvision", "Fake_MONOHR1", "CR-MONO1-10-chest", "RG1_J2KI", "RG1_JLSN")


def write_dicom16(path: Path, seed: int = 0, rows: int = 80, cols: int = 96) -> Path:
    """An uncompressed 16-bit MONOCHROME1 CR written with pydicom (a different path than RSNA's)."""
    rng = np.random.default_rng(seed)
    pixels = (rng.random((rows, cols)) * 3000).astype(np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    """RSNA-format DICOMs from the generator, a 16-bit DICOM, an RGB JPEG and a gray PNG."""
    root = tmp_path_factory.mktemp("images")
    generate(root / "raw", n_patients=4, image_size=192, seed=3, workers=1)
    dcms = sorted((root / "raw" / "stage_2_train_images").glob("*.dcm"))
    files = {f"rsna{i}": p for i, p in enumerate(dcms)}
    files["dicom16"] = write_dicom16(root / "raw" / "ct16.dcm")
    gray = pydicom.dcmread(dcms[0]).pixel_array
    Image.fromarray(gray).resize((150, 120)).save(root / "raw" / "gray.png")
    rgb = np.stack([gray, np.roll(gray, 5, axis=1), 255 - gray], axis=-1)
    Image.fromarray(rgb).save(root / "raw" / "colour.jpg", quality=90)
    files["png"], files["jpeg"] = root / "raw" / "gray.png", root / "raw" / "colour.jpg"
    return files


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    code = predict_script.main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def jsonl(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


# ----------------------------------------------------------------------------------------------
# The consistency the issue asks for: preprocess + infer == the command line, to 1e-6


def _write_split(path: Path, raw: Path, files: list[Path]) -> None:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=PREPROCESS_COLUMNS, restval="")
        w.writeheader()
        for i, file in enumerate(files):
            rel = str(file.relative_to(raw))
            w.writerow(
                {"patientId": file.stem, "groupId": file.stem, "image": rel, "target": i % 2}
            )
            # (class, view, sex and age stay empty; boxes empty means none)


def test_cli_reports_the_probability_of_the_preprocessed_cache(
    tmp_path, images, model_path, torch_model_path, capsys
):
    raw = images["png"].parent
    files = sorted(images.values())
    split = tmp_path / "split"
    split.mkdir()
    for name in ("train", "val"):
        _write_split(split / f"{name}.csv", raw, files[:2])
    _write_split(split / "test.csv", raw, files)
    processed = tmp_path / "processed"
    build_cache(
        raw,
        split,
        processed,
        image_size=SIZE,
        resize_mode="pad",
        max_rejected_fraction=0.0,
        workers=1,
        chunk_size=64,
        file_timeout_s=120,
        progress=False,
    )
    cached = np.load(processed / "test.npy", mmap_mode="r")
    torch_model = load_exported(torch_model_path)  # the infer stage's model and forward pass
    expected = predict_proba(torch_model.net, cached, torch_model.mean, torch_model.std, 4)

    # the real command, in a new process, as a person runs it
    cmd = [sys.executable, "src/predict.py", *map(str, files), "--model", str(model_path)]
    done = subprocess.run([*cmd, "--json"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    got = {r["file"]: r["prob"] for r in jsonl(done.stdout)}
    assert list(got) == [str(f) for f in files]
    # on onnxruntime (the default) against torch: the export stage's bar
    np.testing.assert_allclose([got[str(f)] for f in files], expected, rtol=0, atol=1e-5)
    # the probabilities differ between files, so the comparison could fail
    assert np.ptp(expected) > 1e-4

    # with heat maps the probability comes from the CAM forward pass: still the same
    code = predict_script.main(
        [*cmd[2:], "--json", "--cam", str(tmp_path / "cams"), "--batch-size", "3"]
    )
    assert code == 0
    probs = [r["prob"] for r in jsonl(capsys.readouterr().out)]
    np.testing.assert_allclose(probs, expected, rtol=0, atol=1e-5)
    # and on torch, the infer stage's forward pass itself
    code = predict_script.main([*cmd[2:-2], "--model", str(torch_model_path), "--json"])
    assert code == 0
    probs = [r["prob"] for r in jsonl(capsys.readouterr().out)]
    np.testing.assert_allclose(probs, expected, rtol=0, atol=1e-6)


def test_both_runtimes_apply_the_temperature_evaluate_fitted(
    images, torch_model_path, tmp_path, capsys
):
    """A file predicted alone gets sigmoid(logit / T), evaluate's calibrated probability: on
    onnxruntime from the file's metadata, on torch from the operating point fitted for it."""
    files = sorted(images.values())
    exported = load_exported(torch_model_path)
    cached = np.stack([load_for_model(f, SIZE, "pad") for f in files])
    logits = predict_logits(exported.net, cached, exported.mean, exported.std, 4)
    t = 2.5
    expected = apply_temperature(logits, t)
    onnx_file = tmp_path / "calibrated.onnx"
    export_onnx(exported, onnx_file, temperature=t)
    assert load_onnx(onnx_file).temperature == t
    op = tmp_path / "op.json"
    record = {"threshold": 0.5, "temperature": t, "model_sha256": exported.sha256}
    op.write_text(json.dumps(record))
    for model in (onnx_file, torch_model_path):
        code, out, _ = run_cli(
            [*files, "--model", model, "--json", "--operating-point", op], capsys
        )
        assert code == 0
        got = [r["prob"] for r in jsonl(out)]
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5, err_msg=str(model))
        # and with a heat map, from the maps' forward pass
        code, out, _ = run_cli(
            [*files, "--model", model, "--json", "--operating-point", op, "--cam", tmp_path / "c"],
            capsys,
        )
        np.testing.assert_allclose([r["prob"] for r in jsonl(out)], expected, atol=1e-5)
    # an operating point fitted for another model.pt: torch does not take its temperature
    op.write_text(json.dumps(record | {"model_sha256": "0" * 64}))
    code, out, _ = run_cli(
        [*files, "--model", torch_model_path, "--json", "--operating-point", op], capsys
    )
    uncalibrated = apply_temperature(logits, 1.0)
    np.testing.assert_allclose([r["prob"] for r in jsonl(out)], uncalibrated, atol=1e-6)
    assert np.max(np.abs(uncalibrated - expected)) > 1e-3  # so the comparisons could fail


def test_batching_and_workers_do_not_change_results(images, model_path):
    model = load_model(model_path)
    files = sorted(images.values())
    bad = files[0].parent / "broken.dcm"
    bad.write_bytes(b"DICM but not really")
    files = [files[0], bad, *files[1:]]
    runs = [
        list(predict_files(model, files, batch_size=b, workers=w))
        for b, w in ((2, 0), (3, 2), (64, 1))
    ]
    for results in runs:
        assert [r.file for r in results] == [str(f) for f in files]
        assert isinstance(results[1], Failure) and "broken.dcm" in results[1].file
    probs = [[r.prob for r in res if isinstance(r, Prediction)] for res in runs]
    np.testing.assert_allclose(probs[1], probs[0], rtol=0, atol=1e-6)
    np.testing.assert_allclose(probs[2], probs[0], rtol=0, atol=1e-6)
    one = load_for_model(files[0], SIZE, "pad")[None]
    assert probs[0][0] == pytest.approx(model.predict(one, None)[0][0], abs=1e-6)


def test_load_images_prefetch_is_bounded_and_ordered(images):
    files = sorted(images.values()) * 5
    seen = [f for f, _ in load_images(files, SIZE, "pad", workers=2, prefetch=3)]
    assert seen == files
    gen = load_images(files, SIZE, "pad", workers=2, prefetch=3)
    next(gen)
    gen.close()  # stopping early cancels the rest instead of decoding everything


# ----------------------------------------------------------------------------------------------
# The command line


def test_text_output_and_exit_status_zero(images, model_path, tmp_path, capsys):
    code, out, err = run_cli([images["rsna0"], images["png"], "--model", model_path], capsys)
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"{images['rsna0']}: p=0.")
    model_id = model_identity(load_model(model_path))["id"]
    assert f"model {model_id} resnet18 {SIZE}px" in lines[0]
    assert "at 0.5:" in lines[0] and "at 0.25:" in lines[0]
    assert "2 predicted, 0 failed" in err


def test_json_records_have_stable_keys_and_consistent_decisions(images, model_path, capsys):
    code, out, _ = run_cli([*images.values(), "--model", model_path, "--json"], capsys)
    assert code == 0
    recs = jsonl(out)
    assert len(recs) == len(images)
    keys = {"file", "prob", "positive", "threshold", "threshold_source", "decisions", "model"}
    for r in recs:
        assert set(r) == keys | {
            "cam",
            "notes",
            "gate",
            "ood_score",
            "out_of_distribution",
            "warning",
            "prob_sd",
        }
        assert r["prob_sd"] is None  # one model: no uncertainty (an ensemble's, test_ensemble)
        assert set(r["decisions"]) == {"operating_point", "0.5", "0.25"}
        assert r["decisions"]["0.5"] == (r["prob"] >= 0.5)
        assert r["decisions"]["0.25"] == (r["prob"] >= 0.25)
        assert r["positive"] == r["decisions"]["operating_point"] == (r["prob"] >= r["threshold"])
        assert set(r["model"]) == {
            "id",
            "source_id",
            "runtime",
            "arch",
            "image_size",
            "resize_mode",
            "members",
        }
        assert r["model"]["runtime"] == "onnxruntime" and r["model"]["members"] == 1
        assert len(r["model"]["id"]) == 12 and r["model"]["image_size"] == SIZE
    colour = next(r for r in recs if r["file"].endswith("colour.jpg"))
    assert any("grayscale" in n for n in colour["notes"])


def test_unreadable_files_get_a_line_and_exit_one(images, model_path, tmp_path, capsys):
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    empty = tmp_path / "empty.dcm"
    empty.touch()
    args = [images["rsna0"], text, empty, tmp_path / "missing.png", images["png"]]
    code, out, err = run_cli([*args, "--model", model_path], capsys)
    assert code == 1
    assert len(out.splitlines()) == 2  # the two good files are still predicted
    assert f"{text}: error: not a DICOM, PNG or JPEG file" in err
    assert f"{empty}: error: empty file" in err
    assert "missing.png: error: no such file or directory" in err
    assert "2 predicted, 3 failed" in err

    code, out, _ = run_cli([*args, "--model", model_path, "--json"], capsys)
    assert code == 1
    recs = jsonl(out)
    errors = {r["file"]: r["error"] for r in recs if "error" in r}
    assert set(errors) == {str(text), str(empty), str(tmp_path / "missing.png")}
    assert all(set(r) == {"file", "error"} for r in recs if "error" in r)
    assert sum("prob" in r for r in recs) == 2


def test_degenerate_images_are_refused_and_rejected(images, model_path, tmp_path, capsys):
    dot, blank, flat = tmp_path / "dot.png", tmp_path / "blank.png", tmp_path / "flat.png"
    Image.fromarray(np.full((1, 1), 200, np.uint8)).save(dot)
    Image.fromarray(np.zeros((3000, 2000), np.uint8)).save(blank)
    noise = np.random.default_rng(0).integers(100, 104, (256, 256), dtype=np.uint8)
    Image.fromarray(noise).save(flat)  # 4 gray levels of noise: nearly constant
    code, out, err = run_cli([dot, blank, flat, images["png"], "--model", model_path], capsys)
    assert code == 1 and len(out.splitlines()) == 1
    assert f"{dot}: error: 1 x 1 pixels: below the 32-pixel minimum side" in err
    for path in (blank, flat):
        assert f"{path}: error: a blank or nearly constant image" in err
    with pytest.raises(ImageReadError, match="nearly constant"):
        load_square(flat, 96, "pad")  # preprocess's reader: a rejected.csv row, not a crash


def test_folders_are_recursive_and_skip_non_images(images, model_path, tmp_path, capsys):
    root = tmp_path / "scans"
    (root / "a" / "deeper").mkdir(parents=True)
    (root / ".hidden").mkdir()
    shutil.copy(images["rsna0"], root / "a" / "x.dcm")
    shutil.copy(images["rsna1"], root / "a" / "deeper" / "noext")  # DICM marker, no suffix
    shutil.copy(images["png"], root / "b.PNG")
    shutil.copy(images["png"], root / ".hidden" / "c.png")
    (root / "README.md").write_text("# scans")
    (root / "a" / "labels.csv").write_text("x,y")
    (root / "a" / "data.bin").write_bytes(b"\0" * 300)
    inputs = find_images([root])
    assert inputs.files == [root / "a" / "deeper" / "noext", root / "a" / "x.dcm", root / "b.PNG"]
    assert inputs.skipped == 3 and inputs.errors == []  # hidden folders are not entered

    code, out, err = run_cli([root, "--model", model_path], capsys)
    assert code == 0
    assert len(out.splitlines()) == 3
    assert "3 predicted, 0 failed, 3 non-image files skipped" in err

    empty = tmp_path / "nothing"
    empty.mkdir()
    (empty / "a.txt").write_text("x")
    code, _, err = run_cli([empty, "--model", model_path], capsys)
    assert code == 1 and "no DICOM, PNG or JPEG files (1 other files)" in err


def test_missing_model_and_usage_errors_exit_two(
    images, tmp_path, capsys, model_path, torch_model_path
):
    for missing, stage in (("none.pt", "train"), ("none.onnx", "export")):
        code, out, err = run_cli([images["png"], "--model", tmp_path / missing], capsys)
        assert code == 2 and out == ""
        assert f"{missing} not found" in err and f"dvc repro {stage}" in err and "dvc pull" in err

    for name, source in (("torn.pt", torch_model_path), ("torn.onnx", model_path)):
        torn = tmp_path / name
        torn.write_bytes(source.read_bytes()[:1000])
        code, _, err = run_cli([images["png"], "--model", torn], capsys)
        assert code == 2 and f"cannot load the model {torn}" in err, err

    # a file of the other runtime, or one whose suffix names none, is a usage error that says so
    code, _, err = run_cli([images["png"], "--model", model_path, "--runtime", "torch"], capsys)
    assert code == 2 and "pass --runtime onnxruntime" in err
    odd = tmp_path / "model.bin"
    odd.write_bytes(model_path.read_bytes())
    code, _, err = run_cli([images["png"], "--model", odd], capsys)
    assert code == 2 and "cannot tell the runtime" in err
    code, _, err = run_cli([images["png"], "--model", odd, "--runtime", "onnxruntime"], capsys)
    assert code == 0, err

    for bad in (["--threshold", "1.5"], ["--batch-size", "0"], ["--cam-method", "x"], []):
        with pytest.raises(SystemExit) as exc:
            predict_script.main([*([str(images["png"])] if bad else []), *bad])
        assert exc.value.code == 2
    capsys.readouterr()


def test_operating_point_file_threshold_flag_and_fallback(images, model_path, tmp_path, capsys):
    f = images["rsna0"]
    code, out, err = run_cli([f, "--model", model_path, "--json"], capsys)
    prob = jsonl(out)[0]["prob"]

    # a threshold just above / at the probability: the decision flips exactly at p >= t
    op = tmp_path / "op.json"
    for t, positive in ((prob + 1e-9, False), (prob, True)):
        op.write_text(json.dumps({"threshold": t, "target_sensitivity": 0.9, "method": "x"}))
        code, out, _ = run_cli(
            [f, "--model", model_path, "--json", "--operating-point", op], capsys
        )
        rec = jsonl(out)[0]
        assert code == 0 and rec["threshold"] == t and rec["positive"] is positive
        assert rec["threshold_source"] == f"{op}, target sensitivity 0.9"

    code, out, _ = run_cli(
        [f, "--model", model_path, "--json", "--operating-point", op, "--threshold", "0.01"], capsys
    )
    rec = jsonl(out)[0]
    assert rec["threshold"] == 0.01 and rec["positive"] and rec["threshold_source"] == "--threshold"

    op_missing, note = resolve_operating_point(None, None, default_path=tmp_path / "no.json")
    assert op_missing.threshold == 0.5 and "no.json not found" in note

    code, _, err = run_cli([f, "--model", model_path, "--operating-point", tmp_path / "x"], capsys)
    assert code == 2 and "not found" in err
    op.write_text('{"threshold": "high"}')
    code, _, err = run_cli([f, "--model", model_path, "--operating-point", op], capsys)
    assert code == 2 and "threshold must be a number in [0, 1]" in err


def test_cam_pngs_are_side_by_side_and_collision_safe(images, model_path, tmp_path, capsys):
    src = tmp_path / "in"
    (src / "a").mkdir(parents=True)
    (src / "b").mkdir()
    shutil.copy(images["rsna0"], src / "a" / "x.dcm")
    shutil.copy(images["rsna1"], src / "b" / "x.dcm")
    shutil.copy(images["png"], src / "x.png")
    out_dir = tmp_path / "cams"
    code, out, _ = run_cli(
        [src, "--model", model_path, "--cam", out_dir, "--json", "--cam-method", "gradcam"], capsys
    )
    assert code == 0
    recs = jsonl(out)
    names = [Path(r["cam"]).name for r in recs]
    assert names == ["x.cam.png", "x-2.cam.png", "x-3.cam.png"]
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(names)  # no temporary leftovers
    with Image.open(out_dir / "x.cam.png") as im:
        assert im.format == "PNG" and im.mode == "RGB"
        rgb = np.asarray(im)
    side = CAM_PANEL
    assert rgb.shape[1] == 2 * side + 4 and rgb.shape[0] > side
    left, right = rgb[:side, :side].astype(int), rgb[:side, side + 4 :].astype(int)
    assert (left[..., 0] == left[..., 2]).all()  # the X-ray half is gray
    assert np.abs(right[..., 0] - right[..., 2]).mean() > 5  # the heat-map half is coloured


def test_cam_names():
    files = [
        Path("a/X.dcm"),
        Path("b/x.dcm"),
        Path("x.png"),
        Path("we ird;$(rm).dcm"),
        Path(".dcm"),
    ]
    assert cam_names(files) == [
        "X.cam.png",
        "x-2.cam.png",
        "x-3.cam.png",
        "we_ird_rm.cam.png",
        "dcm.cam.png",
    ]


# ----------------------------------------------------------------------------------------------
# Real files


def test_predicts_real_chest_images(real_cxr, model_path, capsys):
    code, out, err = run_cli([real_cxr, "--model", model_path, "--json"], capsys)
    recs = jsonl(out)
    assert code == 0, err
    assert len(recs) >= 5 and all(0 <= r["prob"] <= 1 for r in recs)


def test_predicts_real_chest_dicoms_of_the_zoo(dicom_zoo, model_path, capsys):
    with (dicom_zoo / "zoo.csv").open() as f:
        names = [r["file"] for r in csv.DictReader(f) if any(k in r["file"] for k in ZOO_CHEST)]
    assert len(names) == len(ZOO_CHEST)
    code, out, err = run_cli(
        [*(dicom_zoo / n for n in names), "--model", model_path, "--json"], capsys
    )
    assert code == 0, err
    recs = jsonl(out)
    assert [r["file"] for r in recs] == [str(dicom_zoo / n) for n in names]
    assert all(0 <= r["prob"] <= 1 for r in recs)
