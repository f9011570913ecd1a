"""The learned update rule of MGTTA (Deng et al., AAAI 2025, arXiv 2412.16901, eqs. 6-8) and the
file that ships a pre-trained generator beside its model.

Per step, with the (harmonised) gradient ``g`` over θ:

    m ← β1·m + (1 − β1)·g,   v ← β2·v + (1 − β2)·g²,   m̂ = m/(1 − β1^t),   v̂ = v/(1 − β2^t)
    features = ( g/(sqrt(v̂) + ε),  m̂/(sqrt(v̂) + ε) )
    θ ← θ − α · MGG(features; memory) − ρ · (θ − θ_source)

where ρ is 0 for the paper's generator and learned in pre-training for an anchored one
(``MetaGradientGenerator(anchored=True)``): a rule whose steps never look back drifts on a
long stream, by up to α per step per coordinate.

Differences from the public code: the bias correction uses the step count t (the public code
uses t + 1), and α defaults to 1e-3, the value of its published run script (``run.sh``; its
``main.py`` default is 5e-3).
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save

from tta_cli.errors import UsageError
from tta_cli.files import write_atomic
from tta_cli.mgg.generator import HIDDEN, Memory, MetaGradientGenerator
from tta_cli.models import Bundle
from tta_cli.models.bundle import MGG_FILE, MGG_NO_MEMORY_FILE
from tta_cli.moments import bias_corrected, moving_average
from tta_cli.update.base import APPLIED, Closure, UpdateOutcome, split_like

FORMAT = "tta-cli/mgg"
FORMAT_VERSION = "1"
RECREATE = "re-create it with 'tta-cli train-mgg'"
DEFAULT_STEP_SIZE = 1e-3


class MGGRule:
    """``UpdateRule`` driven by a Meta Gradient Generator; its state is the Adam-style moments,
    the step count and the generator's per-coordinate memory, all restored bit for bit by
    ``load_state_dict``. The generator's own weights are fixed during adaptation. ``anchor`` is
    the source θ as one flat vector, which an anchored generator's pull leads back to;
    ``identity`` names the generator (its file's SHA-256), so that a state is never restored
    into another one's rule (a run resumed after its bundle's generator was pre-trained again)."""

    def __init__(
        self,
        generator: MetaGradientGenerator,
        step_size: float = DEFAULT_STEP_SIZE,
        beta1: float = 0.9,
        beta2: float = 0.99,
        eps: float = 1e-8,
        anchor: torch.Tensor | None = None,
        identity: str | None = None,
    ) -> None:
        if generator.anchored and anchor is None:
            raise ValueError("An anchored generator's rule needs the source θ as its anchor.")
        self.generator = generator
        self.step_size, self.beta1, self.beta2, self.eps = step_size, beta1, beta2, eps
        self.anchor = anchor.detach().clone() if anchor is not None and generator.anchored else None
        self.identity = identity
        self.reset()

    def reset(self) -> None:
        """Forget the moments and the memory: the next step starts like the first."""
        self.steps = 0
        self.first_moment: torch.Tensor | None = None
        self.second_moment: torch.Tensor | None = None
        self.memory: Memory | None = None

    def features(self, gradient: torch.Tensor) -> torch.Tensor:
        """Update the moments with ``gradient`` (shape ``(D,)``) and return the ``(D, 2)`` input.

        On the first step m̂ = g and v̂ = g², so both features are sign(g):

        >>> MGGRule(MetaGradientGenerator()).features(torch.tensor([2.0, -0.5])).tolist()
        [[1.0, 1.0], [-1.0, -1.0]]
        """
        gradient = gradient.detach()
        if self.first_moment is None or self.second_moment is None:
            self.first_moment = torch.zeros_like(gradient)
            self.second_moment = torch.zeros_like(gradient)
        self.steps += 1
        self.first_moment = moving_average(self.first_moment, gradient, self.beta1)
        self.second_moment = moving_average(self.second_moment, gradient.square(), self.beta2)
        first_hat = bias_corrected(self.first_moment, self.beta1, self.steps)
        second_hat = bias_corrected(self.second_moment, self.beta2, self.steps)
        scale = second_hat.sqrt() + self.eps
        return torch.stack([gradient / scale, first_hat / scale], dim=1)

    def direction(self, gradient: torch.Tensor) -> torch.Tensor:
        """``MGG(features)`` for this step, shape ``(D,)``; moves the moments and the memory on.

        Differentiable with respect to the generator's weights when grad mode is on (that is
        how pre-training reaches them); the carried memory is always detached (one-step
        truncation).
        """
        output, memory = self.generator(self.features(gradient), self.memory)
        self.memory = memory.detach() if memory is not None else None
        return output

    def step(self, theta: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
        """``θ − α·MGG(ĝ, m̂) − ρ·(θ − θ_source)`` for the flat ``theta``; differentiable with
        respect to the generator's weights (ρ among them) as ``direction`` is."""
        stepped = theta - self.step_size * self.direction(gradient)
        if self.anchor is None:
            return stepped
        return stepped - self.generator.pull() * (theta - self.anchor)

    def apply(
        self, params: list[torch.nn.Parameter], gradient: torch.Tensor, closure: Closure | None = None
    ) -> UpdateOutcome:
        """θ ← θ − α·MGG(ĝ, m̂) − ρ·(θ − θ_source); the generator needs no second look at the
        batch, so ``closure`` is not called."""
        with torch.no_grad():
            theta = torch.cat([param.flatten() for param in params])
            for param, part in zip(params, split_like(self.step(theta, gradient), params), strict=True):
                param.copy_(part)
        return APPLIED

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"steps": self.steps}
        if self.identity is not None:
            state["generator_sha256"] = self.identity
        if self.first_moment is not None and self.second_moment is not None:
            state["first_moment"] = self.first_moment.clone()
            state["second_moment"] = self.second_moment.clone()
        if self.memory is not None:
            state["memory"] = {"weight": self.memory.weight.clone(), "bias": self.memory.bias.clone()}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        recorded = state.get("generator_sha256")
        if recorded is not None and self.identity is not None and recorded != self.identity:
            raise UsageError(
                "The state was recorded with another Meta Gradient Generator than the bundle holds now "
                f"({recorded[:12]}, now {self.identity[:12]}); start a new run."
            )
        self.reset()
        self.steps = int(state["steps"])
        device = next(self.generator.parameters()).device
        if "first_moment" in state:
            self.first_moment = state["first_moment"].to(device).clone()
            self.second_moment = state["second_moment"].to(device).clone()
        if "memory" in state:
            memory = state["memory"]
            self.memory = Memory(memory["weight"].to(device).clone(), memory["bias"].to(device).clone())


