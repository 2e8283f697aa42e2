"""Linear reward models: ``u(x) = rationality * (w . x)``.

Bradley-Terry (logit) and Thurstone (probit) comparisons, Davidson / Glenn-David
ties, PAPA-style like/dislike ratings with a learned threshold, and a hierarchical
version across raters (population mean and scale, per-rater weights) whose
population posterior gives a new rater an informed prior (cold start).

Broadcasting: inside the Pyro models, batched values carry their batch dims left of
the plate dim (Pyro's convention), so the same code runs unbatched (NUTS), with
vectorized particles (SVI) and on `s x 1 x d` posterior draws.
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor

from papa_bayes.data import PreferenceData
from papa_bayes.exceptions import InputDataError, ModelError
from papa_bayes.models.base import PyroRewardModel
from papa_bayes.models.likelihoods import (
    check_link,
    comparison_distribution,
    comparison_outcome,
    rating_distribution,
    rating_outcome,
)

__all__ = ["LinearReward", "HierarchicalLinearReward"]


def _observe(
    data: PreferenceData,
    u_first: Tensor | None,
    u_second: Tensor | None,
    u_rated: Tensor | None,
    threshold: Tensor | None,
    rationality: Tensor,
    tie_strength: Tensor | None,
    link: str,
) -> dict[str, dist.Distribution]:
    """Observation distributions from utilities (raw units) of compared and rated items."""
    out = {}
    if u_first is not None:
        out["comparisons"] = comparison_distribution(rationality * (u_first - u_second), link, tie_strength)
    if u_rated is not None:
        out["ratings"] = rating_distribution(rationality * (u_rated - threshold), link)
    return out


def _pyro_observe(data: PreferenceData, dists: dict[str, dist.Distribution], ties: bool) -> None:
    if "comparisons" in dists:
        with pyro.plate("comparison", data.num_comparisons):
            pyro.sample("comparisons", dists["comparisons"], obs=comparison_outcome(data.ties, ties))
    if "ratings" in dists:
        with pyro.plate("rating", data.num_ratings):
            pyro.sample("ratings", dists["ratings"], obs=rating_outcome(data.ratings))


class _LinkPriors:
    """Priors shared by the flat and hierarchical linear models."""

    link: str
    ties: bool
    rationality: float | None
    rationality_prior: tuple[float, float]
    threshold_prior_scale: float
    tie_prior: tuple[float, float]

    def _nuisance_priors(self, data: PreferenceData) -> dict[str, dist.Distribution]:
        out: dict[str, dist.Distribution] = {}
        if self.rationality is None:
            out["rationality"] = dist.LogNormal(*self.rationality_prior)
        if self.ties and data.num_comparisons:
            out["tie_strength"] = dist.LogNormal(*self.tie_prior)
        if data.num_ratings:
            out["threshold"] = dist.Normal(0.0, self.threshold_prior_scale)
        return out

    def _sample_nuisance(self, data: PreferenceData) -> tuple[Tensor, Tensor | None, Tensor | None]:
        priors = self._nuisance_priors(data)
        beta = pyro.sample("rationality", priors["rationality"]) if "rationality" in priors else torch.tensor(self.rationality, dtype=torch.float64)
        tie = pyro.sample("tie_strength", priors["tie_strength"]) if "tie_strength" in priors else None
        threshold = pyro.sample("threshold", priors["threshold"]) if "threshold" in priors else None
        return beta, tie, threshold

    def _nuisance_draws(self, params: dict[str, Tensor], s: int) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Draws reshaped to `s x 1` so they broadcast against `s x m`."""
        beta = params["rationality"] if self.rationality is None else torch.full((s,), float(self.rationality), dtype=torch.float64)
        tie = params.get("tie_strength")
        thr = params.get("threshold")
        col = lambda t: None if t is None else t.reshape(s, 1)  # noqa: E731
        return col(beta), col(tie), col(thr)

    def _rationality_draws(self, params: dict[str, Tensor], s: int) -> Tensor:
        if self.rationality is None:
            return params["rationality"]
        return torch.full((s,), float(self.rationality), dtype=torch.float64)

    def like_threshold(self, params: dict[str, Tensor]) -> Tensor:
        if "threshold" not in params:
            raise ModelError("This posterior has no like/dislike threshold: fit it on data with ratings.")
        s = params["threshold"].shape[0]
        return params["threshold"] * self._rationality_draws(params, s)


