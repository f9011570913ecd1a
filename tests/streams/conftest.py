"""Stream tests run beside a reader thread on small CPUs: one intra-op thread keeps torch from
spinning at its barriers while the reader holds a core (subprocesses get OMP_NUM_THREADS=1)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
