"""CAM / Grad-CAM maps, localization scores, gallery and the cam stage end to end."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from conftest import run_stage
from pneumo.cam.analysis import Tuning, analyse, gated_ious, tune_on_val
from pneumo.cam.gallery import GROUPS, Tile, caption, render_gallery, select_cases
from pneumo.cam.inputs import CamInputs, read_predicted_split
from pneumo.cam.localization import (
    box_mask,
    gaussian_map,
    iou_dice,
    mass_inside,
    peak,
    pearson,
    pointing_game,
)
from pneumo.cam.maps import (
    METHODS,
    activation_maps,
    class_activation_maps,
    compute_maps,
    normalize_maps,
    stitch_offsets,
    stitched_maps,
)
from pneumo.cam.overlay import overlay
from pneumo.model import (
    ARCHS,
    Exported,
    build_network,
    export_model,
    normalize,
    predict_proba,
    split_network,
)

ROOT = Path(__file__).resolve().parents[1]


def _head(weights: list[float], bias: float = 0.0) -> nn.Linear:
    linear = nn.Linear(len(weights), 1)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([weights]))
        linear.bias.fill_(bias)
    return linear


def _minmax(a: np.ndarray) -> np.ndarray:
    return (a - a.min()) / (a.max() - a.min())


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    torch.manual_seed(0)
    return build_network("resnet18", pretrained=False, weights_path=None, last_stride=2).eval()


# ----------------------------------------------------------------------------------------------
# Maps


def test_cam_on_hand_built_features_equals_formula():
    # two channels of 2 x 3 maps, weights (2, -1): CAM = 2 * A0 - A1
    a0 = [[1.0, 0.0, 2.0], [0.0, 1.0, 0.0]]
    a1 = [[0.0, 3.0, 1.0], [1.0, 0.0, 0.0]]
    acts = torch.tensor([[a0, a1]])
    raw = class_activation_maps(acts, torch.tensor([2.0, -1.0]))
    expected_raw = np.array([[2.0, -3.0, 3.0], [-1.0, 2.0, 0.0]])
    np.testing.assert_allclose(raw[0].numpy(), expected_raw)

    logits, maps = activation_maps(acts, _head([2.0, -1.0], bias=0.5), "cam")
    # min -3, max 3: (raw + 3) / 6, no ReLU for plain CAM
    np.testing.assert_allclose(maps[0].numpy(), (expected_raw + 3) / 6, atol=1e-6)
    # logit = w . spatial mean + b = 2 * (4 / 6) - (5 / 6) + 0.5
    assert logits.item() == pytest.approx(2 * 4 / 6 - 5 / 6 + 0.5, abs=1e-6)


def test_upsampling_is_bilinear_after_normalisation():
    acts = torch.tensor([[[[0.0, 1.0], [2.0, 4.0]]]])
    _, maps = activation_maps(acts, _head([1.0]), "cam", size=8)
    expected = F.interpolate(
        torch.tensor([[[[0.0, 0.25], [0.5, 1.0]]]]), size=(8, 8), mode="bilinear"
    )
    assert maps.shape == (1, 8, 8)
    np.testing.assert_allclose(maps[0].numpy(), expected[0, 0].numpy(), atol=1e-6)


def test_constant_map_becomes_zeros_not_nan():
    acts = torch.ones(2, 3, 4, 4)
    for method in METHODS:
        _, maps = activation_maps(acts, _head([1.0, 2.0, -1.0]), method, size=16)
        assert torch.isfinite(maps).all() and (maps == 0).all(), method


def test_cam_of_resnet18_equals_manual_computation(resnet):
    x = torch.randn(3, 1, 64, 64, generator=torch.Generator().manual_seed(1))
    probs, maps = compute_maps(resnet, "resnet18", x, "cam")
    with torch.no_grad():
        h = resnet.maxpool(resnet.relu(resnet.bn1(resnet.conv1(x))))
        feats = resnet.layer4(resnet.layer3(resnet.layer2(resnet.layer1(h))))
        raw = (feats * resnet.fc.weight[0][None, :, None, None]).sum(1).numpy()
        expected_probs = torch.sigmoid(resnet(x)[:, 0]).numpy()
    assert feats.shape[1:] == (512, 2, 2)
    norm = np.stack([_minmax(r) for r in raw])[:, None]
    expected = F.interpolate(torch.from_numpy(norm), size=(64, 64), mode="bilinear")[:, 0]
    assert maps.dtype == np.float32 and maps.shape == (3, 64, 64)
    np.testing.assert_allclose(maps, expected.numpy(), atol=1e-5)
    np.testing.assert_allclose(probs, expected_probs, atol=1e-6)


def test_gradcam_equals_relu_cam_for_gap_linear_head():
    # for a GAP + linear head d logit / dA_c = w_c / (h w): Grad-CAM = ReLU(CAM) / (h w)
    torch.manual_seed(0)
    net = build_network("resnet18", pretrained=False, weights_path=None, last_stride=2).eval()
    x = torch.randn(4, 1, 64, 64, generator=torch.Generator().manual_seed(2))
    features, linear = split_network(net, "resnet18")
    with torch.no_grad():
        acts = features(x)
        # weights that favour the top-left cell over the bottom-right one: maps of both signs
        linear.weight.copy_((acts[:, :, 0, 0] - acts[:, :, 1, 1]).mean(0)[None])
        raw = class_activation_maps(acts, linear.weight[0])
    assert (raw > 0).any() and (raw < 0).any()  # otherwise ReLU would be a no-op here
    _, grad_maps = compute_maps(net, "resnet18", x, "gradcam")
    expected = normalize_maps(torch.relu(raw))
    expected = F.interpolate(expected[:, None], size=(64, 64), mode="bilinear")[:, 0]
    np.testing.assert_allclose(grad_maps, expected.numpy(), atol=1e-5)
    _, cam_maps = compute_maps(net, "resnet18", x, "cam")
    assert not np.allclose(grad_maps, cam_maps, atol=1e-3)  # CAM keeps the negative evidence


def test_gradcam_plus_plus_closed_form_on_hand_built_features():
    acts = torch.tensor([[[[1.0, 3.0], [0.0, 2.0]], [[2.0, 0.0], [1.0, 1.0]]]])
    w = [0.8, -0.4]
    _, maps = activation_maps(acts, _head(w), "gradcam++")
    # gradients are constant per channel: g_c = w_c / 4; alpha = g^2 / (2 g^2 + sum(A_c) g^3)
    weights = []
    for c, wc in enumerate(w):
        g, total = wc / 4, acts[0, c].sum().item()
        alpha = g**2 / (2 * g**2 + total * g**3)
        weights.append(4 * alpha * max(g, 0.0))
    raw = np.maximum(np.einsum("chw,c->hw", acts[0].numpy(), np.array(weights)), 0)
    np.testing.assert_allclose(maps[0].numpy(), _minmax(raw), atol=1e-6)


@pytest.mark.parametrize("arch", ARCHS)
def test_maps_for_every_arch_have_image_shape_and_range(arch):
    torch.manual_seed(0)
    net = build_network(arch, pretrained=False, weights_path=None, last_stride=2).eval()
    x = torch.randn(2, 1, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected_probs = torch.sigmoid(net(x)[:, 0]).numpy()
    for method in METHODS:
        probs, maps = compute_maps(net, arch, x, method)
        assert maps.shape == (2, 64, 64) and maps.dtype == np.float32, method
        assert np.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1, method
        np.testing.assert_allclose(probs, expected_probs, atol=1e-5)


def test_compute_maps_rejects_a_wrong_shape(resnet):
    with pytest.raises(ValueError, match=r"\(B, 1, S, S\)"):
        compute_maps(resnet, "resnet18", torch.zeros(1, 3, 32, 32), "cam")
    with pytest.raises(ValueError, match="unknown CAM method"):
        compute_maps(resnet, "resnet18", torch.zeros(1, 1, 32, 32), "saliency")


# ----------------------------------------------------------------------------------------------
# Boxes and scores


def test_box_mask_uses_pixel_centres():
    m = box_mask([[2.0, 1.0, 3.0, 2.0]], (6, 8))
    assert m.sum() == 6 and m[1:3, 2:5].all()
    # [2.6, 4.4): centres 3.5 only -> column 3; [0.5, 1.5): centre 0.5 in, 1.5 out -> row 0
    m = box_mask([[2.6, 0.5, 1.8, 1.0]], (6, 8))
    assert list(zip(*np.nonzero(m), strict=True)) == [(0, 3)]
    # a sub-pixel box keeps the pixel holding its centre
    m = box_mask([[4.1, 2.2, 0.3, 0.3]], (6, 8))
    assert list(zip(*np.nonzero(m), strict=True)) == [(2, 4)]
    # boxes past the border are clipped; the union of overlapping boxes counts once
    m = box_mask([[-3.0, 4.0, 5.0, 10.0], [0.0, 5.0, 1.0, 1.0]], (6, 8))
    assert m.sum() == 4 and m[4:6, 0:2].all()


def test_pointing_game_known_answers():
    cam_map = np.zeros((20, 20), dtype=np.float32)
    cam_map[5, 12] = 1.0
    assert pointing_game(cam_map, [[10, 3, 5, 5]], tolerance=0.0)
    assert not pointing_game(cam_map, [[0, 0, 5, 5]], tolerance=0.0)
    assert pointing_game(cam_map, [[0, 0, 5, 5], [12, 5, 1, 1]], tolerance=0.0)  # any box counts
    with pytest.raises(ValueError, match="no box"):
        pointing_game(cam_map, [], tolerance=0.0)


def test_pointing_tolerance_counts_near_misses():
    cam_map = np.zeros((40, 40), dtype=np.float32)
    cam_map[20, 20] = 1.0
    box = [[23.0, 24.0, 5.0, 5.0]]  # nearest pixel centre (23, 24) is 3 rows, 4 cols away: 5 px
    assert not pointing_game(cam_map, box, tolerance=0.0)
    assert not pointing_game(cam_map, box, tolerance=4.9)
    assert pointing_game(cam_map, box, tolerance=5.0)


def test_peak_of_an_upsampled_border_cell_is_the_cell_centre():
    # the maximum of a 2 x 2 CAM in its top-left cell becomes, after bilinear upsampling to 64, a
    # plateau over rows and columns 0-15; the cell's centre is at 15.5
    acts = torch.tensor([[[[1.0, 0.2], [0.4, 0.0]]]])
    _, maps = activation_maps(acts, _head([1.0]), "cam", size=64)
    m = maps[0].numpy()
    assert m[0, 0] == m[15, 15] == m.max()
    assert peak(m) == (15, 15)
    assert pointing_game(m, [[12.0, 12.0, 8.0, 8.0]], tolerance=0.0)
    assert not pointing_game(m, [[0.0, 0.0, 4.0, 4.0]], tolerance=0.0)
    # interior maxima are untouched by the tie rule
    single = np.zeros((9, 9))
    single[1, 7] = 1.0
    assert peak(single) == (1, 7)


def test_iou_dice_and_mass_known_answers():
    cam_map = np.zeros((20, 20), dtype=np.float32)
    cam_map[0:10, 0:10] = 0.8
    cam_map[0:10, 0:5] = 0.3  # below 0.5 * max: not in the thresholded region
    box = [[5.0, 0.0, 10.0, 10.0]]
    # region = rows 0-9 x cols 5-9 (50 px), box = rows 0-9 x cols 5-14 (100 px), overlap 50
    iou, dice = iou_dice(cam_map, box, threshold=0.5)
    assert iou == pytest.approx(0.5) and dice == pytest.approx(2 * 50 / 150)
    iou, dice = iou_dice(cam_map, box, threshold=0.2)  # region = the 10 x 10 square
    assert iou == pytest.approx(50 / 150) and dice == pytest.approx(0.5)
    assert mass_inside(cam_map, box) == pytest.approx(0.8 * 50 / (0.8 * 50 + 0.3 * 50))
    zero = np.zeros((20, 20), dtype=np.float32)
    assert iou_dice(zero, box, 0.5) == (0.0, 0.0)
    # a constant map points nowhere
    assert not pointing_game(zero, [[0.0, 0.0, 20.0, 20.0]], tolerance=0.0)
    assert mass_inside(zero, box) == 0.0


def test_gaussian_baseline_is_centred_and_normalised():
    g = gaussian_map(33)
    assert g.shape == (33, 33) and g.min() == 0.0 and g.max() == 1.0
    assert np.unravel_index(np.argmax(g), g.shape) == (16, 16)
    np.testing.assert_allclose(g, g.T)
    np.testing.assert_allclose(g, g[::-1, ::-1])


def test_pearson_matches_numpy_and_is_zero_for_constant_maps():
    rng = np.random.default_rng(0)
    a, b = rng.random((8, 8)), rng.random((8, 8))
    assert pearson(a, b) == pytest.approx(np.corrcoef(a.ravel(), b.ravel())[0, 1])
    assert pearson(a, 2 * a + 1) == pytest.approx(1.0)
    assert pearson(a, np.zeros((8, 8))) == 0.0


def test_box_scaling_matches_the_preprocess_transform():
    imaging = pytest.importorskip("pneumo.imaging")
    original = np.zeros((300, 200), dtype=np.uint8)  # portrait, so pad and crop both act
    boxes = np.array([[40.0, 90.0, 60.0, 80.0], [120.0, 150.0, 50.0, 100.0]])
    for x, y, w, h in boxes.astype(int):
        original[y : y + h, x : x + w] = 255
    for mode in ("pad", "crop", "stretch"):
        img, transform = imaging.fit_to_square(original, 64, mode)
        scaled = transform.apply_boxes(boxes)
        mask = box_mask(scaled, img.shape)
        bright = img > 127
        inter = np.logical_and(mask, bright).sum()
        iou = inter / np.logical_or(mask, bright).sum()
        # the rasterised scaled boxes are where the resized image shows them, up to edge pixels
        assert iou > 0.97, (mode, iou)


# ----------------------------------------------------------------------------------------------
# Overlay, case selection, gallery


def test_overlay_blends_gray_and_jet():
    img = np.full((4, 4), 100, dtype=np.uint8)
    cam_map = np.zeros((4, 4), dtype=np.float32)
    cam_map[0, 0] = 1.0
    assert (overlay(img, cam_map, alpha=0.0) == 100).all()
    full = overlay(img, cam_map, alpha=1.0)
    assert full.shape == (4, 4, 3) and full.dtype == np.uint8
    assert full[1, 1].tolist() == [0, 0, 128]  # jet(0): dark blue
    assert full[0, 0].tolist() == [128, 0, 0]  # jet(1): dark red
    half = overlay(img, cam_map, alpha=0.5)
    assert half[1, 1].tolist() == [50, 50, 114]
    with pytest.raises(ValueError):
        overlay(img, cam_map[:2], alpha=0.5)


def test_select_cases_takes_the_most_confident_of_each_group():
    probs = np.array([0.9, 0.2, 0.7, 0.95, 0.1, 0.6, 0.3, 0.05])
    targets = np.array([1, 1, 0, 1, 0, 0, 1, 0])
    groups = select_cases(probs, targets, threshold=0.6, k=2)
    assert groups["tp"].tolist() == [3, 0]
    assert groups["fp"].tolist() == [2, 5]  # 0.6 >= threshold counts as positive
    assert groups["fn"].tolist() == [1, 6]
    assert groups["tn"].tolist() == [7, 4]
    assert select_cases(probs, targets, threshold=0.99, k=3)["tp"].tolist() == []


def _tiles(n: int, size: int = 48) -> list[Tile]:
    rng = np.random.default_rng(0)
    return [
        Tile(
            image=rng.integers(0, 255, (size, size), dtype=np.uint8),
            cam_map=rng.random((size, size)).astype(np.float32),
            boxes=np.array([[5.0, 6.0, 20.0, 12.0]]),
            caption=caption("0123456789abcdef", 0.5, 1),
        )
        for _ in range(n)
    ]


def test_gallery_png_has_the_layout_size(tmp_path):
    # 3 tiles, 2 per row: width 16 + 2 * (2 * 256 + 4 + 16), height 48 + 2 rows * (256 + 32 + 16)
    render_gallery(tmp_path / "g.png", "three", _tiles(3), alpha=0.4)
    with Image.open(tmp_path / "g.png") as im:
        assert im.size == (1080, 656) and im.mode in ("RGB", "RGBA")
        pixels = np.asarray(im.convert("RGB"))
    assert pixels.std() > 20  # images were drawn, not a blank page
    render_gallery(tmp_path / "empty.png", "none", [], alpha=0.4)
    with Image.open(tmp_path / "empty.png") as im:
        assert im.size == (1080, 352)
    assert caption("0123456789abcdef", 0.51234, 1) == "01234567  p=0.512  label 1"
    assert not list(tmp_path.glob("*.tmp"))


# ----------------------------------------------------------------------------------------------
# The stage


def _fake_pipeline(root: Path, n: int = 12, size: int = 64) -> tuple[nn.Module, np.ndarray]:
    """A random-init exported resnet18, a processed test split with boxes, its predictions."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
    targets = np.array([1, 0] * (n // 2))
    boxes = [
        json.dumps([[10.5, 12.0, 20.0, 16.0]] + ([[40.0, 30.0, 12.0, 20.0]] if i % 4 == 0 else []))
        if t
        else "[]"
        for i, t in enumerate(targets)
    ]
    boxes[2] = "[]"  # a positive without boxes is not scored
    ids = [f"{i:04d}abcd-0000-4000-8000-00000000000{i % 10}" for i in range(n)]
    (root / "data/processed").mkdir(parents=True)
    np.save(root / "data/processed/test.npy", images)
    pd.DataFrame({"patientId": ids, "target": targets, "boxes": boxes}).to_csv(
        root / "data/processed/test.csv", index=False
    )
    torch.manual_seed(5)
    net = build_network("resnet18", pretrained=False, weights_path=None, last_stride=2).eval()
    mean, std = 0.5, 0.25
    export_model(root / "data/model/model.pt", net, "resnet18", size, "pad", mean, std)
    probs = predict_proba(net, images, mean, std, batch_size=64)
    (root / "data/predictions").mkdir(parents=True)
    logit = np.log(probs) - np.log1p(-probs)
    pd.DataFrame({"patientId": ids, "target": targets, "prob": probs, "logit": logit}).to_csv(
        root / "data/predictions/test.csv", index=False
    )
    for name in ("data/processed/test.npy", "data/processed/test.csv", "data/predictions/test.csv"):
        shutil.copy(root / name, root / name.replace("test", "val"))  # val: the same rows
    threshold = float(np.median(probs))
    op = {"threshold": threshold, "target_sensitivity": 0.9, "method": "target_sensitivity"}
    (root / "data/operating_point.json").write_text(json.dumps(op))
    (root / "params.yaml").write_text(
        "cam:\n  method: gradcam\n  k: 3\n  alpha: 0.4\n  thresholds: [0.3, 0.5, 0.7]\n"
        "  pointing_tolerance: 0.05\n  stitch: 2\n  gates: [0.0, 0.5]\n  bootstrap: 200\n"
        "  seed: 0\n  batch_size: 4\n"
    )
    return net, probs


def _inputs(root: Path) -> CamInputs:
    return read_predicted_split(root / "data/processed", root / "data/predictions/test.csv", "test")


def test_analyse_scores_positives_with_boxes_and_is_deterministic(tmp_path):
    net, probs = _fake_pipeline(tmp_path)
    model = Exported(net, "resnet18", 64, "pad", 0.5, 0.25, "test", last_stride=2, provenance=None)
    test = _inputs(tmp_path)
    kinds = ("cam", "gradcam", "gradcam++", "baseline")
    tuning = Tuning({k: 0.5 for k in kinds}, {k: 0.0 for k in kinds}, {})
    tuning.table.update({k: {"threshold": 0.5, "val_iou": 0.0} for k in kinds})
    kwargs = dict(
        decision_threshold=0.5,
        method="cam",
        k=2,
        pointing_tolerance=0.05,
        batch_size=5,
        bootstrap=100,
        stitch=1,
    )
    a = analyse(model, test, tuning, seed=0, **kwargs)
    b = analyse(model, test, tuning, seed=0, **kwargs)
    assert a.metrics == b.metrics
    assert a.metrics["n_images"] == 5  # 6 positives, one without boxes
    assert set(a.maps) == {int(i) for g in a.groups.values() for i in g}
    for rows in a.groups.values():
        for i in rows:
            x = normalize(np.asarray(test.images[[i]]), 0.5, 0.25)
            single = compute_maps(net, "resnet18", x, "cam")[1][0]  # batch of 1: float rounding
            np.testing.assert_allclose(a.maps[int(i)], single, atol=1e-5)
    # the model's maps against themselves would correlate perfectly; random weights do not
    assert -1 <= a.metrics["sanity.random_corr"] < 0.99
    # the method table scores every method from the same passes; cam.* is the configured one
    assert set(a.metrics["methods"]) == {"cam", "gradcam", "gradcam++"}
    for key in ("pointing", "iou", "dice", "mass"):
        assert a.metrics["methods"]["cam"][key] == pytest.approx(a.metrics[f"cam.{key}"], abs=1e-6)
    assert a.metrics["methods"]["gradcam"] != a.metrics["methods"]["cam"]
    # gate 0: every mask is on, so the 5 scored rows keep their IoU and all the others score 0
    n = len(test.probs)
    assert a.metrics["n_gated_images"] == n > 5
    assert a.metrics["cam.miou_gated"] == pytest.approx(a.metrics["cam.iou"] * 5 / n, abs=1e-5)

    stale = CamInputs(
        test.images, test.patient_ids, test.targets, test.boxes, probs[::-1], test.logits
    )
    with pytest.raises(ValueError, match="stale"):
        analyse(model, stale, tuning, seed=0, **kwargs)


def test_stitched_maps_interleave_the_moved_grids_into_a_finer_one():
    torch.manual_seed(3)
    net = build_network("resnet18", last_stride=1, pretrained=False, weights_path=None).eval()
    x = torch.randn(2, 1, 64, 64)  # stride 16: a 4 x 4 grid
    probs0, maps0 = compute_maps(net, "resnet18", x, "cam")
    probs, maps = compute_maps(net, "resnet18", x, "cam", stitch=4)
    np.testing.assert_array_equal(probs, probs0)  # the unmoved image's probability
    assert stitch_offsets(64, 4, 4) == (6, 2, -2, -6)
    features, linear = split_network(net, "resnet18")
    grid = torch.zeros(2, 16, 16)
    # cell i of the image rolled by d sits at pixel 16 i + 7.5 - d: d = 6, 2, -2, -6 put the
    # four grids' cells at 4 q + 1.5, the centres of a 16 x 16 grid's 4 px cells
    for m, dy in enumerate((6, 2, -2, -6)):
        for n, dx in enumerate((6, 2, -2, -6)):
            with torch.no_grad():
                acts = features(torch.roll(x, (dy, dx), dims=(2, 3)))
            grid[:, m::4, n::4] = class_activation_maps(acts, linear.weight[0]).detach()
    expected = F.interpolate(normalize_maps(grid)[:, None], size=(64, 64), mode="bilinear")
    np.testing.assert_allclose(maps, expected[:, 0].clamp(0, 1).numpy(), atol=1e-5)
    assert maps.min() >= 0.0 and maps.max() <= 1.0
    assert not np.allclose(maps, maps0, atol=1e-3)  # the finer map is not the coarse one
    # every method comes from the same passes: each equals its own single-method call
    _, both = stitched_maps(net, "resnet18", x, ("cam", "gradcam++"), stitch=2)
    np.testing.assert_allclose(both["cam"], compute_maps(net, "resnet18", x, "cam", 2)[1])
    np.testing.assert_allclose(
        both["gradcam++"], compute_maps(net, "resnet18", x, "gradcam++", 2)[1]
    )
    # and the one-pass maps of the unmoved image come free beside them
    _, withone = stitched_maps(net, "resnet18", x, ("cam",), stitch=2, single=True)
    assert set(withone) == {"cam", "cam/single"}
    np.testing.assert_allclose(withone["cam/single"], maps0, atol=1e-6)


def test_stitch_offsets_refuse_what_does_not_divide_the_stride():
    assert stitch_offsets(96, 6, 1) == (0,)
    assert stitch_offsets(96, 6, 2) == (4, -4)
    assert stitch_offsets(64, 2, 4) == (12, 4, -4, -12)  # stride 32
    with pytest.raises(ValueError, match="cam.stitch 3"):
        stitch_offsets(96, 6, 3)
    with pytest.raises(ValueError, match="no whole stride"):
        stitch_offsets(100, 7, 2)


def test_gated_ious_follow_the_protocol():
    probs = np.array([0.9, 0.2, 0.8, 0.1])  # rows 0 and 1 have boxes; 2 and 3 none
    out = gated_ious(probs, [0, 1], np.array([0.6, 0.4]), [0.0, 0.5, 0.95])
    np.testing.assert_allclose(out[0], [0.6, 0.4, 0.0, 0.0])  # every mask on
    np.testing.assert_allclose(out[1], [0.6, 0.0, 0.0, 1.0])  # row 1 gated off, row 3 agrees
    np.testing.assert_allclose(out[2], [0.0, 0.0, 1.0, 1.0])  # every mask off


def test_map_thresholds_tuned_on_val_maximise_its_mean_iou(tmp_path):
    net, _ = _fake_pipeline(tmp_path)
    model = Exported(net, "resnet18", 64, "pad", 0.5, 0.25, "test", last_stride=2, provenance=None)
    val = read_predicted_split(
        tmp_path / "data/processed", tmp_path / "data/predictions/val.csv", "val"
    )
    candidates, gates = [0.2, 0.4, 0.6, 0.8], [0.0, 0.3, 0.6, 0.9]
    tuning = tune_on_val(model, val, candidates, gates, stitch=1, batch_size=3)
    rows = [i for i, t in enumerate(val.targets) if t and len(val.boxes[i])]
    x = normalize(np.asarray(val.images[rows]), 0.5, 0.25)
    gauss = gaussian_map(64)
    for kind in ("cam", "gradcam", "baseline"):
        per_row = (
            [gauss] * len(rows) if kind == "baseline" else compute_maps(net, "resnet18", x, kind)[1]
        )
        ious = np.array(
            [
                [iou_dice(m, val.boxes[i], t)[0] for t in candidates]
                for m, i in zip(per_row, rows, strict=True)
            ]
        )
        best = int(np.argmax(ious.mean(axis=0)))
        assert tuning.thresholds[kind] == candidates[best]
        assert tuning.table[kind]["val_iou"] == pytest.approx(ious.mean(axis=0).max())
        assert tuning.table[kind]["n_val_images"] == len(rows) == 5
        # the gate: the best full-split mIoU, written out by the protocol's rule
        miou = []
        for g in gates:
            per = []
            for i, p in enumerate(val.probs):
                box = i in rows
                iou = ious[rows.index(i), best] if box else 0.0
                per.append((iou if box else 0.0) if p >= g else (0.0 if box else 1.0))
            miou.append(np.mean(per))
        assert tuning.gates[kind] == gates[int(np.argmax(miou))]
        assert tuning.table[kind]["val_miou_gated"] == pytest.approx(max(miou))
    no_boxes = CamInputs(
        val.images, val.patient_ids, val.targets * 0, val.boxes, val.probs, val.logits
    )
    with pytest.raises(ValueError, match="no validation positive"):
        tune_on_val(model, no_boxes, candidates, gates, stitch=1, batch_size=3)


def test_decisions_are_on_the_calibrated_scale(tmp_path):
    _, probs = _fake_pipeline(tmp_path)
    test = _inputs(tmp_path)
    np.testing.assert_array_equal(test.decisions(), probs)  # before calibration: the file's
    hot = test.calibrated(2.0)
    np.testing.assert_allclose(hot.decisions(), 1 / (1 + np.exp(-test.logits / 2.0)), rtol=1e-12)
    np.testing.assert_array_equal(hot.probs, test.probs)  # the staleness check keeps the file's
    assert np.abs(hot.decisions() - 0.5).max() < np.abs(probs - 0.5).max()  # softened


def test_read_inputs_name_the_bad_file_and_row(tmp_path):
    _fake_pipeline(tmp_path)
    index = pd.read_csv(tmp_path / "data/processed/test.csv")
    index.loc[3, "boxes"] = "[[1, 2, 3]"
    index.to_csv(tmp_path / "data/processed/test.csv", index=False)
    with pytest.raises(ValueError, match=r"test\.csv row 5: boxes"):
        _inputs(tmp_path)
    preds = pd.read_csv(tmp_path / "data/predictions/test.csv")
    preds.iloc[::-1].to_csv(tmp_path / "data/predictions/test.csv", index=False)
    with pytest.raises(ValueError, match="same order"):
        _inputs(tmp_path)


def test_stage_end_to_end(tmp_path):
    _fake_pipeline(tmp_path)
    result = run_stage("cam.py", tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "from data/operating_point.json" in result.stdout
    metrics = json.loads((tmp_path / "data/detail/cam.json").read_text())
    headline = json.loads((tmp_path / "metrics/cam.json").read_text())
    assert set(headline) == {
        "cam.pointing",
        "cam.iou",
        "baseline.pointing",
        "baseline.iou",
        "sanity.random_corr",
    }
    assert all(headline[k] == metrics[k] for k in headline)
    assert metrics["method"] == "gradcam" and metrics["n_images"] == 5
    assert metrics["pointing_tolerance_px"] == pytest.approx(3.2)
    assert metrics["map_threshold"] in (0.3, 0.5, 0.7)
    assert metrics["baseline.map_threshold"] in (0.3, 0.5, 0.7)
    for prefix in ("cam", "baseline"):
        for key in ("pointing", "iou", "dice", "mass"):
            lo, mid, hi = (metrics[f"{prefix}.{key}{s}"] for s in ("_lo", "", "_hi"))
            assert 0 <= lo <= mid <= hi <= 1, (prefix, key)
    assert -1 <= metrics["sanity.random_corr"] <= 1
    for group in GROUPS:
        with Image.open(tmp_path / "plots/cam" / f"{group}.png") as im:
            assert im.size[0] == 1080 and im.size[1] in (352, 656)
    assert not list(tmp_path.rglob("*.tmp"))
