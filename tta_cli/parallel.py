"""Data parallelism under ``torchrun``: one process per device, each with its share of every batch.

``torchrun --nproc_per_node N`` starts N processes and sets ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK``; each joins the process group (NCCL on CUDA, gloo on the CPU) and takes its
``1/N`` of each global batch. BatchNorm takes its statistics over the global batch
(``sync_batch_norm``); then either every loss is a mean over the process's equal share and
DistributedDataParallel averages the gradients (``tta-cli distill``), or the shares' outputs are
gathered (``Parallel.gather``) so that every process computes the whole batch's losses
(``tta-cli train-mgg``). Either way a step is the step one process takes on the whole batch, to
float rounding. Without ``WORLD_SIZE`` > 1 everything here is the plain single-process case.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.parallel import DistributedDataParallel

from tta_cli.engine.device import resolve_device
from tta_cli.errors import UsageError


@dataclass(frozen=True)
class Parallel:
    """This process's place among those training together."""

    rank: int
    world_size: int
    device: torch.device
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        """The process that reports progress and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def share_sizes(self, length: int) -> list[int]:
        """How many of a global batch's ``length`` items each process takes, in consecutive shares:
        equal ones when the world size divides ``length``, else the first ``length % world_size``
        one longer (as ``torch.tensor_split`` cuts).

        >>> Parallel(0, 3, torch.device("cpu")).share_sizes(7)
        [3, 2, 2]
        """
        shortest, longer = divmod(length, self.world_size)
        return [shortest + (rank < longer) for rank in range(self.world_size)]

    def share_slice(self, length: int) -> slice:
        """Where this process's share lies in a global batch of ``length`` items."""
        sizes = self.share_sizes(length)
        start = sum(sizes[: self.rank])
        return slice(start, start + sizes[self.rank])

    def share(self, global_batch: torch.Tensor) -> torch.Tensor:
        """This process's consecutive share of a global batch."""
        return global_batch[self.share_slice(len(global_batch))]

    def check_batch_size(self, option: str, size: int) -> None:
        """Refuse a batch size that the processes cannot share equally."""
        if size % self.world_size:
            raise UsageError(f"{option} {size} must be a multiple of the {self.world_size} processes.")

    def gather(self, share: torch.Tensor, length: int) -> torch.Tensor:
        """The whole global batch of ``length`` rows from every process's ``share`` of it, in the
        autograd graph: its gradient on this process's rows is summed over the processes."""
        if not self.distributed:
            return share
        return _GatherShares.apply(share, self.share_sizes(length), self.rank)

    def wrap(self, module: nn.Module) -> nn.Module:
        """``module`` in DistributedDataParallel when there are several processes."""
        if not self.distributed:
            return module
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=device_ids)

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` summed over the processes (no gradient), where they were (NCCL sums on the GPU)."""
        if not self.distributed:
            return values
        total = values.to(self.device, copy=True)
        dist.all_reduce(total)
        return total.to(values.device)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def start_parallel(device: str) -> Parallel:
    """Join the process group when ``torchrun`` started several processes (``WORLD_SIZE`` > 1),
    each on its own GPU (``cuda:LOCAL_RANK`` for a CUDA ``device``), else the single process on
    ``device``."""
    target = resolve_device(device)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Parallel(0, 1, target)
    if target.type == "cuda":
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if local_rank >= torch.cuda.device_count():
            raise UsageError(
                f"Process {local_rank} has no GPU of its own: this machine has {torch.cuda.device_count()}; "
                "start at most that many processes per node."
            )
        target = torch.device("cuda", local_rank)
        torch.cuda.set_device(target)
    owns_group = not dist.is_initialized()
    if owns_group:
        dist.init_process_group("nccl" if target.type == "cuda" else "gloo")
    return Parallel(dist.get_rank(), dist.get_world_size(), target, owns_group)


def sync_batch_norm(module: nn.Module, parallel: Parallel) -> nn.Module:
    """``module`` with every BatchNorm layer normalising with the global batch's statistics: on
    CUDA, torch's ``SyncBatchNorm`` when there are several processes; on the CPU, where torch's
    has no kernels, ``AllReducedBatchNorm`` even for one process, so that one process and several
    compute the statistics alike: on a batch of 24 images, a small ResNet's gradients with torch's
    float32 CPU BatchNorm were 1e-3 (relative) off those computed in float64, with this one 4e-6,
    and Adam turns such differences in near-zero gradients into steps of the full step size.
    The layers are replaced in place (only a ``module`` that is itself BatchNorm comes back as
    another object); parameters and buffers are shared, not copied."""
    if parallel.device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module) if parallel.distributed else module
    return _all_reduced(module)


def _all_reduced(module: nn.Module) -> nn.Module:
    if isinstance(module, _BatchNorm) and not isinstance(module, AllReducedBatchNorm):
        replacement = AllReducedBatchNorm(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
        )
        if module.affine:
            replacement.weight, replacement.bias = module.weight, module.bias
        replacement.running_mean, replacement.running_var = module.running_mean, module.running_var
        replacement.num_batches_tracked = module.num_batches_tracked
        replacement.train(module.training)
        return replacement
    for name, child in module.named_children():
        module.add_module(name, _all_reduced(child))
    return module


class _GatherShares(torch.autograd.Function):
    """All-gather of consecutive shares (padded to the longest, as gloo gathers equal sizes only)
    whose backward sums the gradient over the processes and keeps this process's rows: every
    process's loss depends on every process's share. (As for ``_SumOverProcesses``, torch's
    differentiable ``all_gather`` is deprecated; it also takes equal shares only.)"""

    @staticmethod
    def forward(ctx: Any, share: torch.Tensor, sizes: list[int], rank: int) -> torch.Tensor:
        padded = share.new_zeros((max(sizes), *share.shape[1:]))
        padded[: len(share)] = share
        pieces = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(pieces, padded)
        start = sum(sizes[:rank])
        ctx.rows = slice(start, start + sizes[rank])
        return torch.cat([piece[:size] for piece, size in zip(pieces, sizes, strict=True)])

    @staticmethod
    def backward(ctx: Any, gradient: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        total = gradient.contiguous().clone()
        dist.all_reduce(total)
        return total[ctx.rows], None, None


class _SumOverProcesses(torch.autograd.Function):
    """All-reduce (sum) whose backward all-reduces the gradient: every process's loss depends on
    every process's share of the sums. (``torch.distributed.nn.functional.all_reduce`` does the
    same but is deprecated as of torch 2.13, and its suggested replacement is private.)"""

    @staticmethod
    def forward(ctx: Any, values: torch.Tensor) -> torch.Tensor:
        total = values.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx: Any, gradient: torch.Tensor) -> torch.Tensor:
        total = gradient.clone()
        dist.all_reduce(total)
        return total


class AllReducedBatchNorm(_BatchNorm):
    """BatchNorm that, in training, normalises with the mean and variance of the global batch:
    per-channel sums and sums of squares, in float64, added up over the processes (if several)
    with a differentiable all-reduce. In eval mode it is plain BatchNorm."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(input)
        self._check_input_dim(input)
        dims = [0, *range(2, input.dim())]
        shape = [1, -1] + [1] * (input.dim() - 2)
        channels = input.shape[1]
        count = torch.tensor([input.numel() // channels], dtype=torch.float64, device=input.device)
        sums = torch.cat([input.sum(dims, dtype=torch.float64), input.square().sum(dims, dtype=torch.float64), count])
        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        totals = _SumOverProcesses.apply(sums) if distributed else sums
        images = totals[-1].detach()
        mean = totals[:channels] / images
        variance = (totals[channels:-1] / images - mean.square()).clamp_min(0)
        running_mean, running_var, batches = self.running_mean, self.running_var, self.num_batches_tracked
        if self.track_running_stats and running_mean is not None and running_var is not None and batches is not None:
            batches.add_(1)
            factor = 1.0 / float(batches) if self.momentum is None else self.momentum
            with torch.no_grad():
                running_mean.lerp_(mean.to(running_mean.dtype), factor)
                unbiased = variance * images / (images - 1).clamp_min(1)
                running_var.lerp_(unbiased.to(running_var.dtype), factor)
        output = (input - mean.to(input.dtype).view(shape)) * torch.rsqrt(
            variance.to(input.dtype).view(shape) + self.eps
        )
        if self.affine:
            output = output * self.weight.view(shape) + self.bias.view(shape)
        return output
