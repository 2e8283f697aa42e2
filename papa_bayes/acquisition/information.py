"""Expected information gain about the reward (BALD), by Monte Carlo over posterior draws.

For a query with answer ``y`` and reward parameters ``theta``,
``EIG = I(y; theta) = H[E_theta p(y | theta)] - E_theta H[p(y | theta)]``
(Lindley 1956; "Bayesian active learning by disagreement", Houlsby et al. 2011).
The expectation is the average over the posterior's joint draws, so the estimate
works for any :class:`~papa_bayes.RewardPosterior`: linear, hierarchical or GP.
Three answer types: strict pairs (2 outcomes), pairs that allow a tie (3 outcomes,
Davidson / Glenn-David, the tie parameter integrated over its posterior draws), and
like/dislike (2 outcomes, the like threshold integrated likewise).
"""

from __future__ import annotations

from typing import Any

import torch
from botorch.models.model import Model
from torch import Tensor

from papa_bayes.acquisition.base import (
    LN2,
    DrawsAcquisitionFunction,
    answer_log_probs,
    entropy_bits,
    per_draw,
)
from papa_bayes.checks import check_bool, check_real_tensor
from papa_bayes.exceptions import InputDataError, ModelError
from papa_bayes.models.likelihoods import check_link
from papa_bayes.inference.posterior import RewardPosterior

__all__ = [
    "information_from_log_probs",
    "comparison_information_gain",
    "rating_information_gain",
    "PairwiseInformationGain",
    "RatingInformationGain",
]


def information_from_log_probs(log_probs: Tensor | list[Tensor]) -> Tensor:
    """Mutual information between the answer and the posterior draw, in bits.

    Args:
        log_probs: per-draw log probabilities of the answers: a list of o tensors
            `s x batch` (see :func:`~papa_bayes.acquisition.base.answer_log_probs`) or
            one `s x batch x o` tensor.

    Returns:
        `batch`, >= 0 (the plug-in estimate is non-negative by concavity of H).
    """
    if isinstance(log_probs, Tensor):
        if log_probs.dim() < 2:
            raise InputDataError("log_probs", "`s x batch x o` (or a list of `s x batch` tensors)",
                                 tuple(log_probs.shape))
        log_probs = list(log_probs.unbind(-1))
    if len(log_probs) < 2:
        raise InputDataError("log_probs", "at least two answers (o >= 2)", len(log_probs))
    probs = [lp.exp() for lp in log_probs]
    # lp = -inf only where p = 0; the clamp makes 0 * lp = 0 instead of nan.
    conditional = sum((p * lp.clamp(min=-1e4)).mean(0) for p, lp in zip(probs, log_probs))
    marginal = torch.stack([p.mean(0) for p in probs], -1)
    return (entropy_bits(marginal) + conditional / LN2).clamp(min=0.0)


def _logit_binary_information(margin: Tensor) -> Tensor:
    """BALD in bits of a logit answer with `s x batch` margins (fast path).

    H(sigmoid(x)) = softplus(x) - x sigmoid(x): one sigmoid and one softplus per entry.
    Its gradient, -x sigmoid'(x), is finite for any finite x (0 where sigmoid rounds to 0 or 1).
    """
    p = torch.sigmoid(margin)
    conditional = (torch.nn.functional.softplus(margin) - p * margin).mean(0)
    pm = p.mean(0)
    # Where every draw is certain, pm rounds to exactly 0 or 1 and xlogy's gradient there
    # is -inf; times sigmoid'(x) = 0 that is NaN, which stops BoTorch's optimizer.
    # entropy_bits clamps inside the log: same values, gradient 0. It acts on `batch`
    # entries only, so it costs nothing beside the `s x batch` sigmoid and softplus.
    marginal = entropy_bits(torch.stack([pm, 1 - pm], -1))
    return (marginal - conditional / LN2).clamp(min=0.0)


def comparison_information_gain(
    u_first: Tensor, u_second: Tensor, *, link: str, tie_strength: Tensor | None = None
) -> Tensor:
    """Monte Carlo BALD of pairwise queries, in bits.

    Args:
        u_first, u_second: `s x batch` joint utility draws (noise units).
        link: ``"logit"`` or ``"probit"``.
        tie_strength: `s` tie-parameter draws for answers that may be a tie.

    Returns:
        `batch`.
    """
    check_link(link)
    if u_first.shape != u_second.shape:
        raise InputDataError("u_second", f"shape {tuple(u_first.shape)} (that of u_first)", tuple(u_second.shape))
    if tie_strength is None and link == "logit":
        return _logit_binary_information(u_first - u_second)
    return information_from_log_probs(answer_log_probs(u_first, u_second, link=link, tie_strength=tie_strength))


