"""The Meta Gradient Generator, MGG (Deng et al., "Learning to Generate Gradients for Test-Time
Adaptation via Test-Time Training Layers", AAAI 2025, arXiv 2412.16901, Sec. 3).

A tiny network applied to every coordinate of θ with shared weights. Each coordinate feeds it
two Adam-normalised features per step and owns a memory: the weight ``W`` (8×8) and bias ``b``
(8) of a TTT-Linear layer (Sun et al. 2024, "Learning to (Learn at Test Time): RNNs with
Expressive Hidden States", arXiv 2407.04620) that one inner gradient step per adaptation step
updates and that is carried to the next step. The sequence dimension is time: the memory holds
what the generator has seen of that coordinate's gradient history.

Everything is batched over the D coordinates: features ``(D, 2)``, memory ``(D, 8, 8)`` and
``(D, 8)``; there is no loop over parameters.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

INPUT_FEATURES = 2
HIDDEN = 8
LN_EPS = 1e-6


class Memory(NamedTuple):
    """Per-coordinate state of the gradient memory layer: the inner linear model ``Z = K·W + b``."""

    weight: torch.Tensor  # (D, hidden, hidden)
    bias: torch.Tensor  # (D, hidden)

    def detach(self) -> Memory:
        return Memory(self.weight.detach(), self.bias.detach())


def standardise(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x̂ = (x − μ)/σ`` over the last dimension (population variance, ε = 1e-6) and ``1/σ``.

    >>> normalised, inverse_std = standardise(torch.tensor([[1.0, 3.0]]))
    >>> [round(value, 4) for value in normalised[0].tolist()], round(inverse_std.item(), 4)
    ([-1.0, 1.0], 1.0)
    """
    inverse_std = (values.var(dim=-1, keepdim=True, correction=0) + LN_EPS).rsqrt()
    return (values - values.mean(dim=-1, keepdim=True)) * inverse_std, inverse_std


def reconstruction_gradient(
    prediction: torch.Tensor, target: torch.Tensor, gain: torch.Tensor, shift: torch.Tensor
) -> torch.Tensor:
    """``∂/∂Z ½‖LN(Z) − target‖²`` in closed form, one row per coordinate (TTT, arXiv 2407.04620,
    eq. 2 with the LayerNorm of its Sec. 2.7; the ½ is that paper's convention).

    With ``x̂ = (Z − μ)/σ`` and ``u = γ ⊙ (γ ⊙ x̂ + β − target)``, the LayerNorm backward is
    ``(u − mean(u) − x̂ · mean(u ⊙ x̂)) / σ``. Closed form rather than autograd: a handful of
    batched elementwise ops over all coordinates, and still differentiable for pre-training.
    ``tests/mgg`` checks it against autograd.
    """
    normalised, inverse_std = standardise(prediction)
    upstream = gain * (gain * normalised + shift - target)
    centred = upstream - upstream.mean(dim=-1, keepdim=True)
    return (centred - normalised * (upstream * normalised).mean(dim=-1, keepdim=True)) * inverse_std


class GradientMemory(nn.Module):
    """The gradient memory layer: TTT-Linear, one head, mini-batch of one token (MGTTA Sec. 3.2).

    For the token ``X`` of one coordinate: ``K, V, Q = X·Wk, X·Wv, X·Wq``; inner loss
    ``½‖LN(K·W + b) − (V − K)‖²``; one inner gradient step with step size
    ``η = relu(1 + s) · sigmoid(X·w_lr + b_lr) / hidden`` (``s`` the learned scale, 0 at
    start, as TTT's learnable token index); output ``Q + LN(Q·W' + b')`` with the updated
    ``W', b'``, which become the memory for the next step. ``W0, b0`` are the learned memory a
    coordinate starts from.
    """

    def __init__(self, hidden: int = HIDDEN) -> None:
        super().__init__()
        self.hidden = hidden
        self.query = nn.Linear(INPUT_FEATURES, hidden, bias=False)
        self.key = nn.Linear(INPUT_FEATURES, hidden, bias=False)
        self.value = nn.Linear(INPUT_FEATURES, hidden, bias=False)
        self.step_gate = nn.Linear(INPUT_FEATURES, 1)
        self.step_scale = nn.Parameter(torch.zeros(1))
        self.inner_gain = nn.Parameter(torch.ones(hidden))
        self.inner_shift = nn.Parameter(torch.zeros(hidden))
        self.initial_weight = nn.Parameter(torch.randn(hidden, hidden) * 0.02)
        self.initial_bias = nn.Parameter(torch.zeros(hidden))
        # TTT initialises the step-size gate at N(0, 0.02) with a zero bias: η starts near 1/(2·hidden).
        nn.init.normal_(self.step_gate.weight, std=0.02)
        nn.init.zeros_(self.step_gate.bias)

    def initial_memory(self, count: int) -> Memory:
        """``W0, b0`` for ``count`` coordinates; still in the graph, so pre-training learns them."""
        return Memory(
            self.initial_weight.expand(count, self.hidden, self.hidden),
            self.initial_bias.expand(count, self.hidden),
        )

    def step_size(self, tokens: torch.Tensor) -> torch.Tensor:
        """``η`` per coordinate, shape ``(D, 1)``."""
        return torch.relu(1 + self.step_scale) * torch.sigmoid(self.step_gate(tokens)) / self.hidden

    def forward(self, tokens: torch.Tensor, memory: Memory) -> tuple[torch.Tensor, Memory]:
        keys, values, queries = self.key(tokens), self.value(tokens), self.query(tokens)
        # Inner model on the keys: Z = K·W + b, one (1×8)·(8×8) product per coordinate.
        prediction = torch.bmm(keys.unsqueeze(1), memory.weight).squeeze(1) + memory.bias
        gradient = reconstruction_gradient(prediction, values - keys, self.inner_gain, self.inner_shift)
        eta = self.step_size(tokens)
        # ∂ℓ/∂W = Kᵀ·∂ℓ/∂Z (an outer product per coordinate), ∂ℓ/∂b = ∂ℓ/∂Z.
        weight = memory.weight - eta.unsqueeze(-1) * keys.unsqueeze(-1) * gradient.unsqueeze(1)
        bias = memory.bias - eta * gradient
        read = torch.bmm(queries.unsqueeze(1), weight).squeeze(1) + bias
        normalised, _ = standardise(read)
        return queries + self.inner_gain * normalised + self.inner_shift, Memory(weight, bias)


