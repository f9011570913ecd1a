"""Update rules: turn one gradient over θ into a parameter change."""

from tta_cli.update.rules import (
    RESET_TO_SOURCE,
    Closure,
    OptimizerRule,
    UpdateRule,
    make_optimizer_rule,
    make_update_rule,
)
from tta_cli.update.sam import SharpnessAware

__all__ = [
    "RESET_TO_SOURCE",
    "Closure",
    "OptimizerRule",
    "SharpnessAware",
    "UpdateRule",
    "make_optimizer_rule",
    "make_update_rule",
]
