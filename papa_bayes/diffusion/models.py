"""Diffusers models behind one small interface the sampler drives.

A :class:`DiffusionModel` owns a denoiser, a scheduler (whose noise schedule the
sampler reads) and the map from the diffused tensor to images:

- :class:`PixelDiffusion`: a ``UNet2DModel`` diffusing pixels (our digits model);
- :class:`LatentDiffusion`: a ``UNet2DConditionModel`` diffusing the latents of an
  ``AutoencoderKL`` (the Stable Diffusion family), with optional classifier-free
  guidance on text (or any) embeddings.

The sampler drives DDIM and DDPM schedulers (any ``prediction_type``).
"""

from __future__ import annotations

import copy
import math
import warnings
from contextlib import contextmanager
from typing import Any, Iterator

import torch
from torch import Tensor

from papa_bayes.checks import caller_stacklevel, check_device, check_float, check_float_dtype, check_int, shape_of
from papa_bayes.exceptions import InputDataError, ModelError, PapaBayesWarning

__all__ = ["DiffusionModel", "PixelDiffusion", "LatentDiffusion"]


def same_device(a: str | torch.device, b: str | torch.device) -> bool:
    """Whether ``a`` and ``b`` name the same device, an index-less one (``"cuda"``) read as the current one.

    ``torch.device("cuda") != torch.device("cuda:0")``, though a tensor moved to the
    first lands on the second (and ``"cpu"`` on ``"cpu:0"``'s one CPU).
    """
    a, b = torch.device(a), torch.device(b)
    return a.type == b.type and _device_index(a) == _device_index(b)


def _device_index(device: torch.device) -> int:
    if device.index is not None:
        return device.index
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.current_device()
    return 0


#: The scheduler outputs the sampler reads (``prediction_type``).
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")

#: DDPM variance types whose variance the denoiser predicts (Nichol & Dhariwal 2021): not supported.
LEARNED_VARIANCE_TYPES = ("learned", "learned_range")


def _check_fixed_variance(unet: torch.nn.Module, scheduler: Any) -> None:
    """ModelError for a learned-variance scheduler or a denoiser whose output is not one sample's channels.

    The sampler reads the whole output as the noise (or ``x0``, ``v``) of the
    sample; half of a `2C`-channel output is a variance it would mistake for it.
    """
    variance_type = scheduler.config.get("variance_type")
    if variance_type in LEARNED_VARIANCE_TYPES:
        raise ModelError(f"The scheduler's variance_type {variance_type!r} (a variance the denoiser learns) is "
                         "not supported by the sampler; use a fixed one (e.g. `DDPMScheduler.from_config(config, "
                         "variance_type='fixed_small')`) with a denoiser predicting the sample's channels only.")
    config = getattr(unet, "config", None)
    ins, outs = getattr(config, "in_channels", None), getattr(config, "out_channels", None)
    if isinstance(ins, int) and isinstance(outs, int) and ins != outs:
        learned = " (a learned-variance denoiser: noise and variance)" if outs == 2 * ins else ""
        raise ModelError(f"The denoiser's out_channels = {outs} differ from its in_channels = {ins}{learned}; the "
                         f"sampler needs one prediction per channel of the sample ({ins}), so it is not supported.")


def _check_plain_inputs(unet: torch.nn.Module, wrapper: str, inputs: str) -> None:
    """InputDataError on ``unet`` when it needs inputs ``wrapper``'s own denoiser call never passes.

    A class-conditional UNet (``class_embed_type`` / ``num_class_embeds``) or one
    with added conditioning (SDXL's ``addition_embed_type="text_time"``, image
    embeddings) failed at the first sampler step, in diffusers' or torch's words.
    A subclass that overrides the denoiser call (and passes them itself) is not checked.
    """
    config = getattr(unet, "config", None)
    needs = []
    if getattr(unet, "class_embedding", None) is not None:
        needs.append("class labels (class_embed_type / num_class_embeds)")
    addition = getattr(config, "addition_embed_type", None)
    if addition not in (None, "text"):
        needs.append(f"added conditioning (addition_embed_type {addition!r})")
    projection = getattr(config, "encoder_hid_dim_type", None)
    if projection in ("image_proj", "ip_image_proj"):
        needs.append(f"image embeddings (encoder_hid_dim_type {projection!r})")
    if needs:
        raise InputDataError("unet", f"a denoiser that {wrapper} drives with {inputs} alone (subclass it and "
                             "override model_output to pass more)", "one that needs " + " and ".join(needs))


