"""A diffusion model as the candidate source of an online session.

Pools mix unsteered base samples (the exploration share, against echo chambers) and
samples steered by the current posterior; recommendations come from a larger steered
pool: the best quarter of it on the manifold guard, ranked by the posterior
probability of the preferred region
(:func:`~papa_bayes.diffusion.selection.sample_preferred`). The scales are chosen by
the package's own rules, never by a judge or the true reward: pools use the largest
scale that keeps manifold precision
(:func:`~papa_bayes.diffusion.scale.select_guidance_scale`); recommendations the
mildest scale, no larger, whose kept samples the posterior expects to lie in the
preferred region (:func:`~papa_bayes.diffusion.scale.select_recommendation_scale`).
"""

from __future__ import annotations

import hashlib
import inspect
import json
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from papa_bayes.checks import check_bool, check_float, check_int, renamed_option
from papa_bayes.diffusion.features import FeatureMap, _hash_tensor
from papa_bayes.diffusion.guidance import Guidance, check_guidance_scale, check_window
from papa_bayes.diffusion.models import DiffusionModel, LatentDiffusion
from papa_bayes.diffusion.objectives import OBJECTIVES, REGION_METHODS, PosteriorObjective
from papa_bayes.diffusion.sampler import check_inference_steps, sample
from papa_bayes.diffusion.scale import _checked_scales, select_guidance_scale, select_recommendation_scale
from papa_bayes.diffusion.selection import ManifoldGuard, sample_preferred
from papa_bayes.exceptions import InputDataError
from papa_bayes.sources import Candidates, CandidateSource, check_pool_request, num_unsteered

__all__ = ["DiffusionCandidates", "SESSION_SCALES", "model_fingerprint"]

#: Scales the session's rule scans: the grid of the measured alignment benchmark
#: (benchmarks/results/bench_alignment.md), kept explicit so a change of the
#: sampler's own defaults does not silently change what was measured.
SESSION_SCALES: tuple[float, ...] = (0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0)


def _settings_record(obj: Any) -> dict[str, Any]:
    """``{"class": name, **config}`` of a diffusers object (denoiser, scheduler, autoencoder) as JSON.

    Keys starting with ``_`` (``_name_or_path``, ``_diffusers_version``, ...) say where and with what it was
    saved, not what it computes: left out, so that a checkpoint moved or saved again compares equal.
    """
    config = getattr(obj, "config", None)
    items = config.items() if hasattr(config, "items") else ()
    fields = {str(k): v for k, v in items if not str(k).startswith("_")}
    return {"class": type(obj).__name__, **json.loads(json.dumps(fields, sort_keys=True, default=str))}


