"""Methods are presets: a named choice of the engine's parts and their hyper-parameters.

Adding a method is adding an entry here; the engine does not change.

The hyper-parameters are those of the CIFAR-10-C protocol (batch 200) as the public benchmark
code behind the published CIFAR-10-C numbers sets them (github.com/mariodoebler/
test-time-adaptation, ``cfgs/cifar10_c``); the papers' ImageNet settings differ and are noted
where they do.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from typing import Any, get_args

from tta_cli.config import HarmonizerName
from tta_cli.engine.norms import NORMS
from tta_cli.errors import UsageError
from tta_cli.models.bundle import MGG_FILE, MGG_NO_MEMORY_FILE


@dataclass(frozen=True)
class Method:
    name: str
    summary: str
    batch_statistics: bool
    objectives: tuple[str, ...] = ()
    optimizer: str = "adam"
    lr: float = 1e-3
    harmonizer: str = "sum"
    objective_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Keyword options per objective name, passed to its factory."""
    update: str = "step"
    """"step": the optimizer's step on the gradient; "sam": sharpness-aware (SAR); "mgg": the
    bundle's Meta Gradient Generator (``update_options["generator"]`` names its file)."""
    update_options: dict[str, Any] = field(default_factory=dict)
    norm: str = "batch"
    """With ``batch_statistics``: how BatchNorm normalises a test batch. "batch": the batch's own
    statistics; "robust": statistics smoothed across batches from the source's (RoTTA);
    "tbr": test-time batch renormalisation (DELTA); "balanced" and "weighted": robust BN whose
    rate follows the stream (``tta_cli.engine.norms``)."""
    memory: int = 0
    """Capacity of the class-balanced memory the update step learns from (0: the batch itself)."""
    guard: bool = False
    """Run with the guard even where runs default to the method's paper setting (bench)."""
    reset_every: int = 0
    """Return to the source state every N steps (RDumb); 0: never."""
    return_to_source: bool = False
    """Return to the source state when a batch's images fit the source's better than those seen
    since the last return (``tta_cli.engine.returns``; needs the bundle's typicality)."""
    harmonize_every: int = 1
    """Harmonize the per-loss gradients on one step in N and apply the weights found to the
    losses in between, by one backward pass (``tta_cli.harmonize.amortized``); 1: every step.
    ``+harmonizeN`` sets it."""

    @property
    def updates(self) -> bool:
        return bool(self.objectives)

    @property
    def carries_state(self) -> bool:
        """Whether what it predicts with depends on the batches before: gradient steps, or
        statistics smoothed over the stream (every norm but the batch's own)."""
        return self.updates or (self.batch_statistics and self.norm != "batch")


# Harmonizing on every other step: the second backward pass is what makes a harmonized step
# cost 1.4-1.5 × Tent's, and reusing the last weights in between changed the error by at most
# 0.06 points on the BatchNorm and GroupNorm bundles (docs/benchmarks.md, "What a step costs").
HARMONIZE_EVERY = 2

# MGTTA (Deng et al., AAAI 2025): the learned update rule on the harmonized gradient of
# entropy + alignment; α = 1e-3 as the public code's run script.
MGTTA = Method(
    "mgtta",
    "entropy + alignment, GH++-harmonized, applied by the pre-trained Meta Gradient Generator",
    batch_statistics=True,
    objectives=("entropy", "alignment"),
    lr=1e-3,
    harmonizer="gh++",
    update="mgg",
    update_options={"generator": MGG_FILE},
    harmonize_every=HARMONIZE_EVERY,
)

# EATA's sample selection and weighting, without its Fisher term: ETA.
ETA_OPTIONS = {"margin": 0.4, "redundancy_margin": 0.4, "weight_by_certainty": True}

