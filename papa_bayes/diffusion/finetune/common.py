"""Shared machinery of the fine-tuners: argument checks, a trainable copy, the loop.

Every fine-tuner works on a copy of the model's denoiser and never touches the
model it was given. The copy trains in float32 (master weights) under
``torch.autocast`` with bfloat16 when mixed precision is on (the default on CUDA),
and is handed back frozen, in eval mode, on the base model's device and dtype, so
it drops in wherever the base model was used. With ``lora_rank`` set, only LoRA
adapters (Hu et al. 2022) on the attention projections train, through ``peft``;
they are merged into the weights at the end, so the result is a plain diffusers
denoiser that saves and loads like the base one, and fine-tuning it again trains
new adapters on top of the merged weights (rounds stack). Adapters already injected
into the base denoiser (peft, diffusers' ``add_adapter`` / ``load_lora_adapter``)
are merged into the copy before training, as they act.
"""

from __future__ import annotations

import contextlib
import copy
import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from papa_bayes.checks import caller_stacklevel, check_bool, check_device, check_float, check_generator, check_int, shape_of
from papa_bayes.diffusion.classifiers import _warn_unit_range
from papa_bayes.diffusion.models import DiffusionModel, LatentDiffusion, check_rows, eval_mode, same_device
from papa_bayes.diffusion.sampler import join_model_output
from papa_bayes.exceptions import InputDataError, ModelError, PapaBayesWarning

__all__ = [
    "DEFAULT_LORA_TARGETS",
    "TrainingCopy",
    "check_conditioning_rows",
    "check_images",
    "check_lora_targets",
    "check_reference",
    "check_samples",
    "check_training_options",
    "encode_images",
    "has_adapters",
    "merge_adapters",
    "require_peft",
    "warn_unused_lora_options",
]

#: Modules LoRA adapts by default: the attention projections of diffusers' ``Attention``.
DEFAULT_LORA_TARGETS: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")


# -- argument checks ------------------------------------------------------------
def check_samples(name: str, samples: Any, shape: tuple[int, ...]) -> Tensor:
    """A finite float tensor of shape `n x *shape` (n >= 1), or InputDataError."""
    expected = "a tensor of shape `n x " + " x ".join(str(s) for s in shape) + "`"
    if not isinstance(samples, Tensor) or samples.ndim != len(shape) + 1 or tuple(samples.shape[1:]) != shape \
            or samples.shape[0] < 1:
        found = shape_of(samples)
        raise InputDataError(name, expected, found)
    if not samples.is_floating_point() or not bool(torch.isfinite(samples).all()):
        raise InputDataError(name, "finite floating-point values", str(samples.dtype))
    return samples.detach()


def check_training_options(
    *,
    device: Any = None,
    mixed_precision: Any = None,
    lora_rank: Any = None,
    lora_alpha: Any = None,
    lora_targets: Any = DEFAULT_LORA_TARGETS,
    generator: Any = None,
) -> torch.device | None:
    """Check what :meth:`TrainingCopy.create` takes besides the models; returns the device (None stays None).

    Fine-tuners call it first, so that a bad option fails before any sampling or encoding.
    ``lora_alpha`` is checked even without ``lora_rank`` (where it is unused), and
    ``peft`` is required only with ``lora_rank``.
    """
    device = check_device("device", device) if device is not None else None
    check_bool("mixed_precision", mixed_precision, optional=True)
    if lora_rank is not None:
        check_int("lora_rank", lora_rank)
    if lora_alpha is not None:
        check_float("lora_alpha", lora_alpha, strict=True)
    if isinstance(lora_targets, (str, bytes)) or not isinstance(lora_targets, Sequence) \
            or not all(isinstance(t, str) for t in lora_targets):
        raise InputDataError("lora_targets", "a sequence of module names (not one str)",
                             repr(lora_targets) if isinstance(lora_targets, str) else lora_targets)
    check_generator("generator", generator, optional=True, cpu=True)
    if lora_rank is not None:
        require_peft()
    return device


