"""Train the sample CIFAR-10 source model (``airnet``) from a folder of labeled images.

The recipe follows Jordan, "94% on CIFAR-10 in 3.29 seconds on a single GPU"
(arXiv 2404.00498): patch-whitening stem initialised from the data, identity (Dirac) conv
initialisation, Nesterov SGD on a summed label-smoothed loss with a triangular learning-rate
schedule, flip + 2-pixel translation, and Lookahead weight averaging. It runs on CUDA in
seconds and on two CPU cores in about an hour.

    python scripts/train_sample_model.py --data .cache/cifar10 --out .cache/airnet --epochs 10
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from tta_cli.engine.device import resolve_device
from tta_cli.errors import UsageError
from tta_cli.models.zoo import ZOO, AirNet
from tta_cli.streams.decode import open_upright

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


GRAY_MEAN, GRAY_STD = (0.4808,), (0.2389,)
"""CIFAR-10's training images in grayscale (PIL's "L", ITU-R 601 luma), measured with
``channel_statistics`` on the JPEG copy."""
ARCHITECTURES = {"airnet": 3, "airnet_gn": 3, "airnet_ln": 3, "airnet_gray": 1, "resnet20": 3}
"""The zoo architectures this recipe trains, with their input channels: the airnet family with
its paper's initialisation and step sizes, ``resnet20`` with the usual ResNet ones."""


