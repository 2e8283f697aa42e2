"""Closed forms on a Gaussian utility difference: Houlsby's BALD and analytic EUBO.

If the utility difference of a pair is ``delta ~ N(m, v)`` (a probit GP posterior,
or a Laplace posterior of a linear reward) and P(first preferred | delta) =
Phi(delta / sigma_n), then (Houlsby et al. 2011, eqs. 3-4 with their
approximation h(Phi(x)) ~ exp(-x^2 / (pi ln 2)))::

    EIG ~ h(Phi(m / sqrt(sigma_n^2 + v)))
          - C / sqrt(v / sigma_n^2 + C^2) * exp(-(m / sigma_n)^2 / (2 (v / sigma_n^2 + C^2)))

with ``h`` the binary entropy in bits and ``C = sqrt(pi ln 2 / 2)``. For a logit
link the same formula is used on ``Phi(lambda x) ~ sigmoid(x)``, lambda =
sqrt(pi / 8): an approximation, used to screen pairs before Monte Carlo.

The expected utility of the best of two options under a Gaussian (Lin et al. 2022)
is ``E max(u_a, u_b) = mu_b + s (phi(z) + z Phi(z))``, ``s = sd(u_a - u_b)``,
``z = (mu_a - mu_b) / s``.

These need only the `n` means and the `n x n` covariance of the utility at a pool,
so all pairs of a 500-item pool (124,750) are scored in a few milliseconds.
"""

from __future__ import annotations

import math

import torch
from botorch.acquisition import AcquisitionFunction
from botorch.models.model import Model
from botorch.posteriors.ensemble import EnsemblePosterior
from torch import Tensor

from papa_bayes.acquisition.base import (
    LN2,
    answer_noise,
    check_pending,
    check_query_X,
    draw_variance,
    entropy_bits,
    model_num_features,
    resolve_model,
)
from papa_bayes.checks import check_finite, check_float, check_real_tensor, is_integer_tensor
from papa_bayes.exceptions import InputDataError
from papa_bayes.inference.posterior import RewardPosterior
from papa_bayes.models.likelihoods import check_link

__all__ = [
    "HOULSBY_C",
    "houlsby_information_gain",
    "gaussian_expected_max",
    "utility_moments",
    "pair_moments",
    "HoulsbyInformationGain",
]

HOULSBY_C = math.sqrt(math.pi * LN2 / 2.0)
_LOGIT_TO_PROBIT = math.sqrt(math.pi / 8.0)
_SQRT2 = math.sqrt(2.0)


def _binary_entropy_bits(p: Tensor) -> Tensor:
    """H(p) in bits of a `batch` probability (0 at 0 and 1, with a finite gradient there).

    ``xlogy``'s gradient is -inf where ``Phi`` rounds to exactly 0 or 1 (|m| / sqrt(1 + v) > ~8.3):
    times Phi's tiny or underflowed derivative that is inf or NaN, which stops BoTorch's optimizer.
    :func:`entropy_bits` clamps inside the log: the same values, a gradient of 0.
    """
    return entropy_bits(torch.stack([p, 1 - p], -1))


def _same_shape(*named: tuple[str, Tensor]) -> list[Tensor]:
    """The tensors (lists converted), or InputDataError unless all have the first one's shape."""
    out = [check_real_tensor(name, value, "a `batch` tensor", dtype=None) for name, value in named]
    for (name, _), t in zip(named[1:], out[1:]):
        if t.shape != out[0].shape:
            raise InputDataError(name, f"shape {tuple(out[0].shape)} (that of {named[0][0]})", tuple(t.shape))
    return out


