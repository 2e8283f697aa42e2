"""Observation models on utility differences, shared by the linear and GP rewards.

All utilities are in *noise units*: the rationality is already folded in, so for a
strict comparison P(first preferred) = link(u_first - u_second).

- logit link: Bradley-Terry; ties by Davidson (1970): the outcome logits of
  (first wins, second wins, tie) are ``(d/2, -d/2, log nu)``.
- probit link: Thurstone; ties by Glenn & David (1960): a tie when the perceived
  difference lies within ``+-tau``.
- like/dislike (PAPA's feedback): P(like) = link(u - threshold).
"""

from __future__ import annotations

import math
from typing import Any

import pyro.distributions as dist
import torch
from torch import Tensor

from papa_bayes.exceptions import InputDataError, ModelError

__all__ = [
    "LINKS",
    "check_link",
    "check_prior_pair",
    "log_cdf",
    "comparison_distribution",
    "comparison_log_probs",
    "comparison_outcome",
    "rating_distribution",
    "rating_outcome",
]

LINKS = ("logit", "probit")


def check_link(link: str) -> str:
    """``link`` if it is ``"logit"`` or ``"probit"``, else InputDataError (a bad argument, as an unknown kernel)."""
    if not isinstance(link, str) or link not in LINKS:
        raise InputDataError("link", f"one of {LINKS}", repr(link))
    return link


def check_prior_pair(name: str, prior: Any) -> tuple[float, float]:
    """A ``(loc, scale)`` prior as two floats, or InputDataError unless loc is finite and scale positive and finite."""
    expected = "(loc, scale) with a finite loc and a positive finite scale"
    try:
        if isinstance(prior, (str, bytes)) or len(prior) != 2 or any(isinstance(v, (bool, str, bytes)) for v in prior):
            raise TypeError
        loc, scale = float(prior[0]), float(prior[1])
    except (TypeError, ValueError):
        raise InputDataError(name, expected, repr(prior) if isinstance(prior, str) else prior) from None
    if not math.isfinite(loc) or not (scale > 0 and math.isfinite(scale)):
        raise InputDataError(name, expected, prior)
    return loc, scale


def log_cdf(x: Tensor, link: str) -> Tensor:
    """log F(x) for the link's CDF F, stable in both tails."""
    if link == "logit":
        return torch.nn.functional.logsigmoid(x)
    return torch.special.log_ndtr(x)


def _bernoulli_logits(x: Tensor, link: str) -> Tensor:
    """Logits of a Bernoulli with success probability F(x)."""
    return x if link == "logit" else log_cdf(x, link) - log_cdf(-x, link)


def comparison_log_probs(diff: Tensor, link: str, tie_strength: Tensor | None = None) -> Tensor:
    """Log probabilities of the outcomes of a comparison.

    Args:
        diff: `... x m` utility differences ``u(first) - u(second)``, noise units.
        link: ``"logit"`` or ``"probit"``.
        tie_strength: broadcastable to ``diff``: Davidson's nu (logit) or
            Glenn-David's half-width tau (probit); None for strict data.

    Returns:
        `... x m x 2` (first wins, second wins) or `... x m x 3` (..., tie),
        normalized over the last dimension.
    """
    if tie_strength is None:
        return torch.stack([log_cdf(diff, link), log_cdf(-diff, link)], dim=-1)
    diff, tie = torch.broadcast_tensors(diff, tie_strength)
    if link == "logit":
        logits = torch.stack([diff / 2, -diff / 2, torch.log(tie)], dim=-1)
        return torch.log_softmax(logits, dim=-1)
    first = log_cdf(diff - tie, link)
    second = log_cdf(-diff - tie, link)
    # P(tie) = 1 - P(first) - P(second), computed as log1p(-(p1 + p2)) in log space.
    either = torch.logaddexp(first, second).clamp(max=-1e-12)
    tie_lp = torch.log(-torch.expm1(either))
    return torch.stack([first, second, tie_lp], dim=-1)


def comparison_distribution(diff: Tensor, link: str, tie_strength: Tensor | None = None) -> dist.TorchDistribution:
    """Distribution of the observed outcome of each comparison (batch shape of ``diff``).

    Strict data: ``Bernoulli`` whose success is "first preferred" (observed 1, since
    comparisons are stored winner first). With ties: ``Categorical`` over
    (first wins, second wins, tie); see :func:`comparison_outcome`. Pyro
    distributions, so that Pyro can sample the site (``poutine.uncondition``,
    ``Predictive``).
    """
    if tie_strength is None:
        return dist.Bernoulli(logits=_bernoulli_logits(diff, link), validate_args=False)
    return dist.Categorical(logits=comparison_log_probs(diff, link, tie_strength), validate_args=False)


def comparison_outcome(ties: Tensor, with_ties: bool, dtype: torch.dtype = torch.float64) -> Tensor:
    """Observed values matching :func:`comparison_distribution`: `m`."""
    if not with_ties:
        if bool(ties.any()):
            raise ModelError("The data holds ties but the model was built with ties=False; pass ties=True.")
        return torch.ones(ties.shape, dtype=dtype)
    return torch.where(ties, 2, 0).to(torch.long)


def rating_distribution(margin: Tensor, link: str) -> dist.Bernoulli:
    """Like/dislike: Bernoulli(F(u - threshold)) over `... x k` margins (a Pyro distribution)."""
    return dist.Bernoulli(logits=_bernoulli_logits(margin, link), validate_args=False)


def rating_outcome(ratings: Tensor, dtype: torch.dtype = torch.float64) -> Tensor:
    """1 for like, 0 for dislike: `k`."""
    return (ratings[:, 1] > 0).to(dtype)
