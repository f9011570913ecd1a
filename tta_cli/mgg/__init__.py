"""The Meta Gradient Generator of MGTTA: the learned optimiser and its update rule. Its
pre-training (``tta_cli.mgg.train``: ``train_mgg``) is imported from there, so that the engine,
which uses the rule, does not load the trainer, which uses the engine."""

from tta_cli.mgg.generator import Memory, MetaGradientGenerator
from tta_cli.mgg.rule import DEFAULT_STEP_SIZE, MGGRule, load_generator, read_metadata, rule_for_bundle, save_generator

__all__ = [
    "DEFAULT_STEP_SIZE",
    "MGGRule",
    "Memory",
    "MetaGradientGenerator",
    "load_generator",
    "read_metadata",
    "rule_for_bundle",
    "save_generator",
]
