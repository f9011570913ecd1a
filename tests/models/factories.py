"""Architectures given as ``package.module:factory``, for the tests."""

from torch import nn


def two_layer(num_classes: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, num_classes),
    )


def group_norm_net(num_classes: int) -> nn.Module:
    """No BatchNorm: only θ steps can adapt it."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3),
        nn.GroupNorm(2, 8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, num_classes),
    )


class ViewFlattenNet(nn.Module):
    """Flattens its feature map with ``view``, as much older model code does: in channels-last
    layout that map cannot be viewed so."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2)
        self.norm = nn.BatchNorm2d(4)
        self.head = nn.Linear(4 * 15 * 15, num_classes)

    def forward(self, x):  # type: ignore[no-untyped-def]
        x = self.norm(self.conv(x)).relu()
        return self.head(x.view(x.size(0), -1))
