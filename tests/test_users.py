"""Simulated and callback users: reproducible answers, the right noise, GP-draw utilities."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from papa_bayes.data import PreferenceData
from papa_bayes.exceptions import InputDataError
from papa_bayes.users import (
    CallbackUser,
    RandomFourierUtility,
    SimulatedUser,
    random_gp_utility,
    random_unit_vector,
    simulate_comparisons,
    simulate_ratings,
    winner_first,
)


pytestmark = pytest.mark.usefixtures("one_thread")


def _items(n=40, d=3, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_random_unit_vector_is_reproducible_and_unit():
    a = random_unit_vector(5, generator=torch.Generator().manual_seed(3))
    b = random_unit_vector(5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert a.norm().item() == pytest.approx(1.0)


@pytest.mark.parametrize("link", ["logit", "probit"])
def test_answers_reproducible_from_seed(link):
    x = _items()
    w = torch.tensor([1.0, -0.5, 0.2], dtype=torch.float64)
    u1 = SimulatedUser(w, link=link, tie_margin=0.3, seed=7)
    u2 = SimulatedUser(w, link=link, tie_margin=0.3, seed=7)
    first = [u1.compare(x[:20], x[20:]), u1.rate(x)]
    second = [u2.compare(x[:20], x[20:]), u2.rate(x)]
    assert torch.equal(first[0][0], second[0][0]) and torch.equal(first[0][1], second[0][1])
    assert torch.equal(first[1], second[1])
    u1.reset()
    again = u1.compare(x[:20], x[20:])
    assert torch.equal(again[0], first[0][0]) and torch.equal(again[1], first[0][1])
    other = SimulatedUser(w, link=link, tie_margin=0.3, seed=8).compare(x[:20], x[20:])
    assert not (torch.equal(other[0], first[0][0]) and torch.equal(other[1], first[0][1]))


def test_global_rng_untouched():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    user = SimulatedUser(torch.ones(3, dtype=torch.float64), seed=1)
    user.compare(_items(10)[:5], _items(10)[5:])
    assert torch.equal(torch.rand(3), expected)


def test_logit_answer_frequency_matches_link():
    x = torch.tensor([[0.5, 0.0], [0.0, 0.0]], dtype=torch.float64)
    user = SimulatedUser(torch.tensor([1.0, 0.0], dtype=torch.float64), rationality=2.0, seed=0)
    first = x[:1].expand(20000, 2)
    second = x[1:].expand(20000, 2)
    won, tie = user.compare(first, second)
    assert not tie.any()
    assert won.double().mean().item() == pytest.approx(1 / (1 + math.exp(-1.0)), abs=0.01)


def test_noiseless_user_always_right_and_ties():
    x = _items(60, 2)
    w = torch.tensor([1.0, 1.0], dtype=torch.float64)
    user = SimulatedUser(w, rationality=math.inf, seed=0)
    won, _ = user.compare(x[:30], x[30:])
    assert torch.equal(won, (x[:30] @ w) > (x[30:] @ w))
    likes = user.rate(x)
    assert torch.equal(likes == 1, (x @ w) > 0)
    tied = SimulatedUser(w, tie_margin=2.0, seed=0).compare(x[:30], x[30:])[1]
    assert tied.any()


def test_gp_draw_user_reproducible_and_rbf_covariance():
    x = _items(5, 2)
    a = SimulatedUser.from_gp_draw(2, lengthscale=0.7, seed=4)
    b = SimulatedUser.from_gp_draw(2, lengthscale=0.7, seed=4)
    c = SimulatedUser.from_gp_draw(2, lengthscale=0.7, seed=5)
    assert torch.allclose(a.utility(x), b.utility(x))
    assert not torch.allclose(a.utility(x), c.utility(x))
    # Over many draws, E[u(x) u(x')] approaches the RBF kernel.
    gen = torch.Generator().manual_seed(0)
    pts = torch.tensor([[0.0, 0.0], [0.5, 0.0], [1.0, 1.0]], dtype=torch.float64)
    vals = torch.stack([random_gp_utility(2, lengthscale=0.7, num_features=256, generator=gen)(pts)
                        for _ in range(3000)])
    emp = vals.T @ vals / vals.shape[0]
    sq = torch.cdist(pts, pts) ** 2
    assert torch.allclose(emp, torch.exp(-sq / (2 * 0.7**2)), atol=0.07)


def test_random_fourier_utility_rejects_bad_input():
    f = RandomFourierUtility(3, generator=torch.Generator().manual_seed(0))
    with pytest.raises(InputDataError):
        f(torch.zeros(4, 2))
    with pytest.raises(InputDataError):
        RandomFourierUtility(3, lengthscale=-1.0, generator=torch.Generator())
    gen = torch.Generator().manual_seed(0)
    for kwargs, field in (({"lengthscale": "1"}, "lengthscale"), ({"lengthscale": torch.ones(2)}, "lengthscale"),
                          ({"lengthscale": float("inf")}, "lengthscale"),
                          ({"outputscale": float("inf")}, "outputscale"),
                          ({"outputscale": "1"}, "outputscale"), ({"num_features": 2.5}, "num_features"),
                          ({"num_features": True}, "num_features")):
        with pytest.raises(InputDataError, match=field):
            RandomFourierUtility(3, generator=gen, **kwargs)
    for d in (2.5, "2", True):
        with pytest.raises(InputDataError, match="d"):
            RandomFourierUtility(d, generator=gen)
    with pytest.raises(InputDataError, match="generator"):  # never the global RNG
        RandomFourierUtility(3, generator=None)
    for d in (0, -1, 2.5):
        with pytest.raises(InputDataError, match="d"):
            random_unit_vector(d, generator=gen)
    with pytest.raises(InputDataError, match="generator"):
        random_unit_vector(3, generator=None)
    with pytest.raises(InputDataError, match="seed"):
        SimulatedUser.from_gp_draw(2, seed="x")


def test_callable_user_on_any_input():
    user = SimulatedUser(lambda imgs: imgs.flatten(1).mean(-1), rationality=math.inf, seed=0)
    imgs = torch.stack([torch.zeros(4, 4), torch.ones(4, 4)]).double()
    won, _ = user.compare(imgs[1:], imgs[:1])
    assert won.item()


def test_simulate_helpers_winner_first():
    x = _items(30, 2)
    w = torch.tensor([2.0, 0.0], dtype=torch.float64)
    user = SimulatedUser(w, rationality=math.inf, seed=0)
    data = simulate_comparisons(user, x, 25, generator=torch.Generator().manual_seed(1))
    assert isinstance(data, PreferenceData)
    u = x @ w
    assert bool((u[data.comparisons[:, 0]] >= u[data.comparisons[:, 1]]).all())
    ratings = simulate_ratings(user, x, 10, generator=torch.Generator().manual_seed(1))
    assert ratings.num_ratings == 10
    pairs = torch.tensor([[0, 1], [2, 3]])
    assert winner_first(pairs, torch.tensor([True, False])).tolist() == [[0, 1], [3, 2]]


def test_callback_user():
    user = CallbackUser(compare_fn=lambda a, b: 0 if a.sum() > b.sum() else "tie", rate_fn=lambda x: 1)
    x = _items(4, 2)
    won, tie = user.compare(x[:2], x[2:])
    assert won.shape == tie.shape == (2,)
    assert user.rate(x).tolist() == [1, 1, 1, 1]
    with pytest.raises(InputDataError):
        CallbackUser(compare_fn=lambda a, b: "maybe").compare(x[:1], x[1:2])
    with pytest.raises(InputDataError):
        CallbackUser().rate(x)


def test_user_rejects_bad_parameters():
    with pytest.raises(InputDataError):
        SimulatedUser(torch.ones(2), rationality=0.0)
    with pytest.raises(InputDataError):
        SimulatedUser(torch.ones(2), tie_margin=-1.0)
    with pytest.raises(InputDataError):
        SimulatedUser("not a utility")
    w = torch.ones(2)
    for kwargs, field in (({"rationality": "1"}, "rationality"), ({"rationality": True}, "rationality"),
                          ({"tie_margin": "0"}, "tie_margin"), ({"tie_margin": True}, "tie_margin"),
                          ({"threshold": "0"}, "threshold"), ({"threshold": None}, "threshold"),
                          ({"seed": 1.5}, "seed"), ({"seed": "x"}, "seed"), ({"seed": -1}, "seed")):
        with pytest.raises(InputDataError, match=field):
            SimulatedUser(w, **kwargs)
    for weights in (torch.tensor([True, False]), torch.tensor([1 + 1j, 2])):
        with pytest.raises(InputDataError, match="utility"):
            SimulatedUser(weights)
    assert SimulatedUser(w, rationality=math.inf).rationality == math.inf  # the noiseless user stays


def test_user_rejects_bad_weights_items_and_answers():
    with pytest.raises(InputDataError, match="threshold"):
        SimulatedUser(torch.ones(2), threshold=float("nan"))
    with pytest.raises(InputDataError, match="utility"):
        SimulatedUser(torch.tensor([1.0, float("nan")]))
    with pytest.raises(InputDataError, match="utility"):
        SimulatedUser(torch.zeros(0))
    # Weights as a NumPy array or a list are a weight vector too (they used to be refused as "not a weight vector").
    np = pytest.importorskip("numpy")
    for w in (np.array([1.0, -1.0], dtype=np.float32), [1.0, -1.0]):
        assert torch.equal(SimulatedUser(w).weights, torch.tensor([1.0, -1.0], dtype=torch.float64))
    for bad in (["a", "b"], np.array([1.0, np.nan]), [[1.0, 2.0], [3.0]]):
        with pytest.raises(InputDataError, match="utility"):
            SimulatedUser(bad)
    user = SimulatedUser(torch.ones(2), seed=0)
    x = _items(4, 2)
    with pytest.raises(InputDataError, match="x"):
        user.compare(_items(2, 3), _items(2, 3))  # another dimension than the weights
    nan_items = x.clone()
    nan_items[1, 0] = float("nan")
    with pytest.raises(InputDataError, match="x"):
        user.rate(nan_items)
    with pytest.raises(InputDataError, match="second"):
        user.compare(x[:3], x[3:])  # 3 items against 1: no silent broadcast
    with pytest.raises(InputDataError, match="x"):
        SimulatedUser(lambda z: torch.full((z.shape[0],), float("nan"))).rate(x)
    with pytest.raises(InputDataError, match="answer"):
        CallbackUser(compare_fn=lambda a, b: True).compare(x[:1], x[1:2])  # True would read as 1, "second"
    with pytest.raises(InputDataError, match="second"):
        CallbackUser(compare_fn=lambda a, b: 0).compare(x[:2], x[2:3])
    gen = torch.Generator().manual_seed(0)
    with pytest.raises(InputDataError, match="items"):
        simulate_ratings(user, x[:0], 3, generator=gen)
    with pytest.raises(InputDataError, match="num_ratings"):
        simulate_ratings(user, x, -1, generator=gen)
    with pytest.raises(InputDataError, match="num_comparisons"):
        simulate_comparisons(user, x, -1, generator=gen)
    with pytest.raises(InputDataError, match="x"):
        user.compare("ab", "cd")
    with pytest.raises(InputDataError, match="x"):  # `n x d` features, not a batch of matrices
        user.utility(torch.zeros(2, 2, 2))
    with pytest.raises(InputDataError, match="generator"):  # never the global RNG
        simulate_comparisons(user, x, 3, generator=None)
    with pytest.raises(InputDataError, match="generator"):
        simulate_ratings(user, x, 3, generator=None)
    with pytest.raises(InputDataError, match="user"):
        simulate_comparisons("user", x, 3, generator=gen)
    assert simulate_ratings(user, x.tolist(), 3, generator=gen).num_ratings == 3  # a nested list is read as items
    with pytest.raises(InputDataError, match="compare_fn"):
        CallbackUser(compare_fn=5)
    with pytest.raises(InputDataError, match="rate_fn"):
        CallbackUser(rate_fn="like")
    with pytest.raises(InputDataError, match="x"):
        CallbackUser(rate_fn=lambda item: 1).rate(torch.tensor(1.0))
    pairs = torch.tensor([[0, 1], [2, 3]])
    with pytest.raises(InputDataError, match="first_won"):  # one answer for two pairs: no broadcast
        winner_first(pairs, torch.tensor([True]))
    with pytest.raises(InputDataError, match="first_won"):
        winner_first(pairs, torch.tensor([5, 0]))
    with pytest.raises(InputDataError, match="pairs"):  # float indices are not truncated
        winner_first(torch.tensor([[0.5, 1.2]]), torch.tensor([True]))


def test_like_frequency_follows_rationality():
    x = torch.tensor([[0.5, 0.0]], dtype=torch.float64).expand(20000, 2)
    user = SimulatedUser(torch.tensor([1.0, 0.0], dtype=torch.float64), rationality=2.0, threshold=0.0, seed=0)
    liked = float((user.rate(x) > 0).double().mean())
    assert liked == pytest.approx(1 / (1 + math.exp(-1.0)), abs=0.01)  # sigmoid(2 x 0.5), not sigmoid(0.5) = 0.62


def test_callback_answers_from_numpy_and_torch():
    """np.bool_(True) / torch.tensor(True) read as 1 ("second", or "like"), silently; an array of answers
    raised numpy's ValueError / torch's RuntimeError. Single numbers of any kind are fine."""
    import numpy as np

    x = _items(2, 2)
    for ans in (np.int64(0), torch.tensor(0), np.array(0), 0.0):
        assert CallbackUser(lambda a, b, ans=ans: ans).compare(x[:1], x[1:])[0].tolist() == [True]
    assert CallbackUser(lambda a, b: torch.tensor(2)).compare(x[:1], x[1:])[1].tolist() == [True]
    assert CallbackUser(rate_fn=lambda i: np.int32(-1)).rate(x).tolist() == [-1, -1]
    for ans in (True, np.bool_(True), torch.tensor(True), np.array([0, 1]), torch.tensor([0, 1]), None, [0]):
        with pytest.raises(InputDataError, match="answer"):
            CallbackUser(lambda a, b, ans=ans: ans).compare(x[:1], x[1:])
        with pytest.raises(InputDataError, match="answer"):
            CallbackUser(rate_fn=lambda i, ans=ans: ans).rate(x)
    assert "compare_fn=" in repr(CallbackUser(lambda a, b: 0))


def test_callback_answers_that_are_complex_numbers_are_refused():
    """1 + 0j == 1 read as "second" (or a like); rate() failed with int()'s TypeError."""
    x = _items(2, 2)
    for ans in (1 + 0j, np.complex128(1), torch.tensor(1 + 0j), np.array([-1 + 0j])):
        with pytest.raises(InputDataError, match=r"^answer: expected .*, not a complex number, got"):
            CallbackUser(lambda a, b, ans=ans: ans).compare(x[:1], x[1:])
        with pytest.raises(InputDataError, match=r"^answer: expected \+1 \(like\) or -1 \(dislike\), not a complex"):
            CallbackUser(rate_fn=lambda i, ans=ans: ans).rate(x)


