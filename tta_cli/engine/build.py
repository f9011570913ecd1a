"""From a bundle and a method to an adapter: the one way ``adapt``, ``bench``, ``export`` and a
user's own loop get one."""

from __future__ import annotations

import copy

import torch
from torch import nn

from tta_cli.config import AdaptConfig, GuardConfig, WeightedNormConfig
from tta_cli.engine.adapter import Adapter
from tta_cli.engine.domains import DomainClusters
from tta_cli.engine.guard import Guard
from tta_cli.engine.methods import (
    AUTO_METHOD,
    DEFAULT_METHOD,
    NO_BATCH_NORM_LEARNED_METHOD,
    NO_BATCH_NORM_METHOD,
    Method,
    get_method,
)
from tta_cli.engine.norms import make_norm
from tta_cli.engine.norms.layers import batch_norm_layers
from tta_cli.engine.returns import SourceReturn
from tta_cli.errors import UsageError
from tta_cli.harmonize import Amortized, Harmonizer, make_harmonizer
from tta_cli.mgg.rule import generator_file, rule_for_bundle
from tta_cli.models import Bundle
from tta_cli.objectives import OBJECTIVES
from tta_cli.update import UpdateRule, make_update_rule


def resolve_method(name: str, norm: str | None = None, default: str = DEFAULT_METHOD) -> Method:
    """The method ``name`` (``auto``: ``default``, what ``default_method`` chose for the bundle),
    with ``norm``, when given, as its normalisation of test batches."""
    if name == AUTO_METHOD:
        name = default
    return get_method(name if norm is None else f"{name}+{norm}")


def default_method(bundle: Bundle) -> str:
    """What ``auto`` runs on the bundle, chosen by measurement: ``DEFAULT_METHOD`` on a model with
    BatchNorm; without, ``NO_BATCH_NORM_LEARNED_METHOD`` where the bundle has the generator it
    needs (without θ's return where it has no typicality), else ``NO_BATCH_NORM_METHOD``."""
    if has_batch_norm(bundle):
        return DEFAULT_METHOD
    learned = get_method(NO_BATCH_NORM_LEARNED_METHOD)
    if not (bundle.path / learned.update_options["generator"]).is_file():
        return NO_BATCH_NORM_METHOD
    # A bundle prepared before the typicality was measured cannot tell when to return θ.
    return learned.name if bundle.typicality is not None else learned.name.removesuffix("+return")


def has_batch_norm(bundle: Bundle) -> bool:
    return bool(batch_norm_layers(bundle.model))


def build_adapter(
    bundle: Bundle,
    method: Method,
    device: torch.device,
    *,
    guard: GuardConfig | None = None,
    optimizer: str | None = None,
    lr: float | None = None,
    harmonizer: str | None = None,
    weighted_norm: WeightedNormConfig | None = None,
    domain_weighting: bool = False,
) -> Adapter:
    """An adapter over the bundle's model on ``device``, as ``method`` chooses its parts;
    ``optimizer``, ``lr`` and ``harmonizer`` replace the method's own when given, the guard
    runs as ``guard`` says (default on), and ``domain_weighting`` weighs each input of the
    objectives by its cluster (``tta_cli.engine.domains``)."""
    if domain_weighting and not method.updates:
        raise UsageError(
            f"--domain-weighting weighs the inputs of a method's objectives; {method.name} takes no gradient steps."
        )
    model = bundle.on(device)
    guard_config = _guard_for(method, guard or GuardConfig())
    guard_ = Guard(guard_config, bundle.spec.num_classes, compare_with_source=not method.updates)
    # The harm signal's reference: a copy of the source model, before the norm configures it.
    reference = copy.deepcopy(model).requires_grad_(False) if guard_.watches_harm and method.updates else None
    norm_name = method.norm if method.batch_statistics else None
    norm = make_norm(norm_name, model, bundle.spec.num_classes, weighted_norm, bundle.typicality)
    if reference is not None:
        norm.attach_reference(reference)
    built = (OBJECTIVES[name](bundle, **method.objective_options.get(name, {})) for name in method.objectives)
    objectives = [objective for objective in built if objective is not None]
    adapter = Adapter(
        model,
        method,
        norm,
        objectives,
        None,
        bundle.spec.feature_layers,
        guard_,
        _harmonizer(harmonizer or method.harmonizer, method.harmonize_every),
        reference=reference,
        domains=DomainClusters() if domain_weighting else None,
        source_return=_source_return(bundle, method, model),
    )
    adapter.update_rule = _update_rule(bundle, method, adapter.params, optimizer, lr)
    return adapter


def check_fits(bundle: Bundle, method: Method) -> None:
    """Refuse, before any work, what ``build_adapter`` would refuse about this bundle: an objective
    it cannot serve (feature layers it lacks), θ's return without its typicality, a generator it
    does not ship. A benchmark runs its methods one after another over long streams."""
    for name in method.objectives:
        OBJECTIVES[name](bundle, **method.objective_options.get(name, {}))
    _check_return(bundle, method)
    if method.updates and method.update == "mgg":
        generator_file(bundle, method.update_options["generator"])


def _source_return(bundle: Bundle, method: Method, model: nn.Module) -> SourceReturn | None:
    if not method.return_to_source:
        return None
    _check_return(bundle, method)
    assert bundle.typicality is not None
    return SourceReturn(model, bundle.typicality)


def _check_return(bundle: Bundle, method: Method) -> None:
    if method.return_to_source and bundle.typicality is None:
        raise UsageError(
            f"Method {method.name!r} returns θ to the source by the typicality of the source's images, which "
            f"the bundle at {bundle.path} does not hold; re-create it with 'tta-cli prepare'."
        )


def adapter_for(bundle: Bundle, config: AdaptConfig, device: torch.device) -> Adapter:
    """The adapter an ``AdaptConfig`` describes."""
    return build_adapter(
        bundle,
        resolve_method(config.method, config.norm, default_method(bundle)),
        device,
        guard=config.guard,
        optimizer=config.optimizer,
        lr=config.lr,
        harmonizer=config.harmonizer,
        weighted_norm=config.weighted_norm,
        domain_weighting=config.domain_weighting,
    )


def _harmonizer(name: str, every: int) -> Harmonizer:
    harmonizer = make_harmonizer(name)
    return harmonizer if every == 1 else Amortized(harmonizer, every)


def _guard_for(method: Method, config: GuardConfig) -> GuardConfig:
    # Only a state that updates itself can drift; for the others the guard just watches.
    config = config.model_copy(update={"enabled": config.enabled and method.carries_state})
    if not method.updates:
        # Without gradient steps, low entropy is no sign of collapse, and one class is one only
        # where the source's predictions of the same inputs are spread (``Guard.compare_with_source``).
        config = config.model_copy(update={"entropy_ema_min": 0.0})
    return config


def _update_rule(
    bundle: Bundle, method: Method, params: list[torch.nn.Parameter], optimizer: str | None, lr: float | None
) -> UpdateRule | None:
    if not method.updates:
        return None
    if method.update == "mgg":
        # α is the one the generator was pre-trained for unless the user gives one.
        return rule_for_bundle(bundle, params, method.update_options["generator"], lr)
    return make_update_rule(
        method.update, optimizer or method.optimizer, params, lr or method.lr, method.update_options
    )