METHODS: dict[str, Method] = {
    method.name: method
    for method in (
        Method("source", "no adaptation: the model as shipped", batch_statistics=False),
        Method("norm", "BatchNorm with test-batch statistics, no gradient step", batch_statistics=True),
        Method(
            "tent",
            "entropy minimisation on norm-layer affine parameters (Wang et al., ICLR 2021)",
            batch_statistics=True,
            objectives=("entropy",),
            optimizer="adam",
            lr=1e-3,
        ),
        Method(
            "harmonized",
            "entropy + feature alignment to the source, gradients harmonized (GH++ by default), Adam",
            batch_statistics=True,
            objectives=("entropy", "alignment"),
            optimizer="adam",
            lr=1e-3,
            harmonizer="gh++",
            harmonize_every=HARMONIZE_EVERY,
        ),
        MGTTA,
        # Its ablations ("harmonized" above is the third: harmonization without the MGG).
        replace(
            MGTTA,
            name="mgtta-sum",
            summary="MGTTA without harmonization: the MGG on the plain sum of the two gradients",
            harmonizer="sum",
        ),
        replace(
            MGTTA,
            name="mgtta-nomem",
            summary="MGTTA without the gradient memory: a plain per-coordinate MLP, pre-trained the same way",
            update_options={"generator": MGG_NO_MEMORY_FILE},
        ),
        # EATA's ImageNet defaults are ε = 0.05, λ = 2000, SGD lr 2.5e-4 momentum 0.9, batch 64.
        # ε must grow as C shrinks: two probability vectors over C classes are never orthogonal
        # in practice, and a one-hot vector's cosine with a balanced mean is 1/sqrt(C) (0.32 for
        # CIFAR-10), so ε = 0.05 would mark every CIFAR-10 sample redundant.
        Method(
            "eata",
            "reliable, non-redundant, weighted entropy plus a Fisher regulariser (Niu et al., ICML 2022)",
            batch_statistics=True,
            objectives=("reliable-entropy", "fisher"),
            optimizer="adam",
            lr=1e-3,
            objective_options={"reliable-entropy": ETA_OPTIONS, "fisher": {"weight": 1.0}},
        ),
        # SAR's ImageNet ResNet-50 setting is SGD lr 2.5e-4 at batch 64 and skips the last stage.
        Method(
            "sar",
            "reliable entropy, sharpness-aware step and collapse recovery (Niu et al., ICLR 2023)",
            batch_statistics=True,
            objectives=("reliable-entropy",),
            optimizer="sgd",
            lr=1e-3,
            objective_options={"reliable-entropy": {"margin": 0.4}},
            update="sam",
            update_options={"rho": 0.05, "reset_below": 0.2, "ema_momentum": 0.9},
        ),
        # RDumb (Press et al., NeurIPS 2023): ETA's loss, and back to the source every 1000 steps.
        Method(
            "rdumb",
            "reliable, non-redundant, weighted entropy (ETA), reset to the source every 1000 steps",
            batch_statistics=True,
            objectives=("reliable-entropy",),
            optimizer="adam",
            lr=1e-3,
            objective_options={"reliable-entropy": ETA_OPTIONS},
            reset_every=1000,
        ),
    )
}


DEFAULT_MEMORY = 64


AUTO_METHOD = "auto"
DEFAULT_METHOD = "norm+weighted"
"""What ``auto`` runs, chosen by measurement over shuffled, class-sorted, Dirichlet-correlated
and small-batch streams (docs/benchmarks.md, "Real streams" and "The development suite"): the
gradient steps of every method measured there, the Meta Gradient Generator's included, left mild
corruptions worse than the source on small or class-correlated batches, where the "weighted"
statistics alone did not."""
NO_BATCH_NORM_METHOD = "sar"
"""What ``auto`` runs for a model without BatchNorm (GroupNorm or LayerNorm only), whose
statistics cannot adapt, so that only steps on θ can, when the bundle has no pre-trained
generator for the learned update: SAR, the method published for such models (reliable entropy,
a sharpness-aware step, recovery from collapse), guarded. On the suite's GroupNorm bundle it had
the lowest error and the fewest corruptions worse than the source of tent, EATA and SAR
(docs/benchmarks.md, "A model without BatchNorm")."""
NO_BATCH_NORM_LEARNED_METHOD = "mgtta-nomem+return"
"""What ``auto`` runs for a model without BatchNorm whose bundle has the generator this method
needs (``mgg-no-memory.safetensors``), guarded: on the suite's GroupNorm bundle its error was the
lowest of all, SAR's included, on the suite's continual streams (shuffled and class-sorted) and
under continual on longer ones, with two more or two fewer corruptions worse than the source
than SAR, and so it was, unchanged, on the LayerNorm bundle that came after (docs/benchmarks.md,
"A model with LayerNorm only"); the generator with its memory, even with its learned pull back
to the source, ends above the source on short continual streams (docs/benchmarks.md, "A model
without BatchNorm" and "The learned update on BatchNorm and GroupNorm bundles"). θ returns to the source when the
images turn back towards the source's (``tta_cli.engine.returns``): without that, what θ learned
on the noises cost mild corruptions after them errors (docs/benchmarks.md, "The development
suite")."""


def get_method(name: str) -> Method:
    """A preset by name, with variants so that benchmarks can set them side by side:

    - ``NAME:HARMONIZER``: that preset with another harmonizer (methods with two objectives);
    - ``+batch``, ``+robust``, ``+tbr``, ``+balanced``, ``+weighted``: another normalisation of
      test batches (``tta_cli.engine.norms``);
    - ``+memory`` (or ``+memoryN``): learn from a class-balanced memory of N recent samples;
    - ``+guard``: with the guard on;
    - ``+resetN``: back to the source state every N steps;
    - ``+return``: back to the source state when the images turn back towards the source's;
    - ``+harmonizeN``: harmonize on one step in N, reusing the weights in between;
    - ``+alignW``: the feature alignment weighed by W instead of 0.4 (``+align1.6``);
    - ``+featuresDIGITS``: align only those of the bundle's feature layers, numbered from 1 in
      ``model.toml``'s order (``+features3``: the third; ``+features12``: the first two).

    For example ``mgtta+robust+memory+guard``, ``harmonized:gh+tbr`` or ``mgtta:gh+++guard``.
    """
    base, harmonizer, modifiers = _parts(name)
    if base not in METHODS:
        raise UsageError(f"Unknown method {base!r}; choose one of {', '.join(METHODS)}.")
    method = METHODS[base]
    if harmonizer:
        method = _with_harmonizer(method, harmonizer)
    for modifier in modifiers:
        method = _with_modifier(method, modifier)
    return replace(method, name=name) if name != base else method


