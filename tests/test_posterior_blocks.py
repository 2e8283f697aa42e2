"""RewardPosterior.preference_probability over many pairs, in blocks of pairs (GP scale journey, 2026-12-04).

10^5 pairs of a PreferenceGP posterior held their `s x 2n` utilities and outcome probabilities at once (2.8 GB
above the process); they are now taken in blocks, each pair's two items in one block, with the same values.
"""

from __future__ import annotations

import pytest
import torch

from papa_bayes import LinearReward, PreferenceData, fit
from papa_bayes.exceptions import InputDataError
from papa_bayes.inference import posterior as posterior_module
from papa_bayes.models import PreferenceGP


def _data(n: int = 30, d: int = 3) -> PreferenceData:
    X = torch.randn(n, d, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return PreferenceData(items=X, comparisons=[[i, i + 1] if i % 4 else [i + 1, i] for i in range(0, n - 2, 2)])


@pytest.mark.parametrize("model", [LinearReward(), PreferenceGP()], ids=["linear", "gp"])
def test_preference_probability_in_blocks_equals_one_pass(model, monkeypatch):
    post = fit(model, _data(), seed=0, num_samples=64)
    gen = torch.Generator().manual_seed(1)
    a, b = (torch.randn(500, 3, generator=gen, dtype=torch.float64) for _ in range(2))
    whole = post.preference_probability(a, b)
    calls = []
    outcome = type(post).outcome_probabilities

    def counted(self, first, second, **kwargs):
        calls.append(first.shape[0])
        return outcome(self, first, second, **kwargs)

    monkeypatch.setattr(posterior_module, "_PAIR_BLOCK_VALUES", 64 * 7)  # blocks of 7 pairs
    monkeypatch.setattr(type(post), "outcome_probabilities", counted)
    blocked = post.preference_probability(a, b)
    assert calls == [7] * 71 + [3]  # was one call of 500 pairs
    torch.testing.assert_close(blocked, whole, rtol=0, atol=1e-12)
    with pytest.raises(InputDataError, match=r"^b: expected shape \(500, 3\) \(same as a\), got \(499, 3\)"):
        post.preference_probability(a, b[:-1])