@contextmanager
def eval_mode(model: DiffusionModel) -> Iterator[None]:
    """Within: ``model``'s networks in eval mode (no dropout, as seeded sampling needs); each module's own
    mode comes back after, so that a denoiser in training stays in training."""
    networks = [m for m in (model.unet, getattr(model, "vae", None)) if isinstance(m, torch.nn.Module)]
    modes = [(m, m.training) for net in networks for m in net.modules()]
    for net in networks:
        net.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def check_scheduler(unet: torch.nn.Module, scheduler: Any) -> None:
    """ModelError unless the sampler can drive ``scheduler`` with ``unet``: see :class:`DiffusionModel`'s Raises."""
    from diffusers import DDIMScheduler, DDPMScheduler

    if not hasattr(scheduler, "alphas_cumprod") or not hasattr(scheduler, "config"):
        raise ModelError(
            f"{type(scheduler).__name__} has no `alphas_cumprod`; use a DDIMScheduler or DDPMScheduler."
        )
    # Others with alphas_cumprod fail mid-sampling (Euler-type: float sigmas as timesteps; PNDM, UniPC:
    # no generator in step) or sample garbage silently (LCM, TCD: consistency steps).
    if not isinstance(scheduler, (DDIMScheduler, DDPMScheduler)):
        raise ModelError(
            f"{type(scheduler).__name__} is not supported by the sampler; use a DDIMScheduler or DDPMScheduler "
            "with the same noise schedule (e.g. `DDIMScheduler.from_config(scheduler.config)`)."
        )
    prediction = scheduler.config.get("prediction_type", "epsilon")
    if prediction not in PREDICTION_TYPES:
        raise ModelError(f"Unsupported prediction_type {prediction!r}.")
    _check_fixed_variance(unet, scheduler)
    num_train = scheduler.config.get("num_train_timesteps")
    if isinstance(num_train, bool) or not isinstance(num_train, int) or num_train < 1 \
            or len(scheduler.alphas_cumprod) != num_train:
        raise ModelError(f"The scheduler's num_train_timesteps must be an integer >= 1 (one alpha_cumprod per "
                         f"training timestep), got {num_train!r}.")
    _check_terminal_snr(scheduler, prediction)


#: Below this cumulative alpha the last training timestep counts as pure noise (zero terminal SNR): diffusers'
#: ``rescale_betas_zero_snr`` gives exactly 0, the usual schedules 4e-5 (linear) to 2e-9 (cosine).
ZERO_SNR_ALPHA_BAR = 1e-12


def _check_terminal_snr(scheduler: Any, prediction: str) -> None:
    """ModelError for noise prediction on a schedule whose last timestep is pure noise (zero terminal SNR).

    There ``x_t`` holds nothing of ``x0`` and ``x0 = (x_t - sqrt(1 - a) eps) / sqrt(a)``
    divides by zero: the samples came out NaN, silently, once a step ran there
    ("trailing" spacing). Lin et al. 2024 ("Common Diffusion Noise Schedules and
    Sample Steps are Flawed"), whom diffusers' ``rescale_betas_zero_snr`` follows,
    pair it with v-prediction.
    """
    alpha_bar = float(scheduler.alphas_cumprod[-1])
    if prediction == "epsilon" and not alpha_bar >= ZERO_SNR_ALPHA_BAR:  # NaN too
        raise ModelError(f"The scheduler's last timestep has zero signal-to-noise ratio (alphas_cumprod[-1] = "
                         f"{alpha_bar:.3g}, e.g. rescale_betas_zero_snr=True) with prediction_type 'epsilon': the "
                         "clean sample cannot be recovered from predicted noise there (NaN samples). Use a "
                         "denoiser trained with prediction_type 'v_prediction' (or 'sample'), or a schedule "
                         "without zero terminal SNR.")


