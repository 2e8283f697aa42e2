"""Users read `n x ...` batches alike: a 1-D batch is `n` single-number items; answers come back on the CPU."""

from __future__ import annotations

import pytest
import torch

from papa_bayes import InputDataError
from papa_bayes.users import CallbackUser, RandomFourierUtility, SimulatedUser, simulate_comparisons

FIRST, SECOND = torch.tensor([1.0, -2.0, 3.0]), torch.tensor([0.0, 1.0, -3.0])


def test_a_1d_batch_is_n_single_number_items_for_every_user():
    """CallbackUser answered 3 queries where a linear SimulatedUser answered 1 (it read one `d` vector)."""
    assert CallbackUser(lambda a, b: 0, lambda x: 1).rate(FIRST).shape == (3,)
    assert SimulatedUser([1.0], rationality=float("inf")).compare(FIRST, SECOND)[0].tolist() == [True, False, True]
    assert SimulatedUser(lambda x: x, rationality=float("inf")).rate(FIRST).tolist() == [1, -1, 1]
    with pytest.raises(InputDataError, match=r"^first: expected a batch of `n x 3` items \(one item as `1 x 3`"):
        SimulatedUser([1.0, 2.0, 3.0]).compare(FIRST, SECOND)
    with pytest.raises(InputDataError, match=r"^x: expected a batch of `n x 3` items"):
        SimulatedUser([1.0, 2.0, 3.0]).rate(FIRST)
    with pytest.raises(InputDataError, match=r"^utility: expected 3 utilities, one per item of the 1-D batch"):
        SimulatedUser(lambda x: x.sum(-1)).rate(FIRST)  # read the batch as one item
    assert SimulatedUser([1.0, 2.0, 3.0]).compare(FIRST[None], SECOND[None])[0].shape == (1,)  # one item: `1 x d`


def test_callback_user_refuses_text_as_a_batch():
    """A str was iterated character by character: compare("ab", "cd") asked about ("a", "c") and ("b", "d")."""
    with pytest.raises(InputDataError, match=r"^first: expected a batch of `n` items"):
        CallbackUser(lambda a, b: 0).compare("ab", "cd")
    with pytest.raises(InputDataError, match=r"^x: expected a batch of `n` items"):
        CallbackUser(rate_fn=lambda x: 1).rate("ab")


def test_simulated_items_refuse_bools_among_numbers():
    """[[True, 0.5], ...] was read as the feature 1.0, where PreferenceData refuses it."""
    with pytest.raises(InputDataError, match="^items: expected a real .*, got bools among the numbers"):
        simulate_comparisons(SimulatedUser([1.0, 1.0]), [[True, 0.5], [0.2, 0.1]], 2,
                             generator=torch.Generator().manual_seed(0))


class _OnGpu(torch.Tensor):
    """A CPU tensor that reports a CUDA device (no GPU in CI)."""

    @property
    def device(self) -> torch.device:
        return torch.device("cuda", 0)

    def cpu(self, *args, **kwargs):
        return self.as_subclass(torch.Tensor).clone()


def test_answers_are_drawn_on_the_cpu_whatever_the_utilities_device():
    """The answers come from the user's CPU generator: utilities on a GPU are brought to the CPU first."""
    user = SimulatedUser(lambda x: (x.sum(-1)).as_subclass(_OnGpu), seed=3)
    x = torch.randn(6, 2, dtype=torch.float64)
    won, tie = user.compare(x[:3], x[3:])
    likes = user.rate(x)
    assert all(type(t) is torch.Tensor for t in (won, tie, likes))
    user.reset()
    plain = SimulatedUser(lambda x: x.sum(-1), seed=3)
    assert torch.equal(plain.compare(x[:3], x[3:])[0], won) and torch.equal(plain.rate(x), likes)


def test_utilities_follow_the_items_device():
    """The CPU weights and Fourier draw met items on another device in a matmul: a raw RuntimeError (meta stands
    in for a GPU here)."""
    x = torch.zeros(4, 2, device="meta", dtype=torch.float64)
    gp = RandomFourierUtility(2, num_features=8, generator=torch.Generator().manual_seed(0))
    for utility in (gp, SimulatedUser([1.0, 2.0])._linear):
        u = utility(x)
        assert u.device.type == "meta" and u.shape == (4,)


def test_a_gp_draw_user_reads_batches_as_the_linear_user_does():
    """At d=1 the GP-draw user refused the 1-D batch (`n` single-number items) the linear d=1 user answers."""
    gp, linear = SimulatedUser.from_gp_draw(1, seed=0), SimulatedUser([1.0], seed=0)
    for user in (gp, linear):
        won, tie = user.compare(FIRST, SECOND)
        assert won.shape == tie.shape == (3,)
        assert user.rate(FIRST).shape == (3,)
    assert torch.allclose(gp.outcome_probabilities(FIRST, SECOND),
                          gp.outcome_probabilities(FIRST[:, None], SECOND[:, None]))  # `n` is `n x 1`
    # d > 1: the same refusal, naming the batch, as the linear user's (it named the utility's count)
    for user in (SimulatedUser.from_gp_draw(3, seed=0), SimulatedUser([1.0, 2.0, 3.0])):
        with pytest.raises(InputDataError, match=r"^first: expected a batch of `n x 3` items \(one item as `1 x 3`"):
            user.compare(FIRST, SECOND)
        with pytest.raises(InputDataError, match=r"^x: expected a batch of `n x 3` items"):
            user.rate(FIRST)
        assert user.compare(FIRST[None], SECOND[None])[0].shape == (1,)
