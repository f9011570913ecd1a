"""Update rules: turn one gradient over θ into a parameter change."""

from tta_cli.update.rules import Closure, OptimizerRule, UpdateRule, make_optimizer_rule, make_update_rule
from tta_cli.update.sam import SharpnessAware

__all__ = ["Closure", "OptimizerRule", "SharpnessAware", "UpdateRule", "make_optimizer_rule", "make_update_rule"]