def rule_for_bundle(
    bundle: Bundle, params: list[torch.nn.Parameter], file: str = MGG_FILE, step_size: float | None = None
) -> MGGRule:
    """The MGG rule of a loaded bundle over ``params`` (θ, at the source's values: the anchor),
    with the generator shipped in its ``file`` (by default ``mgg.safetensors``), on the device
    of the bundle's model. A generator pre-trained for other weights is refused (its metadata
    names the weights' SHA-256). ``step_size`` defaults to the α the generator was pre-trained
    for (its metadata), else ``DEFAULT_STEP_SIZE``."""
    path = generator_file(bundle, file)
    stored = _read(path)
    metadata = _training_metadata(path, stored.header)
    trained_for = metadata.get("bundle_weights_sha256")
    if trained_for is not None and trained_for != bundle.weights_sha256:
        raise UsageError(
            f"{path} was pre-trained for other weights than {bundle.path}'s; pre-train one for these with "
            f"'tta-cli train-mgg --model {bundle.path} --data CLEAN_TRAINING_IMAGES'."
        )
    device = next(bundle.model.parameters()).device
    if step_size is None:
        step_size = float(metadata.get("step_size", DEFAULT_STEP_SIZE))
    anchor = torch.cat([param.detach().flatten() for param in params])
    generator = _generator(path, stored).to(device)
    return MGGRule(generator, step_size=step_size, anchor=anchor, identity=stored.sha256)


def generator_file(bundle: Bundle, file: str = MGG_FILE) -> Path:
    """The path of the bundle's generator ``file``; a bundle without it is a one-sentence
    ``UsageError`` that says how to pre-train one."""
    path = bundle.path / file
    if not path.is_file():
        variant = " --no-memory" if file == MGG_NO_MEMORY_FILE else ""
        raise UsageError(
            f"Model bundle {bundle.path} has no {file}; "
            f"pre-train one with 'tta-cli train-mgg --model {bundle.path} --data CLEAN_TRAINING_IMAGES{variant}'."
        )
    return path