def load_split(
    folder: Path, classes: tuple[str, ...] = CIFAR10_CLASSES, channels: int = 3
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode ``folder/<class>/*.jpg`` into a uint8 NCHW tensor (RGB, or grayscale for one
    channel) and int64 labels."""
    images, labels = [], []
    for label, name in enumerate(classes):
        for path in sorted((folder / name).iterdir()):
            pixels = np.asarray(open_upright(path).convert("RGB" if channels == 3 else "L"))
            images.append(pixels if channels == 3 else pixels[..., None])
            labels.append(label)
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(), torch.tensor(labels)


def input_statistics(channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The mean and std per input channel that the model is trained and prepared with."""
    return (CIFAR10_MEAN, CIFAR10_STD) if channels == 3 else (GRAY_MEAN, GRAY_STD)


def channel_statistics(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Mean and std per channel of uint8 NCHW images, in [0, 1]."""
    pixels = images.double().transpose(0, 1).flatten(1) / 255
    return pixels.mean(1).tolist(), pixels.std(1).tolist()


def normalise(images: torch.Tensor) -> torch.Tensor:
    mean, std = (torch.tensor(values).view(1, -1, 1, 1) for values in input_statistics(images.shape[1]))
    return (images.float() / 255 - mean.to(images.device)) / std.to(images.device)


SHIFT = 2
"""The largest translation of ``augment``, in pixels."""


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random horizontal flip and a random translation of up to ``SHIFT`` pixels (reflect padding)."""
    return flip_and_shift(images, *augmentation_draws(images.shape[0], generator))


def augmentation_draws(count: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``augment``'s random choices for ``count`` images: whether to flip each, and its shift
    along x and y (0 to ``2 * SHIFT``, ``SHIFT`` being none). Drawn apart from the images so that
    processes that each hold part of a batch can take their part of the same draws."""
    flip = torch.rand(count, generator=generator) < 0.5
    dx = torch.randint(0, 2 * SHIFT + 1, (count,), generator=generator)
    dy = torch.randint(0, 2 * SHIFT + 1, (count,), generator=generator)
    return flip, dx, dy


def flip_and_shift(images: torch.Tensor, flip: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    """NCHW ``images`` flipped where ``flip`` is set and shifted by ``dx``, ``dy`` − ``SHIFT``
    pixels, the edges filled by reflection; contiguous NCHW, as ``Preprocess`` gives them (torch's
    CPU GroupNorm backward crashes on channels-last input)."""
    n, _, height, width = images.shape
    images = torch.where(flip.view(-1, 1, 1, 1).to(images.device), images.flip(3), images)
    padded = F.pad(images, (SHIFT, SHIFT, SHIFT, SHIFT), mode="reflect")
    rows = (dy.view(-1, 1) + torch.arange(height)).to(images.device)
    cols = (dx.view(-1, 1) + torch.arange(width)).to(images.device)
    batch = torch.arange(n, device=images.device).view(-1, 1, 1)
    shifted = padded.permute(0, 2, 3, 1)[batch, rows.view(n, height, 1), cols.view(n, 1, width)]
    return shifted.permute(0, 3, 1, 2).contiguous()


def init_whitening(layer: nn.Conv2d, images: torch.Tensor, eps: float = 5e-4) -> None:
    """Set the 2×2 stem to ±(eigenvectors / sqrt(eigenvalues)) of the patch covariance."""
    channels = images.shape[1]
    size = 4 * channels
    patches = images.unfold(2, 2, 1).unfold(3, 2, 1).permute(0, 2, 3, 1, 4, 5).reshape(-1, size).double()
    patches = patches - patches.mean(0)
    covariance = patches.T @ patches / len(patches)
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
    filters = (eigenvectors.T / torch.sqrt(eigenvalues.view(-1, 1) + eps)).view(size, channels, 2, 2).float()
    layer.weight.data.copy_(torch.cat([filters, -filters]))
    layer.weight.requires_grad_(False)


def build_model(train_images: torch.Tensor, architecture: str = "airnet") -> nn.Module:
    model = ZOO[architecture](len(CIFAR10_CLASSES))
    if not isinstance(model, AirNet):
        return model  # PyTorch's default (Kaiming-uniform) initialisation
    for module in model.modules():
        if isinstance(module, nn.Conv2d) and module is not model.whiten:
            weight = module.weight.data
            nn.init.dirac_(weight[: weight.size(1)])
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = 0.4
        if isinstance(module, nn.BatchNorm2d | nn.GroupNorm | nn.LayerNorm) and module.weight is not None:
            module.weight.requires_grad_(False)
    init_whitening(model.whiten, normalise(train_images[:5000]))
    return model


@torch.no_grad()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, flip_tta: bool = False) -> float:
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    for start in range(0, len(images), 1000):
        x = normalise(images[start : start + 1000]).to(device)
        logits = model(x)
        if flip_tta:
            logits = logits + model(x.flip(3))
        correct += int((logits.argmax(1).cpu() == labels[start : start + 1000]).sum())
    return correct / len(images)


def train(
    data: Path,
    out: Path,
    epochs: float = 10.0,
    batch_size: int = 1024,
    seed: int = 0,
    device: str = "cpu",
    label_smoothing: float = 0.0,
    architecture: str = "airnet",
) -> dict[str, Any]:
    """Train ``architecture`` (one of ``ARCHITECTURES``) on ``data/train`` on ``device``
    (``auto``, ``cpu``, ``cuda`` or ``cuda:N``), write its weights and ``training.json`` to
    ``out`` and return that report.

    ``label_smoothing`` 0 is plain cross-entropy, as benchmark models are trained; the shipped
    ``cifar10-airnet`` was trained with 0.2, which teaches a model never to be confident."""
    if architecture not in ARCHITECTURES:
        raise UsageError(f"This recipe trains {', '.join(ARCHITECTURES)}, not {architecture!r}.")
    channels = ARCHITECTURES[architecture]
    target_device = resolve_device(device)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    train_images, train_labels = load_split(data / "train", channels=channels)
    test_images, test_labels = load_split(data / "test", channels=channels)
    model = build_model(train_images, architecture)
    # torch's stub for Module.to lacks the documented memory_format-only form.
    model = model.to(target_device).to(memory_format=torch.channels_last)  # type: ignore[call-overload]

    optimizer = _optimizer(model, batch_size)
    for group in optimizer.param_groups:
        group["initial_lr"] = group["lr"]

    steps_per_epoch = len(train_images) // batch_size
    total_steps = int(epochs * steps_per_epoch)
    warmup = int(0.23 * total_steps)
    whiten_bias_steps = 3 * steps_per_epoch
    averaged = {k: v.detach().clone() for k, v in model.state_dict().items()}
    step, started = 0, time.time()
    while step < total_steps:
        model.train()
        order = torch.randperm(len(train_images), generator=generator)
        for batch_start in range(0, steps_per_epoch * batch_size, batch_size):
            if step >= total_steps:
                break
            index = order[batch_start : batch_start + batch_size]
            x = normalise(augment(train_images[index], generator)).to(target_device, memory_format=torch.channels_last)
            y = train_labels[index].to(target_device)
            scale = 0.2 + 0.8 * step / warmup if step < warmup else 1 - 0.93 * (step - warmup) / (total_steps - warmup)
            for group in optimizer.param_groups:
                group["lr"] = group["initial_lr"] * scale
            if isinstance(model, AirNet) and model.whiten.bias is not None:
                model.whiten.bias.requires_grad_(step < whiten_bias_steps)
            loss = F.cross_entropy(model(x), y, label_smoothing=label_smoothing, reduction="sum")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            if step % 5 == 0 or step == total_steps:
                # Lookahead: pull the fast weights towards a slowly moving average, more so
                # as the learning rate decays (arXiv 2404.00498, section 3.6).
                decay = 0.95**5 * (step / total_steps) ** 3 if step < total_steps else 0.0
                with torch.no_grad():
                    for name, value in model.state_dict().items():
                        if value.dtype.is_floating_point:
                            averaged[name].lerp_(value, 1 - decay)
                            value.copy_(averaged[name])
            if step % steps_per_epoch == 0:
                probe = evaluate(model, test_images[::5], test_labels[::5])
                model.train()
                print(
                    f"epoch {step / steps_per_epoch:.1f} loss {loss.item() / len(y):.3f} "
                    f"probe accuracy {probe:.4f} {(time.time() - started) / 60:.1f} min",
                    flush=True,
                )
    model = model.cpu().to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
    accuracy = evaluate(model, test_images, test_labels)
    flip_accuracy = evaluate(model, test_images, test_labels, flip_tta=True)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "weights.safetensors"))
    mean, std = input_statistics(channels)
    report = {
        "architecture": architecture,
        "seed": seed,
        "epochs": epochs,
        "label_smoothing": label_smoothing,
        "mean": list(mean),
        "std": list(std),
        "test_accuracy": accuracy,
        "test_accuracy_flip_tta": flip_accuracy,
        "train_minutes": (time.time() - started) / 60,
        "device": str(target_device),
    }
    (out / "training.json").write_text(json.dumps(report, indent=2))
    return report


def _optimizer(model: nn.Module, batch_size: int) -> torch.optim.SGD:
    """Nesterov SGD on the summed loss, so that step sizes are per example (arXiv 2404.00498)."""
    if not isinstance(model, AirNet):
        # The usual CIFAR ResNet steps: 0.1 per 128 images, momentum 0.9, weight decay 5e-4
        # (scaled by 128 because SGD multiplies it by the per-example rate).
        lr = 0.1 / 128
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4 * 128)
    # The paper's BatchNorm biases learn 64× faster; GroupNorm biases at that rate held airnet_gn
    # at chance for a whole epoch, so they (and LayerNorm's) learn at the others' rate.
    has_batch_norm = any(isinstance(module, nn.BatchNorm2d) for module in model.modules())
    momentum, bias_scale = 0.85, 64.0 if has_batch_norm else 1.0
    kilostep_scale = 1024 * (1 + 1 / (1 - momentum))
    lr, weight_decay = 11.5 / kilostep_scale, 0.0153 * batch_size / kilostep_scale
    # The whitening stem's bias is an ordinary parameter.
    biases = [p for n, p in model.named_parameters() if p.requires_grad and ".norm" in n]
    others = [p for n, p in model.named_parameters() if p.requires_grad and ".norm" not in n]
    # SGD multiplies the decay by the learning rate; dividing it out makes each step shrink the
    # weights by ``weight_decay`` times the schedule's factor, as in the paper's code.
    groups = [
        {"params": biases, "lr": lr * bias_scale, "weight_decay": weight_decay / (lr * bias_scale)},
        {"params": others, "lr": lr, "weight_decay": weight_decay / lr},
    ]
    return torch.optim.SGD(groups, momentum=momentum, nesterov=True)
