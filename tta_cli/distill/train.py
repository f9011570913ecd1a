"""``tta-cli distill``: a small student for the edge, taught by a run's adapted model.

The teacher is a recorded state of a run (``current`` by default), rebuilt in eval mode with its
normalisation statistics as ``tta-cli export`` rebuilds it, and frozen. The student is a fresh
(seeded) model of any architecture ``prepare`` accepts, or a trained bundle's model to start from
(a student pre-trained on the source needs far fewer epochs), at the teacher's input size,
channels, mean and std. Every step takes ``batch_size`` labeled source images and as many
target images (each set visited in a fresh random order every epoch, the smaller one cycled),
both flipped and shifted alike for teacher and student; the recipe (``RECIPES``: ``unikd``, ``plain``, ``none``)
gives the losses. Adam, its step size falling from ``lr`` to 0 on a half cosine over the training.

After every epoch: the student's accuracy on the target images that sit in class folders, and
a checkpoint (``tta_cli.distill.checkpoint``); ``resume`` continues after the last one and ends
exactly where an uninterrupted run would. The result is an ordinary bundle at ``out``, written
by ``prepare_bundle`` (source statistics measured on the source images) into a folder that
takes ``out``'s place in one rename, with ``distill.json`` holding the settings and per-epoch
curves. Under ``torchrun`` the processes share every batch (``tta_cli.parallel``); the
first reports progress and writes the files.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from safetensors.torch import save
from torch import nn

from tta_cli.config import DistillKD
from tta_cli.distill.checkpoint import (
    CHECKPOINT_FILE,
    Checkpoint,
    checkpoint_folder,
    read_checkpoint,
    save_checkpoint,
)
from tta_cli.distill.data import ImageSet, epoch_order, source_images, target_images
from tta_cli.distill.recipes import RECIPES, Recipe, StepOutputs
from tta_cli.distill.unikd import feature_discriminator_loss, grl_coefficient
from tta_cli.errors import UsageError
from tta_cli.export.rebuild import build_export_model
from tta_cli.export.run_export import RecordedState, read_recorded_state
from tta_cli.files import atomic_folder, write_atomic
from tta_cli.models import Bundle, ModelSpec, build_architecture, load_bundle, prepare_bundle
from tta_cli.models.architectures import absolute_reference
from tta_cli.models.bundle import DISTILL_FILE, MODEL_FILE, check_input
from tta_cli.models.features import classifier_head, record_head_input
from tta_cli.parallel import Parallel, start_parallel, sync_batch_norm
from tta_cli.streams import UNLABELED, Preprocess
from tta_cli.training.source_model import augmentation_draws, flip_and_shift
from tta_cli.version import __version__

EVAL_BATCH = 256
STUDENT_WEIGHTS = "student.safetensors"
"""The trained student's weights, in the checkpoint folder, from which the bundle is prepared."""
RESUMABLE = ("device", "selector")
"""Settings a resumed distillation may change: the teacher's selector as long as it names the
same state (``_Trainer`` checks the snapshot)."""


class DistillConfig(BaseModel):
    """Everything ``tta-cli distill`` needs."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    run: Path = Field(description="run directory whose recorded state is the teacher")
    out: Path = Field(description="student bundle folder to write")
    student: str = Field(description="student architecture, as 'prepare' names them, or a bundle folder to start from")
    source_data: Path = Field(description="labeled source images, <class>/<image>")
    target_data: str | None = Field(None, description="target images; default those the run read")
    selector: str = Field("current", description="the teacher's state: a step, snapshot id or alias")
    kd: DistillKD = "unikd"
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(128, ge=2, description="source images per step, and as many target images")
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(5e-4, ge=0)
    temperature: float = Field(4.0, gt=0)
    augment: bool = Field(True, description="random horizontal flips and shifts of up to 2 pixels")
    bn_stats: Literal["source", "target", "tracked"] | None = Field(
        None, description="the teacher's BatchNorm statistics, as for export; default the run's own where stored"
    )
    seed: int = 0
    device: str = "auto"

    @field_validator("target_data", mode="before")
    @classmethod
    def _target_text(cls, value: object) -> object:
        return os.fspath(value) if isinstance(value, os.PathLike) else value


@dataclass
class DistillProgress:
    """Where a distillation stands, handed to ``on_progress`` after every step and epoch."""

    epoch: int
    epochs: int
    step: int
    steps: int
    loss: float | None = None
    epoch_metrics: dict[str, float] | None = None
    """The finished epoch's means (and ``target_accuracy`` where target labels exist), at its end."""