def rating_information_gain(u: Tensor, threshold: Tensor, *, link: str) -> Tensor:
    """Monte Carlo BALD of like/dislike queries, in bits.

    Args:
        u: `s x batch` utility draws; threshold: `s` like-threshold draws.

    Returns:
        `batch`.
    """
    check_link(link)
    threshold = check_real_tensor("threshold", threshold, "`s` like-threshold draws or one number", dtype=None)
    if threshold.numel() not in (1, u.shape[0]):
        raise InputDataError("threshold", f"1 or {u.shape[0]} values (one per draw)", threshold.numel())
    if link == "logit":
        return _logit_binary_information(u - per_draw(threshold, u))
    return information_from_log_probs(answer_log_probs(u, None, link=link, threshold=threshold))


class PairwiseInformationGain(DrawsAcquisitionFunction):
    """Expected information gain about the reward from comparing two items (MC BALD).

    ``forward`` takes `batch_shape x 2 x d` and returns `batch_shape` bits. When the
    posterior models ties (``tie_strength_draws()`` is not None) the answer has three
    outcomes and the tie parameter is integrated over its draws.

    Args:
        model: a RewardPosterior or a BoTorch model of the utility (see
            :class:`DrawsAcquisitionFunction`).
        ties: None (default) follows the posterior; False forces strict answers;
            True requires tie draws or ``tie_strength``.
        tie_strength: a fixed tie parameter (for BoTorch models).
        link, noise_scale, num_samples, seed, X_pending: as in :class:`DrawsAcquisitionFunction`.

    Example:
        Three answers about four items with two features (winner first), then the
        bits each of three candidate pairs would bring:

        >>> import torch
        >>> from papa_bayes import LinearReward, PreferenceData, fit
        >>> from papa_bayes.acquisition import PairwiseInformationGain
        >>> pool = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]], dtype=torch.float64)
        >>> post = fit(LinearReward(), PreferenceData(items=pool, comparisons=[[0, 2], [0, 1], [1, 3]]), seed=0)
        >>> eig = PairwiseInformationGain(post)
        >>> pairs = torch.tensor([[0, 1], [1, 2], [3, 3]])
        >>> bits = eig(torch.stack([pool[pairs[:, 0]], pool[pairs[:, 1]]], -2))  # `3 x 2 x d` -> `3`
        >>> bits.shape
        torch.Size([3])
        >>> bool(bits[2].abs() < 1e-9)  # an item against itself teaches nothing
        True
    """

    query_size = 2

    def __init__(
        self,
        model: RewardPosterior | Model,
        *,
        ties: bool | None = None,
        tie_strength: Any = None,
        link: str | None = None,
        noise_scale: float | None = None,
        num_samples: int = 1024,
        seed: int = 0,
        X_pending: Tensor | None = None,
    ) -> None:
        super().__init__(model, link=link, noise_scale=noise_scale, num_samples=num_samples, seed=seed)
        ties = None if ties is None else check_bool("ties", ties)
        tie = self._tie_draws(tie_strength) if ties is not False else None
        if ties and tie is None:
            raise ModelError("ties=True needs a posterior with ties or an explicit tie_strength.")
        self.tie_strength = tie
        self._set_initial_pending(X_pending)

    def score_draws(self, u_first: Tensor, u_second: Tensor) -> Tensor:  # type: ignore[override]
        return comparison_information_gain(u_first, u_second, link=self.link, tie_strength=self.tie_strength)


class RatingInformationGain(DrawsAcquisitionFunction):
    """Expected information gain about the reward from a like/dislike answer (MC BALD).

    ``forward`` takes `batch_shape x 1 x d` and returns `batch_shape` bits.

    Args:
        model: a RewardPosterior or a BoTorch model of the utility.
        threshold: `s` like-threshold draws (noise units) or one number; default the
            posterior's ``like_threshold_draws()``.
        link, noise_scale, num_samples, seed, X_pending: as in :class:`DrawsAcquisitionFunction`.
    """

    query_size = 1

    def __init__(
        self,
        model: RewardPosterior | Model,
        *,
        threshold: Any = None,
        link: str | None = None,
        noise_scale: float | None = None,
        num_samples: int = 1024,
        seed: int = 0,
        X_pending: Tensor | None = None,
    ) -> None:
        super().__init__(model, link=link, noise_scale=noise_scale, num_samples=num_samples, seed=seed)
        if threshold is None:
            if self.reward_posterior is None:
                raise ModelError("RatingInformationGain on a BoTorch model needs an explicit threshold.")
            try:
                threshold = self.reward_posterior.like_threshold_draws()
            except ModelError as err:
                raise ModelError(
                    f"{err} Or pass threshold=, e.g. the pool's per-draw median utility "
                    "torch.quantile(posterior.utility(pool), 0.5, dim=-1), which select_queries uses then."
                ) from None
        self.threshold = self._threshold_draws(threshold)
        self._set_initial_pending(X_pending)

    def score_draws(self, u: Tensor) -> Tensor:  # type: ignore[override]
        return rating_information_gain(u, self.threshold, link=self.link)