class LinearReward(_LinkPriors, PyroRewardModel):
    """Linear utility ``u(x) = rationality * w . x`` with a Normal prior on ``w``.

    Args:
        link: ``"logit"`` (Bradley-Terry) or ``"probit"`` (Thurstone).
        ties: model ties (Davidson for logit, Glenn-David for probit). Data with
            ties under ``ties=False`` raises :class:`ModelError`.
        prior_scale: standard deviation of each weight under the default prior.
        prior_loc: `d` prior mean of ``w`` (default zeros).
        prior_scale_tril: `d x d` Cholesky factor of a full prior covariance (e.g.
            from :meth:`HierarchicalPosterior.new_rater_model`); overrides ``prior_scale``.
        rationality: a fixed rationality; ``None`` (default) learns it.
        rationality_prior: (loc, scale) of the LogNormal prior of the rationality.
        threshold_prior_scale: sd of the Normal prior of the like/dislike threshold.
        tie_prior: (loc, scale) of the LogNormal prior of the tie strength.

    Sites: ``w`` (dim ``feature``), ``rationality``, ``tie_strength`` (with ties),
    ``threshold`` (with ratings); observed ``comparisons`` and ``ratings``.

    Example:
        >>> post = fit(LinearReward(link="logit"), data, method="nuts")
    """

    dims = {"w": ["feature"]}

    def __init__(
        self,
        *,
        link: str = "logit",
        ties: bool = False,
        prior_scale: float = 1.0,
        prior_loc: Tensor | None = None,
        prior_scale_tril: Tensor | None = None,
        rationality: float | None = None,
        rationality_prior: tuple[float, float] = (0.0, 0.5),
        threshold_prior_scale: float = 1.0,
        tie_prior: tuple[float, float] = (math.log(0.5), 1.0),
    ) -> None:
        self.link = check_link(link)
        self.ties = bool(ties)
        if not (prior_scale > 0 and math.isfinite(prior_scale)):
            raise InputDataError("prior_scale", "a positive finite number", prior_scale)
        if rationality is not None and not (rationality > 0 and math.isfinite(rationality)):
            raise InputDataError("rationality", "a positive finite number or None", rationality)
        self.prior_scale = float(prior_scale)
        self.prior_loc = None if prior_loc is None else torch.as_tensor(prior_loc, dtype=torch.float64)
        self.prior_scale_tril = None if prior_scale_tril is None else torch.as_tensor(prior_scale_tril, dtype=torch.float64)
        self.rationality = rationality
        self.rationality_prior = tuple(float(v) for v in rationality_prior)
        self.threshold_prior_scale = float(threshold_prior_scale)
        self.tie_prior = tuple(float(v) for v in tie_prior)

    def _w_prior(self, d: int) -> dist.Distribution:
        loc = torch.zeros(d, dtype=torch.float64) if self.prior_loc is None else self.prior_loc
        if loc.shape != (d,):
            raise InputDataError("prior_loc", f"shape ({d},) to match the data's features", tuple(loc.shape))
        if self.prior_scale_tril is not None:
            if self.prior_scale_tril.shape != (d, d):
                raise InputDataError("prior_scale_tril", f"shape ({d}, {d})", tuple(self.prior_scale_tril.shape))
            return dist.MultivariateNormal(loc, scale_tril=self.prior_scale_tril)
        return dist.Normal(loc, self.prior_scale).to_event(1)

    def priors(self, data: PreferenceData) -> dict[str, dist.Distribution]:
        return {"w": self._w_prior(data.num_features), **self._nuisance_priors(data)}

    def __call__(self, data: PreferenceData) -> None:
        w = pyro.sample("w", self._w_prior(data.num_features))
        beta, tie, threshold = self._sample_nuisance(data)
        X, c, r = data.items, data.comparisons, data.ratings
        # (w * x).sum(-1) broadcasts `... x 1 x d` against `m x d` into `... x m`.
        u = lambda idx: (w * X[idx]).sum(-1)  # noqa: E731
        dists = _observe(
            data,
            u(c[:, 0]) if data.num_comparisons else None,
            u(c[:, 1]) if data.num_comparisons else None,
            u(r[:, 0]) if data.num_ratings else None,
            threshold, beta, tie, self.link,
        )
        _pyro_observe(data, dists, self.ties)

    def observation_distributions(self, params: dict[str, Tensor], data: PreferenceData) -> dict[str, dist.Distribution]:
        w = params["w"]  # s x d
        s = w.shape[0]
        beta, tie, thr = self._nuisance_draws(params, s)
        U = w @ data.items.T  # s x n
        c, r = data.comparisons, data.ratings
        return _observe(
            data,
            U[:, c[:, 0]] if data.num_comparisons else None,
            U[:, c[:, 1]] if data.num_comparisons else None,
            U[:, r[:, 0]] if data.num_ratings else None,
            thr, beta, tie, self.link,
        )

    def utility(self, params: dict[str, Tensor], features: Tensor, *, rater: int | None = None) -> Tensor:
        w = params["w"].to(features.dtype)
        beta = self._rationality_draws(params, w.shape[0]).to(features.dtype)
        return beta.unsqueeze(-1) * (w @ features.transpose(-1, -2))


