"""Networks (1-channel stem, 1 logit), the exported model file and batched inference.

Everything prediction needs, without Lightning: the training side (losses, the LightningModule,
checkpoints, the Trainer run) is :mod:`pneumo.training`.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pneumo.atomic import atomic_path
from pneumo.resnet import ResNet18

ARCHS = ("resnet18", "densenet121", "efficientnet_v2_s")
EXPORT_VERSION = 1

# torchvision's ImageNet weights (IMAGENET1K_V1), as its hub cache names the files; written out
# so that naming them needs no torchvision import (a test checks them against torchvision)
WEIGHT_URLS = {
    "resnet18": "https://download.pytorch.org/models/resnet18-f37072fd.pth",
    "densenet121": "https://download.pytorch.org/models/densenet121-a639ec97.pth",
    "efficientnet_v2_s": "https://download.pytorch.org/models/efficientnet_v2_s-dd5fe13b.pth",
}


class WeightsNotFoundError(FileNotFoundError):
    """Pretrained weights were asked for but are not on this machine."""


def default_weights_path(arch: str) -> Path:
    """Where torchvision's hub cache keeps the ImageNet weights of ``arch``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(WEIGHT_URLS[arch])


def build_network(
    arch: str, *, pretrained: bool, weights_path: str | Path | None, last_stride: int
) -> nn.Module:
    """A classifier of torchvision's architecture ``arch`` with a 1-channel first convolution and
    a single logit.

    ResNet18 is :class:`pneumo.resnet.ResNet18`, torchvision's network without its import cost.

    With ``pretrained``, ImageNet weights are read from ``weights_path`` (None: torchvision's
    cache, never the network) and the first convolution's RGB kernels are summed into one channel,
    which keeps the response to a gray image (R = G = B) unchanged.

    ``last_stride=1`` removes the downsampling of the last stage (output stride 16 instead of
    32): the same weights, twice the resolution of the final feature maps, so Class Activation
    Maps can point at a finding instead of at one of 4 x 4 cells of a small image. A common
    choice in weakly supervised localization; it costs about a quarter more compute.
    """
    if last_stride not in (1, 2):
        raise ValueError(f"last_stride must be 1 or 2, got {last_stride!r}")
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")
    if arch == "resnet18":
        net = ResNet18()
    else:
        from torchvision import models  # about a second to import: only for these archs

        net = getattr(models, arch)(weights=None)
    if pretrained:
        path = Path(weights_path) if weights_path else default_weights_path(arch)
        if not path.is_file():
            raise WeightsNotFoundError(
                f"ImageNet weights for {arch} not found at {path}. This pipeline never downloads "
                f'them: on a machine with internet run `python -c "import torchvision; '
                f"torchvision.models.{arch}(weights='DEFAULT')\"` and copy {path.name} to {path}, "
                f"or set train.weights_path to the file, or set train.pretrained: false."
            )
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    _adapt(net, arch)
    if last_stride == 1:
        for conv in _last_stage_strided(net, arch):
            conv.stride = (1, 1)
    return net


def _last_stage_strided(net: nn.Module, arch: str) -> list[nn.Module]:
    """The layers that downsample on entry to the last stage (convolutions, or DenseNet's pool)."""
    if arch == "resnet18":
        return [net.layer4[0].conv1, net.layer4[0].downsample[0]]
    if arch == "densenet121":
        return [net.features.transition3.pool]
    return [net.features[6][0].block[1][0]]  # efficientnet_v2_s: the depthwise conv


def last_stride_of(net: nn.Module, arch: str) -> int:
    """1 or 2: how the last stage of ``net`` was built (see :func:`build_network`)."""
    stride = _last_stage_strided(net, arch)[0].stride
    return int(stride[0] if isinstance(stride, tuple) else stride)


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
        kept = (m for name, m in net.named_children() if name not in ("avgpool", "fc"))
        feats = nn.Sequential(*kept)
        return feats, net.fc
    if arch == "densenet121":
        return _DenseFeatures(net.features), net.classifier
    if arch == "efficientnet_v2_s":
        return net.features, net.classifier[1]
    raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")


