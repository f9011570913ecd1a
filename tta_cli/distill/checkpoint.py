"""A checkpoint after every epoch, so that a killed distillation continues where it stopped.

    OUT.checkpoints/checkpoint.json          the last completed epoch, its settings and curves
    OUT.checkpoints/epoch-NNNN.safetensors   that epoch's module and optimizer tensors

The tensors go to a new file first; the JSON that names them then replaces the previous one in
one rename, so a process killed at any instant leaves the previous epoch's checkpoint or the new
one. No pickle: modules are stored as their state dicts, optimizers as tensors with a JSON
skeleton (``tta_cli.history.state``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import nn

from tta_cli.errors import UsageError
from tta_cli.files import write_atomic
from tta_cli.history.state import flatten_state, unflatten_state

CHECKPOINT_FILE = "checkpoint.json"


def checkpoint_folder(out: Path) -> Path:
    """Where the checkpoints of a distillation into the bundle ``out`` live: beside it."""
    out = Path(out)
    return out.with_name(f"{out.name}.checkpoints")


@dataclass
class Checkpoint:
    epoch: int
    record: dict[str, Any]
    """What the trainer stored beside the tensors: its settings, the curves so far."""
    tensors: dict[str, torch.Tensor]
    skeletons: dict[str, Any]

    def restore(self, modules: Mapping[str, nn.Module], optimizers: Mapping[str, torch.optim.Optimizer]) -> None:
        for name, module in modules.items():
            prefix = f"{name}."
            module.load_state_dict(
                {key.removeprefix(prefix): value for key, value in self.tensors.items() if key.startswith(prefix)}
            )
        for name, optimizer in optimizers.items():
            optimizer.load_state_dict(unflatten_state(self.tensors, self.skeletons[name]))


def save_checkpoint(
    folder: Path,
    epoch: int,
    modules: Mapping[str, nn.Module],
    optimizers: Mapping[str, torch.optim.Optimizer],
    record: Mapping[str, Any],
) -> None:
    tensors: dict[str, torch.Tensor] = {}
    for name, module in modules.items():
        tensors |= {f"{name}.{key}": value.detach().cpu().contiguous() for key, value in module.state_dict().items()}
    skeletons = {}
    for name, optimizer in optimizers.items():
        flat, skeletons[name] = flatten_state(optimizer.state_dict(), f"optimizer.{name}")
        tensors |= flat
    folder.mkdir(parents=True, exist_ok=True)
    tensor_file = f"epoch-{epoch:04d}.safetensors"
    write_atomic(folder / tensor_file, save(tensors))
    document = {**record, "epoch": epoch, "tensors": tensor_file, "optimizers": skeletons}
    write_atomic(folder / CHECKPOINT_FILE, json.dumps(document, indent=1) + "\n")
    for stale in folder.glob("epoch-*.safetensors"):
        if stale.name != tensor_file:
            stale.unlink(missing_ok=True)


def read_checkpoint(folder: Path) -> Checkpoint | None:
    """The last completed epoch's checkpoint in ``folder``, or ``None`` when it holds none."""
    path = Path(folder) / CHECKPOINT_FILE
    if not path.is_file():
        return None
    try:
        document = json.loads(path.read_text())
        tensors = load_file(str(Path(folder) / document.pop("tensors")))
        epoch = document.pop("epoch")
        skeletons = document.pop("optimizers")
    except (OSError, ValueError, KeyError, TypeError, AttributeError, SafetensorError) as error:
        raise UsageError(
            f"The checkpoint in {folder} cannot be read ({error}); remove the folder to start over."
        ) from error
    return Checkpoint(epoch, document, tensors, skeletons)