class DiffusionModel:
    """A denoiser with its scheduler; subclasses define how to call it and decode.

    Args:
        unet: a diffusers denoiser (``UNet2DModel``, ``UNet2DConditionModel``, ...)
            predicting one value per channel of the sample.
        scheduler: a diffusers ``DDIMScheduler`` or ``DDPMScheduler`` (or a subclass)
            with ``num_train_timesteps >= 1`` and a fixed variance. The sampler works
            on a fresh copy, so this one is never mutated.

    Raises:
        InputDataError: on a ``unet`` that is not a torch module.
        ModelError: on another scheduler class, an unsupported ``prediction_type``,
            ``num_train_timesteps < 1``, a learned ``variance_type``, a denoiser
            whose ``out_channels`` differ from its ``in_channels``, or
            ``prediction_type="epsilon"`` on a zero-terminal-SNR schedule
            (``rescale_betas_zero_snr=True``: it needs ``"v_prediction"``).
    """

    def __init__(self, unet: torch.nn.Module, scheduler: Any) -> None:
        if not isinstance(unet, torch.nn.Module):
            raise InputDataError("unet", "a torch.nn.Module denoiser (a diffusers UNet)", type(unet).__name__)
        check_scheduler(unet, scheduler)
        self.unet = unet
        self.scheduler = scheduler

    # -- what the sampler needs -------------------------------------------------
    @property
    def sample_shape(self) -> tuple[int, ...]:
        """`C x H x W` of the diffused tensor."""
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        """The denoiser's device."""
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The denoiser's parameter dtype."""
        return next(self.unet.parameters()).dtype

    @property
    def prediction_type(self) -> str:
        """What the denoiser predicts: the scheduler's ``prediction_type`` ("epsilon" by default)."""
        return str(self.scheduler.config.get("prediction_type", "epsilon"))

    def new_scheduler(self) -> Any:
        """A fresh copy of the scheduler (``set_timesteps`` mutates schedulers)."""
        return type(self.scheduler).from_config(self.scheduler.config)

    def model_output(self, x_t: Tensor, t: Tensor) -> Tensor:
        """The denoiser's raw output at `n x C x H x W` ``x_t`` and timestep ``t``."""
        raise NotImplementedError

    def conditional_output(self, x_t: Tensor, t: Tensor) -> Tensor:
        """One plain denoiser pass (no classifier-free guidance); feature maps read this."""
        return self.model_output(x_t, t)

    def decode(self, x0: Tensor) -> Tensor:
        """Images (`n x c x h x w`, about `[-1, 1]`) from clean diffused tensors."""
        return x0

    @property
    def samples_are_images(self) -> bool:
        """Whether a sample is its own image, in `[-1, 1]` (a model without a decoder of its own, as
        :class:`PixelDiffusion`); False where ``decode`` maps latents to images."""
        return type(self).decode is DiffusionModel.decode

    def for_samples(self, start: int, stop: int, num_samples: int) -> DiffusionModel:
        """The model that denoises samples ``start:stop`` of ``num_samples`` (a sampler batch).

        Per-sample inputs (a conditional model's `n x ...` embeddings) are sliced to
        the batch; a model without any returns itself.
        """
        return self

    def for_rows(self, rows: Tensor | slice) -> DiffusionModel:
        """The model conditioned on rows ``rows`` (indices or a slice) of its per-sample inputs.

        Fine-tuning picks a random batch of training samples with this; a model
        without per-sample inputs returns itself.
        """
        return self

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> DiffusionModel:
        """Move the networks (None keeps the device / dtype); returns ``self``.

        Raises:
            InputDataError: on a device this machine does not have, or a ``dtype``
                that is not a floating-point torch.dtype.
        """
        if device is not None:
            device = check_device("device", device)
        if dtype is not None:
            dtype = check_float_dtype("dtype", dtype)
        self.unet.to(device=device, dtype=dtype)
        return self


