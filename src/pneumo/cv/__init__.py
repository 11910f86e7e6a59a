"""Cross-validation (``cv.folds`` > 1): the fold assignment and each fold's data (``folds``),
each fold's training and predictions (``fold_run``), and the folds' summary with their
ensemble's test figures (``ensemble``)."""
