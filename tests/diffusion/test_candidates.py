"""DiffusionCandidates: the session's source of pools and recommendations."""

from __future__ import annotations

import torch

from papa_bayes import LinearReward, PreferenceData, fit
from papa_bayes.demo import DigitsUser, make_setup
from papa_bayes.diffusion.candidates import DiffusionCandidates


def test_pools_mix_exploration_and_steering_and_scale_rule_runs():
    setup = make_setup()
    src = DiffusionCandidates(setup.model, setup.feature_map, setup.guard, num_base=32, pool_steps=4,
                              recommend_steps=4, oversample=2.0, scales=(0.1, 1.0), seed=0)
    gen = torch.Generator().manual_seed(0)
    first = src.candidates(None, 6, exploration=0.25, generator=gen)
    assert first.features.shape == (6, setup.feature_map.num_features) and not bool(first.steered.any())
    user = DigitsUser(setup.person)
    ratings = torch.stack([torch.arange(6), user.rate(first.images)], -1)
    post = fit(LinearReward(rationality=1.0), PreferenceData(items=first.features, ratings=ratings), method="laplace")
    pool = src.candidates(post, 8, exploration=0.25, generator=gen)
    assert int(pool.steered.sum()) == 6 and pool.images.shape == (8, 1, 8, 8)
    assert src.last_scale_selection is not None and src._chosen_scale in (0.0, 0.1, 1.0)
    rec = src.recommend(post, 4, generator=gen)
    assert rec.images.shape == (4, 1, 8, 8) and torch.isfinite(rec.features).all()
