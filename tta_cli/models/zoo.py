"""Built-in architectures: small CIFAR-sized classifiers, with BatchNorm unless named otherwise.

Every factory takes ``num_classes`` and returns an ``nn.Module`` whose ``feature_layers``
attribute names the sub-modules whose pooled outputs the feature-alignment objective uses.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

GROUPS = 16
"""Channels per group are width / 16 in the GroupNorm variants (4 to 16 here)."""


def norm_layer(kind: str, channels: int) -> nn.Module:
    """``batch``: BatchNorm; ``group``: GroupNorm; ``layer``: LayerNorm over each position's
    channels, as ConvNeXt normalises. The last two have no batch statistics to adapt."""
    kinds: dict[str, Callable[[], nn.Module]] = {
        "batch": lambda: nn.BatchNorm2d(channels),
        "group": lambda: nn.GroupNorm(GROUPS, channels),
        "layer": lambda: ChannelLayerNorm(channels),
    }
    if kind not in kinds:
        raise ValueError(f"Unknown norm {kind!r}; choose one of {', '.join(kinds)}.")
    return kinds[kind]()


class ChannelLayerNorm(nn.Module):
    """``nn.LayerNorm`` over the channels of each position of an ``N×C×H×W`` map: the map is
    turned channels-last for it (its input, as LayerNorm's always is, has the channels last)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvBlock(nn.Module):
    """Conv → max-pool → norm → GELU → conv → norm → GELU (the stage of ``airnet``)."""

    def __init__(self, in_channels: int, out_channels: int, norm: str = "batch") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding="same", bias=False)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = norm_layer(norm, out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding="same", bias=False)
        self.norm2 = norm_layer(norm, out_channels)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.norm1(self.pool(self.conv1(x))))
        return self.act(self.norm2(self.conv2(x)))


class AirNet(nn.Module):
    """A fast-training CIFAR network after Jordan, "94% on CIFAR-10 in 3.29 seconds on a
    single GPU" (arXiv 2404.00498): a 2×2 patch-whitening stem, three conv stages, a max-pooled
    linear head with a fixed output scale. ``channels``: 3 for RGB input, 1 for grayscale;
    ``norm``: ``batch``, ``group`` or ``layer`` (``norm_layer``).
    """

    feature_layers = ("block1", "block2", "block3")

    def __init__(
        self,
        num_classes: int = 10,
        widths: tuple[int, int, int] = (64, 256, 256),
        channels: int = 3,
        norm: str = "batch",
    ) -> None:
        super().__init__()
        # ± each eigenvector of the 2×2 patches' covariance (``tta_cli.training.source_model``).
        self.whiten = nn.Conv2d(channels, 8 * channels, kernel_size=2, padding=0, bias=True)
        self.stem_act = nn.GELU()
        self.block1 = ConvBlock(8 * channels, widths[0], norm)
        self.block2 = ConvBlock(widths[0], widths[1], norm)
        self.block3 = ConvBlock(widths[1], widths[2], norm)
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.head = nn.Linear(widths[2], num_classes, bias=False)
        self.logit_scale = 1 / 9

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem_act(self.whiten(x))
        x = self.block3(self.block2(self.block1(x)))
        return self.head(self.pool(x).flatten(1)) * self.logit_scale


class BasicBlock(nn.Module):
    """Pre-activation residual block (He et al. 2016), as used by WideResNet and ResNet."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, padding=1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(x))
        shortcut = x if isinstance(self.shortcut, nn.Identity) else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(self.relu(self.bn2(out)))
        return out + shortcut


class WideResNet(nn.Module):
    """WideResNet-d-k for 32×32 inputs (Zagoruyko & Komodakis 2016); ``depth = 6n + 4``."""

    feature_layers = ("stage1", "stage2", "stage3")

    def __init__(self, depth: int = 16, widen: int = 4, num_classes: int = 10) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n+4, got {depth}")
        blocks_per_stage = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv = nn.Conv2d(3, widths[0], 3, padding=1, bias=False)
        self.stage1 = _stage(widths[0], widths[1], blocks_per_stage, stride=1)
        self.stage2 = _stage(widths[1], widths[2], blocks_per_stage, stride=2)
        self.stage3 = _stage(widths[2], widths[3], blocks_per_stage, stride=2)
        self.bn = nn.BatchNorm2d(widths[3])
        self.relu = nn.ReLU(inplace=True)
        self.head = nn.Linear(widths[3], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage3(self.stage2(self.stage1(self.conv(x))))
        x = self.relu(self.bn(x))
        return self.head(x.mean(dim=(2, 3)))


def _stage(in_channels: int, out_channels: int, blocks: int, stride: int) -> nn.Sequential:
    layers = [BasicBlock(in_channels, out_channels, stride)]
    layers += [BasicBlock(out_channels, out_channels, 1) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


ZOO: dict[str, Callable[..., nn.Module]] = {
    "airnet": AirNet,
    "airnet_gn": lambda num_classes=10: AirNet(num_classes, norm="group"),
    "airnet_ln": lambda num_classes=10: AirNet(num_classes, norm="layer"),
    "airnet_gray": lambda num_classes=10: AirNet(num_classes, channels=1),
    "wrn16_4": lambda num_classes=10: WideResNet(16, 4, num_classes),
    "wrn28_10": lambda num_classes=10: WideResNet(28, 10, num_classes),
    # Pre-activation CIFAR ResNets (widths 16/32/64): 3 and 1 residual blocks per stage.
    "resnet20": lambda num_classes=10: WideResNet(22, 1, num_classes),
    "tiny_resnet": lambda num_classes=10: WideResNet(10, 1, num_classes),
}
