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

from papa_bayes.checks import check_bool, check_float, check_int, check_real_tensor
from papa_bayes.data import PreferenceData
from papa_bayes.exceptions import InputDataError
from papa_bayes.models.base import PyroRewardModel, check_model_data
from papa_bayes.models.likelihoods import (
    check_link,
    check_prior_pair,
    comparison_distribution,
    comparison_outcome,
    rating_distribution,
    rating_outcome,
)

__all__ = ["LinearReward", "HierarchicalLinearReward"]


def _observe(
    u_first: Tensor | None,
    u_second: Tensor | None,
    u_rated: Tensor | None,
    threshold: Tensor | None,
    tie_strength: Tensor | None,
    link: str,
) -> dict[str, dist.Distribution]:
    """Observation distributions from utilities (noise units) of compared and rated items."""
    out = {}
    if u_first is not None:
        out["comparisons"] = comparison_distribution(u_first - u_second, link, tie_strength)
    if u_rated is not None:
        out["ratings"] = rating_distribution(u_rated - threshold, link)
    return out


def _pyro_observe(data: PreferenceData, dists: dict[str, dist.Distribution], ties: bool) -> None:
    if "comparisons" in dists:
        with pyro.plate("comparison", data.num_comparisons):
            pyro.sample("comparisons", dists["comparisons"], obs=comparison_outcome(data.ties, ties))
    if "ratings" in dists:
        with pyro.plate("rating", data.num_ratings):
            pyro.sample("ratings", dists["ratings"], obs=rating_outcome(data.ratings))


def _left_of_plates(value: Tensor) -> Tensor:
    """A `d`-vector site's value with any batch dims left of the data plates (dim -1).

    Under Pyro's conventions a batched draw of a site outside the plates is
    `... x 1 x d`. ``Predictive(..., parallel=True)`` (and so ``az.from_pyro``'s
    log-likelihood) pads posterior draws `s x d` by counting the event dim as a plate
    dim, handing the model `s x d`; no enclosing plate can produce that shape, so it
    is read as `s x 1 x d`.
    """
    return value.unsqueeze(-2) if value.dim() == 2 else value


#: Fixed rationalities accepted (noise units per unit of ``w . x``). Outside, fits go wrong numerically: at
#: 1e-300 the prior of ``scaled_w`` (sd ``rationality * prior_scale``) underflows and Laplace/SVI stop at their
#: start; below about 1e-4 SVI's steps in ``scaled_w`` are many prior sds of ``w`` (its posterior mean of ``w``
#: was -43 at 1e-6 where Laplace's is -0.25); a hierarchical fit's weights blew up to 1e31 at 1e6 and its Newton
#: steps failed at 1e30. Within the range every answer ranges from a near coin flip (1e-3) to near certain
#: (1e3) for standardized features; ``prior_scale`` expresses anything beyond.
RATIONALITY_RANGE = (1e-3, 1e3)


def _f64(*values: float) -> list[Tensor]:
    """Prior parameters as float64 tensors, whatever torch's default dtype."""
    return [torch.tensor(float(v), dtype=torch.float64) for v in values]


