"""Which parameters adapt (θ) and in which mode normalisation layers run."""

from __future__ import annotations

import torch
from torch import nn

from tta_cli.engine.norms import use_norm

NORM_LAYERS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm)


def norm_affine_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The affine weight and bias of every normalisation layer, in module order (Tent's θ)."""
    params = {}
    for module_name, module in model.named_modules():
        if isinstance(module, NORM_LAYERS):
            for name in ("weight", "bias"):
                param = getattr(module, name, None)
                if isinstance(param, nn.Parameter):
                    params[f"{module_name}.{name}"] = param
    return params


def norm_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    """Running statistics of every normalisation layer: the rest of the state that adapts."""
    return {
        f"{module_name}.{name}": buffer
        for module_name, module in model.named_modules()
        if isinstance(module, NORM_LAYERS)
        for name, buffer in module.named_buffers(recurse=False)
        if buffer is not None
    }


def configure_model(model: nn.Module, batch_statistics: bool, params: list[nn.Parameter], norm: str = "batch") -> None:
    """Eval mode everywhere, except BatchNorm in train mode when it must normalise test batches
    as ``norm`` says (``tta_cli.engine.norms``); gradients only for ``params``.

    With ``norm="batch"`` BatchNorm still tracks running statistics, which then follow the
    target stream; they are not used for the forward pass but are kept in snapshots and exports.
    """
    model.eval()
    model.requires_grad_(False)
    for param in params:
        param.requires_grad_(True)
    use_norm(model, norm if batch_statistics else None)