def save_generator(
    generator: MetaGradientGenerator, path: Path, metadata: dict[str, Any], *, replace: bool = True
) -> None:
    """Write the weights and ``metadata`` (as JSON) to ``path`` atomically; ``replace=False``
    leaves a file already there, even one written while this one trained (``FileExistsError``)."""
    tensors = {name: value.detach().cpu().contiguous() for name, value in generator.state_dict().items()}
    header = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "hidden": str(generator.hidden),
        "memory": json.dumps(generator.uses_memory),
        "anchored": json.dumps(generator.anchored),
        "scaled": json.dumps(generator.scaled),
        "training": json.dumps(metadata, sort_keys=True),
    }
    write_atomic(Path(path), save(tensors, metadata=header), replace=replace)


def read_metadata(path: Path) -> dict[str, Any]:
    """The training metadata stored in an ``mgg.safetensors``."""
    return _training_metadata(path, _read(Path(path)).header)


def load_generator(path: Path) -> MetaGradientGenerator:
    """Rebuild the generator stored at ``path``; a missing, foreign or damaged file is a
    one-sentence ``UsageError``."""
    return _generator(Path(path), _read(Path(path)))


@dataclass(frozen=True)
class _Stored:
    """A generator file as read once: its tensors, its header's metadata and its content's
    SHA-256, so that the generator a run uses is the one its history names."""

    tensors: dict[str, torch.Tensor]
    header: dict[str, str]
    sha256: str


def _training_metadata(path: Path, header: dict[str, str]) -> dict[str, Any]:
    try:
        metadata = json.loads(header.get("training", "{}"))
    except ValueError as error:
        raise UsageError(f"{path} has unreadable training metadata; {RECREATE}.") from error
    if not isinstance(metadata, dict):
        raise UsageError(f"{path} has unreadable training metadata; {RECREATE}.")
    return metadata


def _generator(path: Path, stored: _Stored) -> MetaGradientGenerator:
    tensors, header = stored.tensors, stored.header
    if header.get("format") != FORMAT:
        raise UsageError(f"{path} is not a Meta Gradient Generator file; {RECREATE}.")
    if header.get("version") != FORMAT_VERSION:
        raise UsageError(f"{path} has format version {header.get('version')}; this tta-cli reads {FORMAT_VERSION}.")
    try:
        generator = MetaGradientGenerator(
            int(header.get("hidden", HIDDEN)),
            memory=json.loads(header["memory"]),
            anchored=json.loads(header.get("anchored", "false")),
            scaled=json.loads(header.get("scaled", "false")),
        )
    except (KeyError, ValueError) as error:
        raise UsageError(f"{path} has an unreadable generator description; {RECREATE}.") from error
    expected = {name: tuple(value.shape) for name, value in generator.state_dict().items()}
    found = {name: tuple(value.shape) for name, value in tensors.items()}
    if expected != found:
        raise UsageError(f"{path} does not hold the weights its header describes; {RECREATE}.")
    if not all(torch.isfinite(value).all() for value in tensors.values()):
        raise UsageError(f"{path} holds non-finite weights; {RECREATE}.")
    generator.load_state_dict(tensors)
    return generator.eval().requires_grad_(False)


def _read(path: Path) -> _Stored:
    if not path.is_file():
        raise UsageError(f"Meta Gradient Generator file {path} does not exist; make one with 'tta-cli train-mgg'.")
    try:
        content = path.read_bytes()
        # KeyError: a tensor of a dtype this torch does not have.
        tensors = load(content)
        # The safetensors layout, which ``load`` has just checked: an 8-byte little-endian header
        # length, then the JSON header, whose "__metadata__" holds the string pairs saved with it.
        (length,) = struct.unpack("<Q", content[:8])
        header = json.loads(content[8 : 8 + length]).get("__metadata__") or {}
    except (SafetensorError, OSError, ValueError, KeyError) as error:
        raise UsageError(f"{path} is not a readable safetensors file; {RECREATE}.") from error
    return _Stored(tensors, header, hashlib.sha256(content).hexdigest())