def test_a_callable_utility_gives_one_value_per_item():
    """A callable returning one number for `n` items answered one query for `n` pairs, silently."""
    user = SimulatedUser(lambda x: x.sum())
    with pytest.raises(InputDataError, match="3 utilities"):
        user.compare(_items(3, 2), _items(3, 2, seed=1))
    with pytest.raises(InputDataError, match="3 utilities"):
        user.rate(_items(3, 2))
    assert SimulatedUser(lambda x: x.sum(-1)).compare(_items(3, 2), _items(3, 2, seed=1))[0].shape == (3,)


def test_weights_as_a_list_of_floats_are_read_in_double():
    """A list of Python floats went through float32: SimulatedUser([0.1]) held 0.10000000149."""
    assert SimulatedUser([0.1, -0.3]).weights.tolist() == [0.1, -0.3]
    assert SimulatedUser(torch.tensor([0.1, -0.3], dtype=torch.float32)).weights.dtype == torch.float64



def test_a_callable_returning_python_floats_is_read_in_double():
    """A list of Python floats from the callable went through float32 (0.1 -> 0.10000000149):
    a near tie between two items could change its answer."""
    user = SimulatedUser(lambda x: [0.1 + 1e-9 * i for i in range(x.shape[0])])
    u = user.utility(_items(3, 2))
    assert u.dtype == torch.float64 and u.tolist() == [0.1, 0.1 + 1e-9, 0.1 + 2e-9]
    assert SimulatedUser(lambda x: [True, False]).utility(_items(2, 2)).tolist() == [1.0, 0.0]