def _weights_fingerprint(module: torch.nn.Module) -> str:
    """A short hash of a module's weights: each tensor's name, shape and at most 4,096 evenly spaced values,
    rounded to float16 (a float32 model and its ``.half()`` copy compare equal; another training does not)."""
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        flat = t.detach().reshape(-1)
        flat = flat[:: max(1, flat.numel() // 4096)]  # sampled before rounding: no pass over all the weights
        _hash_tensor(h, f"{name}{tuple(t.shape)}", flat.to(torch.float16) if flat.is_floating_point() else flat)
    return h.hexdigest()[:16]


def _tensor_fingerprint(*tensors: Tensor | None) -> str:
    """A short hash of tensors' shapes and every value (as float32): conditioning embeddings."""
    h = hashlib.sha256()
    for t in tensors:
        if t is None:
            h.update(b"none")
            continue
        h.update(repr(tuple(t.shape)).encode())
        h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def model_fingerprint(model: DiffusionModel) -> dict[str, Any]:
    """What a resumed session compares of a diffusion model, as JSON.

    The wrapper's class and sample shape; the denoiser's class and config, and a hash of its
    weights (:func:`_weights_fingerprint`, milliseconds even for Stable Diffusion's); the
    scheduler's class and config; a latent model's autoencoder (class and config, with its
    ``scaling_factor`` and ``shift_factor``, and weights) and its conditioning (a hash of the
    embeddings, and ``cfg_scale``).
    """
    record: dict[str, Any] = {
        "class": type(model).__name__, "sample_shape": list(model.sample_shape),
        "denoiser": _settings_record(model.unet), "weights": _weights_fingerprint(model.unet),
        "scheduler": _settings_record(model.scheduler),
    }
    if isinstance(model, LatentDiffusion):
        record["vae"] = {**_settings_record(model.vae), "scaling_factor": model.scaling_factor,
                         "shift_factor": model.shift_factor}
        record["vae_weights"] = _weights_fingerprint(model.vae)
        record["conditioning"] = _tensor_fingerprint(model.encoder_hidden_states,
                                                     model.negative_encoder_hidden_states)
        record["cfg_scale"] = model.cfg_scale
    return record


class DiffusionCandidates(CandidateSource):
    """Candidates from a (guided) diffusion model, for :class:`~papa_bayes.session.PreferenceSession`.

    Args:
        model: the diffusion model.
        feature_map: images -> `n x d` features (the posterior's features).
        guard: the manifold guard (reference: the base model's training data).
        kind: guidance objective (``"region"``, ``"mean"``, ``"ucb"``, ``"thompson"``).
        scale: a normalized guidance scale, or ``"auto"`` for the package's rule,
            re-run every ``rescale_every`` pools (0: chosen once).
        scales / min_relative_precision / radius_scale: the rule's grid (> 0) and its
            precision floor (relative to unguided pools, in (0, 1]; the guard's radii
            scaled by ``radius_scale`` > 0).
        quantile: the preferred region is the top ``1 - quantile`` of base samples
            under each posterior draw; in (0, 1).
        window: `(start, stop)` of the trajectory where guidance acts, 0 <= start < stop <= 1.
        filter_quantile: the region of the recommendation filter (None: ``quantile``).
            With a threshold filter (``min_probability`` set) a narrower core (0.7)
            traded less diversity for purity than a stricter threshold; the default
            ranking needs no core.
        pool_steps / recommend_steps: denoising steps of pools and of recommendations
            (counts the model's scheduler can run, as ``num_inference_steps`` of
            :func:`~papa_bayes.diffusion.sample`).
        oversample / min_probability: of the recommendation filter: a pool
            ``oversample`` (>= 1) times larger is drawn; ``min_probability=None`` (default)
            keeps its best ``1 / oversample`` by region probability, a number keeps a
            uniform choice among samples at least that probable (then the best of the
            rest). On development seeds 100-102 of the digits task (20 labels, 32
            mid-block features) ranking from a pool at scale 1.0 kept 0.94 preferred
            with 1.89 bits of liked-class entropy; the threshold 0.75 at the
            precision rule's scale 2.0, 0.95 and 1.67 bits.
        recommend_scale: ``"auto"`` (the mildest scale, no larger than the pools',
            at which the posterior expects ``recommend_target`` of the kept samples
            in the region), ``"pool"`` (the pools' scale) or a number.
        recommend_target: the expected region share of the ``"auto"`` rule, in (0, 1).
        recommend_rule_pool: (samples, denoising steps) of each of the rule's cheap
            pools (it bisects the grid: about 3 pools); None: (128, ``pool_steps``), the
            setting of the committed alignment benchmarks. A scale's effect weakens as the
            steps grow (see :class:`~papa_bayes.diffusion.Guidance`), so the rule at
            ``pool_steps`` undershoots its target a little when ``recommend_steps`` is
            larger: on the digits (seed 0, posteriors of 20 and 30 labels, recommendations
            at 50 steps) the rule at 20 steps chose 0.75 and 0.1, at 50 steps 1.0 and 0.2:
            P(region) of the recommendations 0.785 -> 0.805 and 0.770 -> 0.784, liked
            0.875 -> 0.898 and 0.953 both, for a third more time (37 s against 28 s).
            Pass ``(128, recommend_steps)`` for the closer match.
        region_method: how the ranking's probability is computed
            (:meth:`~papa_bayes.diffusion.objectives.PosteriorObjective.region_probability`):
            ``"gaussian"`` keeps ranking samples that every draw puts in the region.
        num_base: base samples kept for calibration of the region threshold (>= 2).
        seed: seeds the base samples (an integer >= 0).
        progress_bar: show tqdm bars (base samples, recommendations, fine-tuning).
        accept_new_conditioning: a resumed session (:meth:`~papa_bayes.session.PreferenceSession.resume`)
            accepts a latent model's conditioning (prompt embeddings, ``cfg_scale``) other than the
            stored session's: for a prompt changed on purpose (the answers so far were given on images
            of the old one). The model itself (denoiser, weights, scheduler, autoencoder) must stay.

    A session stores the model's fingerprint with this source's settings (see
    :func:`model_fingerprint`), so that one resumed with another model, whose samples the
    stored answers were not about, is refused, naming what differs.

    Raises:
        InputDataError: on any bad option, before the base samples are drawn.

    After :meth:`finetune` (a session calls it every ``finetune_every`` rounds when
    asked), recommendations come from the fine-tuned model *without* guidance (the
    steering amortized into its weights), still through the manifold guard and the
    current posterior's preference filter; candidate pools keep using guidance on
    the base model, which follows the newest posterior at once.
    """

    @renamed_option("progress", "progress_bar")
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
        filter_quantile: float | None = None,
        window: tuple[float, float] = (0.0, 0.8),
        pool_steps: int = 20,
        recommend_steps: int = 50,
        oversample: float = 4.0,
        min_probability: float | None = None,
        recommend_scale: float | str = "auto",
        recommend_target: float = 0.8,
        recommend_rule_pool: tuple[int, int] | None = None,
        region_method: str = "gaussian",
        num_base: int = 256,
        seed: int = 0,
        progress_bar: bool = False,
        accept_new_conditioning: bool = False,
    ) -> None:
        if scale != "auto":
            scale = check_guidance_scale(scale)
        if recommend_scale not in ("auto", "pool"):
            recommend_scale = check_guidance_scale(recommend_scale, "recommend_scale")
        if kind not in OBJECTIVES:
            raise InputDataError("kind", f"one of {OBJECTIVES}", kind)
        if region_method not in REGION_METHODS:
            raise InputDataError("region_method", f"one of {REGION_METHODS}", region_method)
        if not isinstance(model, DiffusionModel):
            raise InputDataError("model", "a DiffusionModel", type(model).__name__)
        if not isinstance(feature_map, FeatureMap):
            raise InputDataError("feature_map", "a FeatureMap (wrap a callable in CallableFeatures)",
                                 type(feature_map).__name__)
        if not isinstance(guard, ManifoldGuard):
            raise InputDataError("guard", "a ManifoldGuard (e.g. ManifoldGuard(reference_images))",
                                 type(guard).__name__)
        self.model, self.feature_map, self.guard = model, feature_map, guard
        self.num_features = int(feature_map.num_features)
        self.kind, self.scale, self.scales = kind, scale, tuple(_checked_scales(scales))
        self.rescale_every = check_int("rescale_every", rescale_every, minimum=0)
        self.quantile = check_float("quantile", quantile, strict=True, maximum=1.0)
        self.window = check_window(window)
        self.pool_steps = check_inference_steps(model, pool_steps, "pool_steps")
        self.recommend_steps = check_inference_steps(model, recommend_steps, "recommend_steps")
        self.oversample = check_float("oversample", oversample, minimum=1.0)
        self.min_probability = None if min_probability is None else check_float(
            "min_probability", min_probability, maximum=1.0, inclusive_maximum=True)
        self.recommend_scale = recommend_scale
        self.recommend_target = check_float("recommend_target", recommend_target, strict=True, maximum=1.0)
        if recommend_rule_pool is None:
            recommend_rule_pool = (128, self.pool_steps)
        if not isinstance(recommend_rule_pool, (tuple, list)) or len(recommend_rule_pool) != 2:
            raise InputDataError("recommend_rule_pool", "(samples >= 1, steps >= 1)", recommend_rule_pool)
        self.recommend_rule_pool = (check_int("recommend_rule_pool[0] (samples)", recommend_rule_pool[0]),
                                    check_inference_steps(model, recommend_rule_pool[1],
                                                          "recommend_rule_pool[1] (steps)"))
        self.region_method = region_method
        self.filter_quantile = None if filter_quantile is None else check_float(
            "filter_quantile", filter_quantile, strict=True, maximum=1.0)
        self.min_relative_precision = check_float("min_relative_precision", min_relative_precision, strict=True,
                                                  maximum=1.0, inclusive_maximum=True)
        self.radius_scale = check_float("radius_scale", radius_scale, strict=True)
        # The region's threshold is a quantile of the base samples' utilities: one sample has none.
        num_base = check_int("num_base", num_base, minimum=2)
        self.seed = check_int("seed", seed, minimum=0)
        self.progress_bar = check_bool("progress_bar", progress_bar)
        self.accept_new_conditioning = check_bool("accept_new_conditioning", accept_new_conditioning)
        self.num_base = num_base
        gen = torch.Generator().manual_seed(self.seed)
        base = sample(model, num_base, num_inference_steps=self.pool_steps, generator=gen, progress_bar=self.progress_bar)
        self.base_images = base.images
        # What the feature map reads: decoded images, or diffused samples (a latent model's mid-block features).
        self._reads_samples = getattr(feature_map, "input_space", "image") == "sample"
        self._base_inputs = base.samples if self._reads_samples else base.images
        self._calls = 0
        self._chosen_scale: float | None = None
        self.last_scale_selection = None
        self.last_recommendation_scale = None
        self.finetuned: DiffusionModel | None = None

    def config(self) -> dict[str, Any]:
        return {
            "kind": "DiffusionCandidates", "objective": self.kind, "scale": self.scale, "quantile": self.quantile,
            "filter_quantile": self.filter_quantile, "pool_steps": self.pool_steps, "recommend_steps": self.recommend_steps, "oversample": self.oversample,
            "min_probability": self.min_probability, "recommend_scale": self.recommend_scale,
            "recommend_target": self.recommend_target, "region_method": self.region_method,
            "num_features": self.num_features, "seed": self.seed, "num_base": self.num_base,
            "window": list(self.window), "scales": list(self.scales), "rescale_every": self.rescale_every,
            "min_relative_precision": self.min_relative_precision, "radius_scale": self.radius_scale,
            "recommend_rule_pool": list(self.recommend_rule_pool),
            "feature_map": {"kind": self.feature_map.kind or type(self.feature_map).__name__,
                            "fingerprint": self.feature_map.fingerprint()},
            "model": model_fingerprint(self.model),  # the base model's, also after fine-tuning
        }

    @property
    def _unchecked_on_resume(self) -> tuple[str, ...]:
        """Settings of :meth:`config` (dotted paths) a resumed session does not compare."""
        return ("model.conditioning", "model.cfg_scale") if self.accept_new_conditioning else ()

    def state(self) -> dict[str, Any]:
        """The state pools depend on besides the posterior and the generator.

        The number of pools drawn (the ``"auto"`` scale is re-chosen every
        ``rescale_every`` pools) and the scale chosen last; a session stores it with
        each query and finished round so that a resume continues exactly.
        """
        return {"calls": self._calls, "chosen_scale": self._chosen_scale}

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state` (on resume)."""
        calls, scale = state.get("calls"), state.get("chosen_scale")
        if isinstance(calls, bool) or not isinstance(calls, int) or calls < 0:
            raise InputDataError("state['calls']", "a number of pools >= 0", calls)
        # A store's scale is a number the rule chose (>= 0): a str, bool, NaN or list is a corrupt state.
        scale = None if scale is None else check_guidance_scale(scale, "state['chosen_scale']")
        self._calls = calls
        self._chosen_scale = scale

    # ------------------------------------------------------------------ guidance
    def guidance(self, posterior: Any, *, generator: torch.Generator | None = None, rescale: bool = False,
                 keep: bool = True) -> Guidance:
        """The guidance of ``posterior`` at the chosen scale (choosing it when needed).

        A pixel model's guidance keeps its shifts inside the data range `[-1, 1]`;
        a latent model's is not clamped (latents have no such range).

        ``keep=False`` (recommendations, fine-tuning) uses the scale the pools chose,
        or chooses one for this call only: the pools' scale, and the random draws of
        its rule, then do not depend on whether anything else came first.
        """
        objective = PosteriorObjective(posterior, self.feature_map, kind=self.kind).calibrate(
            self._base_inputs, quantile=self.quantile
        )
        g = Guidance(objective, scale=1.0, window=self.window)  # clamp "auto": pixels only
        if self.scale != "auto":
            return g.with_scale(float(self.scale))
        if self._chosen_scale is None or rescale:
            sel = select_guidance_scale(self.model, g, self.guard, scales=self.scales, generator=generator,
                                        num_inference_steps=self.pool_steps,
                                        min_relative_precision=self.min_relative_precision,
                                        radius_scale=self.radius_scale)
            self.last_scale_selection = sel
            if not keep:
                return g.with_scale(sel.scale)
            self._chosen_scale = sel.scale
        return g.with_scale(self._chosen_scale)

    def _features(self, out: Any) -> Tensor:
        """`n x d` features of a sampler output, from what the feature map reads (images or samples)."""
        with torch.no_grad():
            return self.feature_map(out.samples if self._reads_samples else out.images).to(torch.float64)

    def candidates(self, posterior: Any, n: int, *, exploration: float, generator: torch.Generator):
        n, exploration = check_pool_request(n, exploration)
        n_explore = num_unsteered(posterior, n, exploration, generator=generator)
        outs, flags = [], []
        if n_explore:
            outs.append(sample(self.model, n_explore, num_inference_steps=self.pool_steps, generator=generator,
                               progress_bar=False))
            flags += [False] * n_explore
        if n - n_explore:
            rescale = self.rescale_every > 0 and self._calls % self.rescale_every == 0
            g = self.guidance(posterior, generator=generator, rescale=rescale)
            outs.append(sample(self.model, n - n_explore, num_inference_steps=self.pool_steps, guidance=g,
                               generator=generator, progress_bar=False))
            flags += [True] * (n - n_explore)
        self._calls += 1
        images = torch.cat([o.images for o in outs]).detach()
        features = torch.cat([self._features(o) for o in outs])
        return Candidates(features, images, torch.tensor(flags))

    def recommend(self, posterior: Any, n: int, *, generator: torch.Generator):
        g = self.guidance(posterior, generator=generator, keep=False)
        region = g.objective if self.filter_quantile is None else g.objective.at_quantile(self.filter_quantile)
        probability = partial(region.region_probability, method=self.region_method)
        if self.finetuned is None:
            model, guidance = self.model, g.with_scale(self._recommendation_scale(g, probability, generator))
        else:  # amortized: the fine-tuned weights steer; the current posterior filters
            model, guidance = self.finetuned, None
        out = sample_preferred(
            model, n, guidance=guidance, probability=probability, guard=self.guard, oversample=self.oversample,
            min_probability=self.min_probability, num_inference_steps=self.recommend_steps,
            generator=generator, progress_bar=self.progress_bar,
            probability_space="sample" if self._reads_samples else "image",
        )
        return Candidates(self._features(out), out.images, torch.ones(n, dtype=torch.bool))

    def _recommendation_scale(self, g: Guidance, probability: Any, generator: torch.Generator) -> float:
        """The scale of recommendations: see ``recommend_scale`` in the class doc."""
        if self.recommend_scale == "pool" or g.scale <= 0:
            return float(g.scale)
        if self.recommend_scale != "auto":
            return float(self.recommend_scale)

        def score(x: Tensor) -> tuple[Tensor, Tensor]:  # one pass of utilities for the ranking and the share
            u = g.objective.utility(x)
            return probability(utility=u), g.objective.region_probability(utility=u)

        sel = select_recommendation_scale(
            self.model, g, score=score, keep=1.0 / self.oversample,
            target=self.recommend_target, scales=self.scales, max_scale=g.scale,
            num_samples=self.recommend_rule_pool[0], num_inference_steps=self.recommend_rule_pool[1],
            generator=generator,
        )
        self.last_recommendation_scale = sel
        return sel.scale

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
                (``num_samples``, ``steps``, ``lr``, ``lora_rank``, ...); its ``model``,
                ``guidance`` and ``generator`` are this source's model, its guidance
                and ``generator``.

        Returns:
            The fine-tuned model, also kept as :attr:`finetuned` for :meth:`recommend`.

        Raises:
            InputDataError: on a ``path`` that names a file or lies inside one, an
                option :func:`~papa_bayes.diffusion.distill_guidance` does not take or that
                this method sets itself (all before any work), or a bad option value.
        """
        from papa_bayes.diffusion.finetune import distill_guidance, save_finetuned
        from papa_bayes.diffusion.finetune.io import check_checkpoint_folder

        # Else `model=` or a misspelt option was distill_guidance's TypeError, after the guidance was built.
        known = sorted(set(inspect.signature(distill_guidance).parameters) - {"model", "guidance", "generator"})
        if unknown := sorted(set(options) - set(known)):
            raise InputDataError("options", f"options of distill_guidance ({', '.join(known)}); model, guidance "
                                 "and generator are the source's own", unknown)
        if path is not None:  # before minutes of distillation, not after
            check_checkpoint_folder("path", path)
        g = self.guidance(posterior, generator=generator, keep=False)
        options = {"progress_bar": self.progress_bar, "num_inference_steps": self.pool_steps} | options
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
