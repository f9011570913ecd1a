"""Distillation: a small student for the edge, taught by a run's adapted model (UNI-KD and baselines)."""

from tta_cli.distill.recipes import RECIPES, Recipe
from tta_cli.distill.train import DistillConfig, DistillProgress, DistillReport, distill

__all__ = ["RECIPES", "DistillConfig", "DistillProgress", "DistillReport", "Recipe", "distill"]
