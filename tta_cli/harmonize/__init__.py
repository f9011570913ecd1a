"""Harmonizers: K per-objective gradients over θ in, one update direction and its weights out."""

from collections.abc import Callable

from tta_cli.errors import UsageError
from tta_cli.harmonize.amortized import Amortized
from tta_cli.harmonize.base import Harmonized, Harmonizer, Sum, conflict_diagnostics
from tta_cli.harmonize.gh import GH, GHPlusPlus
from tta_cli.harmonize.library import mgda, pcgrad, upgrad
from tta_cli.harmonize.samgs import SAMGS

HARMONIZERS: dict[str, Callable[[], Harmonizer]] = {
    "sum": Sum,
    "gh": GH,
    "gh++": GHPlusPlus,
    "sam-gs": SAMGS,
    "pcgrad": pcgrad,
    "upgrad": upgrad,
    "mgda": mgda,
}


def make_harmonizer(name: str) -> Harmonizer:
    if name not in HARMONIZERS:
        raise UsageError(f"Unknown harmonizer {name!r}; choose one of {', '.join(HARMONIZERS)}.")
    return HARMONIZERS[name]()


__all__ = [
    "GH",
    "HARMONIZERS",
    "SAMGS",
    "Amortized",
    "GHPlusPlus",
    "Harmonized",
    "Harmonizer",
    "Sum",
    "conflict_diagnostics",
    "make_harmonizer",
]