class PixelDiffusion(DiffusionModel):
    """A pixel-space ``UNet2DModel`` (or any unconditional denoiser of that signature).

    Raises:
        InputDataError: on a conditional denoiser (a ``UNet2DConditionModel``: use
            :class:`LatentDiffusion`), or one whose ``config`` gives no sample size
            (``sample_size`` an integer >= 1 or a pair of them, ``in_channels`` an
            integer >= 1: the shape of what is sampled), a ``UNet2DModel`` whose
            ``sample_size`` is not divisible by ``2 ** (len(down_block_types) - 1)``,
            one that needs inputs besides the sample and timestep (class labels:
            ``class_embed_type`` / ``num_class_embeds``), or a score-SDE ``UNet2DModel``
            (``time_embedding_type="fourier"``: continuous noise levels, not timesteps) or
            one whose ``"learned"`` time embedding has fewer rows than the scheduler's timesteps,
            unless a subclass overrides ``model_output``, besides what :class:`DiffusionModel` raises.

    Example:
        Wrap a fresh (untrained, so its samples are noise) digits-sized UNet:

        >>> import torch
        >>> from diffusers import DDIMScheduler, UNet2DModel
        >>> from papa_bayes.diffusion import DIGITS_UNET_CONFIG, PixelDiffusion, sample
        >>> unet = UNet2DModel(**DIGITS_UNET_CONFIG)  # sample_size=8, in_channels=1, ...
        >>> model = PixelDiffusion(unet, DDIMScheduler(clip_sample=False))
        >>> model.sample_shape
        (1, 8, 8)
        >>> out = sample(model, 4, num_inference_steps=5, progress_bar=False,
        ...              generator=torch.Generator().manual_seed(0))
        >>> out.images.shape
        torch.Size([4, 1, 8, 8])
    """

    def __init__(self, unet: torch.nn.Module, scheduler: Any) -> None:
        super().__init__(unet, scheduler)
        # A conditional UNet fails at the first step, in torch's words, for want of encoder_hidden_states.
        if getattr(getattr(unet, "config", None), "cross_attention_dim", None) is not None:
            raise InputDataError("unet", "an unconditional denoiser such as UNet2DModel (a UNet2DConditionModel "
                                 "goes in LatentDiffusion)", type(unet).__name__)
        if type(self).model_output is PixelDiffusion.model_output:
            _check_plain_inputs(unet, "PixelDiffusion", "the sample and timestep")
            _check_discrete_time(unet, scheduler)
        # sample_shape reads them when sampling starts: UNet2DModel(sample_size=None) failed there, in Python's words.
        config = getattr(unet, "config", None)
        size, channels = getattr(config, "sample_size", None), getattr(config, "in_channels", None)
        try:
            if isinstance(size, (tuple, list)):
                h, w = size
                h, w = check_int("sample_size", h), check_int("sample_size", w)
            else:
                h = w = check_int("sample_size", size)
            check_int("in_channels", channels)
        except (InputDataError, ValueError):
            raise InputDataError("unet", "a denoiser whose config has a sample_size (an integer >= 1 or a pair "
                                 "`(h, w)` of them) and in_channels (an integer >= 1): the shape of a sample",
                                 f"sample_size = {size!r}, in_channels = {channels!r}") from None
        _check_halvable(unet, h, w)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        cfg = self.unet.config
        size = cfg.sample_size
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        return (int(cfg.in_channels), int(h), int(w))

    def model_output(self, x_t: Tensor, t: Tensor) -> Tensor:
        # In the denoiser's dtype: float64 inputs (made under torch.set_default_dtype(torch.float64)) failed in
        # its first convolution, in torch's words.
        return self.unet(x_t.to(self.dtype), t).sample


def _check_discrete_time(unet: torch.nn.Module, scheduler: Any) -> None:
    """InputDataError on a ``UNet2DModel`` whose time embedding cannot read ``scheduler``'s timesteps.

    - a score-SDE one (``time_embedding_type="fourier"``; Song et al. 2021, NCSN++)
      reads its time input as a continuous noise level ``sigma`` and divides its
      output by it: the sampler's discrete DDIM / DDPM timesteps reach ``t = 0``,
      where the output is infinite, and the samples came out NaN only after every
      step (a ModelError blaming the schedule or float16);
    - a ``"learned"`` one has a table of ``num_train_timesteps`` rows: fewer than the
      scheduler's timesteps failed at the first step, in torch's words (an IndexError).
    """
    config = getattr(unet, "config", None)
    embedding = getattr(config, "time_embedding_type", None)
    rows, num_train = getattr(config, "num_train_timesteps", None), scheduler.config.get("num_train_timesteps")
    if embedding == "learned" and isinstance(rows, int) and isinstance(num_train, int) and rows < num_train:
        raise InputDataError("unet", f"a learned time embedding with a row per training timestep of the scheduler "
                             f"(num_train_timesteps >= {num_train})", f"num_train_timesteps = {rows}")
    if embedding == "fourier":
        raise InputDataError("unet", "a denoiser of discrete timesteps trained for a DDPM / DDIM schedule "
                             "(time_embedding_type 'positional' or 'learned')", "a score-SDE UNet2DModel with "
                             "time_embedding_type 'fourier' (it reads a continuous noise level sigma and divides its "
                             "output by it: NaN samples at t = 0; not supported)")