def test_winner_first_reads_only_m_x_2_pairs():
    """A `2 x 3` array was reshaped into three pairs of other items, silently."""
    with pytest.raises(InputDataError, match=r"^pairs: expected `m x 2`.*\(2, 3\)"):
        winner_first([[0, 1, 2], [3, 4, 5]], [True, True, True])
    assert winner_first([0, 1], [False]).tolist() == [[1, 0]]  # one pair as a `2` vector
    assert winner_first(torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.bool)).shape == (0, 2)
    with pytest.raises(InputDataError, match="^first_won:"):  # was reported as "pairs / first_won"
        winner_first([[0, 1]], ["yes"])


def test_every_user_is_a_user_and_other_objects_are_not(tmp_path):
    from papa_bayes.demo import DigitsUser
    from papa_bayes.diffusion import DigitsPerson
    from papa_bayes.labeling import TerminalUser
    from papa_bayes.users import User

    users = [SimulatedUser([1.0, 0.0]), CallbackUser(lambda a, b: 0), DigitsUser(DigitsPerson()),
             TerminalUser(tmp_path, read=lambda prompt: "1")]
    assert all(isinstance(u, User) for u in users)

    class OnlyCompares:
        def compare(self, first, second): ...

    assert not isinstance(OnlyCompares(), User) and not isinstance(object(), User)


