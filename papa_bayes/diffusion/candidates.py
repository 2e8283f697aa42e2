"""A diffusion model as the candidate source of an online session.

Pools mix unsteered base samples (the exploration share, against echo chambers) and
samples steered by the current posterior; recommendations come from a larger steered
pool filtered by the manifold guard and the posterior probability of the preferred
region (:func:`~papa_bayes.diffusion.selection.sample_preferred`). The guidance scale
is chosen by the package's own rule (:func:`~papa_bayes.diffusion.scale.select_guidance_scale`):
never by a judge or the true reward.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from papa_bayes.diffusion.features import FeatureMap
from papa_bayes.diffusion.guidance import Guidance, check_guidance_scale
from papa_bayes.diffusion.models import DiffusionModel
from papa_bayes.diffusion.objectives import PosteriorObjective
from papa_bayes.diffusion.sampler import sample
from papa_bayes.diffusion.scale import select_guidance_scale
from papa_bayes.diffusion.selection import ManifoldGuard, sample_preferred
from papa_bayes.exceptions import InputDataError

__all__ = ["DiffusionCandidates", "SESSION_SCALES"]

#: Scales the session's rule scans: the grid of the measured alignment benchmark
#: (benchmarks/results/bench_alignment.md), kept explicit so a change of the
#: sampler's own defaults does not silently change what was measured.
SESSION_SCALES: tuple[float, ...] = (0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0)


class DiffusionCandidates:
    """Candidates from a (guided) diffusion model, for :class:`~papa_bayes.session.PreferenceSession`.

    Args:
        model: the diffusion model.
        feature_map: images -> `n x d` features (the posterior's features).
        guard: the manifold guard (reference: the base model's training data).
        kind: guidance objective (``"region"``, ``"mean"``, ``"ucb"``, ``"thompson"``).
        scale: a normalized guidance scale, or ``"auto"`` for the package's rule,
            re-run every ``rescale_every`` rounds.
        scales / min_relative_precision / radius_scale: the rule's grid and its
            precision floor (relative to unguided pools, with the guard's radii scaled).
        quantile: the preferred region is the top ``1 - quantile`` of base samples
            under each posterior draw.
        filter_quantile: the region of the recommendation filter (None: ``quantile``).
            Steering toward a broad region (all liked digits) and keeping only the
            samples surely inside a narrower core of it trades less diversity for
            purity than a stricter ``min_probability`` does, which keeps only the
            digits the posterior is surest about. On development seeds 100-102 of the
            digits task (like/dislike queries, pixel-PCA + mid-block features, 20
            labels) the core 0.7 kept 0.94 of recommendations preferred with 1.68 bits
            of class entropy against 0.87 and 1.95 bits at 0.6.
        pool_steps / recommend_steps: denoising steps of pools and of recommendations.
        oversample / min_probability: of the recommendation filter. A strict filter
            (0.9) keeps only samples of the digits the posterior is surest about and
            loses diversity early; 0.75 kept >= 93% preferred with 1.89 bits of class
            entropy at 20 labels (demo seed 0), against 0.98 and 1.70 bits at 0.9.
        num_base: base samples kept for calibration of the region threshold.
        seed: seeds the base samples.

    After :meth:`finetune` (a session calls it every ``finetune_every`` rounds when
    asked), recommendations come from the fine-tuned model *without* guidance (the
    steering amortized into its weights), still through the manifold guard and the
    current posterior's preference filter; candidate pools keep using guidance on
    the base model, which follows the newest posterior at once.
    """

    def __init__(
        self,
        model: DiffusionModel,
        feature_map: FeatureMap,
        guard: ManifoldGuard,
        *,
        kind: str = "region",
        scale: float | str = "auto",
        scales: tuple[float, ...] = SESSION_SCALES,
        min_relative_precision: float = 0.9,
        radius_scale: float = 1.0,
        rescale_every: int = 5,
        quantile: float = 0.6,
        filter_quantile: float | None = 0.7,
        window: tuple[float, float] = (0.0, 0.8),
        pool_steps: int = 20,
        recommend_steps: int = 50,
        oversample: float = 4.0,
        min_probability: float = 0.75,
        num_base: int = 256,
        seed: int = 0,
        progress: bool = False,
    ) -> None:
        if scale != "auto":
            scale = check_guidance_scale(scale)
        self.model, self.feature_map, self.guard = model, feature_map, guard
        self.num_features = int(feature_map.num_features)
        self.kind, self.scale, self.scales = kind, scale, tuple(scales)
        self.rescale_every, self.quantile, self.window = int(rescale_every), float(quantile), tuple(window)
        self.pool_steps, self.recommend_steps = int(pool_steps), int(recommend_steps)
        self.oversample, self.min_probability = float(oversample), float(min_probability)
        if filter_quantile is not None and not 0.0 < float(filter_quantile) < 1.0:
            raise InputDataError("filter_quantile", "None or a number in (0, 1)", filter_quantile)
        self.filter_quantile = None if filter_quantile is None else float(filter_quantile)
        self.progress = progress
        self.min_relative_precision, self.radius_scale = float(min_relative_precision), float(radius_scale)
        self.seed = seed
        gen = torch.Generator().manual_seed(seed)
        self.base_images = sample(model, num_base, num_inference_steps=pool_steps, generator=gen, progress=progress).images
        self._calls = 0
        self._chosen_scale: float | None = None
        self.last_scale_selection = None
        self.finetuned: DiffusionModel | None = None

    def config(self) -> dict[str, Any]:
        return {
            "kind": "DiffusionCandidates", "objective": self.kind, "scale": self.scale, "quantile": self.quantile,
            "filter_quantile": self.filter_quantile, "pool_steps": self.pool_steps, "recommend_steps": self.recommend_steps, "oversample": self.oversample,
            "min_probability": self.min_probability, "num_features": self.num_features, "seed": self.seed,
        }

    # ------------------------------------------------------------------ guidance
    def guidance(self, posterior: Any, *, generator: torch.Generator | None = None, rescale: bool = False) -> Guidance:
        """The guidance of ``posterior`` at the chosen scale (choosing it when needed)."""
        objective = PosteriorObjective(posterior, self.feature_map, kind=self.kind).calibrate(
            self.base_images, quantile=self.quantile
        )
        g = Guidance(objective, scale=1.0, window=self.window, clamp=(-1.0, 1.0))
        if self.scale != "auto":
            return g.with_scale(float(self.scale))
        if self._chosen_scale is None or rescale:
            sel = select_guidance_scale(self.model, g, self.guard, scales=self.scales, generator=generator,
                                        num_inference_steps=self.pool_steps,
                                        min_relative_precision=self.min_relative_precision,
                                        radius_scale=self.radius_scale)
            self.last_scale_selection = sel
            self._chosen_scale = sel.scale
        return g.with_scale(self._chosen_scale)

    def candidates(self, posterior: Any, n: int, *, exploration: float, generator: torch.Generator):
        from papa_bayes.session import Candidates

        if n < 1:
            raise InputDataError("n", "at least 1 candidate", n)
        n_explore = n if posterior is None else int(round(exploration * n))
        parts, flags = [], []
        if n_explore:
            parts.append(sample(self.model, n_explore, num_inference_steps=self.pool_steps, generator=generator,
                                progress=False).images)
            flags += [False] * n_explore
        if n - n_explore:
            rescale = self.rescale_every > 0 and self._calls % self.rescale_every == 0
            g = self.guidance(posterior, generator=generator, rescale=rescale)
            parts.append(sample(self.model, n - n_explore, num_inference_steps=self.pool_steps, guidance=g,
                                generator=generator, progress=False).images)
            flags += [True] * (n - n_explore)
        self._calls += 1
        images = torch.cat(parts).detach()
        with torch.no_grad():
            features = self.feature_map(images).to(torch.float64)
        return Candidates(features, images, torch.tensor(flags))

    def recommend(self, posterior: Any, n: int, *, generator: torch.Generator):
        from papa_bayes.session import Candidates

        g = self.guidance(posterior, generator=generator)
        region = g.objective if self.filter_quantile is None else g.objective.at_quantile(self.filter_quantile)
        if self.finetuned is None:
            model, guidance = self.model, g
        else:  # amortized: the fine-tuned weights steer; the current posterior filters
            model, guidance = self.finetuned, None
        probability = region.region_probability
        out = sample_preferred(
            model, n, guidance=guidance, probability=probability, guard=self.guard, oversample=self.oversample,
            min_probability=self.min_probability, num_inference_steps=self.recommend_steps,
            generator=generator, progress=self.progress,
        )
        with torch.no_grad():
            features = self.feature_map(out.images).to(torch.float64)
        return Candidates(features, out.images, torch.ones(n, dtype=torch.bool))

    # ---------------------------------------------------------------- fine-tuning
    def finetune(self, posterior: Any, *, generator: torch.Generator, path: str | Path | None = None,
                 **options: Any) -> DiffusionModel:
        """Distill the current posterior's guidance into a copy of the base model.

        Args:
            posterior: the reward posterior whose guidance (at the rule's scale) is
                distilled.
            generator: seeds the scale rule, the guided targets and the training draws.
            path: folder to save the fine-tuned model in (``save_finetuned``); None:
                keep it in memory only.
            options: passed to :func:`~papa_bayes.diffusion.distill_guidance`
                (``num_samples``, ``steps``, ``lr``, ``lora_rank``, ...).

        Returns:
            The fine-tuned model, also kept as :attr:`finetuned` for :meth:`recommend`.
        """
        from papa_bayes.diffusion.finetune import distill_guidance, save_finetuned

        g = self.guidance(posterior, generator=generator)
        options = {"progress_bar": self.progress, "num_inference_steps": self.pool_steps} | options
        self.finetuned = distill_guidance(self.model, g, generator=generator, **options)
        if path is not None:
            save_finetuned(self.finetuned, path, info={"method": "distill_guidance", "scale": g.scale,
                                                       "objective": self.kind, **{k: v for k, v in options.items()
                                                                                  if isinstance(v, (int, float, str))}})
        return self.finetuned

    def load_finetuned(self, path: str | Path) -> DiffusionModel:
        """Use the model saved by :meth:`finetune` at ``path`` for recommendations (on resume)."""
        from papa_bayes.diffusion.finetune import load_finetuned

        self.finetuned = load_finetuned(path, base=self.model)
        return self.finetuned
