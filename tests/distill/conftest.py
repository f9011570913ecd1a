"""A run to distill from: the tiny bundle adapted with Tent on a few labeled target images."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests.conftest import write_image_folder
from tta_cli.config import AdaptConfig
from tta_cli.engine import adapt


@pytest.fixture(scope="session")
def target_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("target") / "data", per_class=4, seed=1)


@pytest.fixture(scope="session")
def teacher_run(bundle_path: Path, target_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("teacher") / "run"
    adapt(AdaptConfig(model=bundle_path, source=str(target_folder), run=run, method="tent", batch_size=6, lr=5e-2))
    return run


@pytest.fixture(scope="package", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models train fastest on one thread, the more so on a busy machine; and results that
    must be equal bit for bit come from the same number of threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