def check_reference(model: DiffusionModel, reference: Any) -> None:
    """InputDataError unless ``reference`` is None or a DiffusionModel of ``model``'s sample shape, prediction
    type and training noise schedule: the loss compares their raw outputs at ``model``'s noisy inputs."""
    if reference is None:
        return
    if not isinstance(reference, DiffusionModel):
        raise InputDataError("reference", "a DiffusionModel", type(reference).__name__)
    if tuple(reference.sample_shape) != tuple(model.sample_shape):
        raise InputDataError("reference", f"a model of sample shape {model.sample_shape}",
                             tuple(reference.sample_shape))
    # Another prediction type (v for epsilon) or schedule: the regulariser / anchor pulled toward other quantities.
    if reference.prediction_type != model.prediction_type:
        raise InputDataError("reference", f"a model of prediction_type {model.prediction_type!r}",
                             repr(reference.prediction_type))
    mine, theirs = (m.scheduler.alphas_cumprod.detach().cpu().double() for m in (model, reference))
    if mine.shape != theirs.shape or not torch.allclose(mine, theirs, rtol=1e-5, atol=1e-8):
        raise InputDataError("reference", f"a model of the same training noise schedule ({mine.shape[0]} "
                             "timesteps, the same alphas_cumprod)", f"{theirs.shape[0]} timesteps"
                             + ("" if mine.shape != theirs.shape else " of other alphas_cumprod"))


def check_lora_targets(model: DiffusionModel, lora_targets: Sequence[str]) -> None:
    """InputDataError unless every name in ``lora_targets`` names modules of ``model``'s denoiser.

    Names match as peft matches them: a module's full name, or its last dotted parts
    (``"to_q"`` matches ``"...attn1.to_q"``). peft itself skips a name that matches
    nothing as long as another one does, so a typo would silently adapt less.
    """
    names = [name for name, _ in model.unet.named_modules() if name]
    missing = [t for t in lora_targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing or not lora_targets:
        leaves = sorted({n.rsplit(".", 1)[-1] for n, m in model.unet.named_modules()
                         if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))})
        shown = ", ".join(leaves[:12]) + (", ..." if len(leaves) > 12 else "")
        raise InputDataError("lora_targets", f"names of Linear / Conv modules of the denoiser (e.g. {shown})",
                             missing or list(lora_targets))


def warn_unused_lora_options(lora_rank: Any, lora_alpha: Any, lora_targets: Any) -> None:
    """A PapaBayesWarning when LoRA options are given without ``lora_rank`` (a full fine-tune ignores them)."""
    if lora_rank is not None:
        return
    unused = [name for name, given in (("lora_alpha", lora_alpha is not None),
                                       ("lora_targets", tuple(lora_targets) != DEFAULT_LORA_TARGETS)) if given]
    if unused:
        warnings.warn(f"{' and '.join(unused)} {'is' if len(unused) == 1 else 'are'} ignored without lora_rank "
                      "(a full fine-tune trains every weight).", PapaBayesWarning, stacklevel=caller_stacklevel())


def check_conditioning_rows(model: Any, n: int, what: str) -> None:
    """InputDataError unless a latent model's conditioning has 1 row or `n` (one per training sample)."""
    if not isinstance(model, LatentDiffusion):
        return
    for name in LatentDiffusion._CONDITIONING:
        check_rows(name, getattr(model, name), n, what)


def _with_rows(model: DiffusionModel, rows: Tensor | None) -> DiffusionModel:
    """``model`` conditioned on rows ``rows`` of its per-sample conditioning (itself without any)."""
    return model if rows is None else model.for_rows(rows)


