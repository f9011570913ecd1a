"""Methods are presets: a named choice of the engine's parts and their hyper-parameters.

Adding a method is adding an entry here; the engine does not change.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tta_cli.errors import UsageError


@dataclass(frozen=True)
class Method:
    name: str
    summary: str
    batch_statistics: bool
    objectives: tuple[str, ...] = ()
    optimizer: str = "adam"
    lr: float = 1e-3
    harmonizer: str = "sum"
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def updates(self) -> bool:
        return bool(self.objectives)


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
        ),
    )
}


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise UsageError(f"Unknown method {name!r}; choose one of {', '.join(METHODS)}.")
    return METHODS[name]
