"""RewardPosterior: what every ``fit`` returns, whatever the model and method.

The interface the rest of papa_bayes speaks (acquisition, guidance, sessions):
joint posterior draws of the utility at any features, differentiable in the
features; outcome probabilities of comparisons and like/dislike queries; an online
``update``; ArviZ ``InferenceData``; and a BoTorch model over the draws.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

import torch
from botorch.acquisition.objective import PosteriorTransform, ScalarizedPosteriorTransform
from botorch.models.ensemble import EnsembleModel
from botorch.posteriors.ensemble import EnsemblePosterior
from botorch.sampling.get_sampler import GetSampler
from botorch.sampling.index_sampler import IndexSampler
from torch import Tensor

from papa_bayes.checks import check_finite, check_int, shape_of
from papa_bayes.data import PreferenceData, check_preference_data
from papa_bayes.exceptions import InputDataError, ModelError
from papa_bayes.models.likelihoods import comparison_log_probs, log_cdf

if TYPE_CHECKING:
    import arviz

__all__ = ["RewardPosterior", "PosteriorDrawsModel", "DrawsPosterior", "DrawsSampler", "check_data", "check_features",
           "check_posterior", "draws_cov", "draws_std"]


def check_features(features: Any, d: int, name: str = "features") -> Tensor:
    """Validate `n x d` features (finite, right width); 1-D input of length d is one item."""
    if not isinstance(features, Tensor):
        try:
            features = torch.as_tensor(features, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError):
            raise InputDataError(name, f"an `n x {d}` array of real numbers", type(features).__name__) from None
    if features.dtype == torch.bool or features.is_complex():
        raise InputDataError(name, "real-valued features (a float or integer dtype)", str(features.dtype))
    if not features.is_floating_point():
        features = features.to(torch.float64)
    if features.dim() == 1 and features.shape[0] == d:
        features = features.unsqueeze(0)
    if features.dim() != 2 or features.shape[-1] != d:
        raise InputDataError(name, f"shape `n x {d}`", tuple(features.shape))
    if not bool(torch.isfinite(features.detach()).all()):
        raise InputDataError(name, "finite values", "NaN or inf")
    return features


def _check_spread(draws: Tensor, what: str) -> None:
    """InputDataError unless there are 2 draws or more: one draw has no spread (torch gives NaN, with a warning)."""
    if draws.shape[0] < 2:
        raise InputDataError("num_samples", f"at least 2 posterior draws for a {what} (refit with num_samples >= 2)",
                             f"a posterior of {draws.shape[0]} draw")


#: Values (draws x pairs) per block of :meth:`RewardPosterior.preference_probability`: 32 MB a float64 tensor.
_PAIR_BLOCK_VALUES = 1 << 22


def draws_std(draws: Tensor) -> Tensor:
    """Standard deviation over the `s` draws of `s x ...` ``draws``, or InputDataError for one draw."""
    _check_spread(draws, "standard deviation")
    return draws.std(0)


def draws_cov(draws: Tensor) -> Tensor:
    """Covariance `k x k` over the `s` draws of `s x k` ``draws``, or InputDataError for one draw."""
    _check_spread(draws, "covariance")
    return torch.cov(draws.T).reshape(draws.shape[1], draws.shape[1])  # k = 1: torch.cov gives a 0-d tensor


def check_posterior(posterior: Any) -> RewardPosterior:
    """``posterior`` unless it is not a :class:`RewardPosterior`: then InputDataError."""
    if not isinstance(posterior, RewardPosterior):
        raise InputDataError("posterior", "a RewardPosterior", type(posterior).__name__)
    return posterior


def check_data(data: Any, d: int, name: str = "data") -> PreferenceData:
    """``data`` as a :class:`PreferenceData` with `d` features, or InputDataError."""
    check_preference_data(data, name)
    if data.num_features != d:
        raise InputDataError(name, f"data with {d} features (the fitted data's)", f"{data.num_features} features")
    return data


class RewardPosterior(ABC):
    """Posterior over a person's reward.

    Subclasses implement :meth:`utility`, :meth:`update` and
    :meth:`to_inference_data`, and set ``link`` (``"logit"``/``"probit"``). Utilities
    are in noise units: P(a preferred to b) = link(u(a) - u(b)) per draw.

    Attributes:
        data: the :class:`PreferenceData` it was fitted on.
        method: how it was fitted (``"nuts"``, ``"svi"``, ``"laplace"``, ...).
        link: the comparison link.
    """

    data: PreferenceData
    method: str
    link: str = "logit"

    @property
    def num_features(self) -> int:
        """`d`: the features the posterior's utility reads (the data's)."""
        return self.data.num_features

    @property
    @abstractmethod
    def num_draws(self) -> int:
        """Number of posterior draws `s` that :meth:`utility` returns."""

    @abstractmethod
    def utility(self, features: Tensor, *, rater: int | None = None) -> Tensor:
        """Joint posterior draws of the utility.

        Args:
            features: `n x d`.
            rater: for multi-rater models, whose utility (default: the population's).

        Returns:
            `s x n`, differentiable in ``features``.
        """

    @abstractmethod
    def update(self, data: PreferenceData) -> RewardPosterior:
        """Posterior given ``data``, warm-started from this one.

        ``data`` is the whole data seen so far and must extend the data this
        posterior was fitted on (e.g. ``old.append(comparisons=...)``).
        """

    @abstractmethod
    def to_inference_data(self, *, seed: int = 0, prior: bool = False) -> arviz.InferenceData:
        """ArviZ InferenceData (see :mod:`papa_bayes.diagnostics.arviz`); ``seed`` draws the replicated answers,
        ``prior=True`` adds ``prior`` and ``prior_predictive`` groups where the model can give them."""

    # ---------------------------------------------------------- nuisance draws
    def tie_strength_draws(self) -> Tensor | None:
        """`s` draws of the tie parameter, or None for a model without ties."""
        return None

    def like_threshold_draws(self) -> Tensor:
        """`s` draws of the like/dislike threshold in noise units."""
        raise ModelError(f"{type(self).__name__} has no like/dislike threshold: fit it on data with ratings.")

    # ------------------------------------------------------------ predictions
    def check_features(self, features: Any, name: str = "features") -> Tensor:
        """``features`` as `n x d` float64 of this posterior's width, or InputDataError naming ``name``."""
        return check_features(features, self.num_features, name)

    def outcome_probabilities(self, first: Tensor, second: Tensor, *, rater: int | None = None) -> Tensor:
        """Per-draw probabilities of the outcomes of comparing ``first[i]`` with ``second[i]``.

        Args:
            first, second: `n x d`.

        Returns:
            `s x n x 2` (first preferred, second preferred) or `s x n x 3`
            (..., tie) for models with ties.
        """
        first = self.check_features(first, "first")
        second = self.check_features(second, "second")
        if first.shape != second.shape:
            raise InputDataError("second", f"shape {tuple(first.shape)} (same as first)", tuple(second.shape))
        n = first.shape[0]
        u = self.utility(torch.cat([first, second]), rater=rater)  # joint draws keep their correlation
        diff = u[:, :n] - u[:, n:]
        tie = self.tie_strength_draws()
        return comparison_log_probs(diff, self.link, None if tie is None else tie.to(diff).unsqueeze(-1)).exp()

    def preference_probability(self, a: Tensor, b: Tensor, *, rater: int | None = None) -> Tensor:
        """Posterior predictive P(a preferred to b): `n`, for `n x d` items ``a`` and ``b``.

        Strict preference: for a model with ties, P(a preferred) + P(b preferred) < 1,
        the rest being P(tie) (all three from :meth:`outcome_probabilities`). Many
        pairs are taken in blocks of about ``2**22 / s`` (`s` draws), each pair's two
        items in one block: 10^5 pairs of a GP posterior had held its `s x 2n`
        utilities and their outcome probabilities at once (a 2.8 GB peak).
        """
        a = self.check_features(a, "a")
        b = self.check_features(b, "b")
        if a.shape != b.shape:
            raise InputDataError("b", f"shape {tuple(a.shape)} (same as a)", tuple(b.shape))
        n = a.shape[0]
        block = max(1, _PAIR_BLOCK_VALUES // self.num_draws)
        if n <= block:
            return self.outcome_probabilities(a, b, rater=rater)[..., 0].mean(0)
        return torch.cat([self.outcome_probabilities(a[i:i + block], b[i:i + block], rater=rater)[..., 0].mean(0)
                          for i in range(0, n, block)])

    def like_probability(self, features: Tensor, *, rater: int | None = None) -> Tensor:
        """Per-draw probability that each item is liked: `s x n`."""
        features = self.check_features(features)
        u = self.utility(features, rater=rater)
        return log_cdf(u - self.like_threshold_draws().to(u).unsqueeze(-1), self.link).exp()

    def utility_mean_std(self, features: Tensor, *, rater: int | None = None) -> tuple[Tensor, Tensor]:
        """Posterior mean and standard deviation of the utility: two `n` tensors.

        Raises:
            InputDataError: a posterior of one draw (``num_samples=1``), which has no standard deviation.
        """
        u = self.utility(self.check_features(features), rater=rater)
        return u.mean(0), draws_std(u)

    def as_botorch_model(self, *, rater: int | None = None) -> PosteriorDrawsModel:
        """A BoTorch ``Model`` whose posterior at ``X`` holds the utility draws."""
        return PosteriorDrawsModel(self, rater=rater)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(method={self.method!r}, draws={self.num_draws}, data={self.data!r})"


class _GaussianOnlyError(ModelError, AttributeError):
    """A Gaussian-only attribute asked of draws (an AttributeError too, so ``hasattr`` stays False)."""


class _DrawsOnlyError(ModelError, NotImplementedError):
    """What a sampler of Gaussian base samples asks of draws (a NotImplementedError too, as BoTorch's own)."""


def _gaussian_only(attribute: str) -> _GaussianOnlyError:
    """The error for a Gaussian posterior's ``attribute`` asked of draws: what to use instead."""
    return _GaussianOnlyError(
        f"PosteriorDrawsModel's posterior is an ensemble of posterior draws, not a Gaussian: it has no {attribute}, "
        "which BoTorch's Gaussian-only acquisitions need (AnalyticExpectedUtilityOfBestOption, "
        "PairwiseBayesianActiveLearningByDisagreement, qMaxValueEntropy, ...). On a RewardPosterior use "
        "papa_bayes.acquisition.ExpectedUtilityOfBestOption or BoTorch's qExpectedUtilityOfBestOption (EUBO), "
        "PairwiseInformationGain (Monte Carlo BALD, the posterior's own link) or HoulsbyInformationGain "
        "(closed-form BALD on the draws' moments)."
    )


class DrawsPosterior(EnsemblePosterior):
    """BoTorch ``EnsemblePosterior`` of a RewardPosterior's draws: values `batch_shape x s x q x 1`.

    It has the mixture's ``mean`` and ``variance`` (BoTorch's analytic EI, UCB and
    PosteriorMean use them) but neither a Gaussian ``distribution`` nor a
    ``covariance_matrix``: asking for one raises a
    :class:`~papa_bayes.exceptions.ModelError` naming what to use instead. Nor has it
    Gaussian base samples: a ``SobolQMCNormalSampler`` or ``IIDNormalSampler`` passed
    as an acquisition's ``sampler`` raises a ModelError; leave ``sampler=None`` and
    BoTorch reads the draws with :class:`DrawsSampler`.
    """

    @property
    def base_sample_shape(self) -> torch.Size:
        """Not defined: the posterior is a fixed set of draws, not a transformed N(0, 1) (raises, naming the fix)."""
        raise _DrawsOnlyError(
            f"PosteriorDrawsModel's posterior is a fixed set of {self.ensemble_size} posterior draws, not a Gaussian: "
            "samplers of normal base samples (SobolQMCNormalSampler, IIDNormalSampler) do not apply. Leave the "
            "acquisition's sampler=None: BoTorch then takes the draws' own sampler "
            "(papa_bayes.inference.posterior.DrawsSampler), which reads each draw once."
        )

    @property
    def covariance_matrix(self) -> Tensor:
        """Not defined: the posterior is an ensemble of draws, not a Gaussian (raises, naming what to use)."""
        raise _gaussian_only("covariance_matrix")

    @property
    def distribution(self) -> Any:
        """Not defined: there is no Gaussian (GPyTorch ``MultivariateNormal``) behind the draws (raises, naming
        what to use). BoTorch's qMaxValueEntropy reads it."""
        raise _gaussian_only("distribution")


class DrawsSampler(IndexSampler):
    """Every posterior draw exactly once, the same draws for every query of a batch.

    BoTorch's ``IndexSampler`` resamples an ensemble's members with replacement,
    independently for each query of a batch, so that a query's value would depend
    on what else is in its batch. ``botorch.sampling.get_sampler`` gives this sampler
    for a :class:`DrawsPosterior`: BoTorch's MC acquisition functions then average
    over our `s` draws exactly (samples `s x batch_shape x q x 1`).
    """

    def _construct_base_samples(self, posterior: EnsemblePosterior) -> None:
        s, batch = posterior.ensemble_size, posterior.batch_shape
        if self.sample_shape != torch.Size([s]):
            raise InputDataError("sample_shape", f"({s},): each of the posterior's {s} draws once",
                                 tuple(self.sample_shape))
        base = self.base_samples
        if base is None or base.shape != self.sample_shape + batch or base.device != posterior.device:
            index = torch.arange(s, device=posterior.device).reshape(s, *([1] * len(batch)))
            self.register_buffer("base_samples", index.expand(s, *batch))


@GetSampler.register(DrawsPosterior)
def _get_draws_sampler(posterior: DrawsPosterior, sample_shape: torch.Size, seed: int | None = None) -> DrawsSampler:
    """BoTorch's sampler for our draws: each once (``sample_shape`` is set to the number of draws)."""
    return DrawsSampler(sample_shape=torch.Size([posterior.ensemble_size]), seed=seed)


_NO_CONDITIONING = (
    "PosteriorDrawsModel holds fixed posterior draws and cannot be conditioned on new or fantasized observations "
    "(BoTorch's look-ahead acquisitions such as qKnowledgeGradient need that). To add answers, "
    "posterior.update(posterior.data.append(...)) and take as_botorch_model() again."
)


class PosteriorDrawsModel(EnsembleModel):
    """BoTorch view of a :class:`RewardPosterior`: an ensemble over its draws.

    ``posterior(X)`` for ``X`` of shape `batch_shape x q x d` is a
    :class:`DrawsPosterior` (an ``EnsemblePosterior``) with values
    `batch_shape x s x q x 1`, so BoTorch's Monte Carlo acquisition functions
    average over our posterior draws unchanged: each draw once, the same draws for
    every query of a batch (:class:`DrawsSampler`).

    One output (``num_outputs`` 1, ``subset_output([0])`` is the model itself), no
    model batch (``batch_shape`` `[]`). Supported ``posterior_transform``:
    ``ScalarizedPosteriorTransform`` with one weight. Not supported, with a
    :class:`~papa_bayes.exceptions.ModelError`: ``condition_on_observations`` and
    ``fantasize`` (use :meth:`RewardPosterior.update`), Gaussian-only acquisitions
    (see :class:`DrawsPosterior`).
    """

    _num_outputs = 1

    def __init__(self, posterior: RewardPosterior, *, rater: int | None = None) -> None:
        check_posterior(posterior)
        if rater is not None:  # the type here; whether the posterior knows this rater, at its first utility()
            check_int("rater", rater, minimum=0)
        super().__init__()
        self.reward_posterior = posterior
        self.rater = rater

    @property
    def num_outputs(self) -> int:
        return 1

    @property
    def batch_shape(self) -> torch.Size:
        """No model batch: one posterior (its draws are the ensemble dimension, not a batch)."""
        return torch.Size([])

    @property
    def datapoints(self) -> Tensor:
        """`n x d` items the posterior was fitted on (as ``PairwiseGP.datapoints``)."""
        return self.reward_posterior.data.items

    def posterior(
        self,
        X: Tensor,
        output_indices: list[int] | None = None,
        posterior_transform: PosteriorTransform | None = None,
        **kwargs: Any,
    ) -> DrawsPosterior:
        """Joint utility draws at ``X``.

        Args:
            X: `batch_shape x q x d`.
            output_indices: None or ``[0]`` (one output).
            posterior_transform: None or a ``ScalarizedPosteriorTransform`` with one
                weight (``offset + weight * u``).
            observation_noise: None or False only. The answers' noise is not
                Gaussian noise on the utility but the link's, so ``True`` or a
                Tensor raises a :class:`~papa_bayes.exceptions.ModelError` rather
                than returning the noiseless draws.

        Returns:
            A :class:`DrawsPosterior` with values `batch_shape x s x q x 1`.
        """
        if output_indices is not None and list(output_indices) != [0]:
            raise InputDataError("output_indices", "None or [0] (the model's one output, the utility)", output_indices)
        noise = kwargs.get("observation_noise")
        if isinstance(noise, Tensor) or bool(noise):  # None and False: the draws as they are
            raise ModelError(
                "PosteriorDrawsModel's posterior is of the utility: it takes no observation_noise (got "
                f"{type(noise).__name__ if isinstance(noise, Tensor) else repr(noise)}). The answers' noise is in the "
                "link, not Gaussian noise on the utility: call posterior(X) (observation_noise=False), and for the "
                "answers' probabilities use RewardPosterior.outcome_probabilities. BoTorch acquisitions that ask for "
                "observation noise (qMaxValueEntropy, qJointEntropySearch, ...) assume a Gaussian posterior; on a "
                "RewardPosterior use papa_bayes.acquisition.PairwiseInformationGain (Monte Carlo BALD, the "
                "posterior's own link) or HoulsbyInformationGain (closed-form BALD on the draws' moments)."
            )
        if posterior_transform is not None and not isinstance(posterior_transform, ScalarizedPosteriorTransform):
            raise ModelError("PosteriorDrawsModel supports posterior_transform=ScalarizedPosteriorTransform only, "
                             f"got {type(posterior_transform).__name__}.")
        self.eval()
        values = self.forward(X)
        if posterior_transform is not None:
            weights = posterior_transform.weights
            if weights.numel() != 1:
                raise InputDataError("posterior_transform", "weights of shape (1,) (the model has one output)",
                                     tuple(weights.shape))
            values = posterior_transform.offset + values * weights.to(values).reshape(1)
        return DrawsPosterior(values=values, weights=self.ensemble_weights)

    def subset_output(self, idcs: list[int]) -> PosteriorDrawsModel:
        """The model itself for ``idcs == [0]`` (its one output)."""
        if list(idcs) != [0]:
            raise InputDataError("idcs", "[0] (the model's one output, the utility)", list(idcs))
        return self

    def condition_on_observations(self, X: Tensor, Y: Tensor, **kwargs: Any) -> PosteriorDrawsModel:
        """Not supported: raises :class:`~papa_bayes.exceptions.ModelError`."""
        raise ModelError(_NO_CONDITIONING)

    def fantasize(self, X: Tensor, sampler: Any = None, observation_noise: Any = None, **kwargs: Any) -> PosteriorDrawsModel:
        """Not supported: raises :class:`~papa_bayes.exceptions.ModelError`."""
        raise ModelError(_NO_CONDITIONING)

    def forward(self, X: Tensor) -> Tensor:
        """Utility draws: `batch_shape x s x q x 1` for `batch_shape x q x d` ``X``."""
        d = self.reward_posterior.num_features
        if not isinstance(X, Tensor) or X.dim() < 2 or X.shape[-1] != d:
            raise InputDataError("X", f"shape `batch_shape x q x {d}`", shape_of(X))
        check_finite("X", X.detach(), "features")
        batch, q = X.shape[:-2], X.shape[-2]
        u = self.reward_posterior.utility(X.reshape(-1, d), rater=self.rater)  # s x (B*q)
        s = u.shape[0]
        u = u.reshape(s, *batch, q).movedim(0, -2)  # batch x s x q
        return u.unsqueeze(-1)
