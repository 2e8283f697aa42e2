"""Guidance objectives from a reward posterior.

A :class:`PosteriorObjective` composes a feature map ``phi`` with any object that
follows the ``RewardPosterior`` interface (``num_features``, ``num_draws``,
``utility(features) -> s x n`` differentiable in the features); nothing else of the
posterior is used. Kinds:

- ``"mean"``: posterior mean utility;
- ``"ucb"``: mean + ``kappa`` * sd (optimism; pushes into uncertain regions);
- ``"thompson"``: one posterior draw per sample, fixed for the whole trajectory
  (Thompson 1933; different samples chase different plausible rewards);
- ``"region"``: ``log P(u(x) > tau)``, the log posterior probability that the sample
  lies in the preferred region (DESIGN.md section 6). ``tau`` is per draw the
  ``quantile`` of that draw's utility under base-model samples, so the region is
  "the top ``1 - quantile`` of what the base model makes" in every draw whatever its
  scale; the indicator is smoothed by a sigmoid of width ``temperature`` times that
  draw's utility spread under base samples. It saturates: a sample that is surely
  preferred has zero push weight and keeps what the base model made of it, so
  steering fills the liked region instead of collapsing onto its best mode.
"""

from __future__ import annotations

import copy
import numbers
from typing import Any

import torch
from torch import Tensor

from papa_bayes.checks import check_device, check_finite, check_float, check_generator, check_int, shape_of
from papa_bayes.diffusion.features import FeatureMap
from papa_bayes.exceptions import InputDataError, ModelError

__all__ = ["OBJECTIVES", "REGION_METHODS", "PosteriorObjective"]

OBJECTIVES = ("mean", "ucb", "thompson", "region")
#: Ways :meth:`PosteriorObjective.region_probability` can compute the probability.
REGION_METHODS = ("share", "smooth", "gaussian")


def _check_fingerprint(posterior: Any, feature_map: Any, given: str | None) -> str | None:
    """The feature map's fingerprint, or InputDataError where it is not the one the posterior's features had.

    The posterior's is ``given`` or its ``feature_fingerprint`` attribute (a str);
    None when neither is known (or the map has no fingerprint to compare).
    """
    if given is not None and not isinstance(given, str):
        raise InputDataError("feature_fingerprint", "None or a str (a FeatureMap's fingerprint())",
                             type(given).__name__)
    recorded = getattr(posterior, "feature_fingerprint", None)
    known = [(name, v) for name, v in (("feature_fingerprint", given), ("posterior.feature_fingerprint", recorded))
             if isinstance(v, str)]
    if not known or not callable(getattr(feature_map, "fingerprint", None)):
        return None
    fingerprint = feature_map.fingerprint()  # only when needed: a large encoder's weights take a moment
    for name, value in known:
        if fingerprint != value:
            kind = getattr(feature_map, "kind", "") or type(feature_map).__name__
            raise InputDataError("feature_map", f"the feature map the posterior's items were computed with "
                                 f"(fingerprint {value}, from {name})", f"a {kind} map with fingerprint {fingerprint}")
    return fingerprint