def check_images(model: DiffusionModel, images: Any, *, name: str = "images") -> Tensor:
    """``images`` checked as :func:`encode_images` takes them, without encoding: `n x C x H x W` finite floats
    (a latent model's: its autoencoder's channels, any `h x w`), or InputDataError; far outside `[-1, 1]` warns.

    Fine-tuners call it before the other per-image checks (labels, conditioning rows), then
    :func:`encode_images` with ``checked=True``: a bad label should not cost an autoencoder pass.
    """
    if not isinstance(model, DiffusionModel):
        raise InputDataError("model", "a DiffusionModel", type(model).__name__)
    if not isinstance(model, LatentDiffusion):
        images = check_samples(name, images, model.sample_shape)
        _warn_unit_range(name, images)  # 0..255 or [0, 1] images: the model would learn (or unlearn) other images
        return images
    channels = int(getattr(model.vae.config, "in_channels", 3))
    if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] != channels:
        found = shape_of(images)
        raise InputDataError(name, f"a tensor of shape `n x {channels} x h x w`", found)
    factor = _downsampling(model.vae)
    hw = tuple(s * factor for s in model.sample_shape[1:]) if factor is not None else None
    if hw is not None and tuple(images.shape[2:]) != hw:  # else a pass of the autoencoder, or torch's conv error
        raise InputDataError(name, f"a tensor of shape `n x {channels} x {hw[0]} x {hw[1]}` (the latents' "
                             f"{model.sample_shape[1]} x {model.sample_shape[2]} times the autoencoder's "
                             f"downsampling {factor})", tuple(images.shape))
    images = check_samples(name, images, tuple(images.shape[1:]))
    _warn_unit_range(name, images)  # the autoencoder's input range is [-1, 1] too
    return images


def _downsampling(vae: Any) -> int | None:
    """An ``AutoencoderKL``'s image-to-latent downsampling (as diffusers' pipelines compute it); None for others."""
    from diffusers import AutoencoderKL

    blocks = getattr(getattr(vae, "config", None), "block_out_channels", None)
    if not isinstance(vae, AutoencoderKL) or not isinstance(blocks, (tuple, list)) or not blocks:
        return None
    return 2 ** (len(blocks) - 1)


def encode_images(model: DiffusionModel, images: Any, *, name: str = "images", batch_size: int = 64,
                  checked: bool = False) -> Tensor:
    """Clean diffused samples `n x C x H x W` of images (the identity for pixel models).

    Latent models encode with their autoencoder (the posterior mean, less the
    shift factor, times the scaling factor: the inverse of
    :meth:`~papa_bayes.diffusion.LatentDiffusion.decode`), ``batch_size`` (>= 1) images
    at a time, as Stable Diffusion training does. ``checked=True``: ``images`` come from :func:`check_images` (not
    checked, nor warned about, again).
    """
    if not checked:
        images = check_images(model, images, name=name)
    batch_size = check_int("batch_size", batch_size)
    if not isinstance(model, LatentDiffusion):
        return images
    vae = model.vae
    param = next(vae.parameters())
    with torch.no_grad():
        latents = (torch.cat([
            vae.encode(images[i:i + batch_size].to(param.device, param.dtype)).latent_dist.mean
            for i in range(0, images.shape[0], batch_size)
        ]) - model.shift_factor) * model.scaling_factor  # a shift_factor (SD3's, Flux's) was ignored
    if tuple(latents.shape[1:]) != model.sample_shape:
        raise InputDataError(name, f"images that encode to latents of shape {model.sample_shape}",
                             tuple(images.shape))
    return latents


# -- the trainable copy -----------------------------------------------------------
def require_peft() -> None:
    """Raise ModelError (with the install command) unless ``peft`` imports."""
    try:
        import peft  # noqa: F401
    except ImportError as err:
        raise ModelError("LoRA fine-tuning needs the `peft` package: `pip install peft` "
                         "(or pass lora_rank=None for a full fine-tune).") from err


def has_adapters(unet: torch.nn.Module) -> bool:
    """Whether adapters are injected into ``unet`` (peft, or diffusers' ``add_adapter`` / ``load_lora_adapter``)."""
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:  # without peft, nothing can have injected its layers
        return False
    return any(isinstance(m, BaseTunerLayer) for m in unet.modules())


