"""A BoTorch practitioner's path through papa_bayes' acquisition: our acquisition functions inside BoTorch's
optimizers (sequential batches pend chosen items), optimize_queries' advice, the active-learning figures of a
one-draw posterior, and the active-learning example's --strategies."""

from __future__ import annotations

import importlib.util
import math
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from botorch.optim import optimize_acqf, optimize_acqf_discrete

from papa_bayes import LinearReward, fit
from papa_bayes.acquisition import (
    PairwiseInformationGain,
    RatingInformationGain,
    optimize_queries,
    weight_entropy_bits,
)
from papa_bayes.exceptions import InputDataError, PapaBayesWarning
from papa_bayes.users import SimulatedUser, simulate_comparisons

pytestmark = pytest.mark.usefixtures("one_thread")

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "03_active_learning.py"


@pytest.fixture(scope="module")
def journey():
    """12 answers about a 30-item pool, a Laplace fit of a linear reward (64 draws)."""
    pool = torch.randn(30, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    data = simulate_comparisons(SimulatedUser([1.0, -0.5, 0.3]), pool, 12, generator=torch.Generator().manual_seed(0))
    return pool, data, fit(LinearReward(), data, method="laplace", num_samples=64)


def _example():
    spec = importlib.util.spec_from_file_location("example_03_active_learning", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_rating_acquisition_in_botorch_discrete_batch_says_why(journey):
    """optimize_acqf_discrete(acq, q=3) pends the items it chose: old code answered 'X_pending: expected m < 1'
    to a user who had set no X_pending, without saying BoTorch had, or what to use instead."""
    pool, _, post = journey
    acq = RatingInformationGain(post, threshold=0.0)
    best, _ = optimize_acqf_discrete(acq, q=1, choices=pool)  # one like/dislike query: works
    assert best.shape == (1, 3)
    with pytest.raises(InputDataError) as info:
        optimize_acqf_discrete(acq, q=3, choices=pool)
    message = str(info.value)
    assert info.value.field == "X_pending"
    assert "sequential" in message and "optimize_acqf_discrete" in message and "select_queries(k=" in message
    assert acq.X_pending is None  # nothing left behind


def test_pair_acquisition_with_anchor_in_botorch_discrete_batch_says_why(journey):
    """One pending anchor, then q=2 from BoTorch: its second pick pends anchor + first pick, a full pair."""
    pool, _, post = journey
    acq = PairwiseInformationGain(post)
    acq.set_X_pending(pool[:1])
    partner, _ = optimize_acqf_discrete(acq, q=1, choices=pool[1:])
    assert partner.shape == (1, 3)
    with pytest.raises(InputDataError, match="sequential optimizers") as info:
        optimize_acqf_discrete(acq, q=2, choices=pool[1:])
    assert info.value.field == "X_pending" and "query of 2 items" in str(info.value)
    # A user's own wrong X_pending keeps the plain message.
    with pytest.raises(InputDataError) as info:
        acq.set_X_pending(pool[:1, :2])
    assert "sequential" not in str(info.value)


@pytest.mark.parametrize("how", ["sequential", "discrete"])
def test_pair_acquisition_in_botorch_one_item_optimizers_says_why(journey, how):
    """optimize_acqf(q=2, sequential=True) and optimize_acqf_discrete(q=2) value one item at a time: old code
    advised set_X_pending or select_queries only, never that BoTorch had split the pair, nor the joint q=2."""
    pool, _, post = journey
    acq = PairwiseInformationGain(post)
    bounds = torch.tensor([[-2.0] * 3, [2.0] * 3], dtype=torch.float64)
    with pytest.raises(InputDataError) as info:
        if how == "sequential":
            optimize_acqf(acq, bounds, q=2, num_restarts=2, raw_samples=8, sequential=True)
        else:
            optimize_acqf_discrete(acq, q=2, choices=pool)
    assert info.value.field == "X" and "sequential optimizers" in str(info.value)
    assert "optimize_acqf(acq, bounds, q=2)" in str(info.value)
    X, value = optimize_acqf(acq, bounds, q=2, num_restarts=2, raw_samples=8)  # the joint pair the advice names
    assert X.shape == (2, 3) and float(value) > 0


def test_optimize_queries_advice_names_real_arguments(journey):
    """The 'fewer distinct optima' warning advised select_queries(batch_size=k): select_queries has no such
    argument (it is k)."""
    pool, _, post = journey
    bounds = torch.tensor([[-1.0] * 3, [1.0] * 3], dtype=torch.float64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        X, _ = optimize_queries(post, bounds, strategy="uncertainty", k=2, num_restarts=2, raw_samples=4)
    assert X.shape[0] == 1  # both restarts reach the one question of a linear utility's top variance
    messages = [str(w.message) for w in caught if issubclass(w.category, PapaBayesWarning)]
    assert messages and all("batch_size" not in m for m in messages)
    assert any("select_queries(posterior, pool, k=2)" in m for m in messages), messages


def test_weight_entropy_of_one_draw_is_nan_without_torch_warning(journey):
    """A one-draw posterior (example 03 --num-samples 1): torch.cov warned 'degrees of freedom <= 0' every round."""
    _, data, post = journey
    one = fit(LinearReward(), data, method="laplace", num_samples=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isnan(weight_entropy_bits(one))
    assert math.isfinite(weight_entropy_bits(post))


@pytest.mark.parametrize("strategies", ["", ",,", "eig,eig", "eig,bald", "bogus", "eig,rating"])
def test_example_03_refuses_bad_strategies_before_running(strategies, tmp_path, capsys):
    """Old: '' and ',,' ran nothing and wrote an empty result; 'eig,eig' counted every seed twice (4 runs for 2
    seeds); 'bogus' ran the strategies before it, then stopped with a traceback."""
    module = _example()
    with pytest.raises(SystemExit) as info:
        module.main(["--tiny", "--strategies", strategies, "--out", str(tmp_path / "out")])
    assert info.value.code == 2
    assert "argument --strategies" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_example_03_strategy_aliases_resolve():
    module = _example()
    args = module.parse_args(["--strategies", " bald , random,variance"])
    assert args.strategies == ["eig", "random", "uncertainty"]
    assert module.parse_args([]).strategies == ["eig", "random"]


@pytest.mark.parametrize("user", [SimulatedUser([1.0, -1.0, 0.5]), SimulatedUser.from_gp_draw(3, seed=0)],
                         ids=["linear", "gp"])
def test_user_batches_of_wrong_width_name_their_argument(user):
    """Old: every wrong batch was reported as 'x: expected shape `n x 3`', whether first or second was wrong."""
    items = torch.randn(4, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with pytest.raises(InputDataError, match=r"^second: expected a batch of `n x 3` items, got \(4, 2\)"):
        user.compare(items, items[:, :2])
    with pytest.raises(InputDataError, match=r"^first: expected a batch of `n x 3` items, got \(1, 4, 3\)"):
        user.compare(items[None], items[None])
    first_won, tie = user.compare(items, items.flip(0))  # the right width still answers
    assert first_won.shape == tie.shape == (4,)


@pytest.mark.parametrize("rationality", [torch.tensor(math.inf), np.array(math.inf)], ids=["tensor", "array"])
def test_noiseless_user_from_a_0d_tensor_of_inf(rationality):
    """A 0-d tensor or array of 2.0 was a rationality, one of inf ('math.inf for a noiseless user') was refused."""
    user = SimulatedUser([1.0, -1.0], rationality=rationality, seed=0)
    assert user.rationality == math.inf
    first = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.2, 0.1]], dtype=torch.float64)
    won, _ = user.compare(first, first.flip(-1))
    assert won.tolist() == [True, False, True]  # the better item every time
    with pytest.raises(InputDataError, match="^rationality"):
        SimulatedUser([1.0, -1.0], rationality=torch.tensor(-math.inf))
