"""Class activation maps: computing them (maps), scoring them against boxes (localization),
tuning and the sanity checks (analysis), the stage's inputs (inputs) and the gallery (gallery)."""