class DistillReport(BaseModel):
    out: Path
    kd: str
    student: str
    epochs: int
    resumed_after_epoch: int
    teacher_parameters: int
    student_parameters: int
    teacher_target_accuracy: float | None
    student_target_accuracy: float | None
    source_images: int
    target_images: int
    skipped_images: int
    world_size: int
    is_main: bool
    """Whether this process wrote the bundle (the first of a ``torchrun`` group, or the only one)."""
    seconds: float


def distill(
    config: DistillConfig, resume: bool = False, on_progress: Callable[[DistillProgress], None] | None = None
) -> DistillReport:
    """Distill the run's teacher into a new student bundle at ``config.out`` (see the module's
    docstring); with ``resume``, continue after the last checkpoint of the same settings."""
    config = _absolute(config)
    checkpoint = _check_output(config, resume)
    parallel = start_parallel(config.device)
    try:
        parallel.check_batch_size("--batch-size", config.batch_size)
        trainer = _Trainer(config, parallel, checkpoint)
        with (
            ExitStack() as hooks,
            torch.backends.cudnn.flags(enabled=torch.backends.cudnn.enabled, benchmark=False, deterministic=True),
        ):
            trainer.start(hooks)
            trainer.fit(on_progress)
        return trainer.finish()
    finally:
        parallel.close()


def _absolute(config: DistillConfig) -> DistillConfig:
    """Paths made absolute, so that a resumed run compares equal from any working directory."""
    return config.model_copy(
        update={name: Path(getattr(config, name)).resolve() for name in ("run", "out", "source_data")}
    )


def _written_here(name: str) -> bool:
    """Whether a file of a checkpoint folder is one a distillation writes, or a temporary of one."""
    name = name.removeprefix(".")  # ``write_atomic`` writes ``.NAME.RANDOM`` first
    return any(name == own or name.startswith(f"{own}.") for own in (CHECKPOINT_FILE, STUDENT_WEIGHTS)) or fnmatch(
        name, "epoch-*.safetensors*"
    )


def _check_output(config: DistillConfig, resume: bool) -> Checkpoint | None:
    """A new bundle folder and, with ``resume``, the checkpoint of the same settings."""
    out = config.out
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"Bundle folder {out} already exists; choose a new --out.")
    folder = checkpoint_folder(out)
    checkpoint = read_checkpoint(folder)
    foreign = sorted(path.name for path in folder.iterdir() if not _written_here(path.name)) if folder.is_dir() else []
    if foreign:
        raise UsageError(
            f"{folder} holds {foreign[0]}, which no distillation wrote; the folder is removed when the distillation "
            "ends, so move what it holds or choose another --out."
        )
    if not resume:
        if checkpoint is not None:
            raise UsageError(
                f"{folder} holds an unfinished distillation into {out}; continue it with --resume or remove it."
            )
        return None
    if checkpoint is None:
        raise UsageError(f"Nothing to resume: {folder} holds no checkpoint of a distillation into {out}.")
    then, now = checkpoint.record["settings"], _settings(config)
    keys = sorted(then.keys() | now.keys())
    changed = [key for key in keys if key not in RESUMABLE and then.get(key) != now.get(key)]
    if changed:
        key = changed[0]
        raise UsageError(
            f"--resume continues with the settings it started with; {key} was {then.get(key)!r}, now {now.get(key)!r}."
        )
    return checkpoint


def _settings(config: DistillConfig) -> dict[str, Any]:
    return config.model_dump(mode="json")


