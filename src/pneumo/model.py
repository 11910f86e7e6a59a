"""Networks (1-channel stem, 1 logit), the exported model file, and batched inference."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torchvision import models

ARCHS = ("resnet18", "densenet121", "efficientnet_v2_s")
EXPORT_VERSION = 1

# torchvision's ImageNet weight files, as its hub cache names them
_WEIGHTS = {
    "resnet18": models.ResNet18_Weights.IMAGENET1K_V1,
    "densenet121": models.DenseNet121_Weights.IMAGENET1K_V1,
    "efficientnet_v2_s": models.EfficientNet_V2_S_Weights.IMAGENET1K_V1,
}


class WeightsNotFoundError(FileNotFoundError):
    """Pretrained weights were asked for but are not on this machine."""


def default_weights_path(arch: str) -> Path:
    """Where torchvision's hub cache keeps the ImageNet weights of ``arch``."""
    url = _WEIGHTS[arch].url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def build_network(
    arch: str = "resnet18", pretrained: bool = False, weights_path: str | Path | None = None
) -> nn.Module:
    """A torchvision classifier with a 1-channel first convolution and a single logit.

    With ``pretrained``, ImageNet weights are read from ``weights_path`` (default: torchvision's
    cache, never the network) and the first convolution's RGB kernels are summed into one channel,
    which keeps the response to a gray image (R = G = B) unchanged.
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")
    net = getattr(models, arch)(weights=None)
    if pretrained:
        path = Path(weights_path) if weights_path else default_weights_path(arch)
        if not path.is_file():
            raise WeightsNotFoundError(
                f"ImageNet weights for {arch} not found at {path}. This pipeline never downloads "
                f"them: on a machine with internet run `python -c \"import torchvision; "
                f"torchvision.models.{arch}(weights='DEFAULT')\"` and copy {path.name} to {path}, "
                f"or set train.weights_path to the file, or set train.pretrained: false."
            )
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    _adapt(net, arch)
    return net


def _adapt(net: nn.Module, arch: str) -> None:
    """Replace the 3-channel stem by a 1-channel one (summed kernels) and the head by 1 logit."""
    if arch == "resnet18":
        net.conv1 = _one_channel(net.conv1)
        net.fc = nn.Linear(net.fc.in_features, 1)
    elif arch == "densenet121":
        net.features.conv0 = _one_channel(net.features.conv0)
        net.classifier = nn.Linear(net.classifier.in_features, 1)
    else:  # efficientnet_v2_s
        net.features[0][0] = _one_channel(net.features[0][0])
        net.classifier[1] = nn.Linear(net.classifier[1].in_features, 1)


def _one_channel(conv: nn.Conv2d) -> nn.Conv2d:
    new = nn.Conv2d(
        1,
        conv.out_channels,
        kernel_size=conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        bias=conv.bias is not None,
    )
    with torch.no_grad():
        new.weight.copy_(conv.weight.sum(dim=1, keepdim=True))
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    return new


class _DenseFeatures(nn.Module):
    """DenseNet applies its final ReLU in forward(), not in .features: include it here."""

    def __init__(self, features: nn.Module):
        super().__init__()
        self.features = features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.features(x))


def split_network(net: nn.Module, arch: str) -> tuple[nn.Module, nn.Linear]:
    """The network as (features, linear): ``net(x) == linear(features(x).mean((2, 3)))``.

    ``features`` returns the last convolutional maps (B, C, h, w); CAM weights them with
    ``linear.weight``. Dropout before the head is an identity in eval mode.
    """
    if arch == "resnet18":
        feats = nn.Sequential(*(m for name, m in net.named_children() if name not in ("avgpool", "fc")))
        return feats, net.fc
    if arch == "densenet121":
        return _DenseFeatures(net.features), net.classifier
    if arch == "efficientnet_v2_s":
        return net.features, net.classifier[1]
    raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")


# ----------------------------------------------------------------------------------------------
# The exported model: everything prediction needs, loadable without Lightning.


@dataclass(frozen=True)
class Exported:
    """A loaded model file: the network in eval mode and what its inputs must look like."""

    net: nn.Module
    arch: str
    image_size: int
    resize_mode: str  # how preprocess brought images to a square: pad | crop | stretch
    mean: float
    std: float
    sha256: str  # identity of the file, reported by prediction


def export_model(
    path: str | Path,
    net: nn.Module,
    arch: str,
    image_size: int,
    resize_mode: str,
    mean: float,
    std: float,
) -> None:
    """Write weights and metadata as a plain dict (readable with ``weights_only=True``).

    Written to a temporary name and renamed, so an interrupted run never leaves a torn file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "version": EXPORT_VERSION,
        "arch": arch,
        "image_size": int(image_size),
        "resize_mode": str(resize_mode),
        "mean": float(mean),
        "std": float(std),
        "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_exported(path: str | Path, map_location: str = "cpu") -> Exported:
    """Load an exported model file; the network comes back in eval mode."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} not found (run `dvc repro train` or `dvc pull`)")
    payload = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(payload, dict) or payload.get("version") != EXPORT_VERSION:
        raise ValueError(f"{path} is not an exported model of version {EXPORT_VERSION}")
    net = build_network(payload["arch"], pretrained=False)
    net.load_state_dict(payload["state_dict"])
    net.eval()
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return Exported(
        net=net,
        arch=payload["arch"],
        image_size=payload["image_size"],
        resize_mode=payload["resize_mode"],
        mean=payload["mean"],
        std=payload["std"],
        sha256=digest,
    )


def normalize(images: np.ndarray | torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """uint8 images (B, S, S) -> float tensor (B, 1, S, S) standardised with the train stats."""
    x = torch.as_tensor(images)
    if x.dtype != torch.uint8:
        raise TypeError(f"expected uint8 images, got {x.dtype}")
    return ((x.float() / 255.0 - mean) / std).unsqueeze(1)


@torch.no_grad()
def predict_proba(
    net: nn.Module, images: np.ndarray, mean: float, std: float, batch_size: int = 64
) -> np.ndarray:
    """Probabilities (float64, shape (N,)) for uint8 images (N, S, S); memmaps are read in batches."""
    net.eval()
    out = np.empty(len(images), dtype=np.float64)
    for start in range(0, len(images), batch_size):
        batch = np.ascontiguousarray(images[start : start + batch_size])
        logits = net(normalize(batch, mean, std)).squeeze(1)
        out[start : start + len(batch)] = torch.sigmoid(logits.double()).numpy()
    return out
