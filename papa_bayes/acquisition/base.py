"""The base of papa_bayes' acquisition functions: a query's value from joint utility draws.

Every acquisition function here is a BoTorch ``AcquisitionFunction``: ``forward``
takes `batch_shape x 2 x d` (a pairwise query) or `batch_shape x 1 x d` (a
like/dislike query) and returns `batch_shape`. Internally each one reduces to
:meth:`DrawsAcquisitionFunction.score_draws`, a pure function of joint utility
draws at the query's items (`s x batch_shape` per item), so that query selection
over a pool can compute the draws at the pool once (`s x n`) and score any set of
pairs from them without calling the model again (see
:func:`papa_bayes.acquisition.select_queries`).

Information is measured in bits throughout: a binary answer carries at most 1 bit.
"""

from __future__ import annotations

import math
import numbers
from abc import abstractmethod
from typing import Any

import torch
from botorch.acquisition import AcquisitionFunction
from botorch.models.model import Model
from botorch.posteriors.ensemble import EnsemblePosterior
from botorch.sampling.base import MCSampler
from botorch.sampling.normal import IIDNormalSampler, SobolQMCNormalSampler
from torch import Tensor
from torch.quasirandom import SobolEngine

from papa_bayes.checks import check_finite, check_float, check_int, check_real_tensor
from papa_bayes.exceptions import InputDataError, ModelError
from papa_bayes.inference.posterior import PosteriorDrawsModel, RewardPosterior
from papa_bayes.models.likelihoods import check_link, comparison_log_probs, log_cdf

__all__ = [
    "DrawsAcquisitionFunction",
    "LN2",
    "answer_log_probs",
    "check_pending",
    "check_utility_model",
    "check_query_X",
    "draw_variance",
    "answer_noise",
    "model_num_features",
    "entropy_bits",
    "outcome_log_probs",
    "per_draw",
    "resolve_model",
]

LN2 = math.log(2.0)


def entropy_bits(probs: Tensor, dim: int = -1) -> Tensor:
    """Shannon entropy in bits along ``dim`` (0 log 0 = 0, with a finite gradient there).

    ``xlogy``'s gradient at 0 is -inf, and an empty group of draws (weight 0) would
    turn it into 0 * -inf = NaN in :func:`grouped_information`; clamping inside the
    log keeps the value and makes that gradient finite.
    """
    tiny = torch.finfo(probs.dtype).tiny if probs.is_floating_point() else 1e-300
    return -(probs * probs.clamp(min=tiny).log()).sum(dim) / LN2


def draw_variance(values: Tensor, dim: int = 0) -> Tensor:
    """Sample variance of ``values`` over the draws (dimension ``dim``).

    0 for one draw (as :func:`~papa_bayes.acquisition.closed_form.utility_moments`' ``max(s - 1, 1)``), not the NaN
    of dividing by s - 1 = 0.
    """
    return values.var(dim, correction=1 if values.shape[dim] > 1 else 0)


def per_draw(values: Tensor | None, like: Tensor) -> Tensor | None:
    """Reshape `s` per-draw values to broadcast against `s x ...` tensor ``like``."""
    if values is None:
        return None
    return values.to(like).reshape(-1, *([1] * (like.dim() - 1)))


def answer_log_probs(
    u_first: Tensor,
    u_second: Tensor | None,
    *,
    link: str,
    tie_strength: Tensor | None = None,
    threshold: Tensor | None = None,
) -> list[Tensor]:
    """Per-draw log probabilities of a query's answers, one `s x batch` tensor per answer.

    Kept as a list rather than a trailing answer dimension: reductions over a
    trailing dimension of size 2 or 3 are several times slower than elementwise
    work on `s x batch` tensors.

    Args:
        u_first: `s x batch` utilities (noise units) of the first item.
        u_second: `s x batch` utilities of the second item; None for a like/dislike
            query about ``u_first``.
        link: ``"logit"`` or ``"probit"``.
        tie_strength: `s` draws of the tie parameter (pairs only), or None.
        threshold: `s` draws of the like threshold (like/dislike only).

    Returns:
        o tensors `s x batch`: (first, second) or (first, second, tie) for pairs,
        (like, dislike) for like/dislike queries.
    """
    check_link(link)
    if u_second is None:
        if threshold is None:
            raise ModelError("A like/dislike query needs draws of the like threshold.")
        margin = u_first - per_draw(threshold, u_first)
        return [log_cdf(margin, link), log_cdf(-margin, link)]
    diff = u_first - u_second
    if tie_strength is None:
        return [log_cdf(diff, link), log_cdf(-diff, link)]
    return list(comparison_log_probs(diff, link, per_draw(tie_strength, diff)).unbind(-1))


