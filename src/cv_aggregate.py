"""Stage cv_aggregate@mean (cv.folds > 1): the folds' validation figures (mean and sd) and the
fold ensemble's test figures, metrics/cv.json (headline) and data/detail/cv.json (all), and the
ensemble's operating point for prediction (data/cv_operating_point.json)."""

from __future__ import annotations

from pneumo.atomic import write_json
from pneumo.cv.ensemble import aggregate, cv_headline, read_folds
from pneumo.layout import CV_OPERATING_POINT, DETAIL, METRICS_DIR, cv_fold_dir
from pneumo.params import kwargs_for, load_or_exit


def main() -> None:
    cv, params = load_or_exit("cv"), load_or_exit("evaluate")
    folds = read_folds([cv_fold_dir(f) for f in cv.fold_ids])
    detail = aggregate(folds, **kwargs_for(aggregate, params))
    write_json(DETAIL / "cv.json", detail)
    write_json(METRICS_DIR / "cv.json", cv_headline(detail))
    write_json(CV_OPERATING_POINT, detail["ensemble"]["operating_point"])
    val, test = detail["val"], detail["ensemble"]["test"]
    print(
        f"{cv.folds} folds: val AUROC {val['auroc']['mean']:.4f} +- {val['auroc']['sd']:.4f}; "
        f"ensemble test AUROC {test['auroc']} [{test['auroc_lo']}, {test['auroc_hi']}], ECE "
        f"{test['ece']}"
    )


if __name__ == "__main__":
    main()