class _Learner(nn.Module):
    """The student and the modules that learn along with it, one module for DistributedDataParallel."""

    def __init__(self, student: nn.Module, features: dict[str, torch.Tensor], head: str, heads: nn.Module | None):
        super().__init__()
        self.student = student
        self.heads = heads
        self._features = features
        self._head = head

    def forward(self, images: torch.Tensor, coefficient: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = self.student(images)
        if self.heads is None:
            return logits, {}
        return logits, self.heads(self._features[self._head], coefficient)


@dataclass
class _EpochPlan:
    """Which images each step of an epoch takes, and how they are flipped and shifted."""

    source: torch.Tensor
    target: torch.Tensor | None
    source_draws: tuple[torch.Tensor, ...]
    target_draws: tuple[torch.Tensor, ...]


class _Trainer:
    """The loop of ``distill``: loading, epochs, checkpoints and the bundle at the end."""

    def __init__(self, config: DistillConfig, parallel: Parallel, checkpoint: Checkpoint | None) -> None:
        self.started = time.perf_counter()
        self.config, self.parallel, self.checkpoint = config, parallel, checkpoint
        self.device = parallel.device
        self.recipe: Recipe = RECIPES[config.kd](config.temperature)
        self.recorded: RecordedState = read_recorded_state(config.run, config.selector)
        self.spec: ModelSpec = self.recorded.bundle.spec
        if checkpoint is not None and checkpoint.record["teacher_snapshot_id"] != self.recorded.snapshot.id:
            raise UsageError(
                f"{config.selector!r} of run {config.run} names another state than when this distillation "
                f"started (step {checkpoint.record['teacher_step']}); resume with --step "
                f"{checkpoint.record['teacher_step']}."
            )
        torch.manual_seed(config.seed)
        self.start_bundle = _starting_bundle(config.student, self.spec)
        if self.start_bundle is None:
            self.architecture, self.student = config.student, _new_student(config.student, self.spec)
        else:
            self.architecture = absolute_reference(self.start_bundle.spec.architecture, self.start_bundle.path)
            self.student = self.start_bundle.model.train()
        self.source = source_images(config.source_data, self.spec)
        self.target = target_images(config.target_data, self.spec, self.recorded.config, self.recorded.position)
        self.preprocess = Preprocess(self.spec.mean, self.spec.std, self.device)
        self.bn_stats = config.bn_stats or self.recorded.bn_stats
        cpu_preprocess = Preprocess(self.spec.mean, self.spec.std)
        target_batches = (cpu_preprocess(chunk) for chunk in _chunks(self.target.images, EVAL_BATCH))
        self.teacher = build_export_model(
            self.recorded.bundle,
            self.recorded.state,
            self.bn_stats,
            target_batches if self.bn_stats == "target" else None,
        ).to(self.device)
        count = len(self.source)
        if self.recipe.uses_target:
            count = max(count, len(self.target))
        self.steps = -(-count // config.batch_size)
        self.curves: dict[str, list[float]] = {}
        self.first_epoch = 1
        self.seconds_before = 0.0
        self.teacher_accuracy: float | None = None

    def start(self, hooks: ExitStack) -> None:
        """Hook the penultimate features of both models, build what learns, restore a checkpoint."""
        config, spec = self.config, self.spec
        self.teacher_head = classifier_head(self.teacher, spec.num_classes)
        self.teacher_features = hooks.enter_context(record_head_input(self.teacher, self.teacher_head))
        self.student_head = classifier_head(self.student, spec.num_classes)
        student_features = hooks.enter_context(record_head_input(self.student, self.student_head))
        teacher_width = self._width(self.teacher, self.teacher_features, self.teacher_head)
        student_width = self._width(self.student, student_features, self.student_head)
        torch.manual_seed(config.seed + 1)
        heads = self.recipe.heads(student_width, teacher_width)
        self.learner = _Learner(self.student, student_features, self.student_head, heads)
        sync_batch_norm(self.learner, self.parallel)
        self.learner.to(self.device).train()
        self.critic = self.recipe.critic(teacher_width)
        self.learner_step = self.parallel.wrap(self.learner)
        self.optimizer = torch.optim.Adam(self.learner.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.critic_step: nn.Module | None = None
        self.critic_optimizer: torch.optim.Optimizer | None = None
        if self.critic is not None:
            self.critic = self.critic.to(self.device).train()
            self.critic_step = self.parallel.wrap(self.critic)
            self.critic_optimizer = torch.optim.Adam(
                self.critic.parameters(), lr=config.lr, weight_decay=config.weight_decay
            )
        if self.checkpoint is not None:
            self.checkpoint.restore(self._modules(), self._optimizers())
            record = self.checkpoint.record
            self.curves = record["curves"]
            self.first_epoch = self.checkpoint.epoch + 1
            self.seconds_before = record["seconds"]
            self.teacher_accuracy = record["teacher_target_accuracy"]
        else:
            self.teacher_accuracy = self._accuracy(self.teacher)
        # No process writes before every process has checked what it was given.
        self.parallel.barrier()

    def _modules(self) -> dict[str, nn.Module]:
        return {"learner": self.learner} | ({"critic": self.critic} if self.critic is not None else {})

    def _optimizers(self) -> dict[str, torch.optim.Optimizer]:
        optimizers = {"learner": self.optimizer}
        return optimizers | ({"critic": self.critic_optimizer} if self.critic_optimizer is not None else {})

    def _width(self, model: nn.Module, features: dict[str, torch.Tensor], head: str) -> int:
        training = model.training
        model.eval()
        with torch.no_grad():
            model.to(self.device)(torch.zeros(2, self.spec.channels, *self.spec.input_size, device=self.device))
        model.train(training)
        return features[head].shape[1]

    def fit(self, on_progress: Callable[[DistillProgress], None] | None) -> None:
        config = self.config
        total_steps = config.epochs * self.steps
        for epoch in range(self.first_epoch, config.epochs + 1):
            # Any randomness inside the models (dropout) draws alike whether or not the run was resumed.
            torch.manual_seed(config.seed * 100_003 + epoch)
            plan = self._plan(epoch)
            sums: dict[str, float] = {}
            for step in range(self.steps):
                progress = ((epoch - 1) * self.steps + step) / total_steps
                measures = self._step(plan, step, progress)
                for name, value in measures.items():
                    sums[name] = sums.get(name, 0.0) + value
                if on_progress is not None and self.parallel.is_main:
                    on_progress(DistillProgress(epoch, config.epochs, step + 1, self.steps, measures["loss"]))
            metrics = self._epoch_means(sums)
            accuracy = self._accuracy(self.learner.student)
            if accuracy is not None:
                metrics["target_accuracy"] = accuracy
            metrics["seconds"] = self._seconds()
            for name, value in metrics.items():
                self.curves.setdefault(name, []).append(value)
            if self.parallel.is_main:
                save_checkpoint(
                    checkpoint_folder(config.out), epoch, self._modules(), self._optimizers(), self._record()
                )
                if on_progress is not None:
                    on_progress(DistillProgress(epoch, config.epochs, self.steps, self.steps, None, metrics))

    def _record(self) -> dict[str, Any]:
        return {
            "settings": _settings(self.config),
            "teacher_snapshot_id": self.recorded.snapshot.id,
            "teacher_step": self.recorded.snapshot.step,
            "teacher_target_accuracy": self.teacher_accuracy,
            "curves": self.curves,
            "seconds": self._seconds(),
        }

    def _seconds(self) -> float:
        return round(self.seconds_before + time.perf_counter() - self.started, 1)

    def _plan(self, epoch: int) -> _EpochPlan:
        generator = torch.Generator().manual_seed(self.config.seed * 100_003 + epoch)
        length = self.steps * self.config.batch_size
        source = epoch_order(len(self.source), length, generator)
        target = epoch_order(len(self.target), length, generator) if self.recipe.uses_target else None
        source_draws = augmentation_draws(length, generator) if self.config.augment else ()
        target_draws = augmentation_draws(length, generator) if self.config.augment and target is not None else ()
        return _EpochPlan(source, target, source_draws, target_draws)

    def _images(self, images: ImageSet, order: torch.Tensor, draws: Sequence[torch.Tensor], step: int) -> torch.Tensor:
        """This process's share of the step's images, normalised and flipped and shifted as drawn."""
        batch = slice(step * self.config.batch_size, (step + 1) * self.config.batch_size)
        mine = self.parallel.share(order[batch]).numpy()
        pixels = self.preprocess(images.images[mine])
        if draws:
            pixels = flip_and_shift(pixels, *(self.parallel.share(draw[batch]) for draw in draws))
        return pixels

    def _step(self, plan: _EpochPlan, step: int, progress: float) -> dict[str, float]:
        """One step of the critic (if any) and the student; this process's measures."""
        lr = self.config.lr * 0.5 * (1 + math.cos(math.pi * progress))
        for optimizer in self._optimizers().values():
            for group in optimizer.param_groups:
                group["lr"] = lr
        batch = slice(step * self.config.batch_size, (step + 1) * self.config.batch_size)
        labels = torch.from_numpy(self.source.labels[self.parallel.share(plan.source[batch]).numpy()])
        images = self._images(self.source, plan.source, plan.source_draws, step)
        if plan.target is not None:
            images = torch.cat([images, self._images(self.target, plan.target, plan.target_draws, step)])
        teacher_logits = teacher_features = None
        if self.recipe.uses_teacher:
            with torch.no_grad():
                teacher_logits = self.teacher(images)
            teacher_features = self.teacher_features[self.teacher_head]
        logits, heads = self.learner_step(images, grl_coefficient(progress))
        outputs = StepOutputs(labels.to(self.device), logits, progress, heads, teacher_logits, teacher_features)
        measures: dict[str, float] = {}
        if self.critic is not None and self.critic_step is not None and self.critic_optimizer is not None:
            _, teacher_features = outputs.teacher()
            critic_loss, critic_accuracy = feature_discriminator_loss(
                self.critic_step, teacher_features, outputs.heads["adapted"]
            )
            self.critic_optimizer.zero_grad(set_to_none=True)
            critic_loss.backward()
            self.critic_optimizer.step()
            measures = {
                "feature_discriminator": critic_loss.item(),
                "feature_discriminator_accuracy": critic_accuracy.item(),
            }
            # The student's adversarial term only asks the critic's verdict; its own weights stay put.
            self.critic.requires_grad_(False)
        try:
            terms = self.recipe.losses(outputs, self.critic)
        finally:
            if self.critic is not None:
                self.critic.requires_grad_(True)
        self.optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        self.optimizer.step()
        return measures | {name: value.item() for name, value in terms.items()}

    def _epoch_means(self, sums: dict[str, float]) -> dict[str, float]:
        """Means over the epoch's steps and the processes (each process's share is as large)."""
        names = sorted(sums)
        totals = self.parallel.sum(torch.tensor([sums[name] for name in names], dtype=torch.float64))
        count = self.steps * self.parallel.world_size
        return {name: float(total) / count for name, total in zip(names, totals, strict=True)}

    @torch.no_grad()
    def _accuracy(self, model: nn.Module) -> float | None:
        """Accuracy on the target images in class folders (``None`` without any), shared out."""
        labeled = np.flatnonzero(self.target.labels != UNLABELED)
        if not labeled.size:
            return None
        mine = labeled[self.parallel.rank :: self.parallel.world_size]
        training = model.training
        model.eval()
        correct = 0
        for chunk in _chunks(mine, EVAL_BATCH):
            predictions = model(self.preprocess(self.target.images[chunk])).argmax(dim=1).cpu()
            correct += int((predictions == torch.from_numpy(self.target.labels[chunk])).sum())
        model.train(training)
        totals = self.parallel.sum(torch.tensor([correct, len(mine)], dtype=torch.float64))
        return float(totals[0] / totals[1])

    def finish(self) -> DistillReport:
        """Write the bundle (the first process), then report."""
        config = self.config
        if self.parallel.is_main:
            self._write_bundle()
        self.parallel.barrier()
        accuracy = self.curves.get("target_accuracy")
        return DistillReport(
            out=config.out,
            kd=config.kd,
            student=self.architecture,
            epochs=config.epochs,
            resumed_after_epoch=self.first_epoch - 1,
            teacher_parameters=_parameters(self.teacher),
            student_parameters=_parameters(self.learner.student),
            teacher_target_accuracy=self.teacher_accuracy,
            student_target_accuracy=accuracy[-1] if accuracy else None,
            source_images=len(self.source),
            target_images=len(self.target),
            skipped_images=self.source.skipped + self.target.skipped,
            world_size=self.parallel.world_size,
            is_main=self.parallel.is_main,
            seconds=self._seconds(),
        )

    def _write_bundle(self) -> None:
        config, spec = self.config, self.spec
        folder = checkpoint_folder(config.out)
        folder.mkdir(parents=True, exist_ok=True)
        weights = folder / STUDENT_WEIGHTS
        state = {key: value.detach().cpu().contiguous() for key, value in self.learner.student.state_dict().items()}
        write_atomic(weights, save(state))
        config.out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_folder(config.out) as staging:
            prepare_bundle(
                self.architecture,
                weights,
                config.source_data,
                staging,
                mean=spec.mean,
                std=spec.std,
                class_names=spec.class_names,
                input_size=spec.input_size,
                crop_pct=spec.crop_pct,
                crop_mode=spec.crop_mode,
                interpolation=spec.interpolation,
                name=config.out.name,
            )
            write_atomic(staging / DISTILL_FILE, json.dumps(self._metadata(), indent=2) + "\n")
        shutil.rmtree(folder, ignore_errors=True)

    def _metadata(self) -> dict[str, Any]:
        recorded, accuracy = self.recorded, self.curves.get("target_accuracy")
        return {
            "kd": self.recipe.name,
            "summary": self.recipe.summary,
            "settings": _settings(self.config),
            "teacher": {
                "run": str(self.config.run),
                "step": recorded.snapshot.step,
                "snapshot_id": recorded.snapshot.id,
                "bundle": str(recorded.bundle.path.resolve()),
                "bundle_weights_sha256": recorded.bundle.weights_sha256,
                "architecture": self.spec.architecture,
                "parameters": _parameters(self.teacher),
                "bn_stats": self.bn_stats,
                "target_accuracy": self.teacher_accuracy,
            },
            "student": {
                "architecture": self.architecture,
                "started_from": None
                if self.start_bundle is None
                else {
                    "bundle": str(self.start_bundle.path.resolve()),
                    "weights_sha256": self.start_bundle.weights_sha256,
                },
                "parameters": _parameters(self.learner.student),
                "target_accuracy": accuracy[-1] if accuracy else None,
            },
            "data": {
                "source": self.source.where,
                "source_images": len(self.source),
                "source_skipped": self.source.skipped,
                "target": self.target.where,
                "target_images": len(self.target),
                "target_labeled": self.target.labeled,
                "target_skipped": self.target.skipped,
            },
            "steps_per_epoch": self.steps,
            "schedules": {"p": "steps done / all steps", "lr": "lr * (1 + cos(pi p)) / 2", **self.recipe.schedules},
            "curves": self.curves,
            "world_size": self.parallel.world_size,
            "device": str(self.device),
            "seconds": self._seconds(),
            "tta_cli_version": __version__,
            "torch_version": torch.__version__,
        }


def _new_student(architecture: str, spec: ModelSpec) -> nn.Module:
    """A freshly initialised student (from the current seed) that takes the teacher's input and
    predicts its classes."""
    student = build_architecture(architecture, spec.num_classes)
    student.eval()
    check_input(student, spec.channels, spec.input_size, f"Student architecture {architecture!r}")
    with torch.no_grad():
        outputs = student(torch.zeros(2, spec.channels, *spec.input_size)).shape[-1]
    if outputs != spec.num_classes:
        raise UsageError(
            f"Student architecture {architecture!r} predicts {outputs} classes, the teacher {spec.num_classes}."
        )
    return student.train()


def _starting_bundle(student: str, spec: ModelSpec) -> Bundle | None:
    """The trained bundle that ``student`` names, if it names one, checked to take the teacher's
    input and predict its classes."""
    if not (Path(student) / MODEL_FILE).is_file():
        return None
    bundle = load_bundle(Path(student))
    for field in ("class_names", "input_size", "mean", "std", "crop_pct", "crop_mode", "interpolation"):
        mine, teachers = getattr(bundle.spec, field), getattr(spec, field)
        if mine != teachers:
            raise UsageError(
                f"Student bundle {student} has {field} {mine!r} where the teacher has {teachers!r}; "
                "a student takes the teacher's input and predicts its classes."
            )
    return bundle


def _chunks(items: np.ndarray, size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _parameters(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())
