"""Test-time objectives: ``(logits, features, batch) -> scalar loss`` without labels."""

from collections.abc import Callable

from tta_cli.objectives.alignment import FeatureAlignment, of_layers
from tta_cli.objectives.base import Objective
from tta_cli.objectives.entropy import Entropy, entropy
from tta_cli.objectives.fisher import FisherInformation, FisherRegulariser, measure_fisher
from tta_cli.objectives.reliable import ReliableEntropy

# Each factory takes the model bundle (some objectives need its source statistics) and the
# method's options for that objective. A factory returns None when the bundle lacks what the
# objective needs (EATA's Fisher regulariser without source data); the method then runs without it.
OBJECTIVES: dict[str, Callable[..., Objective | None]] = {
    "entropy": lambda bundle: Entropy(),
    "alignment": lambda bundle, layers=None, **options: FeatureAlignment(
        bundle.source_stats if layers is None else of_layers(bundle.source_stats, layers), **options
    ),
    "reliable-entropy": lambda bundle, **options: ReliableEntropy(bundle.spec.num_classes, **options),
    "fisher": lambda bundle, weight: (
        FisherRegulariser(bundle.model, bundle.fisher, weight) if bundle.fisher is not None else None
    ),
}

__all__ = [
    "OBJECTIVES",
    "Entropy",
    "FeatureAlignment",
    "FisherInformation",
    "FisherRegulariser",
    "Objective",
    "ReliableEntropy",
    "entropy",
    "measure_fisher",
]
