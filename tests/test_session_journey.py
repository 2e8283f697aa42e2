"""A demanding user's journey through users, the store and sessions: bad inputs named, nothing stored broken."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from papa_bayes.exceptions import InputDataError
from papa_bayes.session import FeaturePool, PreferenceSession
from papa_bayes.store import PreferenceStore
from papa_bayes.users import SimulatedUser

X = torch.tensor([[0.0, 1.0, 2.0], [1.0, -1.0, 0.5], [2.0, 0.0, -1.0], [-1.0, 2.0, 1.0]], dtype=torch.float64)


@pytest.mark.parametrize("utility", [lambda x: None, lambda x: "high", lambda x: [object()] * len(x)])
def test_callable_utility_of_no_numbers_is_named(utility):
    # A bare TypeError from torch.as_tensor named neither the utility nor what it should return.
    user = SimulatedUser(utility)
    with pytest.raises(InputDataError, match="utility"):
        user.compare(X[:2], X[2:])


@pytest.mark.parametrize("as_array", [torch.ones, lambda n, dtype: np.ones(n, dtype=np.complex128)])
def test_callable_utility_of_complex_numbers_is_refused(as_array):
    # Complex utilities lost their imaginary part, with a mere warning.
    user = SimulatedUser(lambda x: as_array(x.shape[0], dtype=torch.complex128))
    with pytest.raises(InputDataError, match="utility"):
        user.compare(X[:2], X[2:])
    with pytest.raises(InputDataError, match="utility"):
        user.rate(X[:2])


@pytest.mark.parametrize("link", ["logit", "probit"])
def test_a_huge_finite_rationality_answers_as_a_noiseless_user(link):
    # rationality * (u(a) - u(b)) overflowed to inf: the answer probabilities were NaN and
    # torch.multinomial raised a bare RuntimeError.
    user = SimulatedUser(torch.tensor([1.0, 1.0, 1.0]), link=link, rationality=1e308, tie_margin=0.3)
    noiseless = SimulatedUser(torch.tensor([1.0, 1.0, 1.0]), link=link, rationality=math.inf, tie_margin=0.3)
    probs = user.outcome_probabilities(X[:2], X[2:])
    assert bool(torch.isfinite(probs).all())
    torch.testing.assert_close(probs, noiseless.outcome_probabilities(X[:2], X[2:]))
    first_won, tie = user.compare(X[:2], X[2:])
    assert first_won.shape == tie.shape == (2,)


def test_round_metrics_that_are_not_a_dict_of_numbers_are_refused(tmp_path):
    store = PreferenceStore(tmp_path / "s.db")
    # A list was stored, after which rounds() (and a session's history) raised a bare TypeError for good.
    with pytest.raises(InputDataError, match="metrics"):
        store.finish_round(rater=0, round=0, metrics=[1.0])
    with pytest.raises(InputDataError, match="metrics"):  # a bare TypeError from json's default=float
        store.finish_round(rater=0, round=0, metrics={"x": object()})
    assert store.rounds(0) == []
    store.finish_round(rater=0, round=0, metrics={"x": 1})
    assert store.rounds(0) == [{"round": 0, "x": 1}]
    store.close()


def test_a_config_that_is_not_a_dict_is_refused(tmp_path):
    items = X.repeat(2, 1) + torch.arange(8, dtype=torch.float64).unsqueeze(-1)
    with PreferenceSession(tmp_path / "s.db", FeaturePool(items), SimulatedUser(torch.ones(3)), pool_size=4,
                           num_draws=8) as session:
        session.step()
    store = PreferenceStore(tmp_path / "s.db")
    # A list replaced the session's configuration: resume() then raised a bare TypeError.
    with pytest.raises(InputDataError, match="config"):
        store.set_config([1, 2])
    assert store.config["query_type"] == "pair"
    store.close()
    PreferenceSession.resume(tmp_path / "s.db", FeaturePool(items), SimulatedUser(torch.ones(3))).close()


@pytest.mark.parametrize("option, value", [("score", "high"), ("score", True), ("rng_state", [1, 2]),
                                           ("source_state", {"seen": {1, 2}}), ("source_state", [1])])
def test_query_options_of_the_wrong_kind_are_named(tmp_path, option, value):
    store = PreferenceStore(tmp_path / "s.db")
    store.add_items(X)
    with pytest.raises(InputDataError, match=option):
        store.add_query(round=0, rater=0, kind="pair", item_a=0, item_b=1, **{option: value})
    assert store.queries() == []
    store.close()


def test_item_source_labels_of_the_wrong_kind_are_named(tmp_path):
    store = PreferenceStore(tmp_path / "s.db")
    with pytest.raises(InputDataError, match="source"):  # a bare TypeError: 'NoneType' object is not iterable
        store.add_items(X, source=None)
    assert store.num_items == 0
    store.close()
