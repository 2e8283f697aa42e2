"""PAPA's signed-ELBO update from like/dislike labels: the baseline we compare against.

PAPA (Sarkar, Nafi et al. 2026, "PAPA: Online Personalized Active Preference
Alignment") fine-tunes the denoiser directly on labeled samples, with no reward
model: it lowers the denoising loss (raises the ELBO) of liked samples and raises it
for disliked ones, and a regulariser keeps the denoiser near the base model.
EPAPA, its cheaper variant, trains only the noisy timesteps ``t >= k`` (``k = 400``
of 1000 in the authors' configuration): whether a sample shows a liked *class* is
decided early in the reverse process, at high noise; low-noise steps only draw the
details, which the labels say nothing about.

Per step, for a batch of labeled samples ``x`` with signs ``s`` (+1 like, -1 dislike):

- preference term at ``t`` uniform in ``[timestep_cutoff * T, T)``, with ``e(x)``
  the per-sample denoising error ``||f_theta(x_t, t) - y||^2`` (Ho et al.'s
  simple loss, a reweighted ELBO) and ``e_ref`` the reference model's on the same
  ``x_t``: ``like_weight * (e - e_ref)`` for likes and
  ``-dislike_weight * min(e - e_ref, dislike_bound * e_ref)`` for dislikes. The
  negative ELBO is unbounded below -- a model can always denoise a sample worse --
  so a disliked sample stops pushing once its error is ``1 + dislike_bound`` times
  the reference's. (PAPA's code relies on a tiny learning rate instead.) The cap
  bounds the loss and zeroes the term's gradient past it; it does not hold the
  error there: AdamW's momentum (and its normalisation of the gradients of the draws
  still below the cap) carries errors past it, and only the regulariser pulls them
  back. On the digits base, 16 dislikes, 30 steps: the error ends near 1.3 to 1.4
  times the reference's with ``regularizer_weight=1`` (bound 1.5), but 4 times at
  ``lr=1e-4`` and 37 times at ``1e-3`` with ``regularizer_weight=0``.
- regulariser at ``t'`` uniform over *all* of ``[0, T)`` on the same samples:
  ``regularizer_weight * ||f_theta(x_t', t') - f_ref(x_t', t')||^2``. Covering
  the steps below the cut-off keeps them at the base model's, which EPAPA gets by
  sampling those steps with the base model itself.

The labels may come from any model's samples; in PAPA's online protocol each round
labels the current model's samples and fine-tunes it further, with ``reference``
the original base model.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor

from papa_bayes.checks import check_bool, check_float, check_int
from papa_bayes.diffusion.finetune.common import (
    DEFAULT_LORA_TARGETS,
    TrainingCopy,
    check_conditioning_rows,
    check_images,
    check_lora_targets,
    check_reference,
    check_training_options,
    encode_images,
    warn_unused_lora_options,
)
from papa_bayes.diffusion.models import DiffusionModel
from papa_bayes.exceptions import InputDataError

__all__ = ["papa_finetune", "check_signs"]


def check_signs(signs: Any, n: int) -> Tensor:
    """`n` float signs (+1 like, -1 dislike) from a tensor or sequence, or InputDataError."""
    try:
        s = signs.detach() if isinstance(signs, Tensor) else torch.as_tensor(signs)
    except (TypeError, ValueError, RuntimeError):
        raise InputDataError("signs", f"`n` = {n} values in {{+1, -1}}", type(signs).__name__) from None
    if s.dtype == torch.bool or s.is_complex():
        raise InputDataError("signs", "+1 (like) / -1 (dislike) numbers, not bools", str(s.dtype))
    if s.ndim != 1 or s.shape[0] != n:
        raise InputDataError("signs", f"shape `n` = ({n},)", tuple(s.shape))
    s = s.to(torch.float32)
    if not bool(((s == 1) | (s == -1)).all()):
        bad = s[(s != 1) & (s != -1)].unique()[:5].tolist()
        raise InputDataError("signs", "values in {+1, -1}", bad)
    return s


def papa_finetune(
    model: DiffusionModel,
    images: Tensor,
    signs: Tensor | Sequence[int],
    *,
    steps: int = 30,
    lr: float = 1e-4,
    like_weight: float = 1.0,
    dislike_weight: float = 1.0,
    dislike_bound: float = 0.5,
    regularizer_weight: float = 1.0,
    timestep_cutoff: float = 0.4,
    batch_size: int = 32,
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
    """PAPA's signed-ELBO fine-tune of a copy of ``model`` on like/dislike labels (see module doc).

    Args:
        model: the model to fine-tune (left untouched).
        images: `n x c x h x w` labeled images (pixel models: `n x C x H x W`
            samples; latent models encode them with their autoencoder). A latent
            model's conditioning has 1 row or `n`: row `i` conditions image `i`.
        signs: `n` labels, +1 like or -1 dislike.
        steps: optimizer steps; the default is one round of PAPA's online protocol
            (about 10 new labels); raise it for a one-shot update on many labels.
        lr: AdamW peak learning rate (> 0). On the digits task, online rounds of 10
            labels at ``1e-4`` (regulariser 1) reach 0.84 preferred after 150 labels
            with the liked digits' diversity kept; ``1e-3`` (regulariser 0.3) reaches
            0.96 after 20 but collapses onto one or two digits.
        like_weight: coefficient (>= 0) of the liked samples' denoising loss.
        dislike_weight: coefficient (>= 0) of the disliked samples' negated loss.
        dislike_bound: a disliked sample stops pushing once its error is ``1 + dislike_bound``
            times the reference's (> 0): the loss is bounded below. The regulariser, not
            the bound, keeps the error near there (see the module doc): with
            ``regularizer_weight=0`` momentum carries it several times past.
        regularizer_weight: coefficient (>= 0) of ``||f_theta - f_ref||^2``.
        timestep_cutoff: EPAPA's cut-off as a fraction of the training timesteps, in
            `[0, 1)`: the preference term trains ``t >= timestep_cutoff * T`` only
            (0 trains every step: plain PAPA).
        batch_size: labeled samples per step (drawn with replacement).
        max_grad_norm: the gradient is clipped to this global norm (> 0) before each step.
        reference: the frozen model of the regulariser (the original base model in an
            online loop), of ``model``'s sample shape, prediction type and training
            noise schedule; ``model`` when None.
        generator: CPU generator of batches, timesteps and noise (seed 0 when None).
        device: training device (``model.device`` when None).
        mixed_precision: bf16 autocast (None, True or False); None: on exactly when
            training on CUDA.
        lora_rank: LoRA rank (needs ``peft``); None: full fine-tune. Adapters are
            merged into the returned weights, so each online round trains new
            adapters on top of the last round's (rounds stack).
        lora_alpha: LoRA scaling numerator (> 0; ``lora_rank`` when None).
        lora_targets: module names LoRA adapts (each must name modules of the
            denoiser); ``lora_alpha`` and ``lora_targets`` without ``lora_rank`` warn.
        progress_bar: show a tqdm bar.

    Returns:
        A new :class:`DiffusionModel` with its own frozen denoiser.

    Raises:
        InputDataError: images of the wrong shape or non-finite, signs not +-1 or of
            another length, conditioning with other than 1 or `n` rows,
            ``lora_targets`` naming no module of the denoiser, a ``reference`` of
            another sample shape, prediction type or noise schedule, a bad number,
            device, generator or switch (these before any image is encoded).
        ModelError: LoRA without ``peft``; a diverging loss.

    Example:
        One round of PAPA's online protocol: a simulated person labels 20 samples:

        >>> import torch
        >>> from papa_bayes.diffusion import DigitsPerson, load_base_model, papa_finetune, sample
        >>> base = load_base_model()
        >>> shown = sample(base, 20, num_inference_steps=10, progress_bar=False,
        ...                generator=torch.Generator().manual_seed(1)).images
        >>> tuned = papa_finetune(base, shown, DigitsPerson().rate(shown), steps=3,  # 30 by default
        ...                       progress_bar=False, generator=torch.Generator().manual_seed(0))
        >>> images = sample(tuned, 8, num_inference_steps=10, progress_bar=False,
        ...                 generator=torch.Generator().manual_seed(2)).images
        >>> images.shape
        torch.Size([8, 1, 8, 8])
    """
    steps = check_int("steps", steps)
    lr = check_float("lr", lr, strict=True)
    like_weight = check_float("like_weight", like_weight)
    dislike_weight = check_float("dislike_weight", dislike_weight)
    dislike_bound = check_float("dislike_bound", dislike_bound, strict=True)
    regularizer_weight = check_float("regularizer_weight", regularizer_weight)
    timestep_cutoff = check_float("timestep_cutoff", timestep_cutoff, maximum=1.0)
    batch_size = check_int("batch_size", batch_size)
    max_grad_norm = check_float("max_grad_norm", max_grad_norm, strict=True)
    progress_bar = check_bool("progress_bar", progress_bar)
    # Before the images are encoded: a bad option should not cost an autoencoder pass.
    device = check_training_options(device=device, mixed_precision=mixed_precision, lora_rank=lora_rank,
                                    lora_alpha=lora_alpha, lora_targets=lora_targets, generator=generator)
    warn_unused_lora_options(lora_rank, lora_alpha, lora_targets)
    if not isinstance(model, DiffusionModel):
        raise InputDataError("model", "a DiffusionModel", type(model).__name__)
    if lora_rank is not None:
        check_lora_targets(model, lora_targets)
    check_reference(model, reference)
    # Every per-image check before the encoding: a bad label should not cost an autoencoder pass.
    images = check_images(model, images)
    s = check_signs(signs, images.shape[0])
    for m in (model, reference):
        check_conditioning_rows(m, images.shape[0], "labeled image")
    x0 = encode_images(model, images, checked=True)
    run = TrainingCopy.create(model, reference=reference, device=device, mixed_precision=mixed_precision,
                              lora_rank=lora_rank, lora_alpha=lora_alpha, lora_targets=lora_targets,
                              generator=generator)
    data, s = x0.to(run.device, torch.float32), s.to(run.device)
    total = run.num_train_timesteps
    first = min(int(round(timestep_cutoff * total)), total - 1)

    def step(i: int) -> tuple[Tensor, dict[str, float]]:
        idx = run.randint(0, data.shape[0], batch_size)
        x, sign = data[idx], s[idx]
        t = run.randint(first, total, batch_size)
        x_t, target = run.noised(x, t)
        err = (run.output(x_t, t, idx) - target).pow(2).flatten(1).mean(1)
        with torch.no_grad():
            err_ref = (run.reference_output(x_t, t, idx) - target).pow(2).flatten(1).mean(1)
        excess = err - err_ref
        liked = sign > 0
        pref = torch.where(liked, like_weight * excess,
                           -dislike_weight * torch.minimum(excess, dislike_bound * err_ref)).mean()
        loss = pref
        logs = {"preference": float(pref.detach())}
        if regularizer_weight > 0:
            t_all = run.randint(0, total, batch_size)
            x_all, _ = run.noised(x, t_all)
            reg = (run.output(x_all, t_all, idx) - run.reference_output(x_all, t_all, idx)).pow(2).mean()
            loss = loss + regularizer_weight * reg
            logs["regularizer"] = float(reg.detach())
        return loss, logs

    run.train(step, steps=steps, lr=lr, desc="PAPA fine-tune", progress_bar=progress_bar,
              max_grad_norm=max_grad_norm)
    return run.finish()
