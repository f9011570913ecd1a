from __future__ import annotations

from pathlib import Path

import pytest

from tta_cli.errors import UsageError
from tta_cli.training.source_model import train


def test_the_device_is_parsed_like_every_other_device_option(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="Unknown device 'tpu'"):
        train(tmp_path / "no data yet", tmp_path / "out", device="tpu")
    assert not (tmp_path / "out").exists()
