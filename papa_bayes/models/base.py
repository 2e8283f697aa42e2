"""The contract between a Pyro reward model and papa_bayes' inference.

A model is a callable Pyro model ``model(data)`` (give it to ``NUTS``, ``SVI`` or
``Predictive`` as it is) plus the few pure-torch pieces inference needs to work on
posterior draws without re-tracing: the priors of the latent sites, the observation
distributions given draws, and the utility of new features.

Draws are passed as ``params``: a dict of site name to `s x event_shape` tensors.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch.distributions as tdist
from torch import Tensor

from papa_bayes.data import PreferenceData, check_preference_data

__all__ = ["PyroRewardModel", "check_model_data"]


def check_model_data(data: object) -> PreferenceData:
    """``data`` unless it is not a :class:`PreferenceData` (then InputDataError): a model's own first check."""
    return check_preference_data(data)


class PyroRewardModel(ABC):
    """Base class of the Pyro reward models.

    Subclasses write ``__call__(data)`` as a plain Pyro model whose latent site
    names are the keys of :meth:`priors` and whose observed sites are
    ``"comparisons"`` (`m`, in ``pyro.plate("comparison")``) and ``"ratings"``
    (`k`, in ``pyro.plate("rating")``). The observed sites always condition on
    ``data``; for prior or posterior predictive checks, uncondition them (the
    posterior's ``params`` are Pyro's flat `s x shape` samples)::

        free = pyro.poutine.uncondition(model)
        prior = Predictive(free, num_samples=200)(data)            # "comparisons": `200 x m`
        replicated = Predictive(free, posterior_samples=post.params)(data)

    With the linear models ``parallel=True`` works too, and ``az.from_pyro(mcmc)`` finds the
    pointwise log-likelihood of a user's own ``MCMC(NUTS(model))`` run.
    """

    #: ArviZ dims of each latent site's event shape (site name -> dim names).
    dims: dict[str, list[str]] = {}

    @abstractmethod
    def __call__(self, data: PreferenceData) -> None:
        """The Pyro model."""

    @abstractmethod
    def priors(self, data: PreferenceData) -> dict[str, tdist.Distribution]:
        """Every latent site (in sampling order) with a distribution fixing its shape and support.

        For sites whose prior is conditional on another site, this is a placeholder
        and :meth:`log_prior` holds the true joint prior.
        """

    def log_prior(self, params: dict[str, Tensor], data: PreferenceData) -> Tensor:
        """Joint log prior of `s`-batched params: `s` (default: independent sites)."""
        return sum(p.log_prob(params[k]) for k, p in self.priors(data).items())

    @abstractmethod
    def observation_distributions(self, params: dict[str, Tensor], data: PreferenceData) -> dict[str, tdist.Distribution]:
        """Distributions of the observed sites given `s`-batched draws (batch `s x m` / `s x k`)."""

    @abstractmethod
    def utility(self, params: dict[str, Tensor], features: Tensor, *, rater: int | None = None) -> Tensor:
        """Utility in noise units of `n x d` features under `s` draws: `s x n`."""

    def derived(self, params: dict[str, Tensor], data: PreferenceData) -> dict[str, Tensor]:
        """Deterministic sites worth reporting (e.g. per-rater weights); default none."""
        return {}

    def like_threshold(self, params: dict[str, Tensor]) -> Tensor:
        """Threshold of like/dislike answers in noise units: `s`."""
        from papa_bayes.exceptions import ModelError

        if "threshold" not in params:
            raise ModelError("This posterior has no like/dislike threshold: fit it on data with ratings.")
        return params["threshold"]

    def observed(self, data: PreferenceData) -> dict[str, Tensor]:
        """Observed values of the observed sites (what ``obs=`` receives)."""
        from papa_bayes.models.likelihoods import comparison_outcome, rating_outcome

        out: dict[str, Tensor] = {}
        if data.num_comparisons:
            out["comparisons"] = comparison_outcome(data.ties, getattr(self, "ties", False))
        if data.num_ratings:
            out["ratings"] = rating_outcome(data.ratings)
        return out

    def log_likelihood(self, params: dict[str, Tensor], data: PreferenceData) -> dict[str, Tensor]:
        """Pointwise log-likelihood: site -> `s x (m or k)`."""
        obs = self.observed(data)
        return {k: d.log_prob(obs[k]) for k, d in self.observation_distributions(params, data).items()}

    def log_joint(self, params: dict[str, Tensor], data: PreferenceData) -> Tensor:
        """log p(params, data) for `s`-batched params: `s`."""
        total = self.log_prior(params, data)
        for ll in self.log_likelihood(params, data).values():
            total = total + ll.sum(-1)
        return total

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"