def test_users_check_seeds_rationalities_and_pairs_in_our_words():
    """Reviewed: seeds past 64 bits, array rationalities and random_pairs' arguments raised torch's or NumPy's
    own errors; random_pairs(generator=None) drew from the global RNG."""
    import numpy as np

    from papa_bayes.exceptions import InputDataError
    from papa_bayes.users import random_pairs

    for kwargs, field in (({"seed": 2**64}, "seed"), ({"rationality": torch.tensor([1.0, 2.0])}, "rationality"),
                          ({"rationality": np.array([1.0, 2.0])}, "rationality"),
                          ({"rationality": np.True_}, "rationality")):
        with pytest.raises(InputDataError, match=field):
            SimulatedUser([1.0, 0.0], **kwargs)
    assert SimulatedUser.from_gp_draw(2, seed=2**64 - 1).seed == 2**64 - 1
    g = torch.Generator().manual_seed(0)
    for args, field in (((1, 3), "n"), ((3, -1), "m"), ((2.5, 2), "n")):
        with pytest.raises(InputDataError, match=field):
            random_pairs(*args, generator=g)
    with pytest.raises(InputDataError, match="generator"):
        random_pairs(3, 2, generator=None)


def test_a_noiseless_user_flips_a_coin_at_the_threshold():
    """Infinite rationality disliked every item exactly at the threshold (link(r * 0) = 1/2 for every r)."""
    import math

    person = SimulatedUser([1.0, 0.0], rationality=math.inf, threshold=1.0, seed=0)
    at = torch.tensor([[1.0, 0.0]], dtype=torch.float64).expand(4000, 2)
    share = float((person.rate(at) > 0).double().mean())
    assert 0.46 < share < 0.54
    assert (person.rate(torch.tensor([[2.0, 0.0], [0.0, 0.0]], dtype=torch.float64)) == torch.tensor([1, -1])).all()


def test_a_callback_answer_in_text_is_quoted_in_the_error():
    """The answer "0" (text) read "expected 0 (first), 1 (second) or 'tie', got 0.": the valid answer it was not."""
    x = _items(2)
    with pytest.raises(InputDataError, match=r"^answer: expected 0 \(first\), 1 \(second\) or 'tie', got '0'\.$"):
        CallbackUser(lambda a, b: "0").compare(x[:1], x[1:])
    with pytest.raises(InputDataError, match=r"^answer: expected \+1 \(like\) or -1 \(dislike\), got '1'\.$"):
        CallbackUser(rate_fn=lambda a: "1").rate(x)
    won, tie = CallbackUser(lambda a, b: np.str_("tie")).compare(x[:1], x[1:])
    assert tie.tolist() == [True]
