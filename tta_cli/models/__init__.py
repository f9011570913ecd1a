"""Models: the built-in zoo, architecture references, bundles and their feature statistics."""

from tta_cli.models.architectures import build_architecture
from tta_cli.models.bundle import Bundle, ModelSpec, load_bundle, trust_bundle
from tta_cli.models.features import record_features
from tta_cli.models.prepare import prepare_bundle

__all__ = [
    "Bundle",
    "ModelSpec",
    "build_architecture",
    "load_bundle",
    "prepare_bundle",
    "record_features",
    "trust_bundle",
]