def outcome_log_probs(
    u_first: Tensor,
    u_second: Tensor | None,
    *,
    link: str,
    tie_strength: Tensor | None = None,
    threshold: Tensor | None = None,
) -> Tensor:
    """:func:`answer_log_probs` stacked: `s x batch x o`."""
    return torch.stack(
        answer_log_probs(u_first, u_second, link=link, tie_strength=tie_strength, threshold=threshold), -1
    )


def check_utility_model(model: Model) -> Model:
    """``model`` unless it is not one utility: more than one output, or a model batch."""
    try:
        outputs, batch = model.num_outputs, tuple(model.batch_shape)
    except (AttributeError, NotImplementedError):  # a model that does not say: its posterior will
        return model
    if outputs != 1 or batch:
        raise InputDataError("model", "a BoTorch Model of one utility (num_outputs=1, batch_shape=())",
                             f"num_outputs={outputs}, batch_shape={batch}")
    return model


def resolve_model(
    model: RewardPosterior | Model, *, name: str = "model", draws_only: bool = False
) -> tuple[Model, RewardPosterior | None, int | None]:
    """The BoTorch model an acquisition function evaluates, the RewardPosterior behind it and the rater it views.

    Args:
        model: a RewardPosterior (its ``as_botorch_model()`` is used), one rater's
            view of one (``posterior.as_botorch_model(rater=r)``) or, unless
            ``draws_only``, any single-output BoTorch ``Model`` of the utility.
        name: the argument's name in errors.
        draws_only: accept only a RewardPosterior and its views.

    Returns:
        ``(botorch_model, reward_posterior, rater)``; the last two None for a plain
        BoTorch model, the rater None for a RewardPosterior.
    """
    if isinstance(model, RewardPosterior):
        return model.as_botorch_model(), model, None
    if isinstance(model, PosteriorDrawsModel):
        return model, model.reward_posterior, model.rater
    if draws_only:
        raise InputDataError(name, "a RewardPosterior or its as_botorch_model()", type(model).__name__)
    if not isinstance(model, Model):
        raise InputDataError(name, "a RewardPosterior or a BoTorch Model", type(model).__name__)
    return check_utility_model(model), None, None


def answer_noise(
    posterior: RewardPosterior | None, link: Any, noise_scale: Any
) -> tuple[str, float]:
    """The answer link and noise scale an acquisition function uses: ``(link, noise_scale)``.

    A RewardPosterior's utilities are in noise units under its own link, so its
    ``(posterior.link, 1.0)`` is used; an explicit ``link`` or ``noise_scale`` that
    differs is refused rather than silently overriding it (or silently ignored). For
    a plain BoTorch model (``posterior`` None) the given values, by default
    ``("probit", 1.0)``.

    Raises:
        InputDataError: (field ``link`` / ``noise_scale``) a bad value, or one
            other than the RewardPosterior's.
    """
    link = None if link is None else check_link(link)
    noise_scale = None if noise_scale is None else check_float("noise_scale", noise_scale, strict=True)
    if posterior is None:
        return link or "probit", 1.0 if noise_scale is None else noise_scale
    if link is not None and link != posterior.link:
        raise InputDataError("link", f"None or {posterior.link!r}: a RewardPosterior's answers follow its own link "
                             f"(refit with the model's link={link!r} to change it)", repr(link))
    if noise_scale is not None and noise_scale != 1.0:
        raise InputDataError("noise_scale", "None or 1: a RewardPosterior's utilities are already in noise units "
                             "(noise_scale is for plain BoTorch models)", noise_scale)
    return posterior.link, 1.0


def model_num_features(model: Model) -> int | None:
    """`d` of the features a plain BoTorch model takes, read from its training inputs; None where unknown.

    ``PairwiseGP.datapoints`` are the untransformed items; ``train_inputs`` are read
    only without an ``input_transform`` (which may change the width, and after
    which BoTorch stores transformed inputs there).
    """
    try:
        datapoints = getattr(model, "datapoints", None)
        if isinstance(datapoints, Tensor) and datapoints.dim() >= 2:
            return int(datapoints.shape[-1])
        inputs = getattr(model, "train_inputs", None)
        if getattr(model, "input_transform", None) is None and isinstance(inputs, (tuple, list)) and len(inputs) == 1:
            if isinstance(inputs[0], Tensor) and inputs[0].dim() >= 2:
                return int(inputs[0].shape[-1])
    except (AttributeError, NotImplementedError, RuntimeError):  # a model whose attributes need data it lacks
        pass
    return None


