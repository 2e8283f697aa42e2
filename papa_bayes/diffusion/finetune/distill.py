"""Guidance distillation: a denoiser whose *unguided* samples look like guided ones.

Guided sampling pays a gradient per step and needs the posterior at sampling time;
a distilled model pays neither. The recipe (in the spirit of Meng et al. 2023, "On
Distillation of Guided Diffusion Models", at the level of the distribution):

1. draw guided samples ``x0`` with the package's own sampler -- they are the target
   distribution, including every quality guard the guidance applies;
2. fine-tune the denoiser with the DDPM noise-prediction loss (Ho et al. 2020) on
   them, plus an anchor to the frozen base model *on the same noisy inputs*:

   ``L = E_{x0, t, eps} ||f_theta(x_t, t) - y||^2 + anchor_weight * ||f_theta(x_t, t) - f_base(x_t, t)||^2``

   where ``y`` is the regression target of the model's prediction type (the noise
   for ``"epsilon"``). The anchor's minimiser is the blend
   ``(y + anchor_weight * f_base) / (1 + anchor_weight)``: in score terms, the base
   score plus ``1 / (1 + anchor_weight)`` of what guidance added, a tempered tilt of
   the base distribution, never a step off its support. It also keeps a few
   hundred target samples from being memorised.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import torch
from torch import Tensor

from papa_bayes.checks import check_bool, check_float, check_int
from papa_bayes.diffusion.classifiers import _warn_unit_range
from papa_bayes.diffusion.finetune.common import (
    DEFAULT_LORA_TARGETS,
    TrainingCopy,
    check_conditioning_rows,
    check_lora_targets,
    check_samples,
    check_training_options,
    warn_unused_lora_options,
)
from papa_bayes.diffusion.models import DiffusionModel
from papa_bayes.diffusion.sampler import sample
from papa_bayes.exceptions import InputDataError

if TYPE_CHECKING:  # pragma: no cover
    from papa_bayes.diffusion.guidance import Guidance

__all__ = ["distill_guidance", "finetune_on_samples"]


def finetune_on_samples(
    model: DiffusionModel,
    samples: Tensor,
    *,
    steps: int = 300,
    lr: float = 3e-4,
    anchor_weight: float = 0.1,
    batch_size: int = 64,
    max_grad_norm: float = 1.0,
    reference: DiffusionModel | None = None,
    generator: torch.Generator | None = None,
    device: str | torch.device | None = None,
    mixed_precision: bool | None = None,
    lora_rank: int | None = None,
    lora_alpha: float | None = None,
    lora_targets: Sequence[str] = DEFAULT_LORA_TARGETS,
    progress_bar: bool = True,
) -> DiffusionModel:
    """Fine-tune a copy of ``model`` so that it generates ``samples`` (step 2 of the module doc).

    Args:
        model: the base model (left untouched).
        samples: `n x C x H x W` target samples in the diffused space (pixels, or
            latents for a latent model), e.g. ``sample(model, n, guidance=g).samples``.
            A latent model's conditioning has 1 row or `n`: row `i` conditions sample `i`.
            Pixels far outside the model's range `[-1, 1]` (0..255 images) or with none
            negative (images in `[0, 1]`) warn (a PapaBayesWarning), as the judges and
            guards do: the model would learn to generate them.
        steps: optimizer steps.
        lr: AdamW peak learning rate (> 0).
        anchor_weight: weight (>= 0) of the anchor to ``reference`` on the same noisy inputs.
        batch_size: samples per step (drawn with replacement).
        max_grad_norm: the gradient is clipped to this global norm (> 0) before each step.
        reference: the frozen anchor model, of ``model``'s sample shape, prediction type
            and training noise schedule; ``model`` when None.
        generator: CPU generator of batches, timesteps and noise (seed 0 when None).
        device: training device (``model.device`` when None); the result comes back
            on ``model``'s device and dtype.
        mixed_precision: bf16 autocast (None, True or False); None: on exactly when
            training on CUDA.
        lora_rank: train LoRA adapters of this rank only (needs ``peft``); None
            trains every weight (right for the small digits model). The adapters
            are merged into the returned weights, so fine-tuning the result again
            trains new adapters on top (rounds stack).
        lora_alpha: LoRA scaling numerator (> 0; ``lora_rank`` when None).
        lora_targets: module names LoRA adapts, each naming modules of the
            denoiser (a full name or its last dotted parts, as peft matches).
            ``lora_alpha`` and ``lora_targets`` without ``lora_rank`` warn.
        progress_bar: show a tqdm bar.

    The denoiser trains conditionally (a latent model's ``encoder_hidden_states``);
    the returned model keeps ``model``'s ``cfg_scale`` and negative embeddings.

    Returns:
        A new :class:`DiffusionModel` sharing ``model``'s scheduler (and autoencoder),
        with its own frozen denoiser.

    Raises:
        InputDataError: on samples of the wrong shape or non-finite, conditioning
            with other than 1 or `n` rows, ``lora_targets`` naming no module of the
            denoiser, a ``reference`` of another sample shape, prediction type or
            noise schedule, or a bad number, device, generator or switch.
        ModelError: when LoRA is asked for and ``peft`` is missing, or training diverges.

    Example:
        Targets guided toward a simulated person's true utility (a
        :class:`~papa_bayes.diffusion.PosteriorObjective` in practice):

        >>> import torch
        >>> from papa_bayes.diffusion import DigitsPerson, Guidance, finetune_on_samples, load_base_model, sample
        >>> base = load_base_model()
        >>> guidance = Guidance(DigitsPerson().utility, scale=0.5)
        >>> guided = sample(base, 32, num_inference_steps=10, guidance=guidance, progress_bar=False,
        ...                 generator=torch.Generator().manual_seed(0))  # e.g. 1024 samples of 50 steps
        >>> distilled = finetune_on_samples(base, guided.samples, steps=3,  # 300 by default; 3 keeps this fast
        ...                                 progress_bar=False, generator=torch.Generator().manual_seed(0))
        >>> distilled.scheduler is base.scheduler and distilled.unet is not base.unet
        True
    """
    numbers = _check_numbers(steps=steps, lr=lr, anchor_weight=anchor_weight, batch_size=batch_size,
                             max_grad_norm=max_grad_norm, progress_bar=progress_bar)
    device = check_training_options(device=device, mixed_precision=mixed_precision, lora_rank=lora_rank,
                                    lora_alpha=lora_alpha, lora_targets=lora_targets, generator=generator)
    warn_unused_lora_options(lora_rank, lora_alpha, lora_targets)
    if not isinstance(model, DiffusionModel):
        raise InputDataError("model", "a DiffusionModel", type(model).__name__)
    samples = check_samples("samples", samples, model.sample_shape)
    if model.samples_are_images:  # pixels in [-1, 1]: 0..255 or [0, 1] images train toward other images
        _warn_unit_range("samples", samples)
    for m in (model, reference):
        check_conditioning_rows(m, samples.shape[0], "target sample")
    return _train_on_samples(model, samples, reference=reference, generator=generator, device=device,
                             mixed_precision=mixed_precision, lora_rank=lora_rank, lora_alpha=lora_alpha,
                             lora_targets=lora_targets, desc="fine-tune on samples", **numbers)


def _check_numbers(*, steps: Any, lr: Any, anchor_weight: Any, batch_size: Any, max_grad_norm: Any,
                   progress_bar: Any) -> dict[str, Any]:
    """The training numbers and switch that :func:`finetune_on_samples` and :func:`distill_guidance` share, checked."""
    return {"steps": check_int("steps", steps), "lr": check_float("lr", lr, strict=True),
            "anchor_weight": check_float("anchor_weight", anchor_weight),
            "batch_size": check_int("batch_size", batch_size),
            "max_grad_norm": check_float("max_grad_norm", max_grad_norm, strict=True),
            "progress_bar": check_bool("progress_bar", progress_bar)}


def _train_on_samples(model: DiffusionModel, samples: Tensor, *, reference: DiffusionModel | None, steps: int,
                      lr: float, anchor_weight: float, batch_size: int, max_grad_norm: float,
                      generator: torch.Generator | None, device: torch.device, mixed_precision: bool | None,
                      lora_rank: int | None, lora_alpha: float | None, lora_targets: Sequence[str],
                      progress_bar: bool, desc: str) -> DiffusionModel:
    """The training of :func:`finetune_on_samples`, its arguments already checked (and warned about);
    ``desc`` labels its progress bar (the caller's own name for the run)."""
    run = TrainingCopy.create(model, reference=reference, device=device, mixed_precision=mixed_precision,
                              lora_rank=lora_rank, lora_alpha=lora_alpha, lora_targets=lora_targets,
                              generator=generator)
    data = samples.to(run.device, torch.float32)

    def step(i: int) -> tuple[Tensor, dict[str, float]]:
        idx = run.randint(0, data.shape[0], batch_size)
        t = run.randint(0, run.num_train_timesteps, batch_size)
        x_t, target = run.noised(data[idx], t)
        out = run.output(x_t, t, idx)
        fit = (out - target).pow(2).mean()
        loss = fit
        logs = {"denoising": float(fit.detach())}
        if anchor_weight > 0:
            anchor = (out - run.reference_output(x_t, t, idx)).pow(2).mean()
            loss = loss + anchor_weight * anchor
            logs["anchor"] = float(anchor.detach())
        return loss, logs

    run.train(step, steps=steps, lr=lr, desc=desc, progress_bar=progress_bar,
              max_grad_norm=max_grad_norm)
    return run.finish()


def distill_guidance(
    model: DiffusionModel,
    guidance: Guidance,
    *,
    num_samples: int = 512,
    num_inference_steps: int = 50,
    sample_batch_size: int = 256,
    steps: int = 300,
    lr: float = 3e-4,
    anchor_weight: float = 0.1,
    batch_size: int = 64,
    max_grad_norm: float = 1.0,
    generator: torch.Generator | None = None,
    device: str | torch.device | None = None,
    mixed_precision: bool | None = None,
    lora_rank: int | None = None,
    lora_alpha: float | None = None,
    lora_targets: Sequence[str] = DEFAULT_LORA_TARGETS,
    progress_bar: bool = True,
) -> DiffusionModel:
    """Distill ``guidance`` into a copy of ``model``: its unguided samples follow the guided ones.

    Draws ``num_samples`` guided samples with :func:`~papa_bayes.diffusion.sample`
    (on ``model``'s device), then runs :func:`finetune_on_samples` on them; see the
    module doc for the loss.

    Args:
        model: the base model (left untouched).
        guidance: the :class:`~papa_bayes.diffusion.Guidance` to distill (objective,
            scale, window, schedule, quality guard).
        num_samples: guided target samples to draw.
        num_inference_steps: sampler steps of the targets.
        sample_batch_size: samples denoised at once while drawing targets.
        steps: optimizer steps.
        lr: AdamW peak learning rate (> 0).
        anchor_weight: weight (>= 0) of the anchor to the base model.
        batch_size: target samples per optimizer step.
        max_grad_norm: the gradient is clipped to this global norm (> 0) before each step.
        generator: CPU generator seeding the targets, then the training draws (seed 0
            when None).
        device: training device (``model.device`` when None).
        mixed_precision: bf16 autocast (None, True or False); None: on exactly when
            training on CUDA.
        lora_rank: LoRA rank (needs ``peft``); None: full fine-tune. Adapters are
            merged into the returned weights (see :func:`finetune_on_samples`).
        lora_alpha: LoRA scaling numerator (> 0; ``lora_rank`` when None).
        lora_targets: module names LoRA adapts (each must name modules of the denoiser).
        progress_bar: show tqdm bars.

    Returns:
        A new :class:`DiffusionModel`; sample it without guidance. With a latent
        model's ``cfg_scale != 1`` the targets carry classifier-free guidance too and
        the conditional denoiser learns them, so the result has ``cfg_scale = 1.0``
        (the base's scale would apply the guidance a second time).

    Raises:
        InputDataError: on a bad number, model, guidance, device, generator (a CPU
            torch.Generator or None), switch, ``lora_targets`` naming no module of
            the denoiser, or conditioning with other than 1 or ``num_samples`` rows,
            before any sample is drawn.
        ModelError: when LoRA is asked for and ``peft`` is missing, or training diverges.

    On the digits task the defaults (512 targets, 300 steps of 64) bring unguided
    samples to 0.94 of the guided preferred fraction at manifold precision 0.96, in
    about 80 s of one CPU core (``benchmarks/results/finetune.md``).

    Example:
        A posterior fitted to a simulated person's ratings of base samples, distilled
        (the counts are tiny here; the defaults above are the realistic ones):

        >>> import torch
        >>> from papa_bayes import LinearReward, PreferenceData, fit
        >>> from papa_bayes.diffusion import (DigitsPerson, Guidance, PosteriorObjective, distill_guidance,
        ...                                   load_base_model, load_feature_map, sample)
        >>> base, phi = load_base_model(), load_feature_map()
        >>> base_images = sample(base, 32, num_inference_steps=10, progress_bar=False,
        ...                      generator=torch.Generator().manual_seed(0)).images
        >>> ratings = torch.stack([torch.arange(32), DigitsPerson().rate(base_images)], dim=1)  # (item, +1/-1)
        >>> posterior = fit(LinearReward(), PreferenceData(items=phi(base_images), ratings=ratings),
        ...                 method="laplace", seed=0)
        >>> objective = PosteriorObjective(posterior, phi, kind="region").calibrate(base_images)
        >>> distilled = distill_guidance(base, Guidance(objective, scale=0.5), num_samples=16,
        ...                              num_inference_steps=10, steps=3, progress_bar=False,
        ...                              generator=torch.Generator().manual_seed(0))
        >>> images = sample(distilled, 16, num_inference_steps=10, progress_bar=False,  # no guidance needed
        ...                 generator=torch.Generator().manual_seed(1)).images
        >>> images.shape
        torch.Size([16, 1, 8, 8])
    """
    num_samples = check_int("num_samples", num_samples)
    check_int("num_inference_steps", num_inference_steps)
    check_int("sample_batch_size", sample_batch_size)
    numbers = _check_numbers(steps=steps, lr=lr, anchor_weight=anchor_weight, batch_size=batch_size,
                             max_grad_norm=max_grad_norm, progress_bar=progress_bar)
    if not isinstance(model, DiffusionModel):
        raise InputDataError("model", "a DiffusionModel", type(model).__name__)
    if not callable(getattr(guidance, "guide", None)):
        raise InputDataError("guidance", "a Guidance", type(guidance).__name__)
    # Fail before the expensive part: the guided samples.
    device = check_training_options(device=device, mixed_precision=mixed_precision, lora_rank=lora_rank,
                                    lora_alpha=lora_alpha, lora_targets=lora_targets, generator=generator)
    warn_unused_lora_options(lora_rank, lora_alpha, lora_targets)
    if lora_rank is not None:
        check_lora_targets(model, lora_targets)
    check_conditioning_rows(model, num_samples, "sample")
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    targets = sample(model, num_samples, num_inference_steps=num_inference_steps, guidance=guidance,
                     generator=generator, batch_size=sample_batch_size, progress_bar=numbers["progress_bar"]).samples
    distilled = _train_on_samples(model, targets, reference=None, generator=generator, device=device,
                                  mixed_precision=mixed_precision, lora_rank=lora_rank, lora_alpha=lora_alpha,
                                  lora_targets=lora_targets, desc="distill guidance", **numbers)
    if getattr(distilled, "cfg_scale", 1.0) != 1.0:  # the targets carry the guidance: applying it again doubles it
        distilled.cfg_scale = 1.0
    return distilled
