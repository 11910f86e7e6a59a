"""Training the classifier: the losses (losses), the LightningModule (module), checkpoints that
are complete or absent (checkpoints), the Trainer run with dvclive (fit) and what it leaves for
the train stage: metrics/train.json and the per-epoch curves (outputs).

The network itself and the exported model file are :mod:`pneumo.model`, which prediction loads
without importing Lightning.
"""
