"""The Meta Gradient Generator of MGTTA: the learned optimiser, its update rule and its pre-training."""

from tta_cli.mgg.generator import Memory, MetaGradientGenerator
from tta_cli.mgg.rule import DEFAULT_STEP_SIZE, MGGRule, load_generator, read_metadata, rule_for_bundle, save_generator
from tta_cli.mgg.train import TrainProgress, TrainReport, train_mgg

__all__ = [
    "DEFAULT_STEP_SIZE",
    "MGGRule",
    "Memory",
    "MetaGradientGenerator",
    "TrainProgress",
    "TrainReport",
    "load_generator",
    "read_metadata",
    "rule_for_bundle",
    "save_generator",
    "train_mgg",
]
