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

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from papa_bayes.diffusion.guidance import Guidance
from papa_bayes.diffusion.metrics import knn_radii, manifold_membership
from papa_bayes.diffusion.models import DiffusionModel
from papa_bayes.diffusion.sampler import sample
from papa_bayes.exceptions import InputDataError

__all__ = ["ManifoldGuard", "PreferredSamples", "select_preferred", "sample_preferred"]


class ManifoldGuard:
    """Membership in the k-NN manifold of reference data (Kynkaanniemi et al. 2019).

    Args:
        reference: `m x ...` reference images (the base model's training data).
        k: neighbour rank of the balls.
        radius_scale: multiplies every ball's radius (> 1 is more lenient).
    """

    def __init__(self, reference: Tensor, *, k: int = 3, radius_scale: float = 1.0) -> None:
        if not float(radius_scale) > 0:
            raise InputDataError("radius_scale", "a number > 0", radius_scale)
        self.reference = reference.detach().to("cpu", torch.float32)
        self.radii = knn_radii(self.reference, k=k) * float(radius_scale)

    def __call__(self, images: Tensor, *, radius_scale: float = 1.0) -> Tensor:
        """`n` bool: which images lie on the reference manifold (balls times ``radius_scale``)."""
        return manifold_membership(images, self.reference, radii=self.radii * float(radius_scale))

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
        probability: `N` posterior probabilities of the preferred region.
        num: how many to keep (<= N).
        on_manifold: `N` bool guard verdicts (all True when None).
        min_probability: eligibility threshold on ``probability``; None: no uniform
            choice, the ``num`` best by (on-manifold, probability).
        generator: seeds the uniform choice.

    Returns:
        `num` long indices; eligible ones first. When fewer than ``num`` are
        eligible, the rest are filled by on-manifold first, then by probability.
    """
    n = probability.shape[0]
    if not 1 <= num <= n:
        raise InputDataError("num", f"an integer in [1, {n}]", num)
    p = probability.detach().to("cpu", torch.float64)
    on = torch.ones(n, dtype=torch.bool) if on_manifold is None else on_manifold.to("cpu", torch.bool)
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
    progress: bool = True,
) -> PreferredSamples:
    """Sample a guided pool ``oversample`` times larger and keep ``num_samples`` of it.

    Args:
        model: the diffusion model.
        num_samples: samples to return.
        guidance: steering of the pool (None: the base model).
        probability: images (or samples, per the objective's ``input_space``) -> `n`
            posterior probability of the preferred region; defaults to the guidance
            objective's ``region_probability`` when it has one.
        guard: a :class:`ManifoldGuard`; None keeps every candidate's quality as is.
        oversample: pool size / ``num_samples`` (>= 1).
        min_probability: eligibility threshold of the preference filter. Stricter
            keeps only the samples the posterior is surest about, which early on are
            of its favourite digits: 0.75 kept more diversity than 0.9 at about the
            same preferred fraction on the digits task. None: keep the best
            ``num_samples`` of the pool by probability (see the module doc).
        num_inference_steps: denoising steps.
        generator: seeds the pool and the choice.
        batch_size: samples denoised at once.
        progress: show a tqdm bar.

    Returns:
        :class:`PreferredSamples`.
    """
    if not float(oversample) >= 1:
        raise InputDataError("oversample", "a number >= 1", oversample)
    pool = max(num_samples, int(round(num_samples * float(oversample))))
    out = sample(model, pool, num_inference_steps=num_inference_steps, guidance=guidance, generator=generator,
                 batch_size=batch_size, progress=progress)
    if probability is None and guidance is not None:
        probability = getattr(guidance.objective, "region_probability", None)
    reads_samples = guidance is not None and getattr(guidance.objective, "input_space", "image") == "sample"
    if probability is not None:
        source = out.samples if reads_samples else out.images
        p = torch.cat([probability(source[i:i + batch_size]).detach().cpu()
                       for i in range(0, pool, batch_size)]).to(torch.float64)
    else:
        p = torch.full((pool,), float("nan"), dtype=torch.float64)
    on = guard(out.images) if guard is not None else torch.ones(pool, dtype=torch.bool)
    filt = p.nan_to_num(1.0)
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
