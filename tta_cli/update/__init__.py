"""Update rules: turn one gradient over θ into a parameter change."""

from tta_cli.update.rules import OptimizerRule, UpdateRule, make_optimizer_rule

__all__ = ["OptimizerRule", "UpdateRule", "make_optimizer_rule"]
