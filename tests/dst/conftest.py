"""The dst tests run many tiny ops: one intra-op thread, because OpenMP workers spinning on a
shared 2-core machine made them 10-60× slower (measured: 100 RigL steps in 0.4 s with one
thread, 5-30 s with two while other processes ran)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
