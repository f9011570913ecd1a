"""The interface every normalisation follows: how a model's BatchNorm layers normalise a test
batch, the state that takes, and whether the update may learn from the batch."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from tta_cli.config import WeightedNormConfig
from tta_cli.engine.norms.layers import LayerForward, batch_norm_layers, configure_layers
from tta_cli.events import Event
from tta_cli.models.typicality import Typicality


@dataclass
class Prediction:
    """The logits that predict a batch, and what the normalisation says about it."""

    logits: torch.Tensor
    events: list[Event] = field(default_factory=list)
    learn: bool = True
    """Whether the update may learn from the batch; false when the source's statistics predicted it."""
    why_not: str = ""
    """Why not, when a step that would update should say so."""
    source_logits: torch.Tensor | None = None
    """The batch as the source model predicts it, where the norm looked anyway."""


class Norm:
    """A model's BatchNorm layers as they normalise test batches.

    ``predict(forward, look_again)`` runs the predicting forward pass (``forward``) and may look
    at the batch once more (``look_again``, without recording features); the layers then hold
    in their running statistics what the eval-mode model should normalise with. The base class
    normalises with the statistics the subclass's layer ``forward`` gives and keeps no state.
    """

    name: ClassVar[str]
    layer_forward: ClassVar[LayerForward | None] = None
    """The forward swapped onto each layer in train mode; ``None``: BatchNorm's own."""
    train: ClassVar[bool] = True
    smoothed: ClassVar[bool] = True
    """Whether it normalises with running statistics, which snapshots and exports then hold."""
    revisit_restores: ClassVar[bool] = True
    """Whether a second look at a batch (SAM's) must start from the statistics before the
    batch; false when only the predicting forward moves them."""
    reference_reads_current: ClassVar[bool] = False
    """Whether the guard's reference normalises with the statistics that normalised the batch
    (in eval mode) rather than from those before it, as the adapted model did."""

    def __init__(self, model: nn.Module) -> None:
        self.layers = batch_norm_layers(model)
        self.source_statistics = [
            {name: buffer.detach().clone() for name, buffer in layer.named_buffers()} for layer in self.layers
        ]
        model.eval()
        configure_layers(model, type(self).layer_forward, self.train, self.name)

    @classmethod
    def create(
        cls, model: nn.Module, num_classes: int, weighted_norm: WeightedNormConfig, typicality: Typicality | None
    ) -> Norm:
        """The norm over ``model``, from what any norm may need to know."""
        return cls(model)

    def attach_reference(self, reference: nn.Module) -> None:
        """Configure the guard's reference, a copy of the source model: normalising as the
        model does, or in eval mode on what normalised the batch (``reference_reads_current``)."""
        reference.eval()
        if self.reference_reads_current:
            configure_layers(reference, None, train=False)
        else:
            configure_layers(reference, type(self).layer_forward, self.train, self.name)

    def predict(self, forward: Callable[[], torch.Tensor], look_again: Callable[[], torch.Tensor]) -> Prediction:
        return Prediction(forward())

    def source_logits(self, look_again: Callable[[], torch.Tensor]) -> torch.Tensor:
        """The batch as the source model predicts it: one more forward, in eval mode on the
        source's statistics; the layers are left as they were."""
        saved = [{name: buffer.clone() for name, buffer in layer.named_buffers()} for layer in self.layers]
        modes = [layer.training for layer in self.layers]
        try:
            with torch.no_grad():
                for layer, source in zip(self.layers, self.source_statistics, strict=True):
                    layer.train(False)
                    for name, buffer in layer.named_buffers():
                        buffer.copy_(source[name])
                return look_again().detach()
        finally:
            with torch.no_grad():
                for layer, values, mode in zip(self.layers, saved, modes, strict=True):
                    layer.train(mode)
                    for name, buffer in layer.named_buffers():
                        buffer.copy_(values[name])

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned; an empty dict starts afresh."""

    def close(self) -> None:
        """Undo what the norm did to the layers beyond their configuration."""