def _check_halvable(unet: torch.nn.Module, h: int, w: int) -> None:
    """InputDataError on ``unet`` (a ``UNet2DModel``) unless its down path can halve `h x w` and its up path restore it.

    Each down block but the last halves the size (rounding up); the up path doubles
    it back, and a size not divisible by ``2 ** (blocks - 1)`` came back other than
    the skip connections': torch's size mismatch at the first sampler step.
    (``UNet2DConditionModel`` pads its up path to any size.)
    """
    from diffusers import UNet2DModel

    if not isinstance(unet, UNet2DModel):
        return
    halvings = max(len(unet.config.down_block_types) - 1, 0)
    factor = 2 ** halvings
    if h % factor or w % factor:
        raise InputDataError("unet", f"a sample_size divisible by {factor} (its {halvings} down blocks that halve "
                             "the size must be undone exactly by the up blocks)", f"sample_size = {(h, w)!r}")


def _latent_factor(vae: Any, key: str) -> float:
    """``vae``'s ``config`` entry ``key`` (``"scaling_factor"``, default 1.0, or ``"shift_factor"``, default 0.0).

    Raises:
        InputDataError: on a value that is not a finite number (> 0 for ``scaling_factor``): a
            ``scaling_factor`` of 0 was read as 1.0 silently, a negative one flipped the latents.
    """
    default = 1.0 if key == "scaling_factor" else 0.0
    value = getattr(getattr(vae, "config", None), key, None)
    if value is None:
        return default
    positive = key == "scaling_factor"
    bound = " > 0" if positive else ""
    expected = f"an autoencoder whose config's {key} is a finite number{bound} (or None: {default})"
    try:
        if isinstance(value, (bool, str, bytes)):
            raise TypeError
        number = float(value)
    except (TypeError, ValueError):
        raise InputDataError("vae", expected, f"{key} = {value!r}") from None
    if not math.isfinite(number) or (positive and number <= 0):
        raise InputDataError("vae", expected, f"{key} = {value!r}")
    return number


def check_rows(name: str, cond: Tensor | None, n: int, what: str) -> None:
    """InputDataError unless conditioning ``cond`` (None: none) has 1 row, shared by all, or `n`, one per ``what``.

    The one wording of a per-sample conditioning that does not match the samples:
    in sampling (:meth:`LatentDiffusion.for_samples`), a denoiser call and fine-tuning.
    """
    if cond is not None and cond.shape[0] not in (1, n):
        raise InputDataError(name, f"1 or {n} rows (one per {what})", tuple(cond.shape))


