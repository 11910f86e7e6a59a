"""The model card's results sections: test performance, subgroups and the negatives by detailed
class, CAM localisation, the ONNX file's agreement with torch."""

from __future__ import annotations

from pneumo.card_format import CardInputs, decision_label, interval, num, table
from pneumo.headline import decision_keys

ATTRIBUTES = {"view": "view", "sex": "sex", "age": "age band"}
CAM_SCORES = {
    "pointing": "pointing game (hit rate)",
    "iou": "IoU with the boxes",
    "dice": "Dice with the boxes",
    "mass": "map mass inside the boxes",
}


def performance_section(inputs: CardInputs) -> str:
    """Threshold-free figures, each decision's, the operating point and the curves."""
    ev = inputs.evaluation
    val, test = ev["val"], ev["test"]
    free = [
        ["AUROC [95 % CI]", interval(test, "auroc"), interval(val, "auroc")],
        ["AUPRC", num(test["auprc"]), num(val["auprc"])],
        ["Brier score", num(test["brier"]), num(val["brier"])],
        ["ECE (calibration error)", num(test["ece"]), num(val["ece"])],
        ["log loss", num(test["logloss"]), num(val["logloss"])],
    ]
    # the probabilities above are calibrated (the temperature fitted on val); these before it
    t, v = test["uncalibrated"], val["uncalibrated"]
    free += [
        [f"{name}, before calibration", num(t[key]), num(v[key])]
        for key, name in (("brier", "Brier score"), ("ece", "ECE"), ("logloss", "log loss"))
    ]
    free.append(["temperature (fitted on val)", num(ev["calibration"]["temperature"]), ""])
    rows = []
    for key in decision_keys(test):
        b = test[key]
        rows.append(
            [
                decision_label(key, b),
                num(b["threshold"]),
                interval(b, "recall"),
                interval(b, "specificity"),
                num(b["precision"]),
                num(b["npv"]),
                str(b["tp"]),
                str(b["fp"]),
                str(b["tn"]),
                str(b["fn"]),
            ]
        )
    op = test["op"]
    figures = inputs.figures
    return "\n\n".join(
        [
            f"## Performance (test split: {test['n']} images, {test['positives']} positive)",
            table(["threshold-free", "test", "val"], free),
            table(
                [
                    "decision",
                    "threshold",
                    "sensitivity [95 % CI]",
                    "specificity [95 % CI]",
                    "PPV",
                    "NPV",
                    "TP",
                    "FP",
                    "TN",
                    "FN",
                ],
                rows,
            ),
            f"Operating point: threshold {interval(op, 'threshold')}, chosen on val for "
            f"sensitivity >= {num(op['target'], 2)} (the interval: the threshold re-chosen on "
            "bootstrap resamples of val). With that re-choice, test sensitivity is "
            f"{interval(op, 'recall', 'recall_rechosen_lo', 'recall_rechosen_hi')} and specificity "
            f"{interval(op, 'specificity', 'specificity_rechosen_lo', 'specificity_rechosen_hi')}.",
            f"![ROC curves of val and test]({figures['roc']}) "
            f"![Calibration of val and test]({figures['calibration']})",
        ]
    )


def subgroups_section(inputs: CardInputs) -> str:
    """Per view, sex and age band of test; the negatives' specificity per detailed class."""
    test = inputs.evaluation["test"]
    rows = []
    for attr, label in ATTRIBUTES.items():
        for level, g in test.get(attr, {}).items():
            rows.append(
                [
                    f"{label} {level}",
                    str(g["n"]),
                    str(g["positives"]),
                    num(g["auroc"]),
                    num(g["op"]["recall"]),
                    num(g["op"]["specificity"]),
                ]
            )
    keys = [k for k in decision_keys(test)]
    class_rows = [
        [
            f"{b['class']}",
            str(b["n"]),
            *(f"{num(b[k]['specificity'])} ({b[k]['fp']} FP)" for k in keys),
        ]
        for b in test.get("negatives_by_class", {}).values()
    ]
    return "\n\n".join(
        [
            "## Subgroups (test)",
            table(
                ["subgroup", "n", "positive", "AUROC", "sensitivity at op", "specificity at op"],
                rows,
            ),
            "### Specificity among the negatives, by RSNA detailed class",
            table(["class", "negatives", *(decision_label(k, test[k]) for k in keys)], class_rows),
        ]
    )


