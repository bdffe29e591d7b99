"""Settings for the whole suite.

Test tensors are small: a second torch thread buys nothing, and on a loaded 2-core machine
oversubscribed OpenMP threads made parts of the suite over ten times slower (measured:
MIL tests 5 s vs 66 s, streaming tests 18 s vs 13 min).
"""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
