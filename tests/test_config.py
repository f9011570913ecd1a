"""Settings of a run from a config file and flags, and the one converter of pydantic's errors."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import pytest
from pydantic import BaseModel, Field

from tta_cli.config import (
    ADAPT_FLAG_SETTINGS,
    AdaptConfig,
    HarmonizerName,
    NormName,
    adapt_default,
    adapt_settings,
    check_resume_flags,
    read_config,
    validated,
)
from tta_cli.errors import UsageError


def test_flags_land_in_their_sections_and_unset_flags_leave_the_defaults(tmp_path: Path) -> None:
    settings = adapt_settings(
        model=tmp_path,
        source="frames",
        snapshot_every=4,
        guard=False,
        watchdog_timeout=2.5,
        reconnect_attempts=0,
        batch_size=None,
        limit=10,
    )
    assert settings.history.snapshot_every == 4 and not settings.guard.enabled
    assert settings.live.watchdog_timeout == 2.5 and settings.live.reconnect_attempts == 0
    assert settings.batch_size == 64 and settings.limit == 10


def test_flags_override_the_config_file_and_unset_ones_do_not(tmp_path: Path) -> None:
    config = tmp_path / "settings.toml"
    config.write_text('[adapt]\nmodel = "bundle"\nsource = "frames"\nbatch_size = 8\n[adapt.guard]\nenabled = false\n')
    settings = adapt_settings(config, batch_size=16, guard=None, snapshot_every=None)
    assert settings.batch_size == 16 and not settings.guard.enabled and settings.model == Path("bundle")


def test_every_flag_setting_exists_and_its_default_is_the_model_s() -> None:
    defaults = AdaptConfig(model=Path("bundle"), source="frames")
    for flag, setting in ADAPT_FLAG_SETTINGS.items():
        section, name = setting.split(".")
        assert adapt_default(flag) == getattr(getattr(defaults, section), name)
    assert adapt_default("batch_size") == defaults.batch_size == 64
    assert adapt_default("order") == "sorted" and adapt_default("norm") is None


def test_a_bad_flag_is_a_usage_error_naming_the_setting() -> None:
    with pytest.raises(UsageError, match=r"Setting 'history.snapshot_every': Input should be greater than"):
        adapt_settings(model="bundle", source="frames", snapshot_every=0)
    with pytest.raises(UsageError, match=r"Setting 'sharpness': Extra inputs are not permitted"):
        adapt_settings(model="bundle", source="frames", sharpness=1)


def test_resume_takes_no_other_setting(tmp_path: Path) -> None:
    check_resume_flags(None, model=None, batch_size=None, guard=None)
    with pytest.raises(UsageError) as caught:
        check_resume_flags(tmp_path / "settings.toml", batch_size=8, guard=False, snapshot_every=None)
    assert (
        str(caught.value) == "--resume continues with the run's own settings; drop --batch-size, --no-guard, --config."
    )


class _Example(BaseModel):
    batch_size: int = Field(1, ge=1)


def test_validation_errors_name_the_setting_or_the_option() -> None:
    assert validated(_Example, {"batch_size": 3}).batch_size == 3
    with pytest.raises(UsageError, match=r"^Setting 'batch_size': Input should be greater than or equal to 1\.$"):
        validated(_Example, {"batch_size": 0})
    with pytest.raises(UsageError, match=r"^Option --batch-size: Input should be greater than or equal to 1\.$"):
        validated(_Example, {"batch_size": 0}, as_options=True)


def test_the_names_of_fixed_choices_are_the_registries() -> None:
    from tta_cli.engine.norms import NORMS
    from tta_cli.harmonize import HARMONIZERS

    assert get_args(NormName) == tuple(NORMS)
    assert get_args(HarmonizerName) == tuple(HARMONIZERS)


@pytest.mark.parametrize(
    "flags",
    [{"lr": float("inf")}, {"guard": {"entropy_ema_min": float("inf")}}, {"weighted_norm": {"prior": float("nan")}}],
    ids=["lr", "guard", "weighted-norm"],
)
def test_a_setting_that_is_not_a_finite_number_is_refused(tmp_path: Path, flags: dict[str, object]) -> None:
    with pytest.raises(UsageError, match="finite number"):
        validated(AdaptConfig, {"model": tmp_path, "source": "frames"} | flags)


def test_a_run_toml_naming_retired_mechanisms_still_resumes_and_a_new_config_is_refused(tmp_path: Path) -> None:
    """A run written before a mechanism of "weighted" was removed resumes without it; a config
    file for a new run that sets it is an error, not a setting silently ignored."""
    text = (
        '[adapt]\nmodel = "bundle"\nsource = "frames"\n[adapt.weighted_norm]\nreturn_on_confidence = false\n'
        "confidence_ratio = 1.25\nconfidence_near_source = true\nprior = 32.0\n"
    )
    assert read_config(text).weighted_norm.prior == 32.0
    config = tmp_path / "settings.toml"
    config.write_text(text)
    with pytest.raises(UsageError, match="return_on_confidence"):
        adapt_settings(config)