class _LinkPriors:
    """Nuisance sites shared by the flat and hierarchical linear models."""

    link: str
    ties: bool
    rationality: float | None
    rationality_prior: tuple[float, float]
    threshold_prior_scale: float
    tie_prior: tuple[float, float]

    def _set_link_priors(
        self,
        rationality: float | None,
        rationality_prior: tuple[float, float],
        threshold_prior_scale: float,
        tie_prior: tuple[float, float],
    ) -> None:
        """Check and keep the nuisance sites' settings (shared by both models' constructors)."""
        self.rationality = None if rationality is None else check_float(
            "rationality", rationality, minimum=RATIONALITY_RANGE[0], maximum=RATIONALITY_RANGE[1],
            inclusive_maximum=True, expected=f"None (learned) or a finite number in [{RATIONALITY_RANGE[0]:g}, "
            f"{RATIONALITY_RANGE[1]:g}] (noise units per unit of w . x)")
        self.rationality_prior = check_prior_pair("rationality_prior", rationality_prior)
        self.threshold_prior_scale = check_float("threshold_prior_scale", threshold_prior_scale, strict=True)
        self.tie_prior = check_prior_pair("tie_prior", tie_prior)

    def _rationality_prior(self) -> dict[str, dist.Distribution]:
        return {"rationality": dist.LogNormal(*_f64(*self.rationality_prior))} if self.rationality is None else {}

    def _other_priors(self, data: PreferenceData) -> dict[str, dist.Distribution]:
        out: dict[str, dist.Distribution] = {}
        # The tie strength even before any comparison (its posterior then is its prior): a tie model's posterior
        # predicts three outcomes and scores tied answers whatever it was fitted on.
        if self.ties:
            out["tie_strength"] = dist.LogNormal(*_f64(*self.tie_prior))
        if data.num_ratings:
            out["threshold"] = dist.Normal(*_f64(0.0, self.threshold_prior_scale))
        return out

    def _sample_rationality(self) -> Tensor:
        if self.rationality is None:
            return pyro.sample("rationality", dist.LogNormal(*_f64(*self.rationality_prior)))
        return torch.tensor(float(self.rationality), dtype=torch.float64)

    def _sample_others(self, data: PreferenceData) -> tuple[Tensor | None, Tensor | None]:
        priors = self._other_priors(data)
        tie = pyro.sample("tie_strength", priors["tie_strength"]) if "tie_strength" in priors else None
        threshold = pyro.sample("threshold", priors["threshold"]) if "threshold" in priors else None
        return tie, threshold

    def _rationality_draws(self, params: dict[str, Tensor], s: int) -> Tensor:
        """`s` rationality draws (the fixed value repeated when not learned)."""
        if self.rationality is None:
            return params["rationality"]
        return torch.full((s,), float(self.rationality), dtype=torch.float64)

    @staticmethod
    def _other_draws(params: dict[str, Tensor], s: int) -> tuple[Tensor | None, Tensor | None]:
        """Tie strength and threshold as `s x 1`, to broadcast against `s x m`."""
        col = lambda t: None if t is None else t.reshape(s, 1)  # noqa: E731
        return col(params.get("tie_strength")), col(params.get("threshold"))


