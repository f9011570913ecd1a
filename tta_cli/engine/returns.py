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
    r       = the mean of the m since the last return, and n_r its sampling noise in d's units

Before a batch is predicted, when ``d(m_t, source) < d(m_t, r) − n_r``, θ and everything else
that adapts restart from the source's state and the batch is predicted by it. There is no
constant: both sides estimate a squared distance of one kind to two points, ``n_r`` taking off
what the few batches behind ``r`` add to the right side by chance (the source's point is
measured on thousands of images). A stream that stays in one shifted domain keeps its batches
closer to their own mean than to the source's; one at the source's own images returns on about
half of its batches, which costs nothing there.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from tta_cli.engine.params import NORM_LAYERS
from tta_cli.errors import UsageError
from tta_cli.models.typicality import Typicality, image_moments, shallow_layers


class _Reached(Exception):
    """Ends a forward at the first normalisation layer, whose input is all that is needed."""


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
                f"θ's return watches the input of the model's first BatchNorm or GroupNorm layer, but a "
                f"{type(first).__name__} before it adapts too; use the method without '+return'."
            )
        self.loc, self.weights = typicality.loc[0], typicality.weights(0)
        self.seen: torch.Tensor | None = None
        """The sum of the mean moments of the batches seen since the last return."""
        self.noise: torch.Tensor | None = None
        """The sum of their sampling variances (per coordinate, the images' variance over their count)."""
        self.count = 0

    def moments(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The batch's mean image moments at the first normalisation layer (a forward as far as
        it) and their sampling variance; ``None`` for a batch with none or with non-finite ones."""
        if len(images) == 0:
            return None
        found: list[torch.Tensor] = []

        def hook(layer: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            found.append(image_moments(inputs[0]))
            raise _Reached

        handle = self.layer.register_forward_pre_hook(hook)
        try:
            with torch.no_grad():
                self.model(images)
        except _Reached:
            pass
        finally:
            handle.remove()
        per_image = found[0]
        if not bool(per_image.isfinite().all()):
            return None
        noise = per_image.var(dim=0, correction=0) / len(per_image)
        return per_image.mean(dim=0), noise

    def fits_source(self, moments: tuple[torch.Tensor, torch.Tensor]) -> bool:
        """Whether a batch's moments lie closer to the source's than to those seen since the
        last return, beyond what chance adds to the latter."""
        if self.seen is None or self.noise is None:
            return False
        mean = moments[0]
        self.loc, self.weights = self.loc.to(mean), self.weights.to(mean)
        seen = self.seen.to(mean) / self.count
        to_source = ((mean - self.loc) * self.weights).square().mean()
        to_seen = ((mean - seen) * self.weights).square().mean()
        # The variance of a mean of ``count`` batch means, in the distance's units.
        chance = (self.noise.to(mean) / self.count**2 * self.weights.square()).mean()
        return bool(to_source < to_seen - chance)

    def record(self, moments: tuple[torch.Tensor, torch.Tensor]) -> None:
        """Add a batch to those seen since the last return."""
        mean, noise = moments
        if self.seen is None or self.noise is None:
            self.seen, self.noise, self.count = mean.clone(), noise.clone(), 1
        else:
            self.seen, self.noise = self.seen.to(mean) + mean, self.noise.to(noise) + noise
            self.count += 1

    def state_dict(self) -> dict[str, Any]:
        if self.seen is None or self.noise is None:
            return {}
        return {"seen": self.seen.clone(), "noise": self.noise.clone(), "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """What ``state_dict`` gave; an empty one (the state before the first batch) clears the record."""
        if not state:
            self.seen, self.noise, self.count = None, None, 0
            return
        # A snapshot's tensors arrive on the CPU; the next batch's moments bring them to its device.
        self.seen, self.noise, self.count = state["seen"].clone(), state["noise"].clone(), state["count"]
