"""The Pyro models and their pure-torch twins (used by Laplace and ArviZ) agree."""

from __future__ import annotations

import pytest
import torch
from pyro.infer.util import torch_item
from pyro import poutine
from pyro.poutine.util import site_is_subsample

from papa_bayes import HierarchicalLinearReward, LinearReward, ModelError, PreferenceData
from papa_bayes.models.likelihoods import comparison_log_probs


def _data(ties=False, ratings=True, raters=False):
    g = torch.Generator().manual_seed(3)
    X = torch.randn(12, 3, generator=g, dtype=torch.float64)
    comps = torch.tensor([[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]])
    kw = dict(items=X, comparisons=comps)
    if ties:
        kw["ties"] = [False, True, False, True, False]
    if ratings:
        kw["ratings"] = [[10, 1], [11, -1], [0, 1]]
    if raters:
        kw["comparison_rater"] = [0, 1, 2, 0, 1]
        kw["rating_rater"] = [2, 1, 0] if ratings else None
    return PreferenceData(**kw)


CASES = [
    (LinearReward(), dict()),
    (LinearReward(link="probit"), dict()),
    (LinearReward(ties=True), dict(ties=True)),
    (LinearReward(link="probit", ties=True), dict(ties=True)),
    (LinearReward(rationality=2.0), dict()),
    (HierarchicalLinearReward(), dict(raters=True)),
    (HierarchicalLinearReward(link="probit", ties=True), dict(raters=True, ties=True)),
]


@pytest.mark.parametrize("model, kw", CASES, ids=[f"{type(m).__name__}-{m.link}-{m.ties}" for m, _ in CASES])
def test_pyro_log_density_equals_log_joint(model, kw):
    data = _data(**kw)
    trace = poutine.trace(model).get_trace(data)
    params = {k: trace.nodes[k]["value"].unsqueeze(0) for k in trace.stochastic_nodes if not site_is_subsample(trace.nodes[k])}
    assert set(params) == set(model.priors(data))
    assert list(params) == list(model.priors(data))  # same order (SVI guides rely on it)
    ours = float(model.log_joint(params, data)[0])
    assert ours == pytest.approx(torch_item(trace.log_prob_sum()), rel=1e-10, abs=1e-10)


def test_ties_need_a_tie_model():
    with pytest.raises(ModelError, match="ties=True"):
        LinearReward().log_joint({"rationality": torch.ones(1), "scaled_w": torch.zeros(1, 3)}, _data(ties=True, ratings=False))


def test_outcome_probabilities_sum_to_one_and_tie_grows_with_strength():
    diff = torch.linspace(-3, 3, 7, dtype=torch.float64)
    for link in ("logit", "probit"):
        p_small = comparison_log_probs(diff, link, torch.tensor(0.1, dtype=torch.float64)).exp()
        p_big = comparison_log_probs(diff, link, torch.tensor(1.5, dtype=torch.float64)).exp()
        assert torch.allclose(p_small.sum(-1), torch.ones(7, dtype=torch.float64))
        assert torch.all(p_big[:, 2] > p_small[:, 2])
        strict = comparison_log_probs(diff, link).exp()
        assert torch.all(strict[1:, 0] > strict[:-1, 0])  # monotone in the difference


def test_bad_model_options():
    from papa_bayes import InputDataError

    with pytest.raises(ModelError, match="link"):
        LinearReward(link="cauchit")
    with pytest.raises(InputDataError, match="prior_scale"):
        LinearReward(prior_scale=-1.0)
    with pytest.raises(InputDataError, match="rationality"):
        LinearReward(rationality=float("nan"))