class LinearReward(_LinkPriors, PyroRewardModel):
    """Linear utility ``u(x) = rationality * w . x`` with a Normal prior on ``w``.

    The sampled site is ``scaled_w = rationality * w`` (the weights in noise units,
    whose prior given the rationality is ``N(rationality * prior_loc,
    rationality^2 * prior_cov)``): the likelihood sees only ``scaled_w``, so the
    posterior is close to Gaussian there when the data are informative and
    Laplace/SVI match NUTS (where they are not, a wide ``rationality_prior`` makes a
    funnel, and SVI's guide and NUTS decentre ``scaled_w`` from the rationality: see
    :mod:`papa_bayes.inference.svi`); ``w`` itself is reported as the derived site
    ``scaled_w / rationality``. This is the same
    model as ``w ~ N(prior_loc, prior_cov)``, ``u = rationality * w . x``.

    Raters are pooled: one ``w`` for everyone, whatever rater ids the data carry, so
    ``utility(..., rater=r)`` gives the same pooled utility for any rater id ``r``
    (a non-negative integer; anything else raises :class:`InputDataError`). Use
    :class:`HierarchicalLinearReward` for per-rater weights.

    Args:
        link: ``"logit"`` (Bradley-Terry) or ``"probit"`` (Thurstone).
        ties: model ties (Davidson for logit, Glenn-David for probit). Data with
            ties under ``ties=False`` raises :class:`ModelError`.
        prior_scale: standard deviation of each weight under the default prior.
            It sets how consistent the person looks a priori: with d standardized
            features, ``1 / sqrt(d)`` gives items unit-variance utilities, while
            the default 1.0 says that at d=8 most answers are nearly certain. On
            ``benchmarks/bench_queries.py``'s protocol, 1 / sqrt(d) gave a better
            held-out log-loss for people of rationality 0.5-1 at d=8 and 16 and
            about the same alignment; 1.0 did better for a rationality of 5.
        prior_loc: `d` prior mean of ``w`` (default zeros).
        prior_scale_tril: `d x d` Cholesky factor of a full prior covariance of ``w``
            (e.g. from :meth:`PyroPosterior.new_rater_model`); overrides ``prior_scale``.
        rationality: a fixed rationality, in [1e-3, 1e3] (outside, fits fail or go wrong); ``None`` (default)
            learns it.
        rationality_prior: (loc, scale) of the LogNormal prior of the rationality.
        threshold_prior_scale: sd of the Normal prior of the like/dislike threshold
            (noise units).
        tie_prior: (loc, scale) of the LogNormal prior of the tie strength.

    Sites: ``rationality``, ``scaled_w`` (dim ``feature``), ``tie_strength`` (with
    ties), ``threshold`` (with ratings); derived ``w``; observed ``comparisons`` and
    ``ratings``.

    Example:
        >>> import torch
        >>> from papa_bayes import LinearReward, fit
        >>> from papa_bayes.users import SimulatedUser, simulate_comparisons
        >>> gen = torch.Generator().manual_seed(0)
        >>> items = torch.randn(40, 3, generator=gen, dtype=torch.float64)
        >>> person = SimulatedUser([1.0, 0.5, 0.0], link="probit", rationality=2.0)
        >>> data = simulate_comparisons(person, items, 80, generator=gen)
        >>> post = fit(LinearReward(link="probit"), data, method="laplace", seed=0)
        >>> post.mean("w").shape, post.draws("scaled_w").shape  # `d`; `s x d` (1000 draws)
        (torch.Size([3]), torch.Size([1000, 3]))
        >>> w = post.mean("w")
        >>> bool(w[0] > w[1] > w[2].abs())  # the person's order of importance
        True
    """

    dims = {"w": ["feature"], "scaled_w": ["feature"]}

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
        self.ties = check_bool("ties", ties)
        check_float("prior_scale", prior_scale, strict=True)
        self.prior_scale = float(prior_scale)
        # Copies: a float64 tensor would otherwise be the caller's own, and editing it would change the prior.
        self.prior_loc = None if prior_loc is None else check_real_tensor(
            "prior_loc", prior_loc, "an array-like of real numbers").detach().clone()
        if self.prior_loc is not None and (self.prior_loc.dim() != 1 or self.prior_loc.numel() == 0):
            raise InputDataError("prior_loc", "a `d` vector", tuple(self.prior_loc.shape))
        if self.prior_loc is not None and not bool(torch.isfinite(self.prior_loc).all()):
            raise InputDataError("prior_loc", "finite values", self.prior_loc.tolist())
        self.prior_scale_tril = None if prior_scale_tril is None else check_real_tensor(
            "prior_scale_tril", prior_scale_tril, "an array-like of real numbers").detach().clone()
        T = self.prior_scale_tril
        if T is not None and (
            T.dim() != 2 or T.shape[0] != T.shape[1] or not bool(torch.isfinite(T).all())
            or not torch.equal(T, T.tril()) or not bool((T.diagonal() > 0).all())
        ):
            raise InputDataError("prior_scale_tril", "a square lower-triangular matrix with a positive diagonal",
                                 T.tolist() if T.numel() <= 16 else tuple(T.shape))
        self._set_link_priors(rationality, rationality_prior, threshold_prior_scale, tie_prior)

    def _scaled_w_prior(self, d: int, beta: Tensor) -> dist.Distribution:
        """Prior of ``scaled_w`` given the rationality (any batch shape ``beta``)."""
        loc = torch.zeros(d, dtype=torch.float64) if self.prior_loc is None else self.prior_loc
        if loc.shape != (d,):
            raise InputDataError("prior_loc", f"shape ({d},) to match the data's features", tuple(loc.shape))
        b = beta.unsqueeze(-1)
        if self.prior_scale_tril is not None:
            if self.prior_scale_tril.shape != (d, d):
                raise InputDataError("prior_scale_tril", f"shape ({d}, {d})", tuple(self.prior_scale_tril.shape))
            return dist.MultivariateNormal(b * loc, scale_tril=b.unsqueeze(-1) * self.prior_scale_tril)
        return dist.Normal(b * loc, b * self.prior_scale).to_event(1)

    def _check_prior_shapes(self, d: int) -> None:
        """``prior_loc`` / ``prior_scale_tril`` must match the data's `d` features."""
        if self.prior_loc is not None and self.prior_loc.shape != (d,):
            raise InputDataError("prior_loc", f"shape ({d},) to match the data's features", tuple(self.prior_loc.shape))
        if self.prior_scale_tril is not None and self.prior_scale_tril.shape != (d, d):
            raise InputDataError("prior_scale_tril", f"shape ({d}, {d}) to match the data's features",
                                 tuple(self.prior_scale_tril.shape))

    def priors(self, data: PreferenceData) -> dict[str, dist.Distribution]:
        d = check_model_data(data).num_features
        self._check_prior_shapes(d)
        placeholder = dist.Normal(torch.zeros(d, dtype=torch.float64), self.prior_scale).to_event(1)
        return {**self._rationality_prior(), "scaled_w": placeholder, **self._other_priors(data)}

    def log_prior(self, params: dict[str, Tensor], data: PreferenceData) -> Tensor:
        v = params["scaled_w"]
        beta = self._rationality_draws(params, v.shape[0]).to(v)
        lp = self._scaled_w_prior(data.num_features, beta).log_prob(v)
        for k, p in {**self._rationality_prior(), **self._other_priors(data)}.items():
            lp = lp + p.log_prob(params[k])
        return lp

    def __call__(self, data: PreferenceData) -> None:
        check_model_data(data)
        beta = self._sample_rationality()
        v = _left_of_plates(pyro.sample("scaled_w", self._scaled_w_prior(data.num_features, beta)))
        tie, threshold = self._sample_others(data)
        X, c, r = data.items, data.comparisons, data.ratings
        # (v * x).sum(-1) broadcasts `... x 1 x d` against `m x d` into `... x m`.
        u = lambda idx: (v * X[idx]).sum(-1)  # noqa: E731
        dists = _observe(
            u(c[:, 0]) if data.num_comparisons else None,
            u(c[:, 1]) if data.num_comparisons else None,
            u(r[:, 0]) if data.num_ratings else None,
            threshold, tie, self.link,
        )
        _pyro_observe(data, dists, self.ties)

    def derived(self, params: dict[str, Tensor], data: PreferenceData | None = None) -> dict[str, Tensor]:
        """``w = scaled_w / rationality``: `s x d`."""
        v = params["scaled_w"]
        return {"w": v / self._rationality_draws(params, v.shape[0]).to(v).unsqueeze(-1)}

    def observation_distributions(self, params: dict[str, Tensor], data: PreferenceData) -> dict[str, dist.Distribution]:
        v = params["scaled_w"]  # s x d
        tie, thr = self._other_draws(params, v.shape[0])
        X, c, r = data.items, data.comparisons, data.ratings
        # `s x m` utilities of the answered items only: a session's data holds every item it ever showed
        # (`pool_size` a round, 16 times the items compared), and `s x n` of them all took 200 MB at
        # 3,000 answers (256 draws), at every update.
        u = lambda idx: v @ X[idx].T  # noqa: E731
        return _observe(
            u(c[:, 0]) if data.num_comparisons else None,
            u(c[:, 1]) if data.num_comparisons else None,
            u(r[:, 0]) if data.num_ratings else None,
            thr, tie, self.link,
        )

    def utility(self, params: dict[str, Tensor], features: Tensor, *, rater: int | None = None) -> Tensor:
        """Utility `s x n` of `n x d` features.

        The model pools all raters (one ``w`` for everyone), so any rater id (a
        non-negative integer) gets the same pooled utility; ``rater=None`` too.
        """
        if rater is not None:
            check_int("rater", rater, minimum=0)
        return params["scaled_w"].to(features.dtype) @ features.transpose(-1, -2)


