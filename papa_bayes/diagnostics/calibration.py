"""Calibration measures of predictive probabilities and credible intervals."""

from __future__ import annotations

import torch
from torch import Tensor

from papa_bayes.exceptions import InputDataError

__all__ = ["expected_calibration_error", "interval_coverage", "reliability_curve"]


def reliability_curve(probs: Tensor, outcomes: Tensor, *, num_bins: int = 10) -> tuple[Tensor, Tensor, Tensor]:
    """Equal-width bins of predicted probability: (mean prediction, observed frequency, count), each `num_bins`."""
    probs = torch.as_tensor(probs, dtype=torch.float64).reshape(-1)
    outcomes = torch.as_tensor(outcomes, dtype=torch.float64).reshape(-1)
    if probs.shape != outcomes.shape:
        raise InputDataError("outcomes", f"shape {tuple(probs.shape)} (one per probability)", tuple(outcomes.shape))
    if probs.numel() == 0:
        raise InputDataError("probs", "at least one prediction", "empty")
    if isinstance(num_bins, bool) or not isinstance(num_bins, int) or num_bins < 1:
        raise InputDataError("num_bins", "a positive integer", num_bins)
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
        outcomes: `n` 0/1 outcomes.
    """
    mean_p, freq, count = reliability_curve(probs, outcomes, num_bins=num_bins)
    return float(((count / count.sum()) * (mean_p - freq).abs()).sum())


def interval_coverage(draws: Tensor, truth: Tensor, *, level: float = 0.9) -> Tensor:
    """Whether each central ``level`` credible interval covers the truth.

    Args:
        draws: `s x ...` posterior draws.
        truth: `...` true values.

    Returns:
        `...` bool.
    """
    if not 0 < level < 1:
        raise InputDataError("level", "a probability in (0, 1)", level)
    draws = torch.as_tensor(draws, dtype=torch.float64)
    truth = torch.as_tensor(truth, dtype=torch.float64)
    if draws.dim() < 1 or draws.shape[0] == 0:
        raise InputDataError("draws", "`s x ...` with at least one draw", tuple(draws.shape))
    if truth.shape != draws.shape[1:]:
        raise InputDataError("truth", f"shape {tuple(draws.shape[1:])} (the draws' shape without `s`)", tuple(truth.shape))
    lo = torch.quantile(draws, (1 - level) / 2, dim=0)
    hi = torch.quantile(draws, 1 - (1 - level) / 2, dim=0)
    return (truth >= lo) & (truth <= hi)
