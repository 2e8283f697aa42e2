"""The label-efficiency claim on APReL's linear protocol: EIG beats random pairs.

d = 8, w* uniform on the sphere, logit user with rationality 1, pool of 500 N(0, I)
items, Laplace posterior updated online; 20 answers (the first a random pair, the
same for both arms), 10 seeds, paired.
"""

from __future__ import annotations

import pytest
import torch

from papa_bayes.acquisition import run_active_learning
from papa_bayes.users import SimulatedUser, random_unit_vector


pytestmark = pytest.mark.usefixtures("one_thread")


def _alignment_after(strategy: str, seed: int, num_queries: int = 20) -> float:
    gen = torch.Generator().manual_seed(1000 + seed)
    w = random_unit_vector(8, generator=gen)
    pool = torch.randn(500, 8, generator=gen, dtype=torch.float64)
    user = SimulatedUser(w, rationality=1.0, seed=seed)
    run = run_active_learning(user, pool, strategy=strategy, num_queries=num_queries, seed=seed)
    assert len(run.alignment) == num_queries
    return run.alignment[-1]


def test_eig_beats_random_by_005_alignment_after_20_queries():
    eig = torch.tensor([_alignment_after("eig", s) for s in range(10)])
    rnd = torch.tensor([_alignment_after("random", s) for s in range(10)])
    diff = eig - rnd
    assert diff.mean() >= 0.05, f"EIG {eig.mean():.3f} vs random {rnd.mean():.3f} (paired diffs {diff.tolist()})"