def _map_label(kind: str, stitch: int) -> str:
    """A method-table row's name: the method, and how its maps were made."""
    method, _, single = kind.partition("/")
    return (
        f"{method}, one pass" if single or stitch == 1 else f"{method}, {stitch} x {stitch} stitch"
    )


def localisation_section(inputs: CardInputs) -> str:
    """The CAM scores against the radiologists' boxes, the centred baseline's, the thumbnails."""
    c = inputs.cam
    rows = [
        [label, interval(c, f"cam.{key}"), interval(c, f"baseline.{key}")]
        for key, label in CAM_SCORES.items()
    ]
    rows.append(
        [
            f"mIoU over all {c['n_gated_images']} test images, gated by the probability",
            interval(c, "cam.miou_gated"),
            interval(c, "baseline.miou_gated"),
        ]
    )
    methods = [
        [
            _map_label(name, c["stitch"]) + (" (reported)" if name == c["method"] else ""),
            num(m["map_threshold"], 1),
            num(m["val_iou"]),
            *(num(m[key]) for key in CAM_SCORES),
        ]
        for name, m in c["methods"].items()
    ]
    thumbs = " ".join(
        f"![{name.removeprefix('cam_')} gallery]({path})"
        for name, path in inputs.figures.items()
        if name.startswith("cam_")
    )
    return "\n\n".join(
        [
            f"## Localisation ({c['method']} maps, {c['n_images']} positive test images with "
            "boxes)",
            table(["score [95 % CI]", "model", "centred-Gaussian baseline"], rows),
            f"Maps from a {c['stitch']} x {c['stitch']} shift-and-stitch, binarised at "
            f"{num(c['map_threshold'], 2)} of their maximum (the baseline at "
            f"{num(c['baseline.map_threshold'], 2)}) and gated at probability "
            f"{num(c['gate'], 2)} (the baseline {num(c['baseline.gate'], 2)}), each chosen on "
            "val; an empty mask where there is no box counts 1 in the gated mIoU; a hit is within "
            f"{num(c['pointing_tolerance_px'], 1)} px of a box. Sanity check: correlation with "
            f"the maps of the same network with random weights {num(c['sanity.random_corr'])} "
            "(near 1 would mean the maps ignore what was learnt).",
            "Every method from the same forward passes, each at its own val-tuned threshold "
            "(test scores on the same images):",
            table(["method", "threshold", "val IoU", *CAM_SCORES.values()], methods),
            "The two most confident true positives, false positives and false negatives at the "
            "operating point (the full gallery: `plots/cam/`):",
            thumbs,
        ]
    )


def export_section(inputs: CardInputs) -> str:
    """The ONNX file(s) against torch on the test split, and the out-of-distribution score."""
    rows = [
        [
            name,
            f"{m['max_abs_prob_diff']:.2g}",
            num(m["test_auroc"]) if "test_auroc" in m else "the same as above",
        ]
        for name, m in inputs.export.items()
    ]
    onnx = inputs.export["onnx"]
    return "\n\n".join(
        [
            "## Exported model (ONNX, for onnxruntime)",
            table(
                ["file", "largest difference from torch's test probabilities", "test AUROC"], rows
            ),
            "## Out-of-distribution score",
            f"Every prediction carries the Mahalanobis distance of its pooled features to the "
            f"training films (`pneumo.ood`), flagged above the `export.ood_quantile` of the "
            f"validation films' scores: {num(onnx['ood_test_flagged'])} of the test split is "
            "flagged, and "
            f"the score tells the test split from generated non-chest images (noise, "
            f"scenes) with AUROC {num(onnx['ood_auroc_generated'])}. A flagged answer "
            "is still given, marked unreliable. Real CT, MR, ultrasound and chest films are "
            "scored by `python bench/ood.py` (the README has its figures).",
        ]
    )
