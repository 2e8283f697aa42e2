"""Calibration measures of predictive probabilities and credible intervals."""

from __future__ import annotations

import torch
from torch import Tensor

from papa_bayes.checks import check_float, check_int, check_real_tensor
from papa_bayes.exceptions import InputDataError

__all__ = ["expected_calibration_error", "interval_coverage", "reliability_curve"]


def _real(name: str, value: object) -> Tensor:
    """``value`` as a detached float64 tensor (:func:`check_real_tensor`), bools read as 0/1.

    Outcomes often come as bools (``u_a > u_b``), so bools are numbers here.
    """
    try:
        return check_real_tensor(name, value, "an array-like of numbers").detach()
    except InputDataError as err:
        if err.actual != str(torch.bool):
            raise
    return torch.as_tensor(value).detach().to(torch.float64)


def reliability_curve(probs: Tensor, outcomes: Tensor, *, num_bins: int = 10) -> tuple[Tensor, Tensor, Tensor]:
    """Reliability diagram data over equal-width bins of predicted probability.

    Args:
        probs: `n` predicted probabilities of the event, in [0, 1].
        outcomes: `n` 0/1 outcomes (bools too), in the same order and shape as
            ``probs`` (dims of size 1 aside).
        num_bins: number of equal-width bins on [0, 1].

    Returns:
        (mean prediction, observed frequency, count), each `num_bins`. Empty bins
        hold 0 for the first two: plot only where ``count > 0``.

    Raises:
        InputDataError: empty input, shapes that do not pair each probability
            with one outcome, probabilities outside [0, 1] (NaN too), outcomes
            other than 0/1.
    """
    probs, outcomes = _real("probs", probs), _real("outcomes", outcomes)
    # Equal sizes are not enough: `n x k` probabilities against `k x n` outcomes
    # would pair the wrong rows; only dims of size 1 may differ.
    if probs.squeeze().shape != outcomes.squeeze().shape:
        raise InputDataError("outcomes", f"one per probability (probs of shape {tuple(probs.shape)})", tuple(outcomes.shape))
    probs, outcomes = probs.reshape(-1), outcomes.reshape(-1)
    if probs.numel() == 0:
        raise InputDataError("probs", "at least one prediction", "empty")
    num_bins = check_int("num_bins", num_bins, expected="a positive integer")
    outside = ~((probs >= 0) & (probs <= 1))  # NaN included
    if bool(outside.any()):
        i = int(outside.nonzero()[0])
        raise InputDataError("probs", "probabilities in [0, 1]", f"{float(probs[i])} at index {i}")
    other = ~((outcomes == 0) | (outcomes == 1))
    if bool(other.any()):
        i = int(other.nonzero()[0])
        raise InputDataError("outcomes", "0/1 outcomes", f"{float(outcomes[i])} at index {i}")
    bins = torch.clamp((probs * num_bins).long(), max=num_bins - 1)
    count = torch.bincount(bins, minlength=num_bins).to(torch.float64)
    mean_p = torch.bincount(bins, weights=probs, minlength=num_bins) / count.clamp(min=1)
    freq = torch.bincount(bins, weights=outcomes, minlength=num_bins) / count.clamp(min=1)
    return mean_p, freq, count


def expected_calibration_error(probs: Tensor, outcomes: Tensor, *, num_bins: int = 10) -> float:
    """ECE (Naeini et al. 2015): sum over bins of share x |mean prediction - frequency|.

    Args:
        probs: `n` predicted probabilities of the event.
        outcomes: `n` 0/1 outcomes, paired with ``probs`` as in :func:`reliability_curve`.
        num_bins: number of equal-width bins on [0, 1].

    Returns:
        The ECE, in [0, 1].
    """
    mean_p, freq, count = reliability_curve(probs, outcomes, num_bins=num_bins)
    return float(((count / count.sum()) * (mean_p - freq).abs()).sum())


def interval_coverage(draws: Tensor, truth: Tensor, *, level: float = 0.9) -> Tensor:
    """Whether each central ``level`` credible interval covers the truth.

    Args:
        draws: `s x ...` posterior draws (finite).
        truth: `...` true values (finite).
        level: in (0, 1).

    Returns:
        `...` bool.
    """
    check_float("level", level, strict=True, maximum=1.0)
    draws = _real("draws", draws)
    truth = _real("truth", truth)
    if draws.dim() < 1 or draws.shape[0] == 0:
        raise InputDataError("draws", "`s x ...` with at least one draw", tuple(draws.shape))
    if truth.shape != draws.shape[1:]:
        raise InputDataError("truth", f"shape {tuple(draws.shape[1:])} (the draws' shape without `s`)", tuple(truth.shape))
    for name, value in (("draws", draws), ("truth", truth)):
        if not bool(torch.isfinite(value).all()):
            bad = tuple(torch.nonzero(~torch.isfinite(value))[0].tolist())
            raise InputDataError(name, "finite values", f"{float(value[bad])} at index {bad}")
    lo = torch.quantile(draws, (1 - level) / 2, dim=0)
    hi = torch.quantile(draws, 1 - (1 - level) / 2, dim=0)
    return (truth >= lo) & (truth <= hi)
