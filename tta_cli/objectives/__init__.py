"""Test-time objectives: ``(logits, features, batch) -> scalar loss`` without labels."""

from collections.abc import Callable

from tta_cli.objectives.alignment import FeatureAlignment
from tta_cli.objectives.base import Objective
from tta_cli.objectives.entropy import Entropy, entropy

# Each factory takes the model bundle, whose source statistics some objectives need.
OBJECTIVES: dict[str, Callable[..., Objective]] = {
    "entropy": lambda bundle: Entropy(),
    "alignment": lambda bundle: FeatureAlignment(bundle.source_stats),
}

__all__ = ["OBJECTIVES", "Entropy", "FeatureAlignment", "Objective", "entropy"]
