"""A statistician's first use of the calibration diagnostics: reliability, ECE, coverage."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from papa_bayes import InputDataError
from papa_bayes.diagnostics import expected_calibration_error, interval_coverage, reliability_curve


def _bernoulli(n, seed):
    g = torch.Generator().manual_seed(seed)
    p = torch.rand(n, generator=g, dtype=torch.float64)
    y = (torch.rand(n, generator=g, dtype=torch.float64) < p).double()
    return p, y


def test_reliability_curve_is_exported_with_the_other_measures():
    """diagnostics exported ECE and coverage but not the reliability curve they are read with."""
    import papa_bayes.diagnostics as diagnostics

    assert "reliability_curve" in diagnostics.__all__
    mean_p, freq, count = reliability_curve([0.05, 0.15, 0.25, 0.95], [0, 1, 1, True], num_bins=2)
    assert count.tolist() == [3.0, 1.0]
    assert mean_p.tolist() == pytest.approx([0.15, 0.95], abs=1e-15)
    assert freq.tolist() == pytest.approx([2 / 3, 1.0], abs=1e-15)


def test_calibrated_probabilities_give_a_diagonal_curve_and_overconfident_ones_do_not():
    p, y = _bernoulli(20000, seed=0)
    mean_p, freq, count = reliability_curve(p, y, num_bins=10)
    assert bool((count > 1500).all())
    assert float((mean_p - freq).abs().max()) < 0.03
    assert expected_calibration_error(p, y) < 0.015
    # The same outcomes against overconfident predictions (logit x 3): far off the diagonal.
    over = torch.sigmoid(3 * torch.logit(p))
    assert expected_calibration_error(over, y) > 0.1
    # Probabilities stated the other way round (P(b preferred) for the outcome "a won").
    assert expected_calibration_error(1 - p, y) > 0.3


def test_transposed_outcomes_are_refused():
    """`n x k` probabilities with `k x n` outcomes have equal sizes, so they were flattened and
    paired element by element: a wrong ECE and no error."""
    p = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.9, 0.8, 0.7, 0.6], [0.5, 0.5, 0.5, 0.5]], dtype=torch.float64)
    y = torch.tensor([[0, 0, 0, 1], [1, 1, 1, 0], [1, 0, 1, 0]])
    assert expected_calibration_error(p, y) == pytest.approx(2.4 / 12, abs=1e-12)  # |p - y| per bin of one pair
    with pytest.raises(InputDataError, match=r"outcomes.*\(3, 4\).*\(4, 3\)"):
        expected_calibration_error(p, y.T)
    with pytest.raises(InputDataError, match="outcomes"):
        reliability_curve(p, y.reshape(-1))
    # Dims of size 1 may differ: an `n x 1` column against `n` outcomes is the same pairing.
    assert expected_calibration_error(p.reshape(-1, 1), y.reshape(-1)) == expected_calibration_error(p, y)


def test_num_bins_takes_numpy_integers():
    p, y = _bernoulli(200, seed=1)
    assert expected_calibration_error(p, y, num_bins=np.int64(5)) == expected_calibration_error(p, y, num_bins=5)
    for bad in (0, 5.0, True, "5"):
        with pytest.raises(InputDataError, match="num_bins"):
            expected_calibration_error(p, y, num_bins=bad)


@pytest.mark.parametrize("probs, outcomes, field", [
    ([0.2, float("nan")], [0, 1], "probs"),
    ([0.2, 0.3], [0, float("nan")], "outcomes"),
    ([], [], "probs"),
    ([0.2, 0.3, 0.4], [0, 1], "outcomes"),
    ("0.5", [1], "probs"),
    (torch.tensor([0.2 + 0j]), [1], "probs"),
    ([0.2], torch.tensor([1 + 0j]), "outcomes"),
    (None, [1], "probs"),
])
def test_bad_calibration_inputs_name_their_field(probs, outcomes, field):
    with pytest.raises(InputDataError, match=field):
        expected_calibration_error(probs, outcomes)


def test_boolean_outcomes_and_gradients():
    """Outcomes are often comparisons (`u_a > u_b`); predictions may carry gradients."""
    p, y = _bernoulli(100, seed=2)
    assert expected_calibration_error(p, y.bool()) == expected_calibration_error(p, y)
    assert expected_calibration_error(p, y.bool().tolist()) == expected_calibration_error(p, y)
    curve = reliability_curve(p.clone().requires_grad_(True), y)
    assert not any(t.requires_grad for t in curve)


def test_interval_coverage_matches_its_level_when_the_truth_is_a_draw():
    g = torch.Generator().manual_seed(3)
    draws = torch.randn(1000, 4000, generator=g, dtype=torch.float64)
    truth = torch.randn(4000, generator=g, dtype=torch.float64)
    for level in (0.5, 0.9):
        assert float(interval_coverage(draws, truth, level=level).double().mean()) == pytest.approx(level, abs=0.02)
    # A posterior too narrow by half covers far less than it claims.
    assert float(interval_coverage(0.5 * draws, truth, level=0.9).double().mean()) < 0.65


def test_interval_coverage_checks_shapes_and_values():
    draws = torch.randn(100, 3, dtype=torch.float64)
    with pytest.raises(InputDataError, match="truth"):
        interval_coverage(draws, torch.zeros(3, 1))
    with pytest.raises(InputDataError, match="draws"):
        interval_coverage(torch.zeros(0, 3), torch.zeros(3))
    with pytest.raises(InputDataError, match="draws"):
        interval_coverage(torch.tensor([[1.0], [float("inf")]]), torch.zeros(1))
    with pytest.raises(InputDataError, match="level"):
        interval_coverage(draws, torch.zeros(3), level=1.0)
    with pytest.raises(InputDataError, match="draws"):
        interval_coverage("abc", torch.zeros(3))
    assert interval_coverage([[0.1], [0.2], [0.3]], [0.2]).tolist() == [True]


def test_float32_probabilities_fall_in_the_bins_their_values_name():
    """float32 0.7 read as 0.69999999 in float64 and landed in [0.6, 0.7); float64 0.7 lands in [0.7, 0.8)."""
    for dtype in (torch.float32, torch.float64):
        probs = torch.tensor([0.1, 0.3, 0.7, 0.9], dtype=dtype)
        _, _, count = reliability_curve(probs, torch.tensor([0, 0, 1, 1]), num_bins=10)
        assert count.nonzero().reshape(-1).tolist() == [1, 3, 7, 9], dtype