def merge_adapters(unet: torch.nn.Module) -> torch.nn.Module:
    """Merge the adapters injected into ``unet`` into its weights and remove them, in place; returns ``unet``.

    The result computes what ``unet`` computed: active adapters are merged, disabled
    ones dropped, already merged (fused) ones unwrapped. A plain denoiser is returned as is.
    """
    if not has_adapters(unet):
        return unet
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [(name, m) for name, m in unet.named_modules() if isinstance(m, BaseTunerLayer)]
    for name, layer in layers:
        if not layer.disable_adapters and not layer.merged:
            layer.merge()
        parent, _, child = name.rpartition(".")
        setattr(unet.get_submodule(parent), child, layer.get_base_layer())
    # As diffusers' unload_lora: the model no longer holds adapters.
    if hasattr(unet, "peft_config"):
        del unet.peft_config
    if hasattr(unet, "_hf_peft_config_loaded"):
        unet._hf_peft_config_loaded = None
    return unet


def _frozen_on(model: DiffusionModel, device: torch.device) -> DiffusionModel:
    """``model`` itself when it is on ``device`` and in eval mode; else a frozen eval-mode copy of its denoiser there.

    A denoiser in train mode (dropout) would give a reference no seed fixes; the
    caller's model keeps its mode.
    """
    if same_device(model.device, device) and not any(m.training for m in model.unet.modules()):
        return model
    out = copy.copy(model)
    out.unet = copy.deepcopy(model.unet).to(device).eval().requires_grad_(False)
    return out


def _autocast(device: torch.device, enabled: bool):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16) if enabled else contextlib.nullcontext()