def _parts(name: str) -> tuple[str, str, list[str]]:
    """``NAME[:HARMONIZER][+VARIANT...]`` split into its parts (the separator ``:`` second); the
    harmonizer is the longest known name at its place, so that ``gh++`` keeps its pluses."""
    base, colon, rest = name.partition(":")
    if not colon:
        base, *modifiers = name.split("+")
        return base, "", modifiers
    known = sorted(get_args(HarmonizerName), key=len, reverse=True)
    harmonizer = next((h for h in known if rest == h or rest.startswith(h + "+")), rest.split("+")[0])
    return base, harmonizer, rest[len(harmonizer) :].split("+")[1:]


def _with_modifier(method: Method, modifier: str) -> Method:
    if modifier in NORMS:
        return replace(method, batch_statistics=True, norm=modifier)
    if modifier == "guard":
        return replace(method, guard=True)
    if modifier == "return":
        if not method.updates:
            raise UsageError(f"Method {method.name!r} makes no update; there is no θ to return to the source.")
        return replace(method, return_to_source=True)
    if modifier.startswith("harmonize"):
        period = modifier.removeprefix("harmonize")
        if not re.fullmatch(r"[0-9]+", period) or int(period) < 1:
            raise UsageError(f"Method variant {modifier!r}: write harmonizeN with N ≥ 1 steps.")
        if len(method.objectives) < 2:
            raise UsageError(f"Method {method.name!r} has one objective; there is nothing to harmonize.")
        return replace(method, harmonize_every=int(period))
    if modifier.startswith("align"):
        return _with_alignment(method, modifier, weight=_alignment_weight(modifier))
    if modifier.startswith("features"):
        digits = modifier.removeprefix("features")
        if not re.fullmatch(r"[1-9]+", digits) or len(set(digits)) < len(digits):
            raise UsageError(
                f"Method variant {modifier!r}: write featuresDIGITS, layer numbers 1 to 9, each at most once."
            )
        return _with_alignment(method, modifier, layers=tuple(sorted(int(digit) - 1 for digit in digits)))
    if modifier.startswith("reset"):
        period = modifier.removeprefix("reset")
        if not re.fullmatch(r"[0-9]+", period) or int(period) < 1:
            raise UsageError(f"Method variant {modifier!r}: write resetN with N ≥ 1 steps.")
        return replace(method, reset_every=int(period))
    if modifier.startswith("memory"):
        capacity = modifier.removeprefix("memory") or str(DEFAULT_MEMORY)
        if not re.fullmatch(r"[0-9]+", capacity) or int(capacity) < 1:
            raise UsageError(f"Method variant {modifier!r}: write memory or memoryN with N ≥ 1.")
        if not method.updates:
            raise UsageError(f"Method {method.name!r} makes no update; a memory has nothing to feed.")
        return replace(method, memory=int(capacity))
    raise UsageError(
        f"Unknown method variant {modifier!r}; use one of {', '.join(NORMS)}, memory[N], resetN, harmonizeN, alignW, "
        "featuresDIGITS, return or guard."
    )


def _with_alignment(method: Method, modifier: str, **options: Any) -> Method:
    if "alignment" not in method.objectives:
        raise UsageError(f"Method {method.name!r} has no feature alignment for the variant {modifier!r} to change.")
    alignment = {**method.objective_options.get("alignment", {}), **options}
    return replace(method, objective_options={**method.objective_options, "alignment": alignment})


def _alignment_weight(modifier: str) -> float:
    text = modifier.removeprefix("align")
    try:
        value = float(text) if re.fullmatch(r"[0-9.eE-]+", text) else math.nan
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise UsageError(f"Method variant {modifier!r}: write alignW with a positive number W, e.g. align1.6.")
    return value


def _with_harmonizer(method: Method, harmonizer: str) -> Method:
    base = method.name
    if len(method.objectives) < 2:
        raise UsageError(f"Method {base!r} has one objective; there is nothing to harmonize.")
    from tta_cli.harmonize import HARMONIZERS

    if harmonizer not in HARMONIZERS:
        raise UsageError(f"Unknown harmonizer {harmonizer!r}; choose one of {', '.join(HARMONIZERS)}.")
    return replace(method, harmonizer=harmonizer)
