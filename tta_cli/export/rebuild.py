"""Rebuild the model to export: the bundle's architecture and weights, a run's θ on top, and
BatchNorm running statistics that are the source's, re-estimated on target images, or those
the run tracked.

The exported graph must normalise with stored statistics: a graph that computed BatchNorm
statistics from each batch would make one image's prediction depend on the other images
that happen to share its batch.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from typing import Literal

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from tta_cli.errors import UsageError
from tta_cli.models import Bundle, build_architecture
from tta_cli.models.bundle import RECREATE, WEIGHTS_FILE, first_non_finite
from tta_cli.models.checkpoints import read_tensors

BnStats = Literal["source", "target", "tracked"]


def build_export_model(
    bundle: Bundle,
    state: Mapping[str, torch.Tensor] | None,
    bn_stats: BnStats,
    target_batches: Iterable[torch.Tensor] | None = None,
) -> nn.Module:
    """A fresh eval-mode copy of the bundle's model with ``state`` applied on top.

    ``state`` is a partial state dict (keys as in ``model.state_dict()``): the adapted affine
    parameters of the normalisation layers and the running statistics tracked during the run.
    ``bn_stats="source"`` keeps the bundle's own BatchNorm running statistics and ignores those
    in ``state``. ``bn_stats="target"`` re-estimates them on ``target_batches`` (normalised
    ``N×3×H×W`` tensors). ``bn_stats="tracked"`` uses the statistics ``state`` carries, and it
    is an error when it does not carry them for every BatchNorm layer: for a run that
    normalised with smoothed statistics (``SMOOTHED`` in ``tta_cli.engine.norms``) these are the
    smoothed statistics, and the model is the adapted one in eval mode.
    """
    model = load_source_model(bundle)
    require_running_statistics(model)
    model.load_state_dict(state_to_apply(model, state or {}, bn_stats), strict=False)
    if bn_stats == "target":
        reestimate_batchnorm_statistics(model, target_batches or [])
    model.eval()
    model.requires_grad_(False)
    return model


def load_source_model(bundle: Bundle) -> nn.Module:
    """The bundle's architecture with the weights from its file, not ``bundle.model``, which an
    adapter may have changed in place."""
    model = build_architecture(bundle.spec.architecture, bundle.spec.num_classes, bundle=bundle.path)
    try:
        model.load_state_dict(read_tensors(bundle.path / WEIGHTS_FILE, RECREATE))
    except RuntimeError as error:
        raise UsageError(f"The weights of bundle {bundle.path} no longer fit its architecture.") from error
    return model


def state_to_apply(model: nn.Module, state: Mapping[str, torch.Tensor], bn_stats: BnStats) -> dict[str, torch.Tensor]:
    """The part of ``state`` to load: all of it, less the BatchNorm statistics unless they are
    the ones to keep (``bn_stats="tracked"``)."""
    check_state_fits(model, state)
    statistics = batchnorm_statistic_keys(model)
    if bn_stats != "tracked":
        applied = {key: value for key, value in state.items() if key not in statistics}
    else:
        needed = {key for key in statistics if key.endswith(("running_mean", "running_var"))}
        if not needed <= state.keys():
            raise UsageError(
                "The adapted state holds no BatchNorm statistics for every layer; use --bn-stats source or target."
            )
        applied = dict(state)
    refuse_non_finite(applied)
    return applied


def refuse_non_finite(state: Mapping[str, torch.Tensor]) -> None:
    """A NaN or infinity in the state would make every exported prediction meaningless."""
    if (key := first_non_finite(state)) is not None:
        raise UsageError(
            f"The adapted state's {key!r} holds non-finite values; export another step (see 'tta-cli history')."
        )


def require_running_statistics(model: nn.Module) -> None:
    """Refuse BatchNorm layers that keep no running statistics: they would normalise every
    batch with its own statistics even in eval mode, and the export would bake that in."""
    for name, module in model.named_modules():
        if isinstance(module, _BatchNorm) and not module.track_running_stats:
            raise UsageError(
                f"BatchNorm layer {name!r} keeps no running statistics (track_running_stats=False), "
                "so an exported model would normalise each batch with its own statistics."
            )


def check_state_fits(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Every key of ``state`` must name a tensor of the model, with the same shape."""
    own = model.state_dict()
    unknown = sorted(set(state) - set(own))
    if unknown:
        raise UsageError(
            f"The adapted state has {len(unknown)} tensors the model does not have (first: {unknown[0]!r}); "
            "was it made with another bundle?"
        )
    for key, value in state.items():
        if value.shape != own[key].shape:
            raise UsageError(
                f"The adapted state's {key!r} has shape {tuple(value.shape)} but the model's has "
                f"{tuple(own[key].shape)}; was it made with another bundle?"
            )


def batchnorm_statistic_keys(model: nn.Module) -> set[str]:
    """State-dict keys of every BatchNorm buffer: running mean, variance and batch count."""
    return {
        f"{module_name}.{buffer_name}" if module_name else buffer_name
        for module_name, module in model.named_modules()
        if isinstance(module, _BatchNorm)
        for buffer_name, _ in module.named_buffers(recurse=False)
    }


@torch.no_grad()
def reestimate_batchnorm_statistics(model: nn.Module, target_batches: Iterable[torch.Tensor]) -> int:
    """Replace every BatchNorm layer's running mean and variance by their cumulative average
    over ``target_batches``, each batch weighing the same (``momentum=None``); returns the
    number of images seen. Only BatchNorm runs in train mode, and the model ends in eval mode.
    """
    layers = [module for module in model.modules() if isinstance(module, _BatchNorm)]
    momenta = [layer.momentum for layer in layers]
    device = model_device(model)
    model.eval()
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None
        layer.train()
    images = 0
    try:
        for batch in target_batches:
            model(batch.to(device))
            images += len(batch)
    finally:
        for layer, momentum in zip(layers, momenta, strict=True):
            layer.momentum = momentum
        model.eval()
    if images == 0:
        raise UsageError("Re-estimating BatchNorm statistics needs target images, but none were given.")
    return images


def model_device(model: nn.Module) -> torch.device:
    """Where the model's tensors live (the CPU for a model without any)."""
    tensor = next(itertools.chain(model.parameters(), model.buffers()), None)
    return tensor.device if tensor is not None else torch.device("cpu")
