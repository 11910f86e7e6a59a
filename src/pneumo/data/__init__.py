"""Training data: the processed directory read as memory-mapped datasets (dataset), the epoch
sampler (sampler), batch augmentation on tensors (augment) and the LightningDataModule that puts
them together (datamodule)."""
