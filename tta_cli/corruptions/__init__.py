"""Common image corruptions at five severities, after Hendrycks & Dietterich, "Benchmarking Neural
Network Robustness to Common Corruptions and Perturbations" (ICLR 2019).

``corrupt`` applies one corruption to one uint8 RGB image, with CIFAR-10-C's parameters for 32×32
images and ImageNet-C's otherwise; ``corrupt_folder`` writes a corrupted, reproducible copy of a
labeled image folder. ``CORRUPTIONS`` are the 15 benchmark corruptions; ``HELD_OUT`` the 4 kept for
tuning.
"""

from __future__ import annotations

from tta_cli.corruptions.benchmark import BEYOND, CORRUPTIONS, HELD_OUT, SEVERITIES, check_corruption, corrupt
from tta_cli.corruptions.folder import corrupt_folder, image_rng
from tta_cli.corruptions.parameters import CIFAR_PARAMETERS, IMAGENET_PARAMETERS, ParameterTable, parameter_table

__all__ = [
    "BEYOND",
    "CIFAR_PARAMETERS",
    "CORRUPTIONS",
    "HELD_OUT",
    "IMAGENET_PARAMETERS",
    "SEVERITIES",
    "ParameterTable",
    "check_corruption",
    "corrupt",
    "corrupt_folder",
    "image_rng",
    "parameter_table",
]
