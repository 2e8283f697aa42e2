"""Test set-up in Pyro's manner: validation on, a clean param store, a fixed seed per test.

Default dtype stays float32 (diffusion code runs in float32); papa_bayes' data and
Pyro models are float64 by construction.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import pyro
import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_and_clean():
    pyro.clear_param_store()
    pyro.enable_validation(True)
    torch.manual_seed(0)
    yield
    pyro.clear_param_store()


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``): on 2 shared
    cores, 2 threads spin against each other (6x slower for small online updates)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
