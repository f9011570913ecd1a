"""Pre-training a Meta Gradient Generator by learning to optimise (MGTTA, Deng et al., AAAI 2025,
arXiv 2412.16901, Sec. 3.3 and Algorithm 1).

One epoch adapts θ (the norm-layer affine parameters) from the source model over a small set of
held-out shifted images, batch by batch, exactly as deployment would:

1. at θ_t, the test-time losses of batch t (entropy, feature alignment) and their gradients;
2. the MGG's meta-loss for its previous proposals is a loss of batch t at θ_t, and
   θ_t = θ_{t−1} − α·MGG(…) is still in the MGG's graph: back-propagating the loss's gradient
   through the last ``unroll`` updates reaches the MGG's weights, and Adam (lr 1e-3) steps them
   at the end of each window of ``unroll`` steps (1: one-step truncation, as the public code
   does with backward hooks; the memory is always carried detached);
3. the harmonised gradient (GH++ by default) goes through the Adam-style moments into the MGG,
   which proposes θ_{t+1} = θ_t − α·MGG(ĝ, m̂) − ρ·(θ_t − θ_source), ρ the anchored
   generator's learned pull (``MGGRule.step``).

The meta-loss is by default the cross-entropy of batch t with its labels: the images come from
the training split, so they have them, and only a supervised meta-loss tells an update that
helps from one that merely lowers entropy. ``meta_objective="cross-entropy+clean"`` adds the
cross-entropy of the same images without their shift, at the same θ_t: an update must help the
shifted images without spoiling what the source model already did well, so a generator learns
to keep what it gains on one shift from costing it on the next (θ drifts on a long stream where
an update is judged on the current shift alone). ``meta_objective="test-time"`` uses the test-time
objective itself, as the paper does; on a BatchNorm model that teaches the MGG to lower entropy
faster and nothing about accuracy (docs/bench/mgg has the curves). Deployment never sees a
label: the MGG's inputs are the test-time gradients either way.

BatchNorm normalises with the test batch's statistics, as Tent does. After every epoch, a full
adaptation pass with the current MGG over the held-out evaluation images gives its accuracy,
cross-entropy and mean test-time objective; the best epoch's weights are kept (highest accuracy,
ties broken by the lower meta-loss). Norm and Tent (Adam at the deployment step size, entropy)
run over the same images as baselines.

Under ``torchrun`` every batch is shared among the processes (``tta_cli.parallel``):
``FunctionalModel`` normalises with the whole batch's BatchNorm statistics and gathers the
shares' logits and features, so that every process computes the whole batch's losses and, by
one all-reduce, their gradients over θ. Every process then holds the same gradients, harmonises
them alike and takes the same steps of θ and of the MGG: N processes train as one does on the
same batches, to float rounding.

Differences from the public code: the meta-loss (above); batches of 64 at the deployment step
size (the public code trains at batch 2 with α = 1e-4 and deploys at batch 64 with 1e-3: batch
statistics of two images and a tenth of the step are another regime); θ restarts from the source
model at every epoch (its θ drifts on across epochs), and an epoch can be several passes over
the images (``passes``), as long as the streams the generator adapts on; the pull ρ towards the
source (from 0, learned like the other weights) and, with ``scaled``, a learned factor ``e^s`` of
every step (``s`` at ``SCALE_LR_FACTOR`` times the generator's rate); checkpoints are chosen on
held-out shifts of training images of the same classes rather than on ImageNet-C's validation
corruptions.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from tta_cli.config import MetaObjectiveName
from tta_cli.corruptions import HELD_OUT
from tta_cli.engine.params import configure_model, norm_affine_parameters
from tta_cli.errors import UsageError
from tta_cli.harmonize import Harmonizer, make_harmonizer
from tta_cli.mgg.data import HeldOutData, ShiftedImages, build_held_out, check_held_out
from tta_cli.mgg.generator import MetaGradientGenerator
from tta_cli.mgg.rule import DEFAULT_STEP_SIZE, MGGRule, save_generator
from tta_cli.models import Bundle, load_bundle, record_features
from tta_cli.models.bundle import MGG_FILE, MGG_NO_MEMORY_FILE
from tta_cli.objectives import Entropy, FeatureAlignment, Objective
from tta_cli.parallel import Parallel, start_parallel, sync_batch_norm
from tta_cli.streams import Batch, Preprocess
from tta_cli.version import __version__

META_OBJECTIVES: tuple[str, ...] = get_args(MetaObjectiveName)


SCALE_LR_FACTOR = 10.0
"""How much faster than the generator's other weights the log of the step's scale learns."""


@dataclass
class TrainProgress:
    """Where pre-training stands, handed to ``on_progress`` after every step and evaluation."""

    epoch: int
    epochs: int
    step: int
    steps: int
    phase: str  # "train" or "evaluate"
    meta_loss: float | None = None
    held_out_accuracy: list[float] = field(default_factory=list)


@dataclass
class TrainReport:
    """What ``train_mgg`` did: accuracies are fractions in [0, 1] on the held-out evaluation images."""

    path: Path
    best_epoch: int
    held_out_accuracy: list[float]
    source_accuracy: float
    norm_accuracy: float
    tent_accuracy: float
    seconds: float
    metadata: dict[str, Any]
    world_size: int
    is_main: bool
    """Whether this process wrote the file (the first of a ``torchrun`` group, or the only one)."""


class FunctionalModel:
    """The bundle's model with θ given as one flat vector, so that θ can stay in the MGG's graph.

    It runs on global batches shared among the processes of ``parallel``: a ``Batch`` here holds
    this process's share of the images and the labels of the whole batch (``_Trainer._batches``).
    BatchNorm runs on the whole batch's statistics (``sync_batch_norm``: on a CPU, the
    all-reduced float64 BatchNorm even for one process, so that one process and several compute
    alike); everything else is frozen. ``reset`` restores the running statistics (which
    train-mode BatchNorm moves) so that every pass starts alike.
    """

    def __init__(
        self, model: nn.Module, feature_layers: Sequence[str], objectives: Sequence[Objective], parallel: Parallel
    ) -> None:
        self.parallel = parallel
        self.model = model = sync_batch_norm(model, parallel)
        named = norm_affine_parameters(model)
        if not named:
            raise UsageError("The model has no normalisation layers with affine parameters for the MGG to adapt.")
        self.names = list(named)
        self.shapes = [param.shape for param in named.values()]
        self.source = torch.cat([param.detach().flatten() for param in named.values()])
        self.objectives = list(objectives)
        self._source_state = copy.deepcopy(model.state_dict())
        configure_model(model, batch_statistics=True, params=[])
        self._hooks = contextlib.ExitStack()
        self._features = self._hooks.enter_context(record_features(model, feature_layers))

    def reset(self) -> None:
        self.model.load_state_dict(self._source_state)

    def close(self) -> None:
        self._hooks.close()

    def logits(self, theta: torch.Tensor, batch: Batch) -> torch.Tensor:
        """The whole batch's logits at θ, gathered from the processes' shares."""
        values = theta.split([shape.numel() for shape in self.shapes])
        params = {name: value.view(shape) for name, value, shape in zip(self.names, values, self.shapes, strict=True)}
        return self.parallel.gather(functional_call(self.model, params, (batch.images,)), len(batch.labels))

    def losses(self, theta: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole batch's logits and ``(K,)`` test-time losses at θ, the same on every process."""
        logits = self.logits(theta, batch)
        features = {layer: self.parallel.gather(values, len(batch.labels)) for layer, values in self._features.items()}
        losses = []
        for objective in self.objectives:
            loss = objective(logits, features, batch)
            if loss is None:
                # The MGG's input is one loss per objective; a batch without one has no row to fill.
                raise RuntimeError(f"Objective {objective.name!r} gave no loss, which the MGG cannot train on.")
            losses.append(loss)
        return logits, torch.stack(losses)

    def gradients(self, losses: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """``(K, D)``: the gradient over θ of each of the ``(K,)`` losses of ``losses``, by K
        backward passes, the same on every process. One batched backward (``is_grads_batched``)
        measured no faster on the sample model on a CPU: 40 against 44 ms at batch 2, 928 against
        788 ms at batch 64.

        Why the mean over the processes: each of the N processes holds a copy L_p of the whole
        batch's loss L. Its backward pass, whose all-reduces (BatchNorm's statistics, the gathered
        logits and features) sum the gradient over the processes, gives ∂T/∂θ_p, where
        T = Σ_p L_p = N·L and θ_p is the process's copy of θ. The copies are equal, so
        dL/dθ = (1/N)·Σ_p ∂T/∂θ_p.
        """
        rows = [torch.autograd.grad(loss, theta, retain_graph=True)[0] for loss in losses]
        return self.parallel.sum(torch.stack(rows)) / self.parallel.world_size


def train_mgg(
    bundle_path: Path,
    data_folder: Path,
    out: Path | None = None,
    held_out: Sequence[str] = HELD_OUT,
    severity: int = 5,
    num_images: int = 2048,
    epochs: int = 10,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    device: str = "auto",
    harmonizer: str = "gh++",
    memory: bool = True,
    anchored: bool = True,
    scaled: bool = False,
    eval_images: int = 1024,
    eval_batch_size: int = 64,
    step_size: float = DEFAULT_STEP_SIZE,
    train_step_size: float | None = None,
    meta_objective: str = "cross-entropy",
    unroll: int = 8,
    passes: int = 1,
    overwrite: bool = False,
    on_progress: Callable[[TrainProgress], None] | None = None,
) -> TrainReport:
    """Pre-train an MGG for the bundle at ``bundle_path`` and write ``mgg.safetensors`` (without
    ``memory``: ``mgg-no-memory.safetensors``) into the bundle, or to ``out``: a file path, or a
    folder to write it into; an existing file only with ``overwrite``, refused before any work.

    ``data_folder`` holds clean *training* images in class sub-folders; ``num_images`` of them
    under the ``held_out`` corruptions are the training set, ``eval_images`` others under every
    held-out corruption the checkpoint-selection set (adapted per corruption from the source
    model, batch ``eval_batch_size``, step size ``step_size``). α while training is
    ``train_step_size``, by default ``step_size``. An epoch is one episode of ``passes`` passes
    over the training images, each in a fresh order of the shifts, θ and the memory carried from
    one pass to the next: as long an episode as the streams the generator will adapt on.
    Deterministic for a ``seed`` on a given device.

    Under ``torchrun`` the processes share every batch (both batch sizes must be multiples of
    their number) and train as one process does on the same batches; the first one reports
    progress and writes the file.
    """
    started = time.perf_counter()
    check_held_out(held_out, severity)
    _check_sizes(num_images, epochs, batch_size, eval_images, eval_batch_size, unroll, passes)
    if not (math.isfinite(lr) and lr > 0 and math.isfinite(step_size) and step_size > 0):
        raise UsageError(f"--lr and --step-size must be positive numbers; got {lr} and {step_size}.")
    make_harmonizer(harmonizer)  # an unknown name fails before any work
    if meta_objective not in META_OBJECTIVES:
        raise UsageError(f"Unknown meta-objective {meta_objective!r}; choose one of {', '.join(META_OBJECTIVES)}.")
    train_step_size = step_size if train_step_size is None else train_step_size
    path = _output_path(Path(bundle_path), out, memory, overwrite)
    with contextlib.closing(start_parallel(device)) as parallel:
        parallel.check_batch_size("--batch-size", batch_size)
        parallel.check_batch_size("--eval-batch-size", eval_batch_size)
        if not parallel.is_main:
            on_progress = None
        torch.manual_seed(seed)
        bundle = load_bundle(Path(bundle_path))
        data = build_held_out(
            Path(data_folder),
            bundle.spec.class_names,
            bundle.spec.framing,
            held_out,
            severity,
            num_images,
            eval_images,
            seed,
        )
        trainer = _Trainer(
            bundle,
            data,
            parallel,
            harmonizer,
            batch_size,
            eval_batch_size,
            step_size,
            train_step_size,
            meta_objective,
            unroll,
            passes,
        )
        # No DistributedDataParallel: seeded alike, every process starts from the same weights,
        # and their meta-gradient comes from gradients over θ that are already the whole batch's
        # and the same on every process (all-reduce hands each the same sum), so every process's
        # Adam takes the same step.
        generator = MetaGradientGenerator(memory=memory, anchored=anchored, scaled=scaled).to(parallel.device)
        baselines = {
            "source_accuracy": trainer.source_accuracy(),
            "norm_accuracy": trainer.norm_accuracy(),
            "tent_accuracy": trainer.tent_accuracy(),
        }
        # cuDNN may otherwise pick non-deterministic kernels for the backward passes; no effect on a CPU.
        with torch.backends.cudnn.flags(enabled=torch.backends.cudnn.enabled, benchmark=False, deterministic=True):
            optimizer = torch.optim.Adam(_parameter_groups(generator, lr))
            history = trainer.fit(generator, optimizer, epochs, seed, on_progress)
        trainer.close()
        generator.load_state_dict(history.best_state)

        seconds = time.perf_counter() - started
        metadata = {
            "held_out": list(held_out),
            "severity": severity,
            "num_images": num_images,
            "eval_images": eval_images,
            "epochs": epochs,
            "batch_size": batch_size,
            "eval_batch_size": eval_batch_size,
            "lr": lr,
            "step_size": step_size,
            "train_step_size": train_step_size,
            "meta_objective": meta_objective,
            "unroll": unroll,
            "passes": passes,
            "seed": seed,
            "best_epoch": history.best_epoch,
            "held_out_accuracy": history.accuracy,
            "held_out_accuracy_per_shift": history.accuracy_per_shift,
            "held_out_objective": history.objective,
            "held_out_cross_entropy": history.cross_entropy,
            **baselines,
            "bundle": bundle.spec.name,
            "bundle_weights_sha256": bundle.weights_sha256,
            "harmonizer": harmonizer,
            "memory": memory,
            "anchored": anchored,
            "pull": generator.pull().item(),
            "scaled": scaled,
            "scale": generator.scale().item(),
            "parameters": generator.parameter_count(),
            "device": str(parallel.device),
            "world_size": parallel.world_size,
            "seconds": round(seconds, 1),
            "tta_cli_version": __version__,
            "torch_version": torch.__version__,
        }
        if parallel.is_main:
            try:
                save_generator(generator, path, metadata, replace=overwrite)
            except FileExistsError as error:
                # The training is not lost: it goes beside the file that won.
                kept = path.with_name(f"{path.stem}-{time.strftime('%Y%m%d-%H%M%S')}{path.suffix}")
                save_generator(generator, kept, metadata, replace=False)
                raise UsageError(
                    f"{path} was written by someone else while this generator trained; it is left as it is, "
                    f"and this generator was written to {kept} (rename it to {path.name} to use it)."
                ) from error
        return TrainReport(
            path,
            history.best_epoch,
            history.accuracy,
            baselines["source_accuracy"],
            baselines["norm_accuracy"],
            baselines["tent_accuracy"],
            seconds,
            metadata,
            parallel.world_size,
            parallel.is_main,
        )


@dataclass
class _History:
    """Held-out accuracy, test-time objective and cross-entropy after every epoch; the weights of
    the best epoch (1-based), ranked by accuracy, then by lower meta-loss."""

    best_state: dict[str, torch.Tensor]
    best_epoch: int = 0
    best_score: tuple[float, float] = (0.0, 0.0)
    accuracy: list[float] = field(default_factory=list)
    objective: list[float] = field(default_factory=list)
    cross_entropy: list[float] = field(default_factory=list)
    accuracy_per_shift: list[dict[str, float]] = field(default_factory=list)


class _Trainer:
    """The loops of ``train_mgg``: L2O epochs, adaptation passes and the baselines they are judged against."""

    def __init__(
        self,
        bundle: Bundle,
        data: HeldOutData,
        parallel: Parallel,
        harmonizer: str,
        batch_size: int,
        eval_batch_size: int,
        step_size: float,
        train_step_size: float,
        meta_objective: str,
        unroll: int,
        passes: int,
    ) -> None:
        self.data, self.parallel = data, parallel
        self.harmonizer_name = harmonizer
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.step_size, self.train_step_size = step_size, train_step_size
        self.supervised = meta_objective in ("cross-entropy", "cross-entropy+clean")
        self.keep_clean = meta_objective == "cross-entropy+clean"
        self.unroll, self.passes = unroll, passes
        self.preprocess = Preprocess(bundle.spec.mean, bundle.spec.std, parallel.device)
        objectives: list[Objective] = [Entropy(), FeatureAlignment(bundle.source_stats)]
        model = bundle.on(parallel.device)
        self.model = FunctionalModel(model, bundle.spec.feature_layers, objectives, parallel)
        self.source = self.model.source.to(parallel.device)

    def close(self) -> None:
        self.model.close()

    def fit(
        self,
        generator: MetaGradientGenerator,
        optimizer: torch.optim.Optimizer,
        epochs: int,
        seed: int,
        on_progress: Callable[[TrainProgress], None] | None,
    ) -> _History:
        """``epochs`` L2O epochs, each followed by a held-out adaptation pass; keeps the best."""
        history = _History(copy.deepcopy(generator.state_dict()))
        for epoch in range(1, epochs + 1):
            order = random.Random(seed * 100_003 + epoch)
            for step, steps, meta_loss in self.train_epoch(generator, optimizer, order):
                _report(on_progress, TrainProgress(epoch, epochs, step, steps, "train", meta_loss, history.accuracy))
            per_shift, objective, cross_entropy = self.evaluate(generator)
            history.accuracy_per_shift.append(per_shift)
            history.accuracy.append(sum(per_shift.values()) / len(per_shift))
            history.objective.append(objective)
            history.cross_entropy.append(cross_entropy)
            # Equal accuracies (the last image's worth) are decided by the lower meta-loss.
            score = (history.accuracy[-1], -(cross_entropy if self.supervised else objective))
            if history.best_epoch == 0 or score > history.best_score:
                history.best_state, history.best_epoch, history.best_score = (
                    copy.deepcopy(generator.state_dict()),
                    epoch,
                    score,
                )
            _report(on_progress, TrainProgress(epoch, epochs, 0, 0, "evaluate", None, list(history.accuracy)))
        return history

    def _batches(
        self, images: ShiftedImages, size: int, drop_last: bool = False, clean: bool = False
    ) -> Iterator[Batch]:
        """Global batches of ``size`` images in order (``clean``: without their shift), as
        ``FunctionalModel`` takes them: this process's share of the images, preprocessed, and the
        labels of all. A last, shorter batch is shared as evenly as it goes
        (``Parallel.share_sizes``; a share may be empty)."""
        stop = len(images) - len(images) % size if drop_last else len(images)
        pixels_of = images.clean if clean else images.images
        for start in range(0, stop, size):
            labels = images.labels[start : min(start + size, stop)]
            share = self.parallel.share_slice(len(labels))
            pixels = self.preprocess(pixels_of[start + share.start : start + share.stop])
            yield Batch([], pixels, labels.to(pixels.device))

    def _harmonizer(self) -> Harmonizer:
        harmonizer = make_harmonizer(self.harmonizer_name)
        harmonizer.reset()
        return harmonizer

    def train_epoch(
        self, generator: MetaGradientGenerator, optimizer: torch.optim.Optimizer, order: random.Random
    ) -> Iterator[tuple[int, int, float | None]]:
        """One L2O episode: ``passes`` passes over the training images, each in a fresh order, from
        the source θ and a fresh memory; yields ``(step, steps, meta-loss)``."""
        self.model.reset()
        generator.train()
        rule = MGGRule(generator, step_size=self.train_step_size, anchor=self.source)
        harmonizer = self._harmonizer()
        shuffled = [
            self.data.train.subset(_one_shift_at_a_time(self.data.train.shifts, order)) for _ in range(self.passes)
        ]
        steps = len(shuffled[0]) // self.batch_size * self.passes
        theta = self.source.clone().requires_grad_(True)
        window: torch.Tensor | None = None
        episode = (batch for images in shuffled for batch in self._batches(images, self.batch_size, drop_last=True))
        # The same images without their shift, prepared only where the meta-loss looks at them.
        clean: Iterator[Batch | None] = (
            (
                batch
                for images in shuffled
                for batch in self._batches(images, self.batch_size, drop_last=True, clean=True)
            )
            if self.keep_clean
            else itertools.repeat(None)
        )
        for step, (batch, clean_batch) in enumerate(zip(episode, clean, strict=False), start=1):  # repeat: endless
            logits, losses = self.model.losses(theta, batch)
            gradients = self.model.gradients(losses, theta)
            meta_loss = None
            if theta.grad_fn is not None:
                if self.supervised:
                    loss = F.cross_entropy(logits, batch.labels)
                    if clean_batch is not None:
                        loss = loss + F.cross_entropy(self.model.logits(theta, clean_batch), clean_batch.labels)
                    meta_gradient = self.model.gradients(loss.unsqueeze(0), theta)[0]
                else:
                    loss, meta_gradient = losses.sum(), gradients.sum(dim=0)
                term = meta_surrogate(theta, meta_gradient)
                window = term if window is None else window + term
                meta_loss = loss.item()
                if step % self.unroll == 0 or step == steps:
                    optimizer.zero_grad(set_to_none=True)
                    window.backward()
                    optimizer.step()
                    window, theta = None, theta.detach()
            theta = rule.step(theta, harmonizer(gradients.detach()).gradient)
            yield step, steps, meta_loss

    def evaluate(self, generator: MetaGradientGenerator) -> tuple[dict[str, float], float, float]:
        """Online accuracy of MGG adaptation per held-out shift, each pass from the source model;
        the test-time objective and the cross-entropy averaged over all batches (each taken
        before its update)."""
        generator.eval()
        accuracy, objective, cross_entropy, batch_count = {}, 0.0, 0.0, 0
        for shift, images in self.data.evaluation.items():
            self.model.reset()
            rule = MGGRule(generator, step_size=self.step_size, anchor=self.source)
            harmonizer = self._harmonizer()
            theta, correct = self.source.clone(), 0
            for batch in self._batches(images, self.eval_batch_size):
                theta.requires_grad_(True)
                logits, losses = self.model.losses(theta, batch)
                correct += int((logits.argmax(dim=1) == batch.labels).sum())
                objective += losses.sum().item()
                cross_entropy += F.cross_entropy(logits.detach(), batch.labels).item()
                batch_count += 1
                gradients = self.model.gradients(losses, theta)
                with torch.no_grad():
                    theta = rule.step(theta.detach(), harmonizer(gradients).gradient)
            accuracy[shift] = correct / len(images)
        return accuracy, objective / batch_count, cross_entropy / batch_count

    def tent_accuracy(self) -> float:
        """Tent's online accuracy over the evaluation images: Adam at the deployment step size on
        the batch entropy, from the source model for each held-out shift."""
        correct = total = 0
        for images in self.data.evaluation.values():
            self.model.reset()
            theta = self.source.clone().requires_grad_(True)
            optimizer = torch.optim.Adam([theta], lr=self.step_size)
            for batch in self._batches(images, self.eval_batch_size):
                logits = self.model.logits(theta, batch)
                correct += int((logits.argmax(dim=1) == batch.labels).sum())
                total += len(batch.labels)
                theta.grad = self.model.gradients(Entropy()(logits, {}, batch).unsqueeze(0), theta)[0]
                optimizer.step()
        return correct / total

    @torch.no_grad()
    def source_accuracy(self) -> float:
        """The shipped model as is (eval-mode BatchNorm), on the same evaluation images."""
        self.model.model.eval()
        try:
            return self._accuracy()
        finally:
            configure_model(self.model.model, batch_statistics=True, params=[])

    @torch.no_grad()
    def norm_accuracy(self) -> float:
        """Test-batch BatchNorm statistics without any update (the "norm" baseline)."""
        return self._accuracy()

    def _accuracy(self) -> float:
        correct = total = 0
        for images in self.data.evaluation.values():
            self.model.reset()
            for batch in self._batches(images, self.eval_batch_size):
                predictions = self.model.logits(self.source, batch).argmax(dim=1)
                correct += int((predictions == batch.labels).sum())
                total += len(batch.labels)
        return correct / total


def meta_surrogate(theta: torch.Tensor, meta_gradient: torch.Tensor) -> torch.Tensor:
    """A scalar whose gradient with respect to the MGG's weights is that of a meta-loss L(θ_t),
    where θ_t is still in the MGG's graph and ``meta_gradient`` is ``∂L/∂θ_t`` (detached).

    By the chain rule that gradient is ``(∂L/∂θ_t)ᵀ · ∂θ_t/∂φ``, the gradient of ``θ_t · ∂L/∂θ_t``:
    the meta-gradient costs no second pass through the network, only one through the tiny MGG
    (the public code's backward hooks do the same), and the terms of an unrolled window add up
    before one backward. For the test-time objective, ``∂L/∂θ_t`` is the sum of the per-loss
    gradients already computed for harmonisation.
    """
    return (theta * meta_gradient).sum()


def _one_shift_at_a_time(shifts: Sequence[str], order: random.Random) -> list[int]:
    """Indices of the training images as a deployed stream sees them: each shift's images in a
    row (shuffled), the shifts in a random order, so that every batch normalises with the
    statistics of one shift, as it does when the generator is deployed and evaluated.

    >>> _one_shift_at_a_time(["a", "b", "a", "b"], random.Random(0))
    [0, 2, 3, 1]
    """
    names = sorted(set(shifts))
    order.shuffle(names)
    indices: list[int] = []
    for name in names:
        block = [index for index, shift in enumerate(shifts) if shift == name]
        order.shuffle(block)
        indices += block
    return indices


def _report(on_progress: Callable[[TrainProgress], None] | None, progress: TrainProgress) -> None:
    if on_progress is not None:
        on_progress(progress)


def _parameter_groups(generator: MetaGradientGenerator, lr: float) -> list[dict[str, Any]]:
    """Every weight at ``lr``, the log of the step's scale at ``SCALE_LR_FACTOR · lr``: Adam
    moves a weight by about its rate per meta-step, and a pre-training of some 200 meta-steps at
    1e-3 could change the step's size by a fifth at most; at ten times the rate, by up to e²
    either way."""
    scale = generator.scale_weight
    others = [parameter for parameter in generator.parameters() if parameter is not scale]
    groups: list[dict[str, Any]] = [{"params": others, "lr": lr}]
    return groups if scale is None else [*groups, {"params": [scale], "lr": SCALE_LR_FACTOR * lr}]


def _check_sizes(
    num_images: int, epochs: int, batch_size: int, eval_images: int, eval_batch_size: int, unroll: int, passes: int
) -> None:
    if batch_size < 1 or eval_batch_size < 1:
        raise UsageError("Batch sizes must be at least 1.")
    if num_images < 2 * batch_size:
        raise UsageError(f"Pre-training needs at least two batches: --num-images must be at least {2 * batch_size}.")
    if unroll < 1:
        raise UsageError("--unroll must be at least 1 step.")
    if passes < 1:
        raise UsageError("--passes must be at least 1.")
    if epochs < 1 or eval_images < 1:
        raise UsageError("--epochs and the number of evaluation images must be at least 1.")


def _output_path(bundle_path: Path, out: Path | None, memory: bool, overwrite: bool) -> Path:
    """Where the generator goes: ``out``, a file or a folder, else the bundle, under the name the
    methods read (``mgg.safetensors``, or ``mgg-no-memory.safetensors`` without memory). A file
    there is replaced only with ``overwrite``: runs resumed with it would be refused afterwards."""
    name = MGG_FILE if memory else MGG_NO_MEMORY_FILE
    path = bundle_path / name if out is None else Path(out) / name if Path(out).is_dir() else Path(out)
    if not path.parent.is_dir():
        raise UsageError(f"Cannot write {path}: folder {path.parent} does not exist.")
    if path.exists() and not overwrite:
        raise UsageError(f"{path} already exists; pass --overwrite to replace that generator, or choose another --out.")
    return path