@dataclass
class TrainingCopy:
    """A trainable copy of a diffusion model, its reference, and how to train it.

    Build with :meth:`create`; call :meth:`output` / :meth:`reference_output` in a
    step function, :meth:`train` to run the loop, :meth:`finish` for the result.

    Attributes:
        model: the copy being trained (shallow copy of the base; own denoiser).
        base: the model it came from (never modified).
        reference: the frozen model the anchor / regulariser compares with.
        device: where training runs.
        mixed_precision: bf16 autocast on or off.
        lora: whether only LoRA adapters train.
        generator: CPU generator of batches, timesteps and noise.
    """

    model: DiffusionModel
    base: DiffusionModel
    reference: DiffusionModel | None
    device: torch.device
    mixed_precision: bool
    lora: bool
    generator: torch.Generator

    @classmethod
    def create(
        cls,
        base: DiffusionModel,
        *,
        reference: DiffusionModel | None = None,
        device: str | torch.device | None = None,
        mixed_precision: bool | None = None,
        lora_rank: int | None = None,
        lora_alpha: float | None = None,
        lora_targets: Sequence[str] = DEFAULT_LORA_TARGETS,
        generator: torch.Generator | None = None,
    ) -> TrainingCopy:
        """Copy ``base``'s denoiser (float32, trainable) to ``device``.

        Args:
            base: the model to fine-tune.
            reference: the frozen model of the anchor; ``base`` when None.
            device: training device; ``base.device`` when None.
            mixed_precision: bf16 autocast; None turns it on exactly on CUDA.
            lora_rank: train rank-``lora_rank`` LoRA adapters only (needs ``peft``);
                None fine-tunes every weight.
            lora_alpha: LoRA scaling numerator (> 0; ``lora_rank`` when None).
            lora_targets: names of the modules LoRA adapts (a sequence of str).
            generator: CPU generator; a fresh one seeded 0 when None.

        Raises:
            InputDataError: on a model or reference that is not a DiffusionModel (or
                of another sample shape, prediction type or noise schedule: see
                :func:`check_reference`), a bad option (see
                :func:`check_training_options`), or ``lora_targets`` that name no
                module of the denoiser (see :func:`check_lora_targets`).
        """
        if not isinstance(base, DiffusionModel):
            raise InputDataError("model", "a DiffusionModel", type(base).__name__)
        device = check_training_options(device=device, mixed_precision=mixed_precision, lora_rank=lora_rank,
                                        lora_alpha=lora_alpha, lora_targets=lora_targets, generator=generator)
        device = device if device is not None else base.device
        if lora_rank is not None:
            check_lora_targets(base, lora_targets)
        check_reference(base, reference)
        if mixed_precision is None:
            mixed_precision = device.type == "cuda"
        if generator is None:
            generator = torch.Generator().manual_seed(0)
        model = copy.copy(base)  # shallow: scheduler, autoencoder and conditioning are shared, never trained
        # torch.nn.Module.to: diffusers' own `to` warns about casting a loaded model.
        unet = torch.nn.Module.to(copy.deepcopy(base.unet), device=device, dtype=torch.float32)
        # Adapters the caller injected become part of the weights: LoRA would overwrite a "default"
        # adapter of theirs, and a full fine-tune would hand back peft layers that no checkpoint loads.
        unet = merge_adapters(unet)
        lora = lora_rank is not None
        if lora:
            unet = cls._add_lora(unet, rank=int(lora_rank), alpha=lora_alpha, targets=lora_targets,
                                 generator=generator, device=device)
        else:
            unet.requires_grad_(True)
        model.unet = unet.train()
        # With LoRA and no separate reference, the base output is the copy with adapters off.
        reference = reference if reference is not None else base
        ref = None if (lora and reference is base) else _frozen_on(reference, device)
        return cls(model, base, ref, device, bool(mixed_precision), lora, generator)

    @staticmethod
    def _add_lora(unet: torch.nn.Module, *, rank: int, alpha: float | None, targets: Sequence[str],
                  generator: torch.Generator, device: torch.device) -> torch.nn.Module:
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(r=rank, lora_alpha=float(alpha if alpha is not None else rank),
                            target_modules=list(targets), init_lora_weights="gaussian", lora_dropout=0.0)
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        # peft initialises adapters from the global RNG; seed it from ours, then restore it.
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            try:
                return get_peft_model(unet, config)
            except ValueError as err:
                raise ModelError(f"LoRA could not adapt modules {list(targets)}: {err}") from err

    # -- what step functions use ------------------------------------------------
    @property
    def alphas_cumprod(self) -> Tensor:
        """The scheduler's cumulative alphas, `T` float32 on the training device."""
        return self.base.scheduler.alphas_cumprod.to(device=self.device, dtype=torch.float32)

    @property
    def num_train_timesteps(self) -> int:
        """`T`: the scheduler's training timesteps."""
        return int(self.base.scheduler.config.num_train_timesteps)

    def parameters(self) -> list[torch.nn.Parameter]:
        """The denoiser's trainable parameters (all of them, or the LoRA adapters')."""
        return [p for p in self.model.unet.parameters() if p.requires_grad]

    def randint(self, low: int, high: int, n: int) -> Tensor:
        """`n` integers in [low, high) from the run's generator, on the training device."""
        return torch.randint(low, high, (n,), generator=self.generator).to(self.device)

    def noised(self, x0: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """``(x_t, target)``: `x0` noised to timesteps `t` and the denoiser's regression target."""
        # float32 whatever the default dtype: a float64 default drew other values (and other fine-tuned weights)
        noise = torch.randn(x0.shape, generator=self.generator, dtype=torch.float32).to(self.device)
        a = self.alphas_cumprod[t].view(-1, *([1] * (x0.ndim - 1)))
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
        return x_t, join_model_output(x0, noise, a, self.base.prediction_type)

    def output(self, x_t: Tensor, t: Tensor, rows: Tensor | None = None) -> Tensor:
        """The trained denoiser's float32 output (with gradient) at `b x C x H x W` ``x_t``.

        ``rows`` (`b` indices of the training samples in the batch) pick a latent
        model's per-sample conditioning rows; see :func:`check_conditioning_rows`.
        """
        with _autocast(self.device, self.mixed_precision):
            return _with_rows(self.model, rows).conditional_output(x_t, t).float()

    def reference_output(self, x_t: Tensor, t: Tensor, rows: Tensor | None = None) -> Tensor:
        """The frozen reference's float32 output (no gradient); ``rows`` as in :meth:`output`."""
        if self.reference is None:  # the copy in training, adapters off: without its dropout, as a frozen reference
            with torch.no_grad(), _autocast(self.device, self.mixed_precision), self.model.unet.disable_adapter(), \
                    eval_mode(self.model):
                return _with_rows(self.model, rows).conditional_output(x_t, t).float()
        # A float16 / bfloat16 reference runs in its own dtype: bf16 autocast over float16 weights fails
        # on CPU ("mixed dtype") and would only round a low-precision reference further.
        autocast = self.mixed_precision and self.reference.dtype == torch.float32
        with torch.no_grad(), _autocast(self.device, autocast):
            return _with_rows(self.reference, rows).conditional_output(x_t.to(self.reference.dtype), t).float()

    # -- the loop -----------------------------------------------------------------
    def train(
        self,
        step: Callable[[int], tuple[Tensor, dict[str, float]]],
        *,
        steps: int,
        lr: float,
        desc: str,
        progress_bar: bool,
        max_grad_norm: float = 1.0,
    ) -> list[dict[str, float]]:
        """Run ``steps`` AdamW steps of the loss ``step(i)`` returns.

        The learning rate warms up linearly over the first 5% of steps and decays
        by a half cosine to zero (the last weights then average a slow phase).

        Returns:
            One dict of logged values (``loss`` and the step's own) per step.

        Raises:
            InputDataError: unless ``steps`` is an integer >= 1 and ``lr`` and
                ``max_grad_norm`` finite numbers > 0, or when ``step`` returns other
                than a one-value loss tensor.
            ModelError: when the loss becomes NaN or infinite.
        """
        steps = check_int("steps", steps)
        lr = check_float("lr", lr, strict=True)
        max_grad_norm = check_float("max_grad_norm", max_grad_norm, strict=True)
        params = self.parameters()
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
        warmup = max(1, steps // 20)

        def factor(i: int) -> float:
            if i < warmup:
                return (i + 1) / warmup
            return 0.5 * (1 + math.cos(math.pi * (i - warmup) / max(1, steps - warmup)))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        history: list[dict[str, float]] = []
        running: float | None = None
        # A denoiser with dropout draws its masks from the global RNG: seed it from ours, then restore it.
        # The seed is read off a copy of our generator, so the batches, timesteps and noise stay as they were.
        seed = int(torch.randint(0, 2**62, (1,), generator=torch.Generator().set_state(self.generator.get_state())))
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(seed)
            # Closed when a step raises too (a NaN loss, a bad step): else the bar stays on screen, half drawn.
            with tqdm(range(steps), desc=desc, disable=not progress_bar, leave=False) as bar:
                for i in bar:
                    loss, logs = step(i)
                    if not isinstance(loss, Tensor) or loss.numel() != 1:
                        raise InputDataError("step", "a function returning (a one-value loss tensor, logs)",
                                             shape_of(loss))
                    if not bool(torch.isfinite(loss)):
                        raise ModelError(f"{desc}: the loss became {float(loss.detach())} at step {i}; "
                                         "lower the learning rate.")
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
                    opt.step()
                    sched.step()
                    value = float(loss.detach())
                    history.append({"loss": value, **logs})
                    running = value if running is None else 0.95 * running + 0.05 * value
                    if i % 10 == 0:
                        bar.set_postfix(loss=f"{running:.4g}")
        return history

    def finish(self) -> DiffusionModel:
        """The trained model: adapters merged, frozen, eval, on the base's device and dtype."""
        unet = self.model.unet
        if self.lora:
            unet = unet.merge_and_unload()
        unet = torch.nn.Module.to(unet, device=self.base.device, dtype=self.base.dtype)
        self.model.unet = unet.eval().requires_grad_(False)
        return self.model