class MetaGradientGenerator(nn.Module):
    """``(D, 2)`` features → ``(D,)`` update directions in (−1, 1), plus the carried memory.

    Architecture (MGTTA, arXiv 2412.16901, Fig. 2; hidden size 8, one head): gradient memory
    layer → LayerNorm(8) → Linear(8→1, no bias) → tanh. The update rule then applies
    ``θ ← θ − α · MGG(ĝ, m̂)``.

    Trainable parameters, 164 in all, as in the public code's configuration:
    Q, K, V projections 3·(2·8) = 48; step-size gate 2 + 1 = 3; step scale 1; inner LayerNorm
    8 + 8 = 16; initial memory W0, b0 64 + 8 = 72; output LayerNorm 16; output Linear 8.

    ``memory=False`` is the ablation without memory: a plain per-coordinate MLP of the same
    size, Linear(2→12) → GELU → Linear(12→8) → LayerNorm(8) → Linear(8→1) → tanh
    (36 + 104 + 16 + 8 = 164 parameters); it carries no state.

    ``anchored=True`` adds one learned scalar, the pull ``ρ ≥ 0`` of θ back towards the source
    that the update rule applies (``MGGRule.step``). It starts at 0, the paper's rule, and
    pre-training moves it as far as the meta-loss asks.

    ``scaled=True`` adds another, ``s``: every output is multiplied by ``e^s``, so that the bound
    on a step, ``α·e^s`` per coordinate, is the meta-loss's choice too and not α's alone. It
    starts at 0 (a factor of 1).

    >>> MetaGradientGenerator().parameter_count(), MetaGradientGenerator(memory=False).parameter_count()
    (164, 164)

    >>> MetaGradientGenerator(anchored=True).parameter_count(), MetaGradientGenerator(anchored=True).pull().item()
    (165, 0.0)
    >>> MetaGradientGenerator(scaled=True).parameter_count(), MetaGradientGenerator(scaled=True).scale().item()
    (165, 1.0)
    """

    def __init__(self, hidden: int = HIDDEN, memory: bool = True, anchored: bool = False, scaled: bool = False) -> None:
        super().__init__()
        self.hidden = hidden
        self.uses_memory = memory
        self.anchored = anchored
        self.pull_weight = nn.Parameter(torch.zeros(())) if anchored else None
        self.scaled = scaled
        self.scale_weight = nn.Parameter(torch.zeros(())) if scaled else None
        self.body: nn.Module
        if memory:
            self.body = GradientMemory(hidden)
        else:
            self.body = nn.Sequential(
                nn.Linear(INPUT_FEATURES, hidden + hidden // 2),
                nn.GELU(),
                nn.Linear(hidden + hidden // 2, hidden),
            )
        self.output_norm = nn.LayerNorm(hidden, eps=LN_EPS)
        self.output = nn.Linear(hidden, 1, bias=False)

    def pull(self) -> torch.Tensor:
        """``ρ``: the fraction of θ's distance from the source that a step takes back (0 unanchored)."""
        if self.pull_weight is None:
            return torch.zeros(())
        weight = self.pull_weight
        # Clamped to [0, 1] forwards, the identity backwards (straight-through): a weight that an
        # early meta-gradient pushed below 0 still hears the later ones that ask for a pull.
        return weight + (weight.clamp(0.0, 1.0) - weight).detach()

    def scale(self) -> torch.Tensor:
        """``e^s``: the factor of every output (1 unscaled)."""
        return torch.ones(()) if self.scale_weight is None else self.scale_weight.exp()

    def parameter_count(self) -> int:
        return sum(parameter.numel() for parameter in self.parameters())

    def initial_memory(self, count: int) -> Memory | None:
        """The memory ``count`` fresh coordinates start from (``None`` without a memory layer)."""
        return self.body.initial_memory(count) if isinstance(self.body, GradientMemory) else None

    def forward(self, features: torch.Tensor, memory: Memory | None = None) -> tuple[torch.Tensor, Memory | None]:
        """One step for every coordinate. ``memory=None`` starts from the learned initial memory.

        The returned memory is still attached to the graph; the caller detaches it between steps
        (one-step truncation, as the public code does).
        """
        if isinstance(self.body, GradientMemory):
            if memory is None:
                memory = self.body.initial_memory(len(features))
            hidden, memory = self.body(features, memory)
        else:
            hidden = self.body(features)
        direction = torch.tanh(self.output(self.output_norm(hidden))).squeeze(-1)
        return (self.scale() * direction if self.scaled else direction), memory
