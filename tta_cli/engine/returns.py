"""θ's return to the source when the stream turns back towards the source's images.

Gradient steps tune θ to the images seen since it last left the source. When the stream moves
on to images more like the source's than like those (sensor noise gives way to a mild blur), θ
carries what it learned into a domain where the source does well and costs errors there: on the
suite's GroupNorm bundle the learned update ended 3.5-5.5 points above the source on mild blurs,
fog and contrast that followed the noises (docs/benchmarks.md, "The development suite"). The
"weighted" norm's ``return_on_fit`` answers the same question for statistics; this is its
counterpart for θ, asked of each image's low-level statistics at the first normalisation layer
(the bundle's typicality, ``tta_cli.models.typicality``), whose input θ does not change (θ is
the normalisation layers' affine parameters, all at or after that layer):

    m_t     = the batch's mean over its images of (per channel: mean, log variance)
    d(u, v) = mean over the coordinates of ((u − v) / s)²,  s: their spread over clean images

Before a batch is predicted, when ``d(m_t, source) < d(m_t, mean of the m since the last
return)``, θ and everything else that adapts restart from the source's state and the batch is
predicted by it. There is no constant: both sides are distances of one kind to two points. A
stream that stays in one shifted domain keeps its batches closer to their own mean than to the
source's; one at the source's own images sends θ back often, which costs nothing there.
"""

from __future__ import annotations

import torch
from torch import nn

from tta_cli.models.typicality import Typicality, image_moments, shallow_layers


class _Reached(Exception):
    """Ends a forward at the first normalisation layer, whose input is all that is needed."""


class SourceReturn:
    """Watches a model's first normalisation layer for batches that fit the source's images
    better than those seen since the last return."""

    def __init__(self, model: nn.Module, typicality: Typicality) -> None:
        self.model = model
        self.layer = shallow_layers(model)[0]
        self.loc, self.scale = typicality.loc[0], typicality.scale[0]
        self.seen: torch.Tensor | None = None
        """The sum of the moments of the batches seen since the last return: a record of inputs,
        like the memory, not part of the adapter's state; a rollback leaves it as it is."""
        self.count = 0

    def moments(self, images: torch.Tensor) -> torch.Tensor:
        """The batch's mean image moments at the first normalisation layer: a forward as far as it."""
        found: list[torch.Tensor] = []

        def hook(layer: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            found.append(image_moments(inputs[0]).mean(dim=0))
            raise _Reached

        handle = self.layer.register_forward_pre_hook(hook)
        try:
            with torch.no_grad():
                self.model(images)
        except _Reached:
            pass
        finally:
            handle.remove()
        return found[0]

    def due(self, images: torch.Tensor) -> bool:
        """Whether the batch fits the source's images better than those seen since the last
        return; it then starts the record of those seen afresh."""
        moments = self.moments(images)
        seen = None if self.seen is None else self.seen / self.count
        returns = seen is not None and self._distance(moments, self.loc) < self._distance(moments, seen)
        if returns or self.seen is None:
            self.seen, self.count = moments.clone(), 1
        else:
            self.seen, self.count = self.seen + moments, self.count + 1
        return returns

    def _distance(self, moments: torch.Tensor, point: torch.Tensor) -> float:
        return float(((moments - point.to(moments)) / self.scale.to(moments)).square().mean())
