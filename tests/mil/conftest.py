"""Run the MIL tests on one torch thread.

Their tensors are tiny: a second thread buys nothing, and on a loaded 2-core machine
oversubscribed OpenMP threads made the suite over ten times slower (5 s vs 66 s measured).
"""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="package")
def _one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