class LatentDiffusion(DiffusionModel):
    """A latent ``UNet2DConditionModel`` with an ``AutoencoderKL`` (Stable Diffusion shape).

    Args:
        unet: the latent denoiser.
        vae: the autoencoder; latents are decoded as ``vae.decode(z / scaling_factor + shift_factor)``
            (its config's, 1.0 and 0.0 when it has none), as diffusers' pipelines do.
        scheduler: DDIM or DDPM scheduler.
        encoder_hidden_states: `1 x L x D` or `n x L x D` finite float conditioning
            (e.g. text embeddings; `n` rows: one per sample, when sampling `n`; `D`
            the UNet's ``cross_attention_dim``, or its ``encoder_hid_dim`` when it
            projects the embeddings); zeros of `1 x 1 x D` when omitted.
        negative_encoder_hidden_states: unconditional (or negative-prompt) embeddings for
            classifier-free guidance (`1` or `n` rows, the same `L x D` as above); required
            when ``cfg_scale != 1``, unused (with a warning) when it is 1.
        cfg_scale: classifier-free guidance weight, a finite number >= 0: diffusers'
            ``guidance_scale`` (e.g. 7.5), not :class:`~papa_bayes.diffusion.Guidance`'s
            reward ``scale``; 1 (the default) disables it, 0 samples the unconditional model.
        latent_size: `h x w` of the latents, an integer >= 1 or a pair of them;
            defaults to ``unet.config.sample_size``.

    Raises:
        InputDataError: on conditioning of the wrong shape, dtype or not finite, a
            bad ``cfg_scale`` or ``latent_size``, a ``unet`` without a
            ``cross_attention_dim`` or one that needs inputs besides the conditioning
            (class labels, SDXL's added ``text_time`` conditioning, image embeddings)
            unless a subclass overrides the denoiser calls, or a ``vae`` that is not an autoencoder module
            with ``decode``, or one whose ``latent_channels`` differ from the denoiser's
            ``in_channels`` (decoding would fail only after every denoising step), or whose
            config's ``scaling_factor`` is not a finite number > 0 (``shift_factor``: finite).
            Prompts (strings) are refused: there is no text encoder; pass their embeddings.
            Sampling with ``cfg_scale != 1`` set afterwards without negative embeddings raises too.

    Warns:
        PapaBayesWarning: on ``negative_encoder_hidden_states`` with ``cfg_scale = 1`` (not
            used), or a scheduler that clips the predicted clean latents (``clip_sample``).
    """

    def __init__(
        self,
        unet: torch.nn.Module,
        vae: torch.nn.Module,
        scheduler: Any,
        *,
        encoder_hidden_states: Tensor | None = None,
        negative_encoder_hidden_states: Tensor | None = None,
        cfg_scale: float = 1.0,
        latent_size: int | tuple[int, int] | None = None,
    ) -> None:
        super().__init__(unet, scheduler)
        if scheduler.config.get("clip_sample", False) or scheduler.config.get("thresholding", False):
            # DDIMScheduler() and DDPMScheduler() clip by default (pixel models' [-1, 1]); Stable Diffusion's do not
            warnings.warn(
                "scheduler: expected clip_sample=False and thresholding=False for latents (their range is not "
                f"[-1, 1]), got clip_sample={scheduler.config.get('clip_sample')}, thresholding="
                f"{scheduler.config.get('thresholding')}: every step clips the predicted clean latents; build it "
                "with clip_sample=False (e.g. DDIMScheduler.from_config(config, clip_sample=False)).",
                PapaBayesWarning, stacklevel=caller_stacklevel())
        if not isinstance(getattr(getattr(unet, "config", None), "cross_attention_dim", None), (int, tuple, list)):
            raise InputDataError("unet", "a conditional denoiser with a cross_attention_dim (a UNet2DConditionModel)",
                                 type(unet).__name__)
        if not isinstance(vae, torch.nn.Module) or not callable(getattr(vae, "decode", None)):
            raise InputDataError("vae", "a torch.nn.Module autoencoder (an AutoencoderKL)", type(vae).__name__)
        ins = getattr(unet.config, "in_channels", None)
        latent = getattr(getattr(vae, "config", None), "latent_channels", None)
        if isinstance(ins, int) and isinstance(latent, int) and ins != latent:
            raise InputDataError("vae", f"an autoencoder with latent_channels = {ins} (the denoiser's in_channels)",
                                 f"latent_channels = {latent}")
        if type(self).model_output is LatentDiffusion.model_output \
                and type(self).conditional_output is LatentDiffusion.conditional_output:
            _check_plain_inputs(unet, "LatentDiffusion", "the latents, timestep and encoder_hidden_states")
        for key in ("scaling_factor", "shift_factor"):  # a bad one decoded inf / NaN images after every step
            _latent_factor(vae, key)
        self.vae = vae
        cfg_scale = check_float("cfg_scale", cfg_scale)
        if cfg_scale != 1.0 and negative_encoder_hidden_states is None:
            raise InputDataError("negative_encoder_hidden_states", "a tensor when cfg_scale != 1", None)
        if cfg_scale == 1.0 and negative_encoder_hidden_states is not None:
            # diffusers' guidance_scale defaults to 7.5, ours to 1.0 (off): the negative prompt was dropped silently.
            warnings.warn("negative_encoder_hidden_states: expected cfg_scale != 1 with them (classifier-free "
                          "guidance, diffusers' guidance_scale, e.g. 7.5), got cfg_scale=1.0: guidance is off and "
                          "they are not used.", PapaBayesWarning, stacklevel=caller_stacklevel())
        dim = self._embedding_dim(unet)
        if encoder_hidden_states is None:
            if dim is None:  # int() of a per-block tuple was a TypeError
                raise InputDataError("encoder_hidden_states", "a tensor `1 x L x D` (the denoiser's "
                                     "cross_attention_dim is per block, so no default zeros can be made)", None)
            encoder_hidden_states = torch.zeros(1, 1, dim[0])
        self._check_conditioning("encoder_hidden_states", encoder_hidden_states, dim)
        if negative_encoder_hidden_states is not None:
            self._check_conditioning("negative_encoder_hidden_states", negative_encoder_hidden_states, dim)
            if negative_encoder_hidden_states.shape[1:] != encoder_hidden_states.shape[1:]:
                raise InputDataError("negative_encoder_hidden_states",
                                     f"`L x D` = {tuple(encoder_hidden_states.shape[1:])} like encoder_hidden_states",
                                     tuple(negative_encoder_hidden_states.shape))
        self.encoder_hidden_states = encoder_hidden_states
        self.negative_encoder_hidden_states = negative_encoder_hidden_states
        self.cfg_scale = cfg_scale
        size = latent_size if latent_size is not None else unet.config.sample_size
        self._latent_hw = self._check_latent_size(size)

    @staticmethod
    def _check_latent_size(size: Any) -> tuple[int, int]:
        expected = "an integer >= 1 or a pair `(h, w)` of them"
        try:
            if isinstance(size, (tuple, list)):
                h, w = size
                return check_int("latent_size", h), check_int("latent_size", w)
            side = check_int("latent_size", size)
            return side, side
        except (InputDataError, ValueError):
            raise InputDataError("latent_size", expected, repr(size) if isinstance(size, str) else size) from None

    @staticmethod
    def _embedding_dim(unet: torch.nn.Module) -> tuple[int, str] | None:
        """``(D, config key)`` of the embeddings ``unet`` reads; None for a per-block ``cross_attention_dim``.

        A ``text_proj`` denoiser (``encoder_hid_dim`` set) projects embeddings of
        ``encoder_hid_dim`` to its ``cross_attention_dim``: it reads the former.
        """
        config = unet.config
        projected = getattr(config, "encoder_hid_dim", None)
        if getattr(config, "encoder_hid_dim_type", None) == "text_proj" and isinstance(projected, int):
            return int(projected), "encoder_hid_dim"
        dim = getattr(config, "cross_attention_dim", None)
        return (int(dim), "cross_attention_dim") if isinstance(dim, int) else None  # a per-block tuple: unchecked

    @staticmethod
    def _check_conditioning(name: str, cond: Any, dim: tuple[int, str] | None) -> None:
        shape = "`1 x L x D` or `n x L x D`" + (f" with D = {dim[0]} ({dim[1]})" if dim is not None else "")
        prompts = isinstance(cond, (list, tuple)) and len(cond) > 0 and all(isinstance(c, str) for c in cond)
        if isinstance(cond, str) or prompts:
            # A prompt was "got str": the wrapper has no text encoder, which the message did not say.
            raise InputDataError(name, f"text embeddings, a tensor of shape {shape} (papa_bayes has no text "
                                 "encoder: encode the prompts first, e.g. with a diffusers pipeline's "
                                 "`encode_prompt` or its `text_encoder`)", f"the prompt(s) {cond!r}")
        if not isinstance(cond, Tensor) or cond.ndim != 3 or 0 in cond.shape or (
                dim is not None and cond.shape[2] != dim[0]):
            raise InputDataError(name, f"a tensor of shape {shape}", shape_of(cond))
        if not cond.is_floating_point() or not bool(torch.isfinite(cond).all()):
            raise InputDataError(name, "finite floating-point embeddings", str(cond.dtype))

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return (int(self.unet.config.in_channels), int(self._latent_hw[0]), int(self._latent_hw[1]))

    @property
    def scaling_factor(self) -> float:
        """The VAE's latent scaling factor (1.0 when it has no config or its config has none)."""
        return _latent_factor(self.vae, "scaling_factor")

    @property
    def shift_factor(self) -> float:
        """The VAE's latent shift (0.0 when it has no config or its config has none; SD3's and Flux's have one)."""
        return _latent_factor(self.vae, "shift_factor")

    _CONDITIONING = ("encoder_hidden_states", "negative_encoder_hidden_states")

    def _cond(self, name: str, n: int, like: Tensor) -> Tensor:
        cond = getattr(self, name)
        check_rows(name, cond, n, "sample of the batch")
        cond = cond.to(device=like.device, dtype=like.dtype)
        return cond.expand(n, -1, -1) if cond.shape[0] == 1 else cond

    def for_samples(self, start: int, stop: int, num_samples: int) -> LatentDiffusion:
        for name in self._CONDITIONING:
            check_rows(name, getattr(self, name), num_samples, "sample")
        return self.for_rows(slice(start, stop))

    def for_rows(self, rows: Tensor | slice) -> LatentDiffusion:
        """A copy sharing the networks, its `n x L x D` conditioning cut to rows ``rows``
        (`1 x L x D` conditioning, shared by every sample, stays); itself without any of `n` rows."""
        per_sample = [name for name in self._CONDITIONING
                      if getattr(self, name) is not None and getattr(self, name).shape[0] > 1]
        if not per_sample:
            return self
        batch = copy.copy(self)  # shares the networks
        for name in per_sample:
            cond = getattr(self, name)
            setattr(batch, name, cond[rows if isinstance(rows, slice) else rows.to(cond.device)])
        return batch

    def conditional_output(self, x_t: Tensor, t: Tensor) -> Tensor:
        x_t = x_t.to(self.dtype)  # as PixelDiffusion's: float64 latents failed in the denoiser
        cond = self._cond("encoder_hidden_states", x_t.shape[0], x_t)
        return self.unet(x_t, t, encoder_hidden_states=cond).sample

    def model_output(self, x_t: Tensor, t: Tensor) -> Tensor:
        x_t = x_t.to(self.dtype)
        n = x_t.shape[0]
        cond = self._cond("encoder_hidden_states", n, x_t)
        if self.cfg_scale == 1.0:
            return self.conditional_output(x_t, t)
        if self.negative_encoder_hidden_states is None:  # cfg_scale set after construction: was an AttributeError
            raise InputDataError("negative_encoder_hidden_states", f"a tensor when cfg_scale != 1 (cfg_scale = "
                                 f"{self.cfg_scale})", None)
        uncond = self._cond("negative_encoder_hidden_states", n, x_t)
        out = self.unet(torch.cat([x_t, x_t]), t, encoder_hidden_states=torch.cat([uncond, cond])).sample
        out_uncond, out_cond = out.chunk(2)
        return out_uncond + self.cfg_scale * (out_cond - out_uncond)

    def decode(self, x0: Tensor) -> Tensor:
        """Images `n x c x h x w` in the autoencoder's dtype from `n x C x H x W` latents.

        As diffusers' pipelines: ``vae.decode(z / scaling_factor + shift_factor)``.

        The latents move to the autoencoder's device and dtype first: a float16
        denoiser may run with a float32 autoencoder (as SDXL upcasts its VAE).
        """
        param = next(self.vae.parameters(), None)
        if param is not None:
            x0 = x0.to(device=param.device, dtype=param.dtype)
        return self.vae.decode(x0 / self.scaling_factor + self.shift_factor).sample

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> LatentDiffusion:
        if device is not None:
            device = check_device("device", device)  # before the denoiser moves: both or neither
        if dtype is not None:
            dtype = check_float_dtype("dtype", dtype)
        super().to(device=device, dtype=dtype)
        self.vae.to(device=device, dtype=dtype)
        return self
