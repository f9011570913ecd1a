"""How BatchNorm normalises a test batch: with its own statistics, or with statistics that do
not trust one batch. One module per normalisation, all behind ``Norm`` (``base``).

On a stream sorted by class or by time a batch holds one or two classes, and its statistics
say more about those classes than about the domain; normalising with them alone can end far
worse than not adapting (DELTA, RoTTA). "robust" and "tbr" (``simple``) start from the source's
running statistics and move them slowly; "balanced" sets that pace from the class spread of
recent predictions; "weighted" from how much a batch says about the domain (``weighted``).
"""

from __future__ import annotations

from torch import nn

from tta_cli.config import WeightedNormConfig
from tta_cli.engine.norms.balanced import BalancedNorm, balanced_rate
from tta_cli.engine.norms.base import Norm, Prediction
from tta_cli.engine.norms.layers import configure_layers, robust_forward
from tta_cli.engine.norms.simple import BatchStatistics, RenormalisedNorm, RobustNorm, SourceNorm, tbr_forward
from tta_cli.engine.norms.weighted import WeightedNorm
from tta_cli.errors import UsageError
from tta_cli.models.typicality import Typicality

NORMS: dict[str, type[Norm]] = {
    norm.name: norm for norm in (BatchStatistics, RobustNorm, RenormalisedNorm, BalancedNorm, WeightedNorm)
}
"""What ``--norm`` and a method's ``+NORM`` variant choose from."""
SMOOTHED = tuple(name for name, norm in NORMS.items() if norm.smoothed)
"""The norms that normalise with their running statistics, not with the batch's alone."""


def make_norm(
    name: str | None,
    model: nn.Module,
    num_classes: int,
    weighted_norm: WeightedNormConfig | None = None,
    typicality: Typicality | None = None,
) -> Norm:
    """The normalisation ``name`` over ``model``'s layers; ``None``: eval mode, the source's
    statistics. ``typicality`` is the bundle's, where ``prepare`` measured it."""
    if name is not None and name not in NORMS:
        raise UsageError(f"Unknown normalisation {name!r}; choose one of {', '.join(NORMS)}.")
    norm = NORMS[name] if name is not None else SourceNorm
    return norm.create(model, num_classes, weighted_norm or WeightedNormConfig(), typicality)


def use_norm(model: nn.Module, name: str | None) -> None:
    """Configure ``model``'s BatchNorm layers as ``name`` does, without the state its object
    keeps: eval mode for ``None``, train mode with the norm's layer forward otherwise."""
    if name is not None and name not in NORMS:
        raise UsageError(f"Unknown normalisation {name!r}; choose one of {', '.join(NORMS)}.")
    norm = NORMS[name] if name is not None else SourceNorm
    configure_layers(model, norm.layer_forward, norm.train, norm.name)


__all__ = [
    "NORMS",
    "SMOOTHED",
    "BalancedNorm",
    "BatchStatistics",
    "Norm",
    "Prediction",
    "RenormalisedNorm",
    "RobustNorm",
    "SourceNorm",
    "WeightedNorm",
    "balanced_rate",
    "make_norm",
    "robust_forward",
    "tbr_forward",
    "use_norm",
]
