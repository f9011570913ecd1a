from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True, scope="package")
def one_thread() -> Iterator[None]:
    """These tests run tiny tensors, where handing work to a second thread costs more than it
    saves; on a loaded CI machine it measured 40× slower (59 s against 1.6 s for two runs)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
