"""Baselines: random queries, uncertainty sampling and Thompson sampling.

- :class:`RandomQueries`: every query equally good (the label-efficiency floor).
- :class:`UtilityDifferenceVariance`: uncertainty sampling, the posterior variance
  of ``u(a) - u(b)`` (of ``u(x) - threshold`` for like/dislike).
- :class:`ThompsonSampling`: two posterior draws each propose their best item
  (dueling Thompson sampling, Sui et al. 2017); as an acquisition function the value
  of a pair is ``max(u_i(a) + u_j(b), u_i(b) + u_j(a))`` for the two draws ``i, j``,
  whose maximiser over pairs is exactly (argmax u_i, argmax u_j) when they differ.
  When they coincide it is that item against itself, which asks nothing:
  :func:`~papa_bayes.acquisition.select_queries` never scores a pair of two equal
  items (the next best pair wins) and :func:`~papa_bayes.acquisition.optimize_queries`
  takes another pair of draws.
"""

from __future__ import annotations

from typing import Any

import torch
from botorch.models.model import Model
from torch import Tensor

from papa_bayes.acquisition.base import DrawsAcquisitionFunction, draw_variance, per_draw
from papa_bayes.checks import check_generator, is_integer_tensor
from papa_bayes.exceptions import InputDataError
from papa_bayes.inference.posterior import PosteriorDrawsModel, RewardPosterior

__all__ = ["RandomQueries", "UtilityDifferenceVariance", "ThompsonSampling"]


class RandomQueries(DrawsAcquisitionFunction):
    """Uniform random values: maximising them picks a uniformly random query.

    Args:
        model: a RewardPosterior or BoTorch model (only its feature count is used).
        generator: the source of randomness.
        query_size: 2 (pairs) or 1 (like/dislike).
        X_pending: pending items, as ``set_X_pending`` (BoTorch's ``X_pending=``).
    """

    def __init__(
        self,
        model: RewardPosterior | Model,
        *,
        generator: torch.Generator,
        query_size: int = 2,
        X_pending: Tensor | None = None,
    ) -> None:
        super().__init__(model)
        self.generator = check_generator("generator", generator)
        self.query_size = self._check_query_size(query_size)
        self._set_initial_pending(X_pending)

    def forward(self, X: Tensor) -> Tensor:
        """`batch_shape` uniform values, in ``X``'s dtype and on its device as every other acquisition's."""
        X = self.check_X(X)
        # Drawn where the generator lives (in double: the same numbers whatever X's dtype), then moved to X.
        values = torch.rand(X.shape[:-2], generator=self.generator, dtype=torch.float64, device=self.generator.device)
        return values.to(X)

    def score_draws(self, *utilities: Tensor) -> Tensor:
        return torch.rand(utilities[0].shape[1:], generator=self.generator, dtype=torch.float64)


class UtilityDifferenceVariance(DrawsAcquisitionFunction):
    """Uncertainty sampling: posterior variance of ``u(a) - u(b)`` (noise units squared).

    For like/dislike queries (``query_size=1``) the variance of ``u(x) - c`` with
    ``c`` the like threshold (its draws when the posterior has them, else 0).
    ``forward``: `batch_shape x 2 x d` (or `batch_shape x 1 x d`) -> `batch_shape`.

    Args:
        model: a RewardPosterior (or one rater's view of it) or a BoTorch model of
            the utility.
        query_size: 2 (pairs) or 1 (like/dislike).
        threshold: `s` like-threshold draws or one number (like/dislike only).
        X_pending: pending items, as ``set_X_pending`` (BoTorch's ``X_pending=``).
        kwargs: ``link``, ``noise_scale``, ``num_samples``, ``seed`` of
            :class:`DrawsAcquisitionFunction`.
    """

    def __init__(
        self,
        model: RewardPosterior | Model,
        *,
        query_size: int = 2,
        threshold: Any = None,
        X_pending: Tensor | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, **kwargs)
        self.query_size = self._check_query_size(query_size)
        self.threshold = self._threshold_draws(threshold) if self.query_size == 1 else None
        self._set_initial_pending(X_pending)

    def score_draws(self, *utilities: Tensor) -> Tensor:
        if self.query_size == 1:
            u = utilities[0]
            thr = per_draw(self.threshold, u)
            return draw_variance(u if thr is None else u - thr)
        return draw_variance(utilities[0] - utilities[1])


class ThompsonSampling(DrawsAcquisitionFunction):
    """Dueling Thompson sampling over two posterior draws.

    Args:
        model: a :class:`~papa_bayes.RewardPosterior` (its draws are indexed), or one
            rater's view of it (``posterior.as_botorch_model(rater=r)``).
        generator: picks the draws.
        query_size: 2 (pairs: two distinct draws) or 1 (like/dislike: one draw; the
            item that draw likes best is shown).
        draws: explicit draw indices (``query_size`` of them) instead of random ones: in
            [0, s) for a RewardPosterior of s draws, [0, 1024) for a BoTorch model (whose
            posterior is sampled 1024 times); required for a BoTorch model.
        X_pending: pending items, as ``set_X_pending`` (BoTorch's ``X_pending=``).
    """

    def __init__(
        self,
        model: RewardPosterior | PosteriorDrawsModel,
        *,
        generator: torch.Generator | None = None,
        query_size: int = 2,
        draws: Any = None,
        X_pending: Tensor | None = None,
    ) -> None:
        super().__init__(model)
        self.query_size = self._check_query_size(query_size)
        s = None if self.reward_posterior is None else self.reward_posterior.num_draws
        if draws is None:
            if s is None:
                raise InputDataError("draws", "explicit draw indices for a BoTorch model", None)
            gen = check_generator("generator", generator)
            if s >= self.query_size:
                draws = torch.randperm(s, generator=gen)[: self.query_size]
            else:  # a single draw: both items from the same draw
                draws = torch.zeros(self.query_size, dtype=torch.long)
        try:
            draws = draws if isinstance(draws, Tensor) else torch.as_tensor(draws)
        except (TypeError, ValueError, RuntimeError):
            raise InputDataError("draws", f"{self.query_size} integer draw indices", type(draws).__name__) from None
        if not is_integer_tensor(draws):
            raise InputDataError("draws", f"{self.query_size} integer draw indices", str(draws.dtype))
        self.draws = draws.to(torch.long).reshape(-1)
        if self.draws.numel() != self.query_size:
            raise InputDataError("draws", f"{self.query_size} draw indices", self.draws.numel())
        if s is None:  # a BoTorch model: its posterior is sampled num_samples times (negative ones would wrap round)
            s = self.num_samples
        if not bool(((self.draws >= 0) & (self.draws < s)).all()):
            raise InputDataError("draws", f"draw indices in [0, {s})", self.draws.tolist())
        self._set_initial_pending(X_pending)

    def score_draws(self, *utilities: Tensor) -> Tensor:
        if self.query_size == 1:
            return utilities[0][self.draws[0]]
        i, j = self.draws.tolist()
        a, b = utilities
        return torch.maximum(a[i] + b[j], b[i] + a[j])