def check_pending(X_pending: Any, query_size: int, d: int | None) -> Tensor | None:
    """Validate pending items (BoTorch's ``X_pending``): `m x d` with ``m < query_size``, or None."""
    if X_pending is None:
        return None
    dd = "d" if d is None else str(d)
    expected = f"shape `m x {dd}` with m < {query_size} (items fixed in every query of {query_size})"
    X_pending = check_real_tensor("X_pending", X_pending, expected, dtype=None)
    if X_pending.dim() != 2 or X_pending.shape[0] >= query_size or (d is not None and X_pending.shape[-1] != d):
        if X_pending.dim() == 2 and X_pending.shape[0] >= query_size:
            # BoTorch's sequential greedy optimizers (optimize_acqf_discrete with q > 1, optimize_acqf with
            # sequential=True, optimize_acqf_discrete_local_search) pend the items they chose so far: this
            # refusal then reached the user, who had set no X_pending, with no word of why.
            one = "one item" if query_size == 1 else f"{query_size} items"
            expected += ("; BoTorch's sequential optimizers (optimize_acqf_discrete with q > 1, optimize_acqf with "
                         "sequential=True, optimize_acqf_discrete_local_search) pend the items they chose, which a "
                         f"query of {one} has no room for: ask them for one query at a time (q = its items not "
                         "pending), or for k queries from a pool use select_queries(k=...)")
        raise InputDataError("X_pending", expected, tuple(X_pending.shape))
    return check_finite("X_pending", X_pending, "features")


def check_query_X(X: Any, query_size: int, d: int | None, X_pending: Tensor | None = None) -> Tensor:
    """Validate `batch_shape x q x d` queries and append the pending items: `batch_shape x query_size x d`.

    As BoTorch's ``concatenate_pending_points``: with `m` pending items, ``X`` holds
    the other `query_size - m` items of each query and the pending ones come last.
    A `q x d` input gets batch shape `1`.
    """
    dd = "d" if d is None else str(d)
    m = 0 if X_pending is None else X_pending.shape[-2]
    q = query_size - m
    X = check_real_tensor("X", X, f"`batch_shape x {q} x {dd}` features", dtype=None)
    if X.dim() == 2:
        X = X.unsqueeze(0)
    if X.dim() < 3 or X.shape[-2] != q or (d is not None and X.shape[-1] != d):
        expected = f"shape `batch_shape x {q} x {dd}`"
        if m:
            expected += f" ({query_size} items per query, {m} of them pending: set_X_pending(None) to pass all)"
        elif X.dim() >= 3 and X.shape[-2] < q:
            # BoTorch's sequential optimizers (optimize_acqf_discrete with q > 1, sequential=True,
            # optimize_acqf_mixed, local search) value one item at a time: the user never passed this X.
            expected += (f" (to value {X.shape[-2]} item(s) against fixed ones, set_X_pending(the fixed "
                         f"`{q - X.shape[-2]} x {dd}` items) first. BoTorch's sequential optimizers "
                         "(optimize_acqf_discrete with q > 1, optimize_acqf with sequential=True, optimize_acqf_mixed, "
                         f"local search) value one item at a time: optimize a query of {q} jointly with "
                         f"optimize_acqf(acq, bounds, q={q}), or for queries from a pool use select_queries)")
        raise InputDataError("X", expected, tuple(X.shape))
    check_finite("X", X.detach(), "features")
    if m:
        X = torch.cat([X, X_pending.to(X).expand(*X.shape[:-2], m, X.shape[-1])], dim=-2)
    return X