def houlsby_information_gain(
    mean_diff: Tensor, var_diff: Tensor, *, noise_scale: float = 1.0, link: str = "probit"
) -> Tensor:
    """Houlsby et al. (2011)'s closed-form BALD of a binary answer, in bits.

    Args:
        mean_diff: `batch` posterior mean of ``u(a) - u(b)`` (or of ``u - threshold``).
        var_diff: `batch` its posterior variance.
        noise_scale: sigma_n in P(first) = F(delta / sigma_n).
        link: ``"probit"`` (exact up to Houlsby's approximation of h(Phi)) or
            ``"logit"`` (through the probit approximation of the sigmoid).

    Returns:
        `batch` bits.
    """
    check_float("noise_scale", noise_scale, strict=True)
    mean_diff, var_diff = _same_shape(("mean_diff", mean_diff), ("var_diff", var_diff))
    check_finite("mean_diff", mean_diff.detach(), "posterior means")
    check_finite("var_diff", var_diff.detach(), "posterior variances")
    scale = noise_scale / (_LOGIT_TO_PROBIT if check_link(link) == "logit" else 1.0)
    m = mean_diff / scale
    v = var_diff.clamp(min=0.0) / scale**2
    marginal = torch.special.ndtr(m / torch.sqrt(1.0 + v))
    c2 = HOULSBY_C**2
    conditional = HOULSBY_C / torch.sqrt(v + c2) * torch.exp(-(m**2) / (2.0 * (v + c2)))
    return (_binary_entropy_bits(marginal) - conditional).clamp(min=0.0)


def gaussian_expected_max(mean_first: Tensor, mean_second: Tensor, var_diff: Tensor) -> Tensor:
    """E[max(u_a, u_b)] for jointly Gaussian utilities (analytic EUBO, Lin et al. 2022): `batch`."""
    mean_first, mean_second, var_diff = _same_shape(
        ("mean_first", mean_first), ("mean_second", mean_second), ("var_diff", var_diff))
    for name, value in (("mean_first", mean_first), ("mean_second", mean_second), ("var_diff", var_diff)):
        check_finite(name, value.detach(), "posterior moments")  # NaN would come back as the expected maximum
    return _gaussian_expected_max(mean_first, mean_second, var_diff)


def _gaussian_expected_max(mean_first: Tensor, mean_second: Tensor, var_diff: Tensor) -> Tensor:
    """:func:`gaussian_expected_max` of checked moments (e.g. of draws :func:`utility_moments` checked)."""
    sd = var_diff.clamp(min=1e-18).sqrt()
    z = (mean_first - mean_second) / sd
    pdf = torch.exp(-0.5 * z**2) / math.sqrt(2 * math.pi)
    return mean_second + sd * (pdf + z * torch.special.ndtr(z))


def utility_moments(utility_draws: Tensor) -> tuple[Tensor, Tensor]:
    """Mean `n` and covariance `n x n` of utility draws `s x n`."""
    utility_draws = check_real_tensor("utility_draws", utility_draws, "`s x n` utility draws", dtype=None)
    if utility_draws.dim() != 2 or utility_draws.shape[0] == 0:
        raise InputDataError("utility_draws", "`s x n` utility draws (s >= 1)", tuple(utility_draws.shape))
    check_finite("utility_draws", utility_draws.detach(), "utility draws")
    s = utility_draws.shape[0]
    mean = utility_draws.mean(0)
    centred = utility_draws - mean
    return mean, centred.T @ centred / max(s - 1, 1)


