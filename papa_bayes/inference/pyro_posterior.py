"""The posterior of a Pyro reward model, held as draws of its latent sites."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from papa_bayes.data import PreferenceData
from papa_bayes.exceptions import InputDataError, ModelError
from papa_bayes.inference.posterior import RewardPosterior, check_data, draws_cov, draws_std
from papa_bayes.models.base import PyroRewardModel, check_model_link

if TYPE_CHECKING:
    import arviz

__all__ = ["PyroPosterior"]


class PyroPosterior(RewardPosterior):
    """Draws of a :class:`PyroRewardModel`'s latent sites, from NUTS, SVI or Laplace.

    Attributes:
        model: the model.
        data: the data it was fitted on.
        samples: site name -> `chain x draw x shape` tensor (Pyro's
            ``group_by_chain=True`` layout).
        params: the same draws with the chains stacked, site name -> `s x shape`
            (``s = chain * draw``; Pyro's ``MCMC.get_samples()`` layout, what
            ``Predictive(model, posterior_samples=post.params)`` takes).
        sample_stats: ArviZ-named sampler statistics (``lp``, ``diverging``, ...),
            each `chain x draw`; ``lp`` is the model's ``log_joint`` of the draw
            (log prior of the latent sites in their own, constrained units plus the
            log-likelihood; no Jacobian of NUTS's unconstrained space).
        method: ``"nuts"``, ``"svi"`` or ``"laplace"``.
        state: what the method needs for a warm-started :meth:`update`.
        diagnostics: method-specific diagnostics (R-hat, ESS, ELBO trace, Newton steps).
    """

    def __init__(
        self,
        model: PyroRewardModel,
        data: PreferenceData,
        samples: dict[str, Tensor],
        *,
        method: str,
        sample_stats: dict[str, Tensor] | None = None,
        state: dict[str, Any] | None = None,
        options: dict[str, Any] | None = None,
        diagnostics: dict[str, Any] | None = None,
    ) -> None:
        self.model = model
        self.data = data
        self.samples = samples
        self.method = method
        self.link = check_model_link(model)
        self.sample_stats = sample_stats or {}
        self.state = state or {}
        self.options = options or {}
        self.diagnostics = diagnostics or {}
        first = next(iter(samples.values()))
        self._chains, self._draws = first.shape[:2]
        self.params = {k: v.reshape(-1, *v.shape[2:]) for k, v in samples.items()}  # s x shape

    @property
    def num_draws(self) -> int:
        return self._chains * self._draws

    @property
    def num_chains(self) -> int:
        """Chains of the draws (NUTS's; 1 for Laplace and SVI)."""
        return self._chains

    def utility(self, features: Tensor, *, rater: int | None = None) -> Tensor:
        features = self.check_features(features)
        return self.model.utility(self.params, features, rater=rater)

    def tie_strength_draws(self) -> Tensor | None:
        return self.params.get("tie_strength")

    def like_threshold_draws(self) -> Tensor:
        return self.model.like_threshold(self.params)

    def mean(self, site: str) -> Tensor:
        """Posterior mean of a latent or derived site: `shape` (e.g. `d` for ``"w"``)."""
        return self.draws(site).mean(0)

    def std(self, site: str) -> Tensor:
        """Posterior standard deviation of a latent or derived site: `shape` (InputDataError for one draw)."""
        return draws_std(self.draws(site))

    def draws(self, site: str) -> Tensor:
        """All draws of a latent or derived site (e.g. ``"w"``): `s x shape`."""
        if site in self.params:
            return self.params[site]
        derived = self.model.derived(self.params, self.data)
        if site not in derived:
            raise InputDataError("site", f"one of {sorted([*self.params, *derived])}", site)
        return derived[site]

    def log_likelihood(self, data: PreferenceData | None = None) -> dict[str, Tensor]:
        """Pointwise log-likelihood per draw of ``data`` (default the fitted data): site -> `s x m`.

        Raises:
            ModelError: ``data`` holds ratings but the fit had none, so no like/dislike
                threshold. (A tie model has its tie strength whatever it was fitted on.)
        """
        data = self.data if data is None else check_data(data, self.num_features)
        name = type(self.model).__name__
        if data.num_ratings and "threshold" not in self.params:
            raise ModelError(f"{name} posterior has no like/dislike threshold to score ratings with: fit it on data "
                             "with ratings.")
        return self.model.log_likelihood(self.params, data)

    def update(self, data: PreferenceData) -> PyroPosterior:
        expected = "the fitted data with rows appended (PreferenceData.append)"
        if not isinstance(data, PreferenceData):
            raise InputDataError("data", expected, type(data).__name__)
        mismatch = data.extension_mismatch(self.data)  # where it stops extending, as GPPosterior.update says
        if mismatch is not None:
            raise InputDataError("data", expected, f"{data!r}: {mismatch}")
        from papa_bayes.inference.fit import update_posterior

        return update_posterior(self, data)

    def to_inference_data(self, *, seed: int = 0, prior: bool = False,
                          num_prior_samples: int = 500) -> arviz.InferenceData:
        """ArviZ InferenceData; ``seed`` draws the replicated answers of ``posterior_predictive``.

        Groups ``posterior`` (latent and derived sites, `chain x draw x shape`),
        ``sample_stats`` (``lp``; ``diverging`` for NUTS), ``log_likelihood`` and
        ``posterior_predictive`` (`chain x draw x m` / `... x k`), ``observed_data``,
        ``constant_data``; with ``prior=True`` also ``prior`` and ``prior_predictive``
        (``num_prior_samples`` draws of the model's prior); see
        :func:`papa_bayes.diagnostics.arviz.to_inference_data`.
        """
        from papa_bayes.diagnostics.arviz import to_inference_data

        return to_inference_data(self, seed=seed, prior=prior, num_prior_samples=num_prior_samples)

    def new_rater_model(self, **overrides: Any):
        """Cold start: a :class:`LinearReward` whose prior is this population's posterior predictive.

        Only for :class:`HierarchicalLinearReward` posteriors. The prior on a new
        rater's ``w`` is the moment-matched Gaussian of ``mean + scale * N(0, I)``
        over the posterior draws, and its rationality prior is moment-matched in
        log space.

        Raises:
            InputDataError: a posterior of one draw (``num_samples=1``), which has no covariance.
        """
        from papa_bayes.models.linear import HierarchicalLinearReward, LinearReward

        if not isinstance(self.model, HierarchicalLinearReward):
            raise ModelError("new_rater_model() needs a HierarchicalLinearReward posterior.")
        mu, tau = self.params["population_mean"], self.params["population_scale"]
        # E[w] = E[mu]; Cov[w] = Cov[mu] + E[diag(tau^2)].
        loc = mu.mean(0)
        cov = draws_cov(mu) + torch.diag((tau**2).mean(0))
        kwargs: dict[str, Any] = dict(
            link=self.model.link,
            ties=self.model.ties,
            prior_loc=loc,
            prior_scale_tril=torch.linalg.cholesky(cov + 1e-9 * torch.eye(loc.shape[0], dtype=cov.dtype)),
            threshold_prior_scale=self.model.threshold_prior_scale,
            tie_prior=self.model.tie_prior,
            rationality=self.model.rationality,
        )
        if "rationality" in self.params:
            lb = self.params["rationality"].log()
            kwargs["rationality_prior"] = (float(lb.mean()), float(lb.std().clamp(min=0.05)))
        kwargs.update(overrides)
        return LinearReward(**kwargs)