class HierarchicalLinearReward(_LinkPriors, PyroRewardModel):
    """Per-rater linear utilities drawn from a population (non-centred).

    ``w_r = population_mean + population_scale * rater_offset_r``, with
    ``rater_offset_r ~ N(0, I)``; rationality, tie strength and like threshold are
    shared. Rater ids come from ``data.comparison_rater`` / ``data.rating_rater``
    and index the rows of ``rater_offset`` and ``w``: ``R = max id + 1`` rows. An
    id without answers (a gap such as rater 1 in ids {0, 2}) keeps its row, whose
    posterior is the population's predictive (a fresh draw from the population);
    map sparse ids (e.g. database keys) to 0..R-1 first, e.g. with
    ``torch.unique(ids, return_inverse=True)``, as every row is a latent variable
    (ids leaving more than max(64, 3 x the raters) rows empty are refused).

    With few raters the plain Laplace fit (the default method) overstates
    ``population_scale``: 5 raters at d=3, its posterior mean was two to four
    times NUTS's, so per-rater intervals and the cold-start prior came out about
    twice as wide. ``fit(..., method="laplace", integrate_scale=True)`` integrates
    the scale out (nested Laplace, as INLA) and brings it within about 10% of
    NUTS's (0.97-1.10 times) at 5-15 times plain Laplace's cost (0.25-0.4 s a fit at d=3, 0.6-1.3 s at d=8);
    ``refine_steps=20`` only to 1.3-1.7 times (and warns that its importance
    weights collapsed); SVI's full-rank Gaussian needs about 3,000 steps to match
    NUTS's means, with sds 40% too small. A
    :class:`~papa_bayes.session.PreferenceSession`'s cold start integrates the
    scale out (its newcomer's prior sds 0.96-1.12 times NUTS's). Use
    ``method="nuts"`` when the spread between raters must be exact.

    Args:
        population_prior_scale: sd of the Normal prior of the population mean.
        scale_prior_scale: scale of the HalfNormal prior of the population scale.
        rationality: fixed at 1 by default (a fixed value in [1e-3, 1e3]): with per-rater weights of learned
            population scale, a learned rationality only trades off against the
            weights' magnitude (a ridge in the posterior); pass ``None`` to learn it.
        (others as in :class:`LinearReward`)

    Sites: ``population_mean`` (``feature``), ``population_scale`` (``feature``),
    ``rater_offset`` (``rater x feature``, in ``pyro.plate("rater")``),
    ``rationality`` (when learned) and the nuisance sites; derived ``w``
    (``rater x feature``); observed ``comparisons`` and ``ratings``.
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
        rationality: float | None = 1.0,
        rationality_prior: tuple[float, float] = (0.0, 0.5),
        threshold_prior_scale: float = 1.0,
        tie_prior: tuple[float, float] = (math.log(0.5), 1.0),
    ) -> None:
        self.link = check_link(link)
        self.ties = check_bool("ties", ties)
        check_float("population_prior_scale", population_prior_scale, strict=True)
        check_float("scale_prior_scale", scale_prior_scale, strict=True)
        self.population_prior_scale = float(population_prior_scale)
        self.scale_prior_scale = float(scale_prior_scale)
        self._set_link_priors(rationality, rationality_prior, threshold_prior_scale, tie_prior)

    def priors(self, data: PreferenceData) -> dict[str, dist.Distribution]:
        d, R = check_model_data(data).num_features, data.num_raters
        present = data.raters.numel()
        if R - present > max(64, 3 * present):  # e.g. database keys as ids: 10**7 rows of offsets to fit
            raise InputDataError(
                "comparison_rater/rating_rater",
                "rater ids 0..R-1 with few gaps (every id up to the largest is a row of rater_offset; "
                "map sparse ids with torch.unique(ids, return_inverse=True))",
                f"largest id {R - 1} for {present} raters")
        zeros = torch.zeros(d, dtype=torch.float64)
        return {
            "population_mean": dist.Normal(zeros, self.population_prior_scale).to_event(1),
            "population_scale": dist.HalfNormal(torch.full((d,), self.scale_prior_scale, dtype=torch.float64)).to_event(1),
            "rater_offset": dist.Normal(torch.zeros(R, d, dtype=torch.float64), 1.0).to_event(2),
            **self._rationality_prior(),
            **self._other_priors(data),
        }

    def __call__(self, data: PreferenceData) -> None:
        d, R = check_model_data(data).num_features, data.num_raters
        priors = self.priors(data)
        mu = _left_of_plates(pyro.sample("population_mean", priors["population_mean"]))
        tau = _left_of_plates(pyro.sample("population_scale", priors["population_scale"]))
        with pyro.plate("rater", R):
            z = pyro.sample("rater_offset", dist.Normal(torch.zeros(d, dtype=torch.float64), 1.0).to_event(1))
        # `d` + `d` * `R x d`; under vectorized particles `P x 1 x d` + ... * `P x R x d`
        # (unsqueezing here would pair every particle's mean with every particle's offsets).
        w = mu + tau * z
        beta = self._sample_rationality()
        tie, threshold = self._sample_others(data)
        if beta.dim():
            beta = beta.unsqueeze(-1)  # particles: `P x 1 x 1` against `P x R x d`
        v = beta * w
        X, c, r = data.items, data.comparisons, data.ratings
        cr, rr = data.rater_ids()
        u = lambda idx, who: (v[..., who, :] * X[idx]).sum(-1)  # noqa: E731
        dists = _observe(
            u(c[:, 0], cr) if data.num_comparisons else None,
            u(c[:, 1], cr) if data.num_comparisons else None,
            u(r[:, 0], rr) if data.num_ratings else None,
            threshold, tie, self.link,
        )
        _pyro_observe(data, dists, self.ties)

    @staticmethod
    def weights(params: dict[str, Tensor]) -> Tensor:
        """Per-rater weights `s x R x d`."""
        return params["population_mean"].unsqueeze(-2) + params["population_scale"].unsqueeze(-2) * params["rater_offset"]

    def derived(self, params: dict[str, Tensor], data: PreferenceData | None = None) -> dict[str, Tensor]:
        """Per-rater weights ``w``: `s x R x d`."""
        return {"w": self.weights(params)}

    def observation_distributions(self, params: dict[str, Tensor], data: PreferenceData) -> dict[str, dist.Distribution]:
        W = self.weights(params)  # s x R x d
        s, R = W.shape[:2]
        if data.num_raters > R:  # e.g. log_likelihood of new data holding a rater the fit never saw
            raise InputDataError("rater", f"rater ids in [0, {R - 1}], the fitted raters (refit or update() for a new rater)",
                                 int(data.raters.max()))
        V = self._rationality_draws(params, s).to(W).reshape(s, 1, 1) * W
        tie, thr = self._other_draws(params, s)
        X, c, r = data.items, data.comparisons, data.ratings
        cr, rr = data.rater_ids()
        u = lambda idx, who: (V[:, who, :] * X[idx]).sum(-1)  # noqa: E731
        return _observe(
            u(c[:, 0], cr) if data.num_comparisons else None,
            u(c[:, 1], cr) if data.num_comparisons else None,
            u(r[:, 0], rr) if data.num_ratings else None,
            thr, tie, self.link,
        )

    def utility(self, params: dict[str, Tensor], features: Tensor, *, rater: int | None = None) -> Tensor:
        """Utility `s x n` of `n x d` features for rater ``rater``.

        ``rater`` is a row of ``w``, an integer in [0, R - 1]; a row without
        answers gives the population's predictive draws. ``rater=None`` gives the
        utility of the population mean ``population_mean . x`` (the typical rater,
        without the spread between raters).
        """
        beta = self._rationality_draws(params, params["population_mean"].shape[0]).to(features.dtype)
        if rater is None:
            w = params["population_mean"]
        else:
            R = params["rater_offset"].shape[-2]
            rater = check_int("rater", rater, minimum=0)
            if not rater < R:
                raise InputDataError("rater", f"a rater id in [0, {R - 1}] (use new_rater_model() for a new rater)", rater)
            w = self.weights(params)[:, rater, :]
        return beta.unsqueeze(-1) * (w.to(features.dtype) @ features.transpose(-1, -2))