# ----------------------------------------------------------------------------------------------
# The exported model


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
    last_stride: int  # see build_network
    provenance: dict | None  # pneumo.provenance's dict; None in files from before it


def export_model(
    path: str | Path,
    net: nn.Module,
    arch: str,
    image_size: int,
    resize_mode: str,
    mean: float,
    std: float,
    provenance: Mapping[str, Any] | None = None,
) -> None:
    """Write weights and metadata as a plain dict (readable with ``weights_only=True``).

    ``provenance`` (see :mod:`pneumo.provenance`) holds only plain values, so the file stays
    loadable with ``weights_only=True`` and byte-identical for the same code, params and data.

    Written to a temporary name and renamed, so an interrupted run never leaves a torn file.
    """
    payload = {
        "version": EXPORT_VERSION,
        "arch": arch,
        "image_size": int(image_size),
        "resize_mode": str(resize_mode),
        "mean": float(mean),
        "std": float(std),
        "last_stride": last_stride_of(net, arch),
        "provenance": None if provenance is None else dict(provenance),
        "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
    }
    # through a file object: given a path, torch.save names the archive's root folder after the
    # (temporary, per-process) file name, and the same model would give different bytes
    with atomic_path(path) as tmp, tmp.open("wb") as f:
        torch.save(payload, f)


def load_exported(path: str | Path, map_location: str = "cpu") -> Exported:
    """Load an exported model file; the network comes back in eval mode."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"model file {path} not found (run `dvc repro train` or `dvc pull`)"
        )
    payload = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(payload, dict) or payload.get("version") != EXPORT_VERSION:
        raise ValueError(f"{path} is not an exported model of version {EXPORT_VERSION}")
    last_stride = int(payload.get("last_stride", 2))  # files from before train.last_stride
    net = build_network(
        payload["arch"], pretrained=False, weights_path=None, last_stride=last_stride
    )
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
        last_stride=last_stride,
        provenance=payload.get("provenance"),  # absent from files from before provenance
    )


def normalize(images: np.ndarray | torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """uint8 images (B, S, S) -> float tensor (B, 1, S, S) standardised with the train stats."""
    if isinstance(images, np.ndarray) and not images.flags.writeable:
        images = np.array(images)  # a read-only memmap slice: torch warns on sharing it
    x = torch.as_tensor(images)
    if x.dtype != torch.uint8:
        raise TypeError(f"expected uint8 images, got {x.dtype}")
    return ((x.float() / 255.0 - mean) / std).unsqueeze(1)


@torch.no_grad()
def predict_logits(
    net: nn.Module, images: np.ndarray, mean: float, std: float, batch_size: int
) -> np.ndarray:
    """Logits (float32, (N,)) for uint8 images (N, S, S); memmaps are read in batches."""
    net.eval()
    out = np.empty(len(images), dtype=np.float32)
    for start in range(0, len(images), batch_size):
        batch = np.ascontiguousarray(images[start : start + batch_size])
        out[start : start + len(batch)] = net(normalize(batch, mean, std)).squeeze(1).numpy()
    return out


def predict_proba(
    net: nn.Module, images: np.ndarray, mean: float, std: float, batch_size: int
) -> np.ndarray:
    """Probabilities (float64, (N,)) for uint8 images (N, S, S): sigmoid of the logits in
    float64, as torch computes it (uncalibrated: ``pneumo.calibration``)."""
    return probabilities(predict_logits(net, images, mean, std, batch_size))


def probabilities(logits: np.ndarray) -> np.ndarray:
    """float64 sigmoid of float32 logits, in torch: the infer stage's probabilities, the bytes
    they were before logits were stored beside them."""
    return torch.sigmoid(torch.from_numpy(np.asarray(logits, dtype=np.float32)).double()).numpy()
