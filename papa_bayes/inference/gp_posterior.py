"""The posterior of a GP preference model (variational, Laplace or NUTS) as a RewardPosterior."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from papa_bayes.data import PreferenceData
from papa_bayes.exceptions import InputDataError, ModelError
from papa_bayes.inference.gp_paths import PathwiseDraws
from papa_bayes.checks import MAX_SEED, check_bool, check_int
from papa_bayes.inference.posterior import RewardPosterior, check_data, draws_std
from papa_bayes.models.gp import FeatureStandardizer
from papa_bayes.models.likelihoods import comparison_distribution, comparison_outcome, rating_distribution, rating_outcome

if TYPE_CHECKING:
    import arviz

__all__ = ["GPPosterior"]


class GPPosterior(RewardPosterior):
    """Posterior function draws of a GP utility (noise units).

    ``utility(X)`` evaluates `s` fixed posterior functions (pathwise conditioning,
    see :mod:`papa_bayes.inference.gp_paths`): joint draws, consistent across calls,
    differentiable in ``X``. ``utility_mean_std`` returns the exact posterior mean
    (variational / Laplace) and the draws' standard deviation.

    Attributes:
        model: the :class:`~papa_bayes.models.PreferenceGP` or
            :class:`~papa_bayes.models.PairwiseGPReward` specification.
        data: the data it was fitted on.
        method: ``"elbo"``, ``"nuts"`` or ``"laplace"``.
        link: the comparison link.
        transform: the feature standardizer fixed at the first fit.
        draws: the :class:`PathwiseDraws`.
        hyperparameters: ``lengthscale`` (`chain x draw x d`), ``outputscale``,
            ``tie_strength`` and ``threshold`` (`chain x draw`) where modelled;
            constant over draws for type-II ML.
        state: what :meth:`update` needs to warm-start (the fitted GPyTorch /
            BoTorch module, optimizer state, base noise).
        diagnostics: fit time, loss trace, steps, NUTS statistics.
    """

    def __init__(
        self,
        *,
        model: Any,
        data: PreferenceData,
        method: str,
        link: str,
        transform: FeatureStandardizer,
        draws: PathwiseDraws,
        hyperparameters: dict[str, Tensor],
        state: dict[str, Any] | None = None,
        options: dict[str, Any] | None = None,
        diagnostics: dict[str, Any] | None = None,
        sample_stats: dict[str, Tensor] | None = None,
    ) -> None:
        self.model = model
        self.data = data
        self.method = method
        self.link = link
        self.transform = transform
        self.draws = draws
        self.hyperparameters = hyperparameters
        self.state = state or {}
        self.options = options or {}
        self.diagnostics = diagnostics or {}
        self._sample_stats = sample_stats
        first = hyperparameters["outputscale"]
        self.num_chains = first.shape[0]
        if first.shape[0] * first.shape[1] != draws.num_draws:
            raise ModelError(f"hyperparameters hold {first.shape[0]} x {first.shape[1]} draws, the functions {draws.num_draws}.")

    # ----------------------------------------------------------------- draws
    @property
    def num_draws(self) -> int:
        return self.draws.num_draws

    def _check_rater(self, rater: int | None) -> None:
        if rater is None:
            return
        ids = self.data.raters.tolist()
        expected = f"None or the data's rater id {ids[0]} (a GP models one person)"
        if check_int("rater", rater, minimum=0, expected=expected) not in ids:  # not False or 0.0 (== 0)
            raise InputDataError("rater", expected, rater)

    def utility(self, features: Tensor, *, rater: int | None = None) -> Tensor:
        """Joint posterior draws `s x n` at `n x d` features (differentiable in ``features``).

        Computed in float64 on the CPU; returned in the features' dtype and device
        (gradients flow back through both conversions).
        """
        features = self.check_features(features)
        self._check_rater(rater)
        u = self.draws(self.transform(features.to("cpu")))
        return u.to(device=features.device, dtype=features.dtype)

    def utility_mean(self, features: Tensor, *, rater: int | None = None) -> Tensor:
        """Posterior mean of the utility: `n` (exact for ELBO and Laplace fits)."""
        features = self.check_features(features)
        self._check_rater(rater)
        mean = self.draws.mean(self.transform(features.to("cpu")))
        return mean.to(device=features.device, dtype=features.dtype)

    def utility_mean_std(self, features: Tensor, *, rater: int | None = None) -> tuple[Tensor, Tensor]:
        features = self.check_features(features)
        return self.utility_mean(features, rater=rater), draws_std(self.utility(features, rater=rater))

    def _flat(self, name: str) -> Tensor | None:
        v = self.hyperparameters.get(name)
        return None if v is None else v.reshape(-1, *v.shape[2:])

    def tie_strength_draws(self) -> Tensor | None:
        return self._flat("tie_strength")

    def like_threshold_draws(self) -> Tensor:
        thr = self._flat("threshold")
        if thr is None:
            raise ModelError(f"{type(self.model).__name__} posterior has no like/dislike threshold: fit it on data with ratings.")
        return thr

    # ------------------------------------------------------------ likelihood
    def log_likelihood(self, data: PreferenceData | None = None) -> dict[str, Tensor]:
        """Pointwise log-likelihood per draw: ``comparisons`` `s x m`, ``ratings`` `s x k`."""
        data = self.data if data is None else check_data(data, self.num_features)
        return {k: d.log_prob(self._observed(data)[k]) for k, d in self._distributions(data).items()}

    def _observed(self, data: PreferenceData) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        if data.num_comparisons:
            out["comparisons"] = comparison_outcome(data.ties, self.tie_strength_draws() is not None)
        if data.num_ratings:
            out["ratings"] = rating_outcome(data.ratings)
        return out

    def _distributions(self, data: PreferenceData, utility: Tensor | None = None) -> dict[str, Any]:
        u = self.utility(data.items) if utility is None else utility  # s x n
        out: dict[str, Any] = {}
        if data.num_comparisons:
            tie = self.tie_strength_draws()
            diff = u[:, data.comparisons[:, 0]] - u[:, data.comparisons[:, 1]]
            out["comparisons"] = comparison_distribution(diff, self.link, None if tie is None else tie.unsqueeze(-1))
        if data.num_ratings:
            margin = u[:, data.ratings[:, 0]] - self.like_threshold_draws().unsqueeze(-1)
            out["ratings"] = rating_distribution(margin, self.link)
        return out

    # ---------------------------------------------------------------- update
    def update(self, data: PreferenceData, *, refit_hyperparameters: bool = False, num_steps: int | None = None) -> GPPosterior:
        """Posterior given the extended ``data``, warm-started from this one.

        ELBO: the old variational posterior (plus inducing points for new distinct
        items, up to ``num_inducing``) refined with the hyperparameters fixed.
        Laplace: the MAP utilities re-solved from the old ones, hyperparameters
        fixed. NUTS: chains restarted at the last draws with a shorter warm-up.

        Args:
            data: the fitted data with rows appended (``self.data.append(...)``).
            refit_hyperparameters: ELBO only: also refine the kernel
                hyperparameters (and inducing points, if learned).
            num_steps: ELBO only: optimizer steps (see
                :func:`~papa_bayes.inference.gp_fit.update_gp_posterior`).

        Returns:
            A new :class:`GPPosterior` with as many draws as this one.
        """
        from papa_bayes.inference.gp_fit import update_gp_posterior  # it checks that ``data`` extends ours

        return update_gp_posterior(self, data, refit_hyperparameters=refit_hyperparameters, num_steps=num_steps)

    # ----------------------------------------------------------------- ArviZ
    @property
    def sample_stats(self) -> dict[str, Tensor]:
        """Per-draw statistics for ArviZ's ``sample_stats`` group, name -> `chain x draw`.

        ``lp``: for NUTS, the log joint density of the data and the sampled latent
        values in the model's own coordinates (hyperparameter priors, N(0, I) of the
        whitened utilities of the observed items, likelihood; no Jacobian of NUTS's
        unconstrained space), as the Pyro models' ``lp``; for ELBO and Laplace fits,
        the log-likelihood plus the hyperparameters' log prior. ``diverging``: NUTS's
        divergences, for NUTS only (ELBO and Laplace draws have no sampler to diverge, as
        the Pyro models' SVI and Laplace fits).
        """
        if self._sample_stats is None:
            self._sample_stats = self._default_sample_stats()
        return self._sample_stats

    def _default_sample_stats(self) -> dict[str, Tensor]:
        """``lp``: log-likelihood of the data plus the hyperparameters' log prior, per draw (ELBO, Laplace)."""
        with torch.no_grad():
            lp = sum(v.sum(-1) for v in self.log_likelihood().values())
        lp = lp + self.state.get("hyper_log_prior", 0.0)
        C = self.num_chains
        return {"lp": lp.reshape(C, -1)}

    def to_inference_data(self, *, seed: int = 0, prior: bool = False) -> arviz.InferenceData:
        """ArviZ groups: utilities at the items (``posterior``), pointwise
        ``log_likelihood`` (``az.loo`` works), replicated answers, data.

        - ``posterior``: ``utility`` `chain x draw x item`; NUTS also ``lengthscale``
          `chain x draw x feature`, ``outputscale``, ``tie_strength``, ``threshold``
          `chain x draw` (where modelled).
        - ``log_likelihood`` / ``posterior_predictive``: ``comparisons``
          `chain x draw x comparison`, ``ratings`` `chain x draw x rating` (integer
          answers: 1 first preferred, 0 second; with ties 0 first, 1 second, 2 tie;
          1 like, 0 dislike; each pair's first item the one of lower index, see
          :mod:`papa_bayes.diagnostics.arviz`).
        - ``observed_data``: their observed twins, `comparison` and `rating`.
        - ``sample_stats``: ``lp`` `chain x draw`; NUTS also ``diverging``.
        - ``constant_data``: ``items`` `item x feature`, ``compared_items``
          `comparison x outcome_pair`, ``ties``, ``rated_item``; ELBO and Laplace fits
          also their point estimates: ``lengthscale`` `feature`, 0-d ``outputscale``,
          ``tie_strength``, ``threshold``.

        ELBO and Laplace fits have one chain of independent draws. The kernel and
        likelihood hyperparameters join ``posterior`` when they were sampled (NUTS);
        the ELBO and Laplace fits estimate them by type-II maximum likelihood, so
        they go to ``constant_data`` (as draws they would show sd 0 and an
        undefined R-hat).

        Args:
            seed: seeds the replicated answers of ``posterior_predictive``; an
                integer in [0, 2**64 - 1] (torch's range of seeds).
            prior: True is refused (InputDataError): a GP's prior is over utilities at
                the items, with no Pyro model whose prior ArviZ's ``prior`` group could hold
                (the Pyro models' ``to_inference_data(prior=True)`` gives one).
        """
        from papa_bayes.diagnostics.arviz import build_inference_data

        if check_bool("prior", prior):
            raise InputDataError("prior", "False for a GP posterior (no Pyro model to draw the prior from; the "
                                 "Pyro models' posteriors give prior groups)", prior)
        seed = check_int("seed", seed, minimum=0, maximum=MAX_SEED)
        data, C = self.data, self.num_chains
        shape = lambda t: t.reshape(C, -1, *t.shape[1:])  # noqa: E731
        with torch.no_grad():
            u = self.utility(data.items)
            dists = self._distributions(data, u)
            observed = self._observed(data)
            loglik = {k: shape(d.log_prob(observed[k])) for k, d in dists.items()}
            gen = torch.Generator().manual_seed(seed)
            predictive = {}
            for k, d in dists.items():
                if isinstance(d, torch.distributions.Categorical):
                    flat = d.probs.reshape(-1, d.probs.shape[-1])
                    draw = torch.multinomial(flat, 1, generator=gen).reshape(d.batch_shape)
                else:
                    draw = (torch.rand(d.probs.shape, generator=gen, dtype=d.probs.dtype) < d.probs).to(d.probs.dtype)
                predictive[k] = shape(draw)
        sampled = self.method == "nuts"
        posterior = dict(self.hyperparameters) if sampled else {}
        constant = {} if sampled else {k: v.reshape(-1, *v.shape[2:])[0] for k, v in self.hyperparameters.items()}
        posterior["utility"] = shape(u)
        dims = {"lengthscale": ["feature"], "utility": ["item"]}
        return build_inference_data(
            posterior=posterior,
            data=data,
            observed=observed,
            log_likelihood=loglik,
            posterior_predictive=predictive,
            sample_stats=self.sample_stats,
            dims=dims,
            constant=constant,
            attrs={
                "hyperparameters": "posterior draws" if sampled else "type-II ML point estimates (constant_data)",
                "inference_library": "botorch" if self.method == "laplace" else ("pyro" if self.method == "nuts" else "gpytorch"),
                "method": self.method,
                "model": repr(self.model),
            },
        )