class PosteriorObjective:
    """A guidance objective `n` of images from a reward posterior and a feature map.

    Args:
        posterior: a RewardPosterior (duck-typed: ``num_features``, ``num_draws``,
            ``utility(features)`` returning `s x n`).
        feature_map: maps images (or diffused samples) `n x ...` to `n x d` features.
        kind: one of :data:`OBJECTIVES`.
        kappa: optimism of ``"ucb"`` (a finite number >= 0).
        threshold: ``tau`` for ``"region"``: a float or `s` per-draw thresholds (for
            example a fitted like/dislike threshold). Otherwise call :meth:`calibrate`.
        temperature: sigmoid width of ``"region"`` (a finite number > 0), relative to
            each draw's spread of utility under base samples (absolute when
            ``threshold`` is given and no calibration ran).
        feature_fingerprint: the :meth:`~papa_bayes.diffusion.FeatureMap.fingerprint`
            of the map the posterior's items were computed with, e.g. a session's
            ``source.config()["feature_map"]["fingerprint"]`` (as a store keeps it).
            A posterior with a ``feature_fingerprint`` attribute (a str) gives it too.
            When known, ``feature_map`` must have that fingerprint: a map of the same
            dimension but other features (pixel PCA for mid-block, another encoder)
            would steer by a reward it was never fitted to, silently.

    Raises:
        InputDataError: when the feature map's dimension differs from the posterior's,
            or its fingerprint from a known ``feature_fingerprint``, the posterior has
            no draws (fewer than 2 for ``"ucb"``), or on an unknown ``kind`` / bad
            ``kappa``, ``temperature``, ``threshold`` or ``feature_fingerprint``.

    Example:
        A posterior fitted to a simulated person's ratings of base samples, on the
        shipped pixel-PCA features, and its region calibrated on the same samples:

        >>> import torch
        >>> from papa_bayes import LinearReward, PreferenceData, fit
        >>> from papa_bayes.diffusion import (DigitsPerson, Guidance, PosteriorObjective, load_base_model,
        ...                                   load_feature_map, sample)
        >>> model, pca = load_base_model(), load_feature_map()
        >>> base_images = sample(model, 32, num_inference_steps=10, progress_bar=False,
        ...                      generator=torch.Generator().manual_seed(0)).images
        >>> ratings = torch.stack([torch.arange(32), DigitsPerson().rate(base_images)], dim=1)  # (item, +1/-1)
        >>> data = PreferenceData(items=pca(base_images), ratings=ratings)
        >>> posterior = fit(LinearReward(), data, method="laplace", seed=0)
        >>> objective = PosteriorObjective(posterior, pca, kind="region").calibrate(base_images)
        >>> objective.tau.shape  # one threshold per posterior draw: the top 40% of base samples
        torch.Size([1000])
        >>> values = objective(base_images)  # `n` log P(in the preferred region), differentiable
        >>> bool(values.shape == (32,) and (values <= 0).all())
        True
        >>> guidance = Guidance(objective, scale=0.5)
    """

    def __init__(
        self,
        posterior: Any,
        feature_map: FeatureMap,
        *,
        kind: str = "region",
        kappa: float = 1.0,
        threshold: float | Tensor | None = None,
        temperature: float = 0.1,
        feature_fingerprint: str | None = None,
    ) -> None:
        if kind not in OBJECTIVES:
            raise InputDataError("kind", f"one of {OBJECTIVES}", kind)
        for attr in ("num_features", "num_draws", "utility"):
            if not hasattr(posterior, attr):
                raise InputDataError("posterior", "a RewardPosterior (num_features, num_draws, utility)",
                                     type(posterior).__name__)
        d_phi = int(getattr(feature_map, "num_features", -1))
        if d_phi != int(posterior.num_features):
            raise InputDataError(
                "feature_map", f"num_features equal to the posterior's ({posterior.num_features})", d_phi
            )
        self.feature_fingerprint = _check_fingerprint(posterior, feature_map, feature_fingerprint)
        num_draws = posterior.num_draws
        if isinstance(num_draws, bool) or not isinstance(num_draws, numbers.Integral) or num_draws < 1:
            raise InputDataError("posterior", "a RewardPosterior with num_draws >= 1", num_draws)
        if kind == "ucb" and num_draws < 2:  # the standard deviation of one draw is NaN: guidance failed mid-sampling
            raise InputDataError("posterior", "num_draws >= 2 for kind='ucb' (its optimism is the draws' standard "
                                 "deviation)", num_draws)
        kappa = check_float("kappa", kappa)
        temperature = check_float("temperature", temperature, strict=True)
        self.posterior = posterior
        self.feature_map = feature_map
        self.kind = kind
        self.kappa = float(kappa)
        self.input_space = getattr(feature_map, "input_space", "image")
        self.temperature = float(temperature)
        self.tau: Tensor | None = None
        self.width: Tensor | None = None
        self.base_utility: Tensor | None = None  # `s x m`, kept by calibrate() for at_quantile()
        if threshold is not None:
            expected = f"a finite float or `s` = {posterior.num_draws} values"
            if isinstance(threshold, (bool, str, bytes)) or (isinstance(threshold, Tensor) and (
                    threshold.dtype == torch.bool or threshold.is_complex())):
                shown = repr(threshold) if isinstance(threshold, str) else threshold
                raise InputDataError("threshold", expected, shown)
            try:
                tau = torch.as_tensor(threshold, dtype=torch.float64).reshape(-1)
            except (TypeError, ValueError, RuntimeError):
                raise InputDataError("threshold", expected, type(threshold).__name__) from None
            if tau.numel() not in (1, int(posterior.num_draws)) or not bool(torch.isfinite(tau).all()):
                raise InputDataError("threshold", expected, tuple(tau.shape))
            self.tau = tau
            self.width = torch.full_like(tau, self.temperature)
        self._draw_index: Tensor | None = None

    # -- posterior quantities ----------------------------------------------------
    def utility(self, x: Tensor) -> Tensor:
        """`s x n` posterior draws of utility of `n x ...` images, differentiable."""
        u = self.posterior.utility(self.feature_map(x))
        if u.ndim != 2 or u.shape[1] != x.shape[0]:
            raise ModelError(f"posterior.utility returned shape {tuple(u.shape)}, expected `s x {x.shape[0]}`.")
        return u

    def calibrate(self, base: Tensor, *, quantile: float = 0.6, batch_size: int = 512) -> PosteriorObjective:
        """Set ``tau`` per draw to the ``quantile`` of utility under base samples.

        Args:
            base: `m x ...` finite base-model samples, `m >= 2` (images, or diffused
                samples when the feature map reads those).
            quantile: in `(0, 1)`; the region is the top ``1 - quantile`` of base samples.
            batch_size: samples the feature map reads at once (an integer >= 1).

        Returns:
            ``self``.

        Raises:
            InputDataError: on fewer than 2 base samples (the region's smoothing
                width is their utilities' standard deviation), non-finite ones,
                samples whose utilities do not differ (e.g. copies of one image), or
                a bad ``quantile`` / ``batch_size``.
        """
        check_float("quantile", quantile, strict=True, maximum=1.0)
        batch_size = check_int("batch_size", batch_size)
        if not isinstance(base, Tensor):
            raise InputDataError("base", "a tensor of at least 2 base samples `m x ...`", type(base).__name__)
        if base.ndim < 1 or base.shape[0] < 2:
            raise InputDataError("base", "at least 2 base samples", tuple(base.shape))
        if not bool(torch.isfinite(base).all()):
            raise InputDataError("base", "finite base samples", "NaN or inf values")
        with torch.no_grad():
            u = torch.cat([self.utility(base[i:i + batch_size]) for i in range(0, base.shape[0], batch_size)], 1)
        u = u.to(torch.float64)
        spread = u.std(dim=1)
        if not bool((spread > 1e-12).all()):  # identical samples (or features): a step function, no gradient to follow
            raise InputDataError("base", "base samples whose utilities differ (the region's smoothing width is their "
                                 "spread)", f"utilities with spread {float(spread.min()):.3g} under some posterior draw")
        self.base_utility = u
        self.tau = torch.quantile(u, float(quantile), dim=1)
        self.width = self.temperature * spread
        return self

    def at_quantile(self, quantile: float) -> PosteriorObjective:
        """A copy whose region is the top ``1 - quantile`` of the same base samples.

        Reuses the base utilities of the last :meth:`calibrate` (nothing is
        recomputed); the smoothing width does not depend on the quantile.

        Raises:
            ModelError: when :meth:`calibrate` has not run.
        """
        check_float("quantile", quantile, strict=True, maximum=1.0)
        if self.base_utility is None:
            raise ModelError("at_quantile() needs a call to `calibrate(base_samples)` first.")
        out = copy.copy(self)
        out.tau = torch.quantile(self.base_utility, float(quantile), dim=1)
        return out

    def check_region(self, advice: str = "") -> None:
        """ModelError unless the preferred region is set (``threshold=`` or :meth:`calibrate`); ``advice`` ends it."""
        if self.tau is None or self.width is None:
            raise ModelError(f"The region objective needs `threshold=` or a call to `calibrate(base_samples)`{advice}.")

    def _region_logits(self, u: Tensor) -> Tensor:
        self.check_region()
        tau = self.tau.to(u.device, u.dtype).view(-1, 1)
        width = self.width.to(u.device, u.dtype).view(-1, 1)
        return (u - tau) / width

    def region_probability(self, x: Tensor | None = None, *, method: str = "share",
                           utility: Tensor | None = None) -> Tensor:
        """`n` posterior probability that each sample is in the preferred region.

        Args:
            x: `n x ...` images (or diffused samples, per ``input_space``).
            utility: instead of ``x``, its `s x n` utilities from :meth:`utility`,
                so that several probabilities of one pool share one feature pass.
            method: ``"share"``: the share of draws with ``u > tau``;
                ``"smooth"``: its sigmoid-smoothed version, which guidance follows;
                ``"gaussian"``: ``Phi(mean / std)`` of the draws' margins
                ``(u - tau) / width``, a normal approximation that does not saturate
                at 0 or 1 the way a share of finitely many draws does, so it still
                ranks samples that every draw puts inside the region (by how far
                inside, relative to the posterior's uncertainty, up to about 8
                standard deviations, where it rounds to 1 in float64); a posterior of
                one draw has no spread to measure, and gives the share (0 or 1).

        Raises:
            InputDataError: on an unknown ``method``, unless exactly one of ``x``
                and ``utility`` is given, on an ``x`` that is not a finite tensor, or a
                ``utility`` that is not a finite `s x n` tensor (`s` the posterior's draws).
        """
        if method not in REGION_METHODS:
            raise InputDataError("method", f"one of {REGION_METHODS}", method)
        if (x is None) == (utility is None):
            raise InputDataError("x / utility", "exactly one of them", "both" if x is not None else "neither")
        if x is not None and not isinstance(x, Tensor):
            raise InputDataError("x", "a tensor of samples `n x ...`", type(x).__name__)
        if x is not None:
            check_finite("x", x, "samples")  # a NaN sample's utility is NaN, which the share reads as outside
        if utility is not None:
            s = int(self.posterior.num_draws)
            if not isinstance(utility, Tensor) or utility.ndim != 2 or utility.shape[0] != s:
                found = shape_of(utility)
                raise InputDataError("utility", f"a tensor of shape `s x n` with s = {s} (the posterior's draws)",
                                     found)
            if not bool(torch.isfinite(utility).all()):
                raise InputDataError("utility", "finite values", "NaN or inf values")
        with torch.no_grad():
            z = self._region_logits(self.utility(x) if utility is None else utility)
            if method == "smooth":
                return torch.sigmoid(z).mean(0)
            if method == "gaussian" and z.shape[0] > 1:
                z = z.double()  # float32 would round every probability above 1 - 6e-8 to 1
                return torch.special.ndtr(z.mean(0) / z.std(0).clamp_min(1e-12))
            return (z > 0).to(z.dtype).mean(0)

    # -- the objective ---------------------------------------------------------
    def begin_batch(self, n: int, *, generator: torch.Generator | None = None,
                    device: torch.device | str = "cpu") -> None:
        """Draw the posterior sample index of each of the ``n`` samples (Thompson).

        Raises:
            InputDataError: on ``n`` not an integer >= 0, a ``generator`` that is not
                a torch.Generator, or a device this machine does not have.
        """
        n = check_int("n", n, minimum=0)
        check_generator("generator", generator, optional=True)
        device = check_device("device", device)
        if self.kind == "thompson":
            gen_device = generator.device if generator is not None else "cpu"
            idx = torch.randint(0, int(self.posterior.num_draws), (n,), generator=generator, device=gen_device)
            self._draw_index = idx.to(device)

    def __call__(self, x: Tensor) -> Tensor:
        u = self.utility(x)
        if self.kind == "mean":
            return u.mean(0)
        if self.kind == "ucb":
            return u.mean(0) + self.kappa * u.std(0)
        if self.kind == "thompson":
            idx = self._draw_index
            if idx is None or idx.shape[0] != x.shape[0]:
                raise ModelError("Thompson guidance needs begin_batch(n) before each batch (the sampler calls it).")
            return u.gather(0, idx.to(u.device).view(1, -1)).squeeze(0)
        z = self._region_logits(u)
        # log mean_s sigmoid(z_s), stably
        return torch.logsumexp(torch.nn.functional.logsigmoid(z), dim=0) - torch.log(
            torch.tensor(float(z.shape[0]), dtype=z.dtype, device=z.device))

    def push_weight(self, values: Tensor) -> Tensor:
        """`n` weights of the normalized push: ``1 - P(region)`` for ``"region"``, else 1."""
        if not isinstance(values, Tensor):
            raise InputDataError("values", "a tensor of `n` objective values", type(values).__name__)
        if self.kind == "region":
            return (1 - values.exp()).clamp(0, 1)
        return torch.ones_like(values)