def pair_moments(mean: Tensor, cov: Tensor, first: Tensor, second: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and variance of ``u(first) - u(second)`` for index tensors `P`: two `P` tensors."""
    n = mean.shape[0] if isinstance(mean, Tensor) and mean.dim() == 1 else None
    if n is None or not isinstance(cov, Tensor) or cov.shape != (n, n):
        raise InputDataError("mean / cov", "an `n` mean and its `n x n` covariance",
                             tuple(getattr(mean, "shape", ())) + tuple(getattr(cov, "shape", ())))
    for name, idx in (("first", first), ("second", second)):
        if not is_integer_tensor(idx):
            raise InputDataError(name, "an integer index tensor", getattr(idx, "dtype", type(idx).__name__))
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n):
            raise InputDataError(name, f"item indices in [0, {n - 1}]", (int(idx.min()), int(idx.max())))
    if first.shape != second.shape:
        raise InputDataError("second", f"shape {tuple(first.shape)} (that of first)", tuple(second.shape))
    check_finite("mean", mean.detach(), "posterior means")
    check_finite("cov", cov.detach(), "posterior covariances")
    return _pair_moments(mean, cov, first, second)


def _pair_moments(mean: Tensor, cov: Tensor, first: Tensor, second: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`pair_moments` of checked moments and indices (e.g. every pair of a pool, moments of checked draws)."""
    n = mean.shape[0]
    diag = cov.diagonal()
    var = diag[first] + diag[second] - 2.0 * cov.reshape(-1)[first * n + second]
    return mean[first] - mean[second], var.clamp(min=0.0)


class HoulsbyInformationGain(AcquisitionFunction):
    """Houlsby et al. (2011)'s closed-form BALD for a pairwise probit query.

    Uses the posterior mean and covariance of the two utilities: exact Gaussian
    moments for a GP (e.g. BoTorch ``PairwiseGP``), the draws' moments for a
    :class:`~papa_bayes.RewardPosterior` (whose own link and noise units are then
    used).

    Args:
        model: a BoTorch model of the utility, a RewardPosterior or one rater's view
            of it (``posterior.as_botorch_model(rater=r)``).
        noise_scale: sigma_n, for a BoTorch model (default 1); ``sqrt(2)`` matches
            ``PairwiseGP``'s probit likelihood. With 1 and the probit link it is the
            information BoTorch's ``PairwiseBayesianActiveLearningByDisagreement``
            (``std_noise=0``) estimates, but in bits where BoTorch reports nats:
            BoTorch's value is about ``ln 2`` (0.693) times this one (BoTorch
            estimates the conditional entropy by Monte Carlo, this uses Houlsby's
            approximation). A RewardPosterior is in noise units: None or 1, another
            value is an :class:`~papa_bayes.exceptions.InputDataError`.
        link: for a BoTorch model ``"probit"`` (default) or ``"logit"``
            (approximate). A RewardPosterior's own link is used: None or that link,
            another is an InputDataError (field ``link``).
        X_pending: one pending item `1 x d`, as :meth:`set_X_pending` (BoTorch's
            ``X_pending=``); None (default) for none.

    For a BoTorch model the feature width `d` is read from the model
    (``PairwiseGP.datapoints``, or ``train_inputs`` without an input transform):
    ``X`` of another width is an InputDataError (field ``X``).

    ``forward``: `batch_shape x 2 x d` -> `batch_shape` bits; `batch_shape x 1 x d`
    after ``set_X_pending`` of one item fixed in every pair (as BoTorch's pending points).

    The answer is binary: a posterior with ties is scored as if its people never
    answered "tie" (:class:`~papa_bayes.acquisition.PairwiseInformationGain` counts the
    information of the three outcomes).
    """

    def __init__(
        self,
        model: RewardPosterior | Model,
        *,
        noise_scale: float | None = None,
        link: str | None = None,
        X_pending: Tensor | None = None,
    ) -> None:
        model, posterior, _ = resolve_model(model)
        self._num_features = model_num_features(model) if posterior is None else posterior.num_features
        link, noise_scale = answer_noise(posterior, link, noise_scale)
        super().__init__(model=model)
        self.noise_scale = noise_scale
        self.link = link
        self.X_pending: Tensor | None = None  # BoTorch reads it (optimize_acqf_discrete) before any set_X_pending
        if X_pending is not None:
            self.set_X_pending(X_pending)

    def set_X_pending(self, X_pending: Tensor | None = None) -> None:
        """Fix one item of every pair (`1 x d`), or None to clear; see ``forward``."""
        super().set_X_pending(check_pending(X_pending, 2, self._num_features))

    def forward(self, X: Tensor) -> Tensor:
        X = check_query_X(X, 2, self._num_features, self.X_pending)
        posterior = self.model.posterior(X)
        if isinstance(posterior, EnsemblePosterior):
            diff = posterior.values[..., 0, 0] - posterior.values[..., 1, 0]  # batch x s
            mean, var = diff.mean(-1), draw_variance(diff, dim=-1)
        else:
            mu = posterior.mean.squeeze(-1)
            cov = posterior.covariance_matrix
            mean = mu[..., 0] - mu[..., 1]
            var = cov[..., 0, 0] + cov[..., 1, 1] - 2 * cov[..., 0, 1]
        return houlsby_information_gain(mean, var, noise_scale=self.noise_scale, link=self.link)
