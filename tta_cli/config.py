"""Run configuration: one pydantic model, loaded from TOML, overridden by flags, saved with the run."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import tomli_w
import tomllib
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tta_cli.errors import UsageError


class AdaptConfig(BaseModel):
    """Everything ``tta-cli adapt`` needs; ``run.toml`` in the run directory holds it resolved."""

    model_config = ConfigDict(extra="forbid")

    model: Path = Field(description="model bundle folder")
    source: Path = Field(description="folder or image file to adapt on")
    run: Path = Field(description="run directory for predictions, summary and configuration")
    method: str = "tent"
    batch_size: int = Field(64, ge=1)
    optimizer: Literal["adam", "sgd"] | None = None
    lr: float | None = Field(None, gt=0)
    device: str = "auto"
    order: Literal["sorted", "shuffled"] = "sorted"
    seed: int = 0
    workers: int | None = Field(None, ge=1)
    limit: int | None = Field(None, ge=1, description="stop after this many images")


def load_config(config_file: Path | None, overrides: dict[str, Any]) -> AdaptConfig:
    """Settings from ``config_file`` (if any), then every override that is not ``None``."""
    settings: dict[str, Any] = {}
    if config_file is not None:
        if not config_file.is_file():
            raise UsageError(f"Config file {config_file} does not exist.")
        try:
            settings = tomllib.loads(config_file.read_text())
        except tomllib.TOMLDecodeError as error:
            raise UsageError(f"Config file {config_file} is not valid TOML: {error}.") from error
        settings = settings.get("adapt", settings)
    settings.update({key: value for key, value in overrides.items() if value is not None})
    try:
        return AdaptConfig.model_validate(settings)
    except ValidationError as error:
        problem = error.errors()[0]
        where = ".".join(str(part) for part in problem["loc"]) or "config"
        raise UsageError(f"Setting {where!r}: {problem['msg']}.") from error


def dump_config(config: BaseModel) -> str:
    return tomli_w.dumps({"adapt": config.model_dump(mode="json", exclude_none=True)})
