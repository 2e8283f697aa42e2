"""Keeping samples preferred, diverse and on the data manifold.

Guidance alone trades preference against quality and diversity: pushed hard it
leaves the manifold, pushed softly it leaves many samples outside the preferred
region, and any push tends to favour the region's most rewarding mode. Selection
from a larger guided pool (sampling-importance resampling with a 0/1 weight)
completes it:

1. *manifold guard*: a candidate is kept only inside the union of the k-nearest-
   neighbour balls (k=3) of reference data the package may use (for the digits,
   the base model's own training split; never the judge's data);
2. *preference filter*: only candidates whose posterior probability of lying in the
   preferred region is at least ``min_probability``;
3. *uniform choice* among the survivors, so the kept samples keep the guided
   distribution's proportions inside the region instead of its top-scoring mode.

With ``min_probability=None`` steps 2-3 become a *ranking*: the on-manifold
candidates with the highest probability are kept, a fixed share of the pool
(``1 / oversample``) however sure the posterior is. A threshold keeps too few
samples when the posterior is still unsure (early on, few samples anywhere reach
0.75) and then fills with whatever the guidance favoured; the ranking keeps the
pool's best quarter, so the guidance may be mild and the pool diverse
(:class:`~papa_bayes.diffusion.candidates.DiffusionCandidates` does this by default).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor

from papa_bayes.checks import check_bool, check_float, check_generator, check_int, renamed_option, shape_of
from papa_bayes.diffusion.classifiers import _warn_unit_range
from papa_bayes.diffusion.guidance import Guidance
from papa_bayes.diffusion.metrics import _check_pair, _membership, knn_radii
from papa_bayes.diffusion.models import DiffusionModel
from papa_bayes.diffusion.objectives import PosteriorObjective
from papa_bayes.diffusion.sampler import sample
from papa_bayes.exceptions import InputDataError

__all__ = ["ManifoldGuard", "PreferredSamples", "select_preferred", "sample_preferred"]


class ManifoldGuard:
    """Membership in the k-NN manifold of reference data (Kynkaanniemi et al. 2019).

    Args:
        reference: `m x ...` finite reference images (the base model's training data).
        k: neighbour rank of the balls.
        radius_scale: multiplies every ball's radius (> 1 is more lenient).
    """

    def __init__(self, reference: Tensor, *, k: int = 3, radius_scale: float = 1.0) -> None:
        radius_scale = check_float("radius_scale", radius_scale, strict=True)
        if not isinstance(reference, Tensor):
            raise InputDataError("reference", "a tensor of shape `m x ...`", type(reference).__name__)
        if reference.is_complex():  # the float32 copy would drop the imaginary parts with torch's warning only
            raise InputDataError("reference", "a real tensor of shape `m x ...`", str(reference.dtype))
        self.reference = reference.detach().to("cpu", torch.float32)
        self.k = check_int("k", k)
        self.radii = knn_radii(self.reference, k=self.k) * radius_scale

    def __call__(self, images: Tensor, *, radius_scale: float = 1.0) -> Tensor:
        """`n` bool: which images lie on the reference manifold (balls times ``radius_scale`` > 0)."""
        radius_scale = check_float("radius_scale", radius_scale, strict=True)
        # The reference was checked once, by knn_radii at construction; only the images are, under their name.
        _check_pair(images, self.reference, name="images", check_reference=False)
        _warn_unit_range("images", images, reference=self.reference)
        return _membership(images, self.reference, k=self.k, radii=self.radii * radius_scale)

    def precision(self, images: Tensor, *, radius_scale: float = 1.0) -> float:
        """Share of ``images`` on the reference manifold (balls times ``radius_scale``)."""
        return float(self(images, radius_scale=radius_scale).double().mean())


@dataclass
class PreferredSamples:
    """What :func:`sample_preferred` returns.

    Attributes:
        images: `n x c x h x w` kept images.
        samples: `n x C x H x W` kept clean samples in the diffused space.
        probability: `n` posterior probability of the preferred region (NaN without one).
        on_manifold: `n` bool guard verdicts (all True without a guard).
        pool_size: candidates sampled.
        eligible: candidates that passed both filters (ranking, ``min_probability=None``:
            candidates on the manifold).
    """

    images: Tensor
    samples: Tensor
    probability: Tensor
    on_manifold: Tensor
    pool_size: int
    eligible: int


def _check_probability(probability: Any, n: int | None = None, *, name: str = "probability") -> Tensor:
    """`N` float64 CPU probabilities, or InputDataError (naming ``name``) unless 1-D (of length ``n``) in `[0, 1]`."""
    shape = f"`N` = ({n},)" if n is not None else "`N` (N >= 1)"
    if not isinstance(probability, Tensor) or probability.ndim != 1 or probability.shape[0] == 0 or (
            n is not None and probability.shape[0] != n):
        found = shape_of(probability)
        raise InputDataError(name, f"probabilities, a tensor of shape {shape}", found)
    p = probability.detach().to("cpu", torch.float64)
    inside = (p >= 0) & (p <= 1)  # False for NaN
    if not bool(inside.all()):
        raise InputDataError(name, "probabilities in [0, 1]", p[~inside][0].item())
    return p


def _eligible(probability: Tensor, on_manifold: Tensor, min_probability: float | None) -> Tensor:
    """`N` bool: on the manifold and, with a threshold, at least ``min_probability``."""
    if min_probability is None:
        return on_manifold
    return on_manifold & (probability >= float(min_probability))


def select_preferred(
    probability: Tensor,
    num: int,
    *,
    on_manifold: Tensor | None = None,
    min_probability: float | None = 0.75,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Indices of ``num`` candidates: uniform among the eligible, then the best of the rest.

    Args:
        probability: `N` posterior probabilities of the preferred region, in `[0, 1]`.
        num: how many to keep, an integer in `[1, N]`.
        on_manifold: `N` bool guard verdicts (all True when None).
        min_probability: eligibility threshold on ``probability``, in `[0, 1]`; None: no
            uniform choice, the ``num`` best by (on-manifold, probability).
        generator: seeds the uniform choice.

    Returns:
        `num` long indices; eligible ones first. When fewer than ``num`` are
        eligible, the rest are filled by on-manifold first, then by probability.

    Raises:
        InputDataError: on probabilities outside `[0, 1]` (or NaN), shapes other than
            `N`, ``num`` not an integer in `[1, N]`, or a ``generator`` that is not a
            torch.Generator.
    """
    p = _check_probability(probability)
    n = p.shape[0]
    num = check_int("num", num, maximum=n)
    check_generator("generator", generator, optional=True)
    min_probability = None if min_probability is None else check_float(
        "min_probability", min_probability, maximum=1.0, inclusive_maximum=True)
    if on_manifold is None:
        on = torch.ones(n, dtype=torch.bool)
    elif isinstance(on_manifold, Tensor) and on_manifold.dtype == torch.bool and tuple(on_manifold.shape) == (n,):
        on = on_manifold.to("cpu")
    else:
        found = (on_manifold.dtype, tuple(on_manifold.shape)) if isinstance(on_manifold, Tensor) \
            else type(on_manifold).__name__
        raise InputDataError("on_manifold", f"a bool tensor of shape `N` = ({n},)", found)
    if min_probability is None:
        eligible = torch.zeros(0, dtype=torch.long)
    else:
        eligible = torch.nonzero(_eligible(p, on, min_probability)).flatten()
    gen_device = generator.device if generator is not None else "cpu"
    order = torch.randperm(eligible.numel(), generator=generator, device=gen_device).cpu()
    chosen = eligible[order[:num]]
    if chosen.numel() < num:
        rest = torch.ones(n, dtype=torch.bool)
        rest[chosen] = False
        idx = torch.nonzero(rest).flatten()
        key = on[idx].double() * 2 + p[idx]  # on-manifold first, then by probability
        fill = idx[torch.argsort(key, descending=True, stable=True)[: num - chosen.numel()]]
        chosen = torch.cat([chosen, fill])
    return chosen


_GUARD = "None, a ManifoldGuard or a callable of `n` images returning `n` bool verdicts"


def _check_guard(guard: Any, model: Any) -> None:
    """InputDataError (naming ``guard``) for a guard that cannot judge ``model``'s images, before any sampling.

    A class (``ManifoldGuard`` itself) is callable but builds a guard from the images;
    a :class:`ManifoldGuard` of a pixel model must hold as many values per reference
    image as the model's images (a latent model's decoded size is known only after).
    """
    if guard is None:
        return
    if isinstance(guard, type) or not callable(guard):
        found = f"the class {guard.__name__}" if isinstance(guard, type) else type(guard).__name__
        raise InputDataError("guard", _GUARD + " (e.g. ManifoldGuard(reference_images))", found)
    if isinstance(guard, ManifoldGuard) and isinstance(model, DiffusionModel) and model.samples_are_images:
        _check_guard_size(guard, math.prod(model.sample_shape))


def _check_guard_size(guard: ManifoldGuard, values: int) -> None:
    if guard.reference[0].numel() != values:
        raise InputDataError("guard", f"a ManifoldGuard whose reference images have {values} values each, like "
                             "the model's images", f"reference images of shape {tuple(guard.reference.shape[1:])}")


def _guard_verdicts(guard: Any, images: Tensor) -> Tensor:
    """`n` bool verdicts of ``guard`` on ``images`` (all True without one), or InputDataError naming ``guard``."""
    n = images.shape[0]
    if guard is None:
        return torch.ones(n, dtype=torch.bool)
    if isinstance(guard, ManifoldGuard):
        _check_guard_size(guard, images[0].numel())
    on = guard(images)
    if not isinstance(on, Tensor) or on.dtype != torch.bool or tuple(on.shape) != (n,):
        found = (on.dtype, tuple(on.shape)) if isinstance(on, Tensor) else type(on).__name__
        raise InputDataError("guard", f"{_GUARD}; it returned other than a bool tensor of shape ({n},)", found)
    return on


@renamed_option("progress", "progress_bar")
def sample_preferred(
    model: DiffusionModel,
    num_samples: int,
    *,
    guidance: Guidance | None = None,
    probability: Callable[[Tensor], Tensor] | None = None,
    guard: ManifoldGuard | None = None,
    oversample: float = 4.0,
    min_probability: float | None = 0.75,
    num_inference_steps: int = 50,
    generator: torch.Generator | None = None,
    batch_size: int = 256,
    progress_bar: bool = True,
    probability_space: str | None = None,
) -> PreferredSamples:
    """Sample a guided pool ``oversample`` times larger and keep ``num_samples`` of it.

    Args:
        model: the diffusion model.
        num_samples: samples to return.
        guidance: steering of the pool (None: the base model).
        probability: images (or samples, per the objective's ``input_space``) -> `n`
            posterior probability of the preferred region, in `[0, 1]`; defaults to the
            guidance objective's ``region_probability`` when it has one. Without one,
            every candidate counts as preferred (probability 1 in the filter, NaN in
            the result).
        guard: a :class:`ManifoldGuard` (or a callable of `n` images returning `n`
            bool verdicts); None keeps every candidate's quality as is.
        oversample: pool size / ``num_samples`` (>= 1).
        min_probability: eligibility threshold of the preference filter. Stricter
            keeps only the samples the posterior is surest about, which early on are
            of its favourite digits: 0.75 kept more diversity than 0.9 at about the
            same preferred fraction on the digits task. None: keep the best
            ``num_samples`` of the pool by probability (see the module doc).
        num_inference_steps: denoising steps.
        generator: seeds the pool and the choice.
        batch_size: samples denoised at once.
        progress_bar: show a tqdm bar.
        probability_space: what ``probability`` reads, ``"image"`` or ``"sample"``
            (diffused samples, e.g. a latent model's mid-block features); default the
            guidance objective's ``input_space``, else ``"image"`` (say it when
            ``guidance`` is None and ``probability`` reads samples).

    Returns:
        :class:`PreferredSamples`.

    Raises:
        InputDataError: on a bad number, a ``guidance`` that is not a Guidance, a
            ``guard`` that is not one (a class, a ManifoldGuard whose reference images
            differ in size from a pixel model's) or a ``probability`` that is not
            callable (all checked before sampling); when ``probability`` returns other
            than `n` values in `[0, 1]` (NaN included) or ``guard`` other than `n`
            bool verdicts.
        ModelError: before sampling, when ``probability`` is None and the guidance
            objective is a :class:`PosteriorObjective` without a region (neither
            ``threshold=`` nor :meth:`~PosteriorObjective.calibrate`).
    """
    if guidance is not None and not isinstance(guidance, Guidance):  # a bare objective: AttributeError below
        raise InputDataError("guidance", "None or a Guidance (e.g. Guidance(objective))", type(guidance).__name__)
    _check_guard(guard, model)
    if probability is not None and not callable(probability):
        raise InputDataError("probability", "None or a callable of images", type(probability).__name__)
    num_samples = check_int("num_samples", num_samples)
    oversample = check_float("oversample", oversample, minimum=1.0)
    min_probability = None if min_probability is None else check_float(
        "min_probability", min_probability, maximum=1.0, inclusive_maximum=True)
    batch_size = check_int("batch_size", batch_size)
    progress_bar = check_bool("progress_bar", progress_bar)
    if probability_space is None:
        probability_space = "image" if guidance is None else getattr(guidance.objective, "input_space", "image")
    if probability_space not in ("image", "sample"):
        raise InputDataError("probability_space", "'image', 'sample' or None", probability_space)
    reads_samples = probability_space == "sample"
    if probability is None and guidance is not None:
        probability = getattr(guidance.objective, "region_probability", None)
        if isinstance(guidance.objective, PosteriorObjective):  # its region_probability would raise after sampling
            guidance.objective.check_region("; or pass `probability=` to sample_preferred")
    pool = max(num_samples, int(round(num_samples * oversample)))
    out = sample(model, pool, num_inference_steps=num_inference_steps, guidance=guidance, generator=generator,
                 batch_size=batch_size, progress_bar=progress_bar)
    if probability is not None:
        source = out.samples if reads_samples else out.images
        batches = [source[i:i + batch_size] for i in range(0, pool, batch_size)]
        p = torch.cat([_check_probability(probability(x), n=x.shape[0]) for x in batches])
        filt = p
    else:  # no probability: every candidate counts as preferred
        p = torch.full((pool,), float("nan"), dtype=torch.float64)
        filt = torch.ones(pool, dtype=torch.float64)
    # On the CPU, as select_preferred reads them: a guard's verdicts may come on the images' device.
    on = _guard_verdicts(guard, out.images).to("cpu")
    idx = select_preferred(filt, num_samples, on_manifold=on, min_probability=min_probability, generator=generator)
    eligible = int(_eligible(filt, on, min_probability).sum())
    return PreferredSamples(
        images=out.images[idx],
        samples=out.samples[idx],
        probability=p[idx],
        on_manifold=on[idx],
        pool_size=pool,
        eligible=eligible,
    )
