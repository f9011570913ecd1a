"""Run configuration: one pydantic model, loaded from TOML, overridden by flags, saved with the run."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

import tomli_w
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator

from tta_cli.errors import UsageError
from tta_cli.files import tomllib

# The names a setting of a fixed set takes. The registries they name (``NORMS`` of
# ``tta_cli.engine.norms``, ``HARMONIZERS`` of ``tta_cli.harmonize``) import torch, which the
# command line must not wait for to print its help; tests/test_config.py keeps them equal.
OptimizerName = Literal["adam", "sgd"]
NormName = Literal["batch", "robust", "tbr", "balanced", "weighted"]
HarmonizerName = Literal["sum", "gh", "gh++", "sam-gs", "pcgrad", "upgrad", "mgda"]
MetaObjectiveName = Literal["cross-entropy", "cross-entropy+clean", "test-time"]
"""What a Meta Gradient Generator learns to lower on the next batch (``tta_cli.mgg.train``)."""
StreamOrder = Literal["sorted", "shuffled"]
DistillKD = Literal["unikd", "plain", "none"]
"""How ``tta-cli distill`` teaches the student (``RECIPES`` of ``tta_cli.distill``)."""
# How an image is framed into the model's input (``tta_cli.streams.Framing``), here for the
# same reason: the streams package imports torch.
CropMode = Literal["squash", "center"]
Interpolation = Literal["bilinear", "bicubic", "nearest", "box"]

Settings = TypeVar("Settings", bound=BaseModel)


class GuardConfig(BaseModel):
    """Thresholds of the label-free guard (see ``tta_cli.engine.guard``)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    enabled: bool = True
    entropy_ema_min: float = Field(0.2, ge=0, description="alarm when the entropy moving average falls below this")
    entropy_ema_momentum: float = Field(0.9, ge=0, lt=1)
    majority_max: float = Field(0.8, gt=0, le=1, description="alarm when one class takes more of the window")
    majority_window: int = Field(512, ge=1, description="recent inputs over which the majority is counted")
    confirm_steps: int = Field(20, ge=0, description="healthy steps before a snapshot becomes last-good")
    harm_min: float = Field(
        0.7,
        ge=0,
        le=1,
        description="roll back to the source when the un-updated model's confidence in the adapted predictions, "
        "relative to its confidence in its own, falls below this (0: off)",
    )
    harm_window: int = Field(
        128,
        ge=1,
        description="recent inputs scored by the reference over which that ratio is measured (with one batch in "
        "four scored, they span the last 512 inputs of the stream)",
    )
    harm_every: int = Field(
        4,
        ge=1,
        description="the reference scores one batch in this many: its forward without gradient costs up to half a "
        "gradient step, and one look in four keeps the signal under 0.2 of a Tent step",
    )


class HistoryConfig(BaseModel):
    """How often the state is snapshotted and how many snapshots are kept."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    snapshot_every: int = Field(1, ge=1, description="steps between snapshots")
    keep_last: int = Field(100, ge=1, description="keep the snapshots of this many recent steps")
    keep_every: int = Field(100, ge=1, description="and of every N-th step before them")


class LiveConfig(BaseModel):
    """How a live source (camera, URL) is watched and reconnected (see ``tta_cli.streams.sources``)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    watchdog_timeout: float = Field(5.0, gt=0, description="seconds without a frame before reconnecting")
    reconnect_attempts: int = Field(5, ge=0, description="failed reconnects in a row before the run ends")
    backoff: float = Field(0.5, ge=0, description="seconds before the first reconnect; doubles every attempt")
    backoff_max: float = Field(10.0, ge=0, description="longest wait between reconnects")