class HierarchicalLinearReward(_LinkPriors, PyroRewardModel):
    """Per-rater linear utilities drawn from a population (non-centred).

    ``w_r = population_mean + population_scale * rater_offset_r``, with
    ``rater_offset_r ~ N(0, I)``; rationality, tie strength and like threshold are
    shared. Rater ids come from ``data.comparison_rater`` / ``data.rating_rater``.

    Args:
        population_prior_scale: sd of the Normal prior of the population mean.
        scale_prior_scale: scale of the HalfNormal prior of the population scale.
        (others as in :class:`LinearReward`)

    Sites: ``population_mean`` (``feature``), ``population_scale`` (``feature``),
    ``rater_offset`` (``rater x feature``), ``rationality`` and the nuisance sites.
    """

    dims = {
        "population_mean": ["feature"],
        "population_scale": ["feature"],
        "rater_offset": ["rater", "feature"],
        "w": ["rater", "feature"],
    }

    def __init__(
        self,
        *,
        link: str = "logit",
        ties: bool = False,
        population_prior_scale: float = 1.0,
        scale_prior_scale: float = 0.5,
        rationality: float | None = None,
        rationality_prior: tuple[float, float] = (0.0, 0.5),
        threshold_prior_scale: float = 1.0,
        tie_prior: tuple[float, float] = (math.log(0.5), 1.0),
    ) -> None:
        self.link = check_link(link)
        self.ties = bool(ties)
        self.population_prior_scale = float(population_prior_scale)
        self.scale_prior_scale = float(scale_prior_scale)
        self.rationality = rationality
        self.rationality_prior = tuple(float(v) for v in rationality_prior)
        self.threshold_prior_scale = float(threshold_prior_scale)
        self.tie_prior = tuple(float(v) for v in tie_prior)

    @staticmethod
    def _raters(data: PreferenceData) -> tuple[Tensor, Tensor]:
        cr = data.comparison_rater if data.comparison_rater is not None else torch.zeros(data.num_comparisons, dtype=torch.long)
        rr = data.rating_rater if data.rating_rater is not None else torch.zeros(data.num_ratings, dtype=torch.long)
        return cr, rr

    def priors(self, data: PreferenceData) -> dict[str, dist.Distribution]:
        d, R = data.num_features, data.num_raters
        zeros = torch.zeros(d, dtype=torch.float64)
        return {
            "population_mean": dist.Normal(zeros, self.population_prior_scale).to_event(1),
            "population_scale": dist.HalfNormal(torch.full((d,), self.scale_prior_scale, dtype=torch.float64)).to_event(1),
            "rater_offset": dist.Normal(torch.zeros(R, d, dtype=torch.float64), 1.0).to_event(2),
            **self._nuisance_priors(data),
        }

    def __call__(self, data: PreferenceData) -> None:
        d, R = data.num_features, data.num_raters
        priors = self.priors(data)
        mu = pyro.sample("population_mean", priors["population_mean"])
        tau = pyro.sample("population_scale", priors["population_scale"])
        with pyro.plate("rater", R):
            z = pyro.sample("rater_offset", dist.Normal(torch.zeros(d, dtype=torch.float64), 1.0).to_event(1))
        w = mu.unsqueeze(-2) + tau.unsqueeze(-2) * z  # ... x R x d
        beta, tie, threshold = self._sample_nuisance(data)
        X, c, r = data.items, data.comparisons, data.ratings
        cr, rr = self._raters(data)
        u = lambda idx, who: (w[..., who, :] * X[idx]).sum(-1)  # noqa: E731
        dists = _observe(
            data,
            u(c[:, 0], cr) if data.num_comparisons else None,
            u(c[:, 1], cr) if data.num_comparisons else None,
            u(r[:, 0], rr) if data.num_ratings else None,
            threshold, beta, tie, self.link,
        )
        _pyro_observe(data, dists, self.ties)

    @staticmethod
    def weights(params: dict[str, Tensor]) -> Tensor:
        """Per-rater weights `s x R x d`."""
        return params["population_mean"].unsqueeze(-2) + params["population_scale"].unsqueeze(-2) * params["rater_offset"]

    def derived(self, params: dict[str, Tensor], data: PreferenceData) -> dict[str, Tensor]:
        return {"w": self.weights(params)}

    def observation_distributions(self, params: dict[str, Tensor], data: PreferenceData) -> dict[str, dist.Distribution]:
        W = self.weights(params)  # s x R x d
        s = W.shape[0]
        beta, tie, thr = self._nuisance_draws(params, s)
        X, c, r = data.items, data.comparisons, data.ratings
        cr, rr = self._raters(data)
        u = lambda idx, who: (W[:, who, :] * X[idx]).sum(-1)  # noqa: E731
        return _observe(
            data,
            u(c[:, 0], cr) if data.num_comparisons else None,
            u(c[:, 1], cr) if data.num_comparisons else None,
            u(r[:, 0], rr) if data.num_ratings else None,
            thr, beta, tie, self.link,
        )

    def utility(self, params: dict[str, Tensor], features: Tensor, *, rater: int | None = None) -> Tensor:
        """Utility for a known rater; ``rater=None`` gives the population mean's utility."""
        beta = self._rationality_draws(params, params["population_mean"].shape[0]).to(features.dtype)
        if rater is None:
            w = params["population_mean"]
        else:
            R = params["rater_offset"].shape[-2]
            if not 0 <= rater < R:
                raise InputDataError("rater", f"a rater id in [0, {R - 1}] (use new_rater_model() for a new rater)", rater)
            w = self.weights(params)[:, rater, :]
        return beta.unsqueeze(-1) * (w.to(features.dtype) @ features.transpose(-1, -2))