class DrawsAcquisitionFunction(AcquisitionFunction):
    """An acquisition function computed from joint draws of the utility at a query's items.

    Args:
        model: a :class:`~papa_bayes.RewardPosterior` (its ``as_botorch_model()`` is
            used; nuisance draws such as tie strength and like threshold come with
            it, aligned draw by draw), one rater's view of it
            (``posterior.as_botorch_model(rater=r)``: that rater's utility, the same
            nuisance draws), or any single-output BoTorch ``Model`` of the utility
            (e.g. ``PairwiseGP``), whose posterior is sampled.
        link: answer link for a plain BoTorch model (default ``"probit"``). A
            RewardPosterior's own link is used: None (default) or that same link;
            another is an :class:`~papa_bayes.exceptions.InputDataError` (field
            ``link``).
        noise_scale: for a plain BoTorch model, utilities are divided by it before
            the link, so that P(a preferred) = F((u(a) - u(b)) / noise_scale)
            (default 1; ``sqrt(2)`` matches ``PairwiseGP``'s probit likelihood). A
            RewardPosterior's utilities are in noise units: None or 1, another
            value is an InputDataError (field ``noise_scale``).
        num_samples: draws taken from a non-ensemble model's posterior.
        seed: seed of those draws' base samples (fixed, so ``forward`` is
            deterministic and smooth in ``X``).
        X_pending: `m x d` pending items, as :meth:`set_X_pending` (BoTorch's
            ``X_pending=`` of its MC acquisitions); None (default) for none. Checked
            against the class's ``query_size``: a subclass that sets its own per
            instance applies it after setting it (see :meth:`_set_initial_pending`).

    Pending items (BoTorch's ``X_pending``, set with :meth:`set_X_pending`) are
    fixed items of every query: with one pending item, ``forward`` takes
    `batch_shape x 1 x d` and values each item paired with it, so that
    ``optimize_acqf(acq, bounds, q=1)`` or ``optimize_acqf_discrete(acq, q=1,
    choices=...)`` finds the best partner of a fixed anchor. For the best pair of
    a pool use :func:`~papa_bayes.acquisition.select_queries`, not
    ``optimize_acqf_discrete(acq, q=2, choices=pool)``: BoTorch builds that batch
    one item at a time, valuing each candidate alone as a `1 x d` query, which a
    pairwise acquisition refuses (it has no value for one item without a pending
    partner). Likewise BoTorch's sequential q > 1 (``optimize_acqf_discrete``,
    ``sequential=True``, local search) pends the items it chose so far, more than a
    query holds (a like/dislike query holds one item): an
    :class:`~papa_bayes.exceptions.InputDataError` (field ``X_pending``) saying so;
    :func:`~papa_bayes.acquisition.select_queries` chooses batches of k.

    For a plain BoTorch model the feature width `d` is read from the model
    (``PairwiseGP.datapoints``, or ``train_inputs`` without an input transform),
    so that ``X`` of another width is an InputDataError rather than an error from
    inside the model.

    Subclasses set ``query_size`` (2 or 1) and implement :meth:`score_draws`.
    """

    query_size: int = 2

    def __init__(
        self,
        model: RewardPosterior | Model,
        *,
        link: str | None = None,
        noise_scale: float | None = None,
        num_samples: int = 1024,
        seed: int = 0,
        X_pending: Tensor | None = None,
    ) -> None:
        model, posterior, rater = resolve_model(model)
        link, noise_scale = answer_noise(posterior, link, noise_scale)
        super().__init__(model=model)
        self.reward_posterior = posterior
        self.rater = rater
        self.link = link
        self.noise_scale = noise_scale
        self._model_features = model_num_features(model) if posterior is None else None
        self.num_samples = check_int("num_samples", num_samples)
        self.seed = check_int("seed", seed, minimum=0)
        self._sampler: tuple[str, MCSampler] | None = None
        self.X_pending: Tensor | None = None  # BoTorch reads it (optimize_acqf_discrete) before any set_X_pending
        self._set_initial_pending(X_pending)

    def _set_initial_pending(self, X_pending: Tensor | None) -> None:
        """The constructor's ``X_pending``: :meth:`set_X_pending` unless None (call once ``query_size`` is set)."""
        if X_pending is not None:
            self.set_X_pending(X_pending)

    # ----------------------------------------------------------------- draws
    @property
    def num_features(self) -> int | None:
        """`d`: the reward posterior's features, or those a BoTorch model was trained on (None where unknown)."""
        return self._model_features if self.reward_posterior is None else self.reward_posterior.num_features

    def utility_draws(self, X: Tensor) -> Tensor:
        """Joint utility draws at the query's items.

        Args:
            X: `batch_shape x q x d`.

        Returns:
            `s x batch_shape x q`, divided by ``noise_scale``.
        """
        posterior = self.model.posterior(X)
        if isinstance(posterior, EnsemblePosterior):
            values = posterior.values.squeeze(-1)  # batch x s x q
            draws = values.movedim(-2, 0)
        else:
            draws = self._sampler_for(posterior)(posterior).squeeze(-1)  # s x batch x q
        return draws / self.noise_scale

    def _sampler_for(self, posterior: Any) -> MCSampler:
        """Quasi-MC (scrambled Sobol) base samples where the dimension allows, else IID; fixed seed."""
        # The samplers collapse the batch dimensions (posterior.batch_range: one base
        # sample shared by every query of a batch), so the Sobol dimension is that of
        # one query. Counting the batch too would switch to IID at large batches, and
        # a query's value would then depend on what else is in its batch.
        shape, (start, end) = posterior.base_sample_shape, posterior.batch_range
        dim = shape[:start].numel() * shape[end:].numel()
        kind = "sobol" if dim <= SobolEngine.MAXDIM else "iid"
        if self._sampler is None or self._sampler[0] != kind:
            cls = SobolQMCNormalSampler if kind == "sobol" else IIDNormalSampler
            self._sampler = (kind, cls(sample_shape=torch.Size([self.num_samples]), seed=self.seed))
        return self._sampler[1]

    def set_X_pending(self, X_pending: Tensor | None = None) -> None:
        """Fix items of every query (BoTorch's pending points).

        Args:
            X_pending: `m x d` items, ``m < query_size``, appended to every query of
                ``forward`` (which then takes `batch_shape x (query_size - m) x d`);
                None to clear.
        """
        super().set_X_pending(check_pending(X_pending, self.query_size, self.num_features))

    def check_X(self, X: Tensor) -> Tensor:
        """Validate `batch_shape x q x d` input and append the pending items (see :func:`check_query_X`)."""
        return check_query_X(X, self.query_size, self.num_features, self.X_pending)

    def forward(self, X: Tensor) -> Tensor:
        """Value of each query.

        Args:
            X: `batch_shape x 2 x d` pairs (``query_size`` 2) or `batch_shape x 1 x d`
                items (``query_size`` 1); `m` items fewer per query with `m`
                pending items (:meth:`set_X_pending`).

        Returns:
            `batch_shape`.
        """
        X = self.check_X(X)
        u = self.utility_draws(X)  # s x batch x q
        return self.score_draws(*u.unbind(-1))

    @abstractmethod
    def score_draws(self, *utilities: Tensor) -> Tensor:
        """Value of queries from joint draws at their items.

        Args:
            utilities: ``query_size`` tensors `s x batch` (noise units), draw ``i`` of
                each being the same posterior draw.

        Returns:
            `batch`.
        """

    # ------------------------------------------------------- nuisance draws
    def _tie_draws(self, tie_strength: Any) -> Tensor | None:
        """Tie strength per draw: explicit value, else the posterior's draws, else None."""
        if tie_strength is not None:
            t = check_real_tensor("tie_strength", tie_strength, "positive finite values", dtype=None).reshape(-1)
            s = self.reward_posterior.num_draws if self.reward_posterior is not None else self.num_samples
            if t.numel() not in (1, s) or not bool((torch.isfinite(t) & (t > 0)).all()):
                raise InputDataError("tie_strength", f"positive finite values, 1 or {s} of them", t.tolist()[:5])
            return t
        if self.reward_posterior is not None:
            return self.reward_posterior.tie_strength_draws()
        return None

    def _threshold_draws(self, threshold: Any) -> Tensor | None:
        """Like threshold per draw: explicit value, else the posterior's draws, else None."""
        if threshold is None:
            try:
                return None if self.reward_posterior is None else self.reward_posterior.like_threshold_draws()
            except ModelError:  # a posterior fitted without like/dislike answers
                return None
        t = check_real_tensor("threshold", threshold, "finite values", dtype=None).reshape(-1)
        s = self.reward_posterior.num_draws if self.reward_posterior is not None else self.num_samples
        if t.numel() not in (1, s) or not bool(torch.isfinite(t).all()):
            raise InputDataError("threshold", f"finite values, 1 or {s} of them", t.tolist()[:5])
        return t

    @staticmethod
    def _check_query_size(query_size: Any) -> int:
        if isinstance(query_size, bool) or not isinstance(query_size, numbers.Integral) or query_size not in (1, 2):
            raise InputDataError("query_size", "1 (like/dislike) or 2 (pairs)", query_size)
        return int(query_size)

    def extra_repr(self) -> str:
        return f"link={self.link!r}, noise_scale={self.noise_scale}"