class WeightedNormConfig(BaseModel):
    """The "weighted" normalisation's mechanisms, each with a switch, and its constants
    (``tta_cli.engine.norms.weighted`` says what each does and where the numbers come from)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    prior: float = Field(64.0, gt=0, description="images the moved statistics count for against a batch")
    window: int = Field(8, ge=1, description="recent batch-to-batch ratios whose median is the design effect")
    start: float = Field(4.0, ge=1, description="the design effect assumed before two batches were seen")
    deep_gate: bool = Field(True, description="the deeper half of the layers moves only on independent batches")
    clustered: float = Field(2.0, gt=1, description="the design effect from which batches count as clustered")
    shrinkage: bool = Field(True, description="on clustered batches, keep only an estimate's significant departure")
    shrinkage_factor: float = Field(5.0, ge=0, description="times its error variance an estimate must depart")
    jump: bool = Field(True, description="take the own statistics of a batch far from those in use and the source's")
    return_on_fit: bool = Field(True, description="restart from the source's when a batch fits them better")
    near_source: float = Field(
        0.5,
        gt=0,
        description="a jump's distance, and the one-class return's for a bundle without typicality: 0.5 is the "
        "divergence of a shift of the mean by one source std",
    )
    return_on_one_class: bool = Field(
        True,
        description="restart from the source's when they predict most of a batch of typical images as one class "
        "and more confidently than the statistics in use",
    )
    one_class: float = Field(
        0.5, gt=0, le=1, description="that share of the batch, and at least twice a class's share in an even spread"
    )
    deferral: bool = Field(True, description="on a mild shift the source's statistics predict, without steps")
    agreement: float = Field(0.9, ge=0, le=1, description="share of unchanged predictions above which a shift is mild")
    gain: float = Field(0.98, gt=0, description="entropy ratio below which the estimates predict even so")
    smoothing: float = Field(0.8, ge=0, lt=1, description="momentum of the deferral's two averages")


class AdaptConfig(BaseModel):
    """Everything ``tta-cli adapt`` needs; ``run.toml`` in the run directory holds it resolved."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    model: Path = Field(description="model bundle folder")
    source: str = Field(description="folder, glob, image, video file, camera index or device, or URL")
    run: Path = Field(
        default_factory=lambda: new_run_path(Path("runs")),
        description="run directory for history, predictions, summary and configuration",
    )
    method: str = Field("auto", description="a method of 'tta-cli methods', or auto: the measured default")
    batch_size: int = Field(64, ge=1)
    optimizer: OptimizerName | None = None
    lr: float | None = Field(None, gt=0)
    harmonizer: HarmonizerName | None = None
    norm: NormName | None = Field(None, description="how BatchNorm normalises test batches, instead of the method's")
    device: str = "auto"
    order: StreamOrder = "sorted"
    seed: int = 0
    workers: int | None = Field(None, ge=1)
    stride: int = Field(1, ge=1, description="keep every N-th frame or image")
    limit: int | None = Field(
        None,
        ge=1,
        validation_alias=AliasChoices("limit", "max_frames"),
        description="stop after this many frames or images of the source (after stride)",
    )
    duration: float | None = Field(None, gt=0, description="stop reading after this many seconds")
    guard: GuardConfig = GuardConfig()
    history: HistoryConfig = HistoryConfig()
    live: LiveConfig = LiveConfig()
    weighted_norm: WeightedNormConfig = WeightedNormConfig()
    domain_weighting: bool = Field(
        False, description="weigh each input by its cluster of like inputs, so no shift dominates the update"
    )

    @field_validator("source", mode="before")
    @classmethod
    def _source_text(cls, value: object) -> object:
        return os.fspath(value) if isinstance(value, os.PathLike) else value


def new_run_path(parent: Path) -> Path:
    """``parent/adapt-YYYYmmdd-HHMMSS``, with a suffix if that already exists."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path, number = parent / f"adapt-{stamp}", 1
    while path.exists():
        number += 1
        path = parent / f"adapt-{stamp}-{number}"
    return path


def validated(model: type[Settings], values: Mapping[str, Any], *, as_options: bool = False) -> Settings:
    """``model`` built from ``values``; its first problem becomes a one-sentence usage error that
    names the setting (``Setting 'guard.enabled': ...``), or the command-line option when the
    values are a command's options (``Option --batch-size: ...``)."""
    try:
        return model.model_validate(values)
    except ValidationError as error:
        problem = error.errors()[0]
        if as_options:
            where = "--" + "-".join(str(part) for part in problem["loc"]).replace("_", "-")
            raise UsageError(f"Option {where}: {problem['msg']}.") from error
        where = ".".join(str(part) for part in problem["loc"]) or "config"
        raise UsageError(f"Setting {where!r}: {problem['msg']}.") from error


