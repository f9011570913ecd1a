"""θ's return to the source when the stream turns back towards the source's images.

Gradient steps tune θ to the images seen since it last left the source. When the stream moves
on to images more like the source's than like those (sensor noise gives way to a mild blur), θ
carries what it learned into a domain where the source does well and costs errors there: on the
suite's GroupNorm bundle the learned update ended 3.5-5.5 points above the source on mild blurs,
fog and contrast that followed the noises (docs/benchmarks.md, "The development suite"). The
"weighted" norm's ``return_on_fit`` answers the same question for statistics; this is its
counterpart for θ, asked of each image's low-level statistics at the first normalisation layer
(the bundle's typicality, ``tta_cli.models.typicality``), whose input θ does not change (θ is
the normalisation layers' affine parameters; ``SourceReturn`` refuses a model with one before
that layer):

    m_t     = the batch's mean over its images of (per channel: mean, log variance)
    d(u, v) = mean over the coordinates of ((u − v) / s)²,  s: their spread over clean images

Before a batch is predicted, when ``d(m_t, source) < d(m_t, mean of the m since the last
return)``, θ and everything else that adapts restart from the source's state and the batch is
predicted by it. There is no constant: both sides are distances of one kind to two points. A
stream that stays in one shifted domain keeps its batches closer to their own mean than to the
source's. In doubt, θ returns: the mean since the last return rests on a few batches, whose
noise adds to the right side (the source's point is measured on thousands of images), so a
stream of the source's own images returns on about three batches in four, which costs nothing
there. Taking that noise off the right side was tried: on the suite's GroupNorm bundle it left
θ adapted longer on mild shifts, 31 corruptions of 196 worse than the source instead of 23, at
the same mean error (39.01 against 39.03 %; docs/benchmarks.md, "The development suite").
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from tta_cli.engine.params import NORM_LAYERS
from tta_cli.errors import UsageError
from tta_cli.models.typicality import Typicality, input_moments, shallow_layers


class _Reached(Exception):
    """Ends a forward at the first normalisation layer, whose input is all that is needed."""


def _channels(layer: nn.Module) -> int:
    """The channels a normalisation layer normalises: two image moments each."""
    if isinstance(layer, nn.modules.batchnorm._BatchNorm):
        return layer.num_features
    if isinstance(layer, nn.GroupNorm):
        return layer.num_channels
    assert isinstance(layer, nn.LayerNorm), f"{type(layer).__name__} is not a layer shallow_layers gives"
    return layer.normalized_shape[0]


class SourceReturn:
    """Watches a model's first normalisation layer for batches that fit the source's images
    better than those seen since the last return.

    The record of those (``state_dict``) is part of the adapter's state: a rollback or a resumed
    run goes back to what θ had seen at that snapshot, a return starts it afresh."""

    def __init__(self, model: nn.Module, typicality: Typicality) -> None:
        self.model = model
        self.layer = shallow_layers(model)[0]
        first = next(layer for layer in model.modules() if isinstance(layer, NORM_LAYERS))
        if first is not self.layer:
            raise UsageError(
                f"θ's return watches the input of the model's first BatchNorm, GroupNorm or LayerNorm layer, but a "
                f"{type(first).__name__} before it adapts too; use the method without '+return'."
            )
        if len(typicality.loc) != len(shallow_layers(model)) or len(typicality.loc[0]) != 2 * _channels(self.layer):
            raise UsageError(
                "The bundle's typicality was measured at other layers than θ's return watches (a bundle prepared "
                "by an older tta-cli); add it again with 'python scripts/add_typicality.py BUNDLE CLEAN_FOLDER'."
            )
        self.loc, self.weights = typicality.loc[0], typicality.weights(0)
        self.seen: torch.Tensor | None = None
        """The sum of the mean moments of the batches seen since the last return."""
        self.count = 0

    def moments(self, images: torch.Tensor) -> torch.Tensor | None:
        """The batch's mean image moments at the first normalisation layer (a forward as far as
        it); ``None`` for a batch with none or with non-finite ones."""
        if len(images) == 0:
            return None
        found: list[torch.Tensor] = []

        def hook(layer: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            found.append(input_moments(layer, inputs[0]).mean(dim=0))
            raise _Reached

        handle = self.layer.register_forward_pre_hook(hook)
        try:
            with torch.no_grad():
                self.model(images)
        except _Reached:
            pass
        finally:
            handle.remove()
        return found[0] if bool(found[0].isfinite().all()) else None

    def fits_source(self, moments: torch.Tensor) -> bool:
        """Whether a batch's moments lie closer to the source's than to those seen since the last return."""
        if self.seen is None:
            return False
        self.loc, self.weights = self.loc.to(moments), self.weights.to(moments)
        to_source = ((moments - self.loc) * self.weights).square().mean()
        to_seen = ((moments - self.seen.to(moments) / self.count) * self.weights).square().mean()
        return bool(to_source < to_seen)

    def record(self, moments: torch.Tensor) -> None:
        """Add a batch to those seen since the last return."""
        if self.seen is None:
            self.seen, self.count = moments.clone(), 1
        else:
            self.seen, self.count = self.seen.to(moments) + moments, self.count + 1

    def state_dict(self) -> dict[str, Any]:
        return {} if self.seen is None else {"seen": self.seen.clone(), "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """What ``state_dict`` gave; an empty one (the state before the first batch) clears the record.
        A snapshot's tensors arrive on the CPU; the next batch's moments bring them to its device."""
        self.seen, self.count = (state["seen"].clone(), state["count"]) if state else (None, 0)
