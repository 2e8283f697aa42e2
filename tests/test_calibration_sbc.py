"""Simulation-based calibration: ranks, their uniformity test, the plots and the driver."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pytest
import torch
from scipy import stats

from papa_bayes import InputDataError, LinearReward
from papa_bayes.diagnostics import (
    SBCResult,
    plot_reliability,
    plot_sbc_ranks,
    sbc_ranks,
    sbc_uniformity,
    simulation_based_calibration,
)


def _ranks(num_datasets, s, *, scale=1.0, shift=0.0, seed=0, k=3):
    """Ranks of N(0, 1) truths among `s` draws of N(shift, scale^2): exact when scale=1, shift=0."""
    g = torch.Generator().manual_seed(seed)
    truth = torch.randn(num_datasets, k, generator=g, dtype=torch.float64)
    draws = shift + scale * torch.randn(num_datasets, s, k, generator=g, dtype=torch.float64)
    return torch.stack([sbc_ranks(draws[i], truth[i]) for i in range(num_datasets)])


def test_ranks_count_the_draws_below_the_truth():
    draws = torch.tensor([[0.0, 10.0], [1.0, 20.0], [2.0, 30.0], [3.0, 40.0]], dtype=torch.float64)
    ranks = sbc_ranks(draws, torch.tensor([1.5, -1.0], dtype=torch.float64))
    assert ranks.dtype == torch.long and ranks.tolist() == [2, 0]
    assert sbc_ranks(draws, torch.tensor([5.0, 99.0], dtype=torch.float64)).tolist() == [4, 4]


def test_ties_get_a_uniform_share_and_a_generator_makes_them_reproducible():
    # 5 draws all equal to the truth: the rank is uniform on {0, ..., 5}, not always 0 (or 5).
    truth = torch.zeros(12000, dtype=torch.float64)
    draws = torch.zeros(5, 12000, dtype=torch.float64)
    ranks = sbc_ranks(draws, truth, generator=torch.Generator().manual_seed(3))
    share = torch.bincount(ranks, minlength=6).double() / ranks.numel()
    assert share.shape == (6,) and float((share - 1 / 6).abs().max()) < 0.02
    again = sbc_ranks(draws, truth, generator=torch.Generator().manual_seed(3))
    assert torch.equal(ranks, again)
    # Ties on top of draws strictly below: 2 below, 2 equal -> rank in {2, 3, 4}.
    draws = torch.tensor([[-1.0], [-2.0], [0.0], [0.0], [1.0]], dtype=torch.float64).expand(5, 3000)
    ranks = sbc_ranks(draws, torch.zeros(3000, dtype=torch.float64), generator=torch.Generator().manual_seed(0))
    assert set(ranks.tolist()) == {2, 3, 4}


def test_ties_without_a_generator_are_refused_rather_than_broken_alike_in_every_call():
    # A fixed default seed broke the ties of every data set of an SBC loop the same way:
    # 200 data sets whose 5 draws all equal the truth got one rank, not uniform ranks.
    draws, truth = torch.zeros(5, 1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    with pytest.raises(InputDataError, match="generator") as err:
        sbc_ranks(draws, truth)
    assert err.value.field == "generator" and "equal to the truth at index (0,)" in str(err.value)
    gen = torch.Generator().manual_seed(0)
    ranks = torch.stack([sbc_ranks(draws, truth, generator=gen) for _ in range(200)])
    assert len(set(ranks.reshape(-1).tolist())) == 6  # one generator for the loop: every rank 0..5 turns up
    # Without ties no generator is needed, and none is drawn from.
    plain = torch.tensor([[-1.0, 2.0], [1.0, 3.0]], dtype=torch.float64)
    assert sbc_ranks(plain, torch.tensor([0.0, 5.0], dtype=torch.float64)).tolist() == [1, 2]
    assert sbc_ranks(plain[:, 0], torch.tensor(0.5, dtype=torch.float64)).tolist() == 1  # scalar truth


def test_exact_draws_give_uniform_ranks():
    ranks = _ranks(400, 99)
    assert ranks.shape == (400, 3) and int(ranks.min()) >= 0 and int(ranks.max()) <= 99
    statistic, p_value = sbc_uniformity(ranks, 99, num_bins=20)
    assert statistic.shape == (3,) and p_value.shape == (3,)
    assert float(p_value.min()) > 0.01, p_value
    _, pooled = sbc_uniformity(ranks.reshape(-1), 99, num_bins=20)
    assert float(pooled) > 0.01


@pytest.mark.parametrize("scale, shift, where", [(0.6, 0.0, "ends"), (1.6, 0.0, "middle"), (1.0, 0.5, "low")])
def test_narrow_wide_or_biased_draws_give_non_uniform_ranks(scale, shift, where):
    ranks = _ranks(400, 99, scale=scale, shift=shift)
    _, p_value = sbc_uniformity(ranks, 99, num_bins=20)
    assert float(p_value.max()) < 1e-6, p_value
    ends = ((ranks < 10) | (ranks > 89)).double().mean()
    low, high = (ranks < 50).double().mean(), (ranks >= 50).double().mean()
    if where == "ends":  # too narrow: the truth falls outside the draws (uniform: 0.2 here)
        assert float(ends) > 0.35
    elif where == "middle":  # too wide: the truth sits among the central draws
        assert float(ends) < 0.08
    else:  # draws too high: the truth ranks low
        assert float(low) > 0.6 > float(high)


def test_uniformity_matches_scipy_and_handles_unequal_bins():
    # 10 possible ranks in 3 bins: {0..3}, {4..6}, {7..9}; one rank of each value fits exactly.
    statistic, p_value = sbc_uniformity(torch.arange(10), 9, num_bins=3)
    assert float(statistic) == pytest.approx(0.0, abs=1e-12) and float(p_value) == pytest.approx(1.0)
    ranks = torch.tensor([0, 0, 1, 2, 3, 3, 4, 9, 9, 9, 8, 5, 0, 1])
    counts = [sum(int(r) <= 3 for r in ranks), sum(4 <= int(r) <= 6 for r in ranks), sum(int(r) >= 7 for r in ranks)]
    expected = [len(ranks) * 4 / 10, len(ranks) * 3 / 10, len(ranks) * 3 / 10]
    reference = stats.chisquare(counts, expected)
    statistic, p_value = sbc_uniformity(ranks, 9, num_bins=3)
    assert float(statistic) == pytest.approx(reference.statistic) and float(p_value) == pytest.approx(reference.pvalue)
    # Integer-valued floats are ranks too; the default bins follow the number of data sets.
    assert float(sbc_uniformity(ranks.double(), 9)[0]) == pytest.approx(float(sbc_uniformity(ranks, 9, num_bins=2)[0]))


def test_bad_input_is_refused_naming_the_field():
    draws = torch.randn(10, 3, dtype=torch.float64)
    cases = [
        (lambda: sbc_ranks(draws, torch.zeros(4)), "truth"),
        (lambda: sbc_ranks(torch.zeros(0, 3), torch.zeros(3)), "draws"),
        (lambda: sbc_ranks(draws, torch.tensor([0.0, float("nan"), 0.0])), "truth"),
        (lambda: sbc_ranks(draws, torch.zeros(3), generator=3), "generator"),
        (lambda: sbc_uniformity(torch.tensor([0, 5, 11]), 10), "ranks"),
        (lambda: sbc_uniformity(torch.tensor([0, 1.5]), 10), "ranks"),
        (lambda: sbc_uniformity(torch.tensor([], dtype=torch.long), 10), "ranks"),
        (lambda: sbc_uniformity(torch.tensor([0, 5]), 0), "num_draws"),
        (lambda: sbc_uniformity(torch.tensor([0, 5]), 10, num_bins=12), "num_bins"),
        (lambda: sbc_uniformity(torch.tensor([0, 5]), 10, num_bins=1), "num_bins"),
        (lambda: plot_sbc_ranks(torch.tensor([0, 5]), 10, band=1.5), "band"),
        (lambda: plot_reliability([0.2, 1.2], [0, 1]), "probs"),
        (lambda: plot_reliability([0.2, 0.7], [0, 2]), "outcomes"),
        (lambda: plot_reliability([0.2, 0.7], [0, 1], ax="figure"), "ax"),
        (lambda: plot_sbc_ranks(torch.tensor([0, 5]), 10, ax=[]), "ax"),
    ]
    for call, field in cases:
        with pytest.raises(InputDataError) as err:
            call()
        assert err.value.field == field, (field, str(err.value))


def test_coverage_takes_a_tensor_level_and_numpy_float32_bins_as_torch_float32():
    """A 0-d tensor level passed the check and then failed in torch.quantile (RuntimeError, q's dtype); float32
    NumPy probabilities were binned in float64 (0.7 -> [0.6, 0.7)), unlike the same float32 tensor."""
    import numpy as np

    from papa_bayes.diagnostics.calibration import interval_coverage, reliability_curve

    draws = torch.randn(200, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    truth = torch.tensor([0.0, 0.5, 3.0], dtype=torch.float64)
    for level in (torch.tensor(0.9), torch.tensor(0.9, dtype=torch.float64)):
        assert torch.equal(interval_coverage(draws, truth, level=level), interval_coverage(draws, truth, level=0.9))
    p = np.array([0.7, 0.3, 0.9], dtype=np.float32)
    counts = reliability_curve(p, [1, 0, 1])[2]
    assert torch.equal(counts, reliability_curve(torch.from_numpy(p), [1, 0, 1])[2])
    assert counts[7] == 1 and counts[6] == 0


def test_rank_histogram_has_bars_band_and_expected_line():
    ranks = _ranks(60, 19, k=2)
    ax = plot_sbc_ranks(ranks, 19, num_bins=5, title="w")
    assert isinstance(ax, plt.Axes) and ax.get_title() == "w"
    assert len(ax.patches) == 5
    assert sum(p.get_height() for p in ax.patches) == ranks.numel()  # every element pooled
    assert [p.get_width() for p in ax.patches] == [4.0] * 5  # 20 possible ranks, 4 per bin
    assert len(ax.collections) == 1 and len(ax.lines) == 1  # the band and its expected count
    assert ax.lines[0].get_ydata()[0] == pytest.approx(ranks.numel() / 5)
    plt.close(ax.figure)
    fig, given = plt.subplots()
    assert plot_sbc_ranks(ranks[:, 0], 19, given) is given
    assert len(given.patches) == 12  # default bins: 60 ranks // 5 (20 possible ranks: widths 1 or 2)
    assert sorted({p.get_width() for p in given.patches}) == [1.0, 2.0]
    plt.close(fig)


def test_reliability_diagram_has_diagonal_curve_and_counts():
    g = torch.Generator().manual_seed(0)
    p = torch.rand(500, generator=g, dtype=torch.float64) * 0.6  # nothing above 0.6: 4 empty bins
    y = (torch.rand(500, generator=g, dtype=torch.float64) < p).double()
    ax = plot_reliability(p, y, num_bins=10)
    assert len(ax.lines) == 2  # the diagonal and the observed frequencies
    assert list(ax.lines[0].get_xdata()) == [0, 1] and list(ax.lines[0].get_ydata()) == [0, 1]
    assert len(ax.lines[1].get_xdata()) == 6
    assert len(ax.patches) == 10 and sum(b.get_height() for b in ax.patches) == pytest.approx(1.0)
    counts = sorted(int(t.get_text()) for t in ax.texts)
    assert len(counts) == 6 and sum(counts) == 500
    assert any("ECE" in label for label in ax.get_legend_handles_labels()[1])
    plt.close(ax.figure)


@pytest.fixture(scope="module")
def laplace_sbc():
    items = torch.randn(60, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return items, simulation_based_calibration(
        LinearReward(), items, 30, 24, method="laplace", seed=5, sites=("w", "rationality"),
        fit_options={"num_samples": 200}, num_rank_draws=49, num_heldout=40,
    )


def test_sbc_of_laplace_on_linear_reward_is_sane(laplace_sbc):
    _, result = laplace_sbc
    assert isinstance(result, SBCResult) and result.method == "laplace" and result.num_rank_draws == 49
    assert result.ranks["w"].shape == (24, 2) and result.ranks["rationality"].shape == (24,)
    assert int(result.ranks["w"].min()) >= 0 and int(result.ranks["w"].max()) <= 49
    assert 0.75 <= result.coverage["w"][0.9] <= 1.0, result.coverage
    assert 0.3 <= result.coverage["w"][0.5] <= 0.75, result.coverage
    assert 0.6 <= result.coverage["rationality"][0.9] <= 1.0, result.coverage
    assert result.probs.shape == result.outcomes.shape == (24, 40)
    assert set(result.outcomes.unique().tolist()) <= {0.0, 1.0}
    assert 0.0 <= result.ece <= 0.12, result.ece
    assert result.seconds.shape == (24,) and bool((result.seconds > 0).all())
    statistic, p_value = result.uniformity("w", pooled=True)
    assert statistic.dim() == 0 and float(p_value) > 1e-4
    assert result.uniformity("w")[1].shape == (2,)


def test_sbc_is_reproducible_from_its_seed(laplace_sbc):
    items, result = laplace_sbc
    # The first data sets do not depend on how many follow.
    again = simulation_based_calibration(LinearReward(), items, 30, 3, method="laplace", seed=5,
                                         sites=("w", "rationality"), fit_options={"num_samples": 200},
                                         num_rank_draws=49, num_heldout=40)
    assert torch.equal(again.ranks["w"], result.ranks["w"][:3])
    # Equal up to rounding: torch's CPU reductions may round the last bit differently from run to
    # run (4e-17 here, about one time in ten, the code before 2026-12-02 too).
    assert torch.allclose(again.probs, result.probs[:3], rtol=0, atol=1e-12)
    other = simulation_based_calibration(LinearReward(), items, 30, 3, method="laplace", seed=6,
                                         fit_options={"num_samples": 200}, num_rank_draws=49, num_heldout=40)
    assert not torch.equal(other.probs, result.probs[:3])
    state = torch.get_rng_state()
    simulation_based_calibration(LinearReward(), items, 10, 1, fit_options={"num_samples": 100}, num_heldout=5)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is left as it was


def test_sbc_simulates_ties_with_a_model_that_has_them(laplace_sbc):
    items, _ = laplace_sbc
    result = simulation_based_calibration(LinearReward(ties=True), items, 40, 2, sites=("w", "tie_strength"),
                                          fit_options={"num_samples": 100}, num_heldout=10)
    assert result.ranks["tie_strength"].shape == (2,)


def test_sbc_refuses_bad_arguments_naming_them(laplace_sbc):
    items, _ = laplace_sbc
    ok = dict(model=LinearReward(), items=items, num_comparisons=10, num_datasets=1)
    cases = [
        (dict(model="LinearReward"), "model"),
        (dict(items=items[:, 0]), "items"),
        (dict(items=items[:1]), "items"),
        (dict(items=torch.full_like(items, float("nan"))), "items"),
        (dict(num_comparisons=0), "num_comparisons"),
        (dict(num_datasets=0), "num_datasets"),
        (dict(method="mcmc"), "method"),
        (dict(sites="w"), "sites"),
        (dict(sites=("v",)), "sites"),
        (dict(sites=("w", "w")), "sites"),  # would stack w's ranks twice per data set (2N rows)
        (dict(fit_options={"seed": 3}), "fit_options"),
        (dict(fit_options=[("num_samples", 3)]), "fit_options"),
        (dict(fit_options={"num_samples": 50}), "num_rank_draws"),  # 50 draws, 99 to rank among
        (dict(seed=-1), "seed"),
        (dict(num_heldout=0), "num_heldout"),
    ]
    for change, field in cases:
        with pytest.raises(InputDataError) as err:
            simulation_based_calibration(**{**ok, **change})
        assert err.value.field == field, (field, str(err.value))
    result = simulation_based_calibration(**ok, fit_options={"num_samples": 120}, num_heldout=5)
    with pytest.raises(InputDataError, match="site"):
        result.uniformity("rationality")