def load_config(config_file: Path | None, overrides: dict[str, Any]) -> AdaptConfig:
    """Settings from ``config_file`` (if any), then every override that is not ``None``
    (``"guard.enabled"`` addresses a nested setting)."""
    settings: dict[str, Any] = {}
    if config_file is not None:
        if not config_file.is_file():
            raise UsageError(f"Config file {config_file} does not exist.")
        try:
            settings = tomllib.loads(config_file.read_text())
        except tomllib.TOMLDecodeError as error:
            raise UsageError(f"Config file {config_file} is not valid TOML: {error}.") from error
        settings = settings.get("adapt", settings)
    for key, value in overrides.items():
        if value is None:
            continue
        section, _, name = key.partition(".")
        if name:
            settings.setdefault(section, {})[name] = value
        else:
            settings[key] = value
    return validated(AdaptConfig, settings)


# The flags of ``tta-cli adapt`` whose setting has another name or sits in a section; every
# other flag is the setting of its own name.
ADAPT_FLAG_SETTINGS = {
    "snapshot_every": "history.snapshot_every",
    "guard": "guard.enabled",
    "watchdog_timeout": "live.watchdog_timeout",
    "reconnect_attempts": "live.reconnect_attempts",
}


def adapt_settings(config_file: Path | None = None, **flags: Any) -> AdaptConfig:
    """The settings of a new run: ``config_file`` (if any), then every flag that is not ``None``.

    Flags are named as the options of ``tta-cli adapt`` (``batch_size``, ``guard``,
    ``snapshot_every``); ``ADAPT_FLAG_SETTINGS`` says which setting each one sets.

    >>> settings = adapt_settings(model="bundle", source="images", guard=False, snapshot_every=5, lr=None)
    >>> settings.guard.enabled, settings.history.snapshot_every, settings.lr
    (False, 5, None)
    """
    return load_config(config_file, {ADAPT_FLAG_SETTINGS.get(name, name): value for name, value in flags.items()})


def adapt_default(flag: str) -> Any:
    """The default of the setting that a flag of ``tta-cli adapt`` sets (``None``: unset).

    >>> adapt_default("batch_size"), adapt_default("guard"), adapt_default("lr")
    (64, True, None)
    """
    section, _, name = ADAPT_FLAG_SETTINGS.get(flag, flag).rpartition(".")
    if section:
        return getattr(AdaptConfig.model_fields[section].get_default(), name)
    return AdaptConfig.model_fields[name].get_default()


def check_resume_flags(config_file: Path | None = None, **flags: Any) -> None:
    """A resumed run continues with the settings in its ``run.toml``: giving any flag besides
    ``--resume`` (one that is not ``None``) or a config file is a usage error naming them."""
    given = [
        f"--{'no-' if value is False else ''}{name.replace('_', '-')}"
        for name, value in flags.items()
        if value is not None
    ]
    given += ["--config"] if config_file is not None else []
    if given:
        raise UsageError(f"--resume continues with the run's own settings; drop {', '.join(given)}.")


RETIRED_WEIGHTED_NORM = frozenset({"return_on_confidence", "confidence_ratio", "confidence_near_source"})
"""Settings of a mechanism of "weighted" since removed, which a run's ``run.toml`` written before
holds; such a run resumes without them. A new run's config file naming them is refused."""


def read_config(text: str) -> AdaptConfig:
    """A run's own settings, as its ``run.toml`` (or history) holds them."""
    settings = tomllib.loads(text)["adapt"]
    weighted_norm = settings.get("weighted_norm", {})
    settings["weighted_norm"] = {key: value for key, value in weighted_norm.items() if key not in RETIRED_WEIGHTED_NORM}
    return AdaptConfig.model_validate(settings)


def dump_config(config: BaseModel) -> str:
    return tomli_w.dumps({"adapt": config.model_dump(mode="json", exclude_none=True)})
