"""Our own DDIM / DDPM sampling loop, guided or not, that can return the trajectory.

Diffusers pipelines run under ``no_grad``; guidance needs gradients, and
fine-tuners need the trajectory, so the loop is ours. Each step:

1. the denoiser predicts; its output is converted to the predicted clean sample
   ``x0`` and noise ``eps`` (any ``prediction_type``);
2. when a :class:`~papa_bayes.diffusion.guidance.Guidance` acts at this step, it
   shifts ``x0`` by a normalized gradient of its objective and ``eps`` is re-derived
   from ``x_t`` so both stay consistent; the share of each shift that survives the
   scheduler's step (:func:`step_gains`, per scheduler and ``eta``) sets the
   guidance's normalizer, so that its scale is the total displacement whatever the
   number of steps and the scheduler;
3. the scheduler's own ``step`` moves ``x_t`` to the previous timestep.
"""

from __future__ import annotations

import hashlib
import inspect
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from papa_bayes.checks import (
    check_bool,
    check_finite,
    check_float,
    check_generator,
    check_int,
    renamed_option,
    shape_of,
)
from papa_bayes.diffusion.models import PREDICTION_TYPES, DiffusionModel, eval_mode, same_device
from papa_bayes.exceptions import InputDataError, ModelError

if TYPE_CHECKING:  # pragma: no cover
    from papa_bayes.diffusion.guidance import Guidance

__all__ = ["SamplerOutput", "sample", "split_model_output", "join_model_output", "step_gains", "guidance_generator"]

#: What :func:`sample` calls on a guidance.
_GUIDANCE_HOOKS = ("begin_trajectory", "begin_batch", "acts_at", "guide", "final_objective")


def _check_prediction_type(prediction_type: str) -> None:
    if prediction_type not in PREDICTION_TYPES:
        raise InputDataError("prediction_type", f"one of {PREDICTION_TYPES}", prediction_type)


@dataclass
class SamplerOutput:
    """What :func:`sample` returns (all detached).

    Attributes:
        images: `n x c x h x w` decoded images (pixel models: equal to ``samples``).
        samples: `n x C x H x W` final clean samples in the diffused space.
        timesteps: `T` long timesteps of the loop, in the order they ran.
        trajectory: `(T + 1) x n x C x H x W` states ``x_t`` before each step and the
            final sample, when asked for; else None.
        objective: `n` guidance objective of the final samples (None when unguided).
        guidance_norms: `T` mean norm of the x0 shift per step (zeros when unguided).
    """

    images: Tensor
    samples: Tensor
    timesteps: Tensor
    trajectory: Tensor | None = None
    objective: Tensor | None = None
    guidance_norms: Tensor = field(default_factory=lambda: torch.zeros(0))


def split_model_output(out: Tensor, x_t: Tensor, alpha_bar: Tensor, prediction_type: str) -> tuple[Tensor, Tensor]:
    """Predicted clean sample and noise from a denoiser output.

    Args:
        out: `n x C x H x W` model output.
        x_t: `n x C x H x W` noisy sample.
        alpha_bar: scalar cumulative alpha at the step.
        prediction_type: ``"epsilon"``, ``"sample"`` or ``"v_prediction"``.

    Returns:
        ``(x0, eps)``, each `n x C x H x W`.

    Raises:
        InputDataError: on another ``prediction_type``.
    """
    _check_prediction_type(prediction_type)
    a, b = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
    if prediction_type == "epsilon":
        return (x_t - b * out) / a, out
    if prediction_type == "sample":
        return out, (x_t - a * out) / b
    return a * x_t - b * out, a * out + b * x_t  # v_prediction


def join_model_output(x0: Tensor, eps: Tensor, alpha_bar: Tensor, prediction_type: str) -> Tensor:
    """Inverse of :func:`split_model_output`: the model output that means ``(x0, eps)``."""
    _check_prediction_type(prediction_type)
    if prediction_type == "epsilon":
        return eps
    if prediction_type == "sample":
        return x0
    return alpha_bar.sqrt() * eps - (1 - alpha_bar).sqrt() * x0


def step_gains(scheduler, alphas: Tensor, *, eta: float = 0.0) -> Tensor:
    """`T` share of a clean-sample shift at each step that survives into the next state.

    Shifting the predicted ``x0`` by ``delta`` with the noise re-derived from ``x_t``
    moves the next state ``x_prev`` by ``sqrt(a_prev) * kappa * delta``, i.e. its own
    clean-sample estimate by ``kappa * delta`` (``a`` the cumulative alphas at the
    step's timestep and at the one the scheduler steps to):

    - DDIM (Song et al. 2021, eq. 12): ``x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev - sigma^2) eps + sigma z``
      with ``sigma^2 = eta^2 (1 - a_prev) / (1 - a_t) (1 - a_t / a_prev)``, so
      ``kappa = 1 - sqrt((1 - a_prev - sigma^2) / a_prev) * sqrt(a_t / (1 - a_t))``
      (``1 - sqrt(SNR_t / SNR_prev)`` at ``eta = 0``);
    - DDPM (Ho et al. 2020, eq. 7): the posterior mean weighs ``x0`` by
      ``sqrt(a_prev) (1 - a_t / a_prev) / (1 - a_t)``, so
      ``kappa = (1 - a_t / a_prev) / (1 - a_t)`` (DDIM's at ``eta = 1``).

    Guidance divides by the sum of the gains of its steps, so that its scale is the
    total displacement per value, whatever the number of steps and the scheduler.

    Args:
        scheduler: a DDIM or DDPM scheduler after ``set_timesteps``.
        alphas: `num_train_timesteps` cumulative alphas of its noise schedule.
        eta: DDIM stochasticity in `[0, 1]`; ignored by DDPM (as by its ``step``).

    Returns:
        `T` gains in `[0, 1]` (float64, on the CPU), in the order of ``scheduler.timesteps``.

    Raises:
        InputDataError: on an ``eta`` outside `[0, 1]`.
    """
    from diffusers import DDPMScheduler

    eta = check_float("eta", eta, maximum=1.0, inclusive_maximum=True)
    alphas = alphas.detach().to("cpu", torch.float64)
    timesteps = scheduler.timesteps.detach().to("cpu").long()
    # The timestep each step goes to, as the scheduler's own `step` finds it, and the
    # cumulative alpha it reads there (past the first timestep: 1, or DDIM's final one).
    if isinstance(scheduler, DDPMScheduler):
        prev = [int(scheduler.previous_timestep(t)) for t in scheduler.timesteps]
        final = 1.0
    else:
        ratio = int(scheduler.config.num_train_timesteps) // int(scheduler.num_inference_steps)
        prev = (timesteps - ratio).tolist()
        final = float(getattr(scheduler, "final_alpha_cumprod", 1.0))
    a_t = alphas[timesteps]
    a_prev = torch.tensor([float(alphas[p]) if p >= 0 else final for p in prev], dtype=torch.float64)
    if isinstance(scheduler, DDPMScheduler):
        gains = (1 - a_t / a_prev) / (1 - a_t)
    else:
        variance = eta ** 2 * (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)
        gains = 1 - ((1 - a_prev - variance).clamp_min(0) / a_prev).sqrt() * (a_t / (1 - a_t)).sqrt()
    return gains.clamp(0, 1)


def guidance_generator(generator: torch.Generator | None) -> torch.Generator:
    """A generator for a guidance's own randomness (Thompson draws), derived from ``generator``'s state.

    The derived generator is seeded by a hash of the caller's current state (the
    global CPU one when ``generator`` is None), which it does not advance: the
    guidance's draws then neither shift the sampler's noise stream (so guidance that
    never acts reproduces unguided sampling, DDPM included) nor share its values
    (a copy of the state would correlate the draws with the initial noise).

    Args:
        generator: the sampler's generator, or None.

    Returns:
        A fresh torch.Generator on ``generator``'s device (the CPU when None).
    """
    state = generator.get_state() if generator is not None else torch.get_rng_state()
    digest = hashlib.sha256(b"papa_bayes.guidance" + state.cpu().numpy().tobytes()).digest()
    seed = int.from_bytes(digest[:8], "little") & (2**63 - 1)
    device = generator.device if generator is not None else torch.device("cpu")
    return torch.Generator(device=device).manual_seed(seed)


def _check_generator(generator: object, model: DiffusionModel) -> None:
    """InputDataError unless None or a torch.Generator on the CPU or on ``model``'s device."""
    check_generator("generator", generator, optional=True)
    # A generator elsewhere (a CUDA one for a CPU model, or on another GPU) would fail inside torch or diffusers,
    # mid-trajectory.
    if generator is not None and generator.device.type != "cpu" and not same_device(generator.device, model.device):
        raise InputDataError("generator", f"None or a torch.Generator on the CPU or on the model's device "
                             f"({model.device})", f"a generator on {generator.device}")


def check_sampling_arguments(model: Any, num_samples: Any, num_inference_steps: Any,
                             generator: Any) -> tuple[int, int]:
    """A sampling run's model, counts and generator, checked before any work: ``(num_samples, num_inference_steps)``.

    Raises:
        InputDataError: on a ``model`` that is not a DiffusionModel, counts that are
            not integers >= 1, a ``num_inference_steps`` whose timesteps would run past
            the last training timestep (a ``steps_offset``) or start in the lower half
            of the noise schedule, or a bad ``generator``.
    """
    if not isinstance(model, DiffusionModel):
        raise InputDataError("model", "a DiffusionModel (wrap a diffusers UNet2DModel and scheduler in PixelDiffusion)",
                             type(model).__name__)
    num_samples = check_int("num_samples", num_samples)
    num_inference_steps = check_inference_steps(model, num_inference_steps)
    _check_generator(generator, model)
    return num_samples, num_inference_steps


def check_inference_steps(model: DiffusionModel, value: Any, name: str = "num_inference_steps") -> int:
    """``value`` as a count of denoising steps ``model``'s scheduler can run, or InputDataError naming ``name``.

    The count must be an integer >= 1, at most the training timesteps (less a
    ``steps_offset``), and large enough that its first timestep lies in the upper
    half of them. Options that hold a step count (``pool_steps``) check it under
    their own name, when they are set rather than when they are first used.
    """
    steps = check_int(name, value)
    num_train = int(model.scheduler.config.num_train_timesteps)
    if steps > num_train:
        raise InputDataError(name, f"at most num_train_timesteps = {num_train}", steps)
    timesteps = _timesteps(model, steps)
    if int(timesteps.max()) >= num_train:  # a steps_offset shifts "leading" timesteps past the last one
        offset = int(model.scheduler.config.get("steps_offset", 0))
        raise InputDataError(name, f"at most num_train_timesteps - steps_offset = {num_train - offset} "
                             "with this scheduler", steps)
    if int(timesteps[0]) < num_train // 2:
        # The loop starts from pure noise at the first timestep: "leading" spacing puts a single step at
        # t = 0, where the denoiser reads the noise as an almost clean sample and returns it nearly unchanged.
        spacing = model.scheduler.config.get("timestep_spacing", "leading")
        raise InputDataError(name, f"a count whose first timestep lies in the upper half of the "
                             f"{num_train} training timesteps (at least 2 with timestep_spacing {spacing!r}; "
                             f"this count starts at t = {int(timesteps[0])})", steps)
    return steps


def _timesteps(model: DiffusionModel, num_inference_steps: int) -> Tensor:
    """`T` timesteps the model's scheduler runs for ``num_inference_steps``, in order (on the CPU)."""
    scheduler = model.new_scheduler()
    scheduler.set_timesteps(num_inference_steps)
    return scheduler.timesteps


def _initial_noise(shape: tuple[int, ...], generator: torch.Generator | None, device, dtype) -> Tensor:
    gen_device = generator.device if generator is not None else torch.device("cpu")
    return torch.randn(shape, generator=generator, device=gen_device, dtype=torch.float32).to(device, dtype)


def _step_noise_generators(generator: torch.Generator | None, num_samples: int) -> list[torch.Generator]:
    """One generator per sample for the noise of stochastic steps, derived from ``generator``'s state.

    The scheduler's ``step`` draws a batch's noise from a list of generators row by
    row (diffusers' ``randn_tensor``), so sample ``i`` gets the same noise whatever
    the batch it is denoised in. Sample ``i``'s generator is seeded by a hash of the
    caller's state (the global CPU one when ``generator`` is None) and ``i``, which
    does not advance it: the seeds were once drawn from ``generator`` after the
    `n`-sized initial noise, so sample ``i`` changed with ``num_samples``.
    """
    state = generator.get_state() if generator is not None else torch.get_rng_state()
    root = hashlib.sha256(b"papa_bayes.step_noise" + state.cpu().numpy().tobytes()).digest()
    device = generator.device if generator is not None else torch.device("cpu")
    seeds = (hashlib.sha256(root + i.to_bytes(8, "little")).digest() for i in range(num_samples))
    return [torch.Generator(device=device).manual_seed(int.from_bytes(d[:8], "little") & (2**63 - 1)) for d in seeds]


@renamed_option("progress", "progress_bar")
def sample(
    model: DiffusionModel,
    num_samples: int,
    *,
    num_inference_steps: int = 50,
    guidance: Guidance | None = None,
    generator: torch.Generator | None = None,
    eta: float = 0.0,
    batch_size: int = 256,
    initial_noise: Tensor | None = None,
    return_trajectory: bool = False,
    progress_bar: bool = True,
) -> SamplerOutput:
    """Draw samples with the model's scheduler (DDIM or DDPM), optionally guided.

    Args:
        model: the diffusion model (its device and dtype are used).
        num_samples: how many samples.
        num_inference_steps: denoising steps, at most the scheduler's
            ``num_train_timesteps`` (less its ``steps_offset``, if any), and enough
            that the first one lies in the upper half of the training timesteps (at
            least 2 with the default "leading" spacing, whose single step is t = 0).
        guidance: a :class:`~papa_bayes.diffusion.guidance.Guidance`; None samples
            the base model.
        generator: on the CPU or the model's device; seeds the initial noise,
            stochastic steps (DDPM, DDIM with ``eta > 0``: each sample's step noise
            from a generator of its own, derived from this one's state and the
            sample's index, so that sample ``i`` depends on neither ``batch_size``
            nor ``num_samples``) and any per-sample randomness of the
            guidance (Thompson draws, from :func:`guidance_generator`, which leaves
            the noise stream as unguided sampling draws it). Only the initial noise
            advances it. Same generator state, same samples (on the same device and
            library versions).
        eta: DDIM stochasticity in `[0, 1]` (0: deterministic DDIM, 1: DDPM's
            variance); ignored by DDPM.
        batch_size: samples denoised at once; the samples do not depend on it.
        initial_noise: `n x C x H x W` finite floating-point starting noise, instead of drawing it.
        return_trajectory: keep every ``x_t`` (for fine-tuners).
        progress_bar: show a tqdm bar.

    The networks run in eval mode (dropout off: a seed fixes the samples); a
    denoiser in train mode is back in it afterwards.

    Returns:
        A :class:`SamplerOutput`.

    Raises:
        InputDataError: on a ``model`` that is not a DiffusionModel, a
            ``num_samples``/``num_inference_steps``/``batch_size`` that is not an
            integer >= 1, more steps than training timesteps or too few to start
            in the upper half of them, an ``eta`` outside
            `[0, 1]`, an ``initial_noise`` of the wrong shape, not floating-point or not finite, a
            ``return_trajectory`` or ``progress_bar`` that is not True or False, a
            ``generator`` that is not a torch.Generator on the CPU or the model's
            device, or a ``guidance`` that is not a Guidance.
        ModelError: when the samples or decoded images come out NaN or infinite
            (instead of returning them).
    """
    from diffusers import DDPMScheduler

    num_samples, num_inference_steps = check_sampling_arguments(model, num_samples, num_inference_steps, generator)
    batch_size = check_int("batch_size", batch_size)
    # eta > 1 asks for a negative variance: NaN samples
    eta = check_float("eta", eta, maximum=1.0, inclusive_maximum=True)
    progress_bar = check_bool("progress_bar", progress_bar)
    # A truthy "no" kept every x_t, `(T + 1)` times the samples' memory.
    return_trajectory = check_bool("return_trajectory", return_trajectory)
    if guidance is not None and not all(callable(getattr(guidance, hook, None)) for hook in _GUIDANCE_HOOKS):
        raise InputDataError("guidance", "None or a Guidance", type(guidance).__name__)
    shape = (num_samples, *model.sample_shape)
    if initial_noise is not None:
        if not isinstance(initial_noise, Tensor) or tuple(initial_noise.shape) != shape:
            found = shape_of(initial_noise)
            raise InputDataError("initial_noise", f"a tensor of shape {shape}", found)
        if not initial_noise.is_floating_point():  # an integer or bool tensor was cast to the model's dtype silently
            raise InputDataError("initial_noise", "floating-point values", str(initial_noise.dtype))
        check_finite("initial_noise", initial_noise)
    device, dtype = model.device, model.dtype
    scheduler = model.new_scheduler()
    scheduler.set_timesteps(num_inference_steps, device=device)
    alphas = scheduler.alphas_cumprod.to(device=device, dtype=torch.float32)
    # Derived before any draw, from the generator as passed; neither advances `generator`, which moves by the
    # initial noise alone (whatever the scheduler), and sample i's step noise does not depend on num_samples.
    guidance_gen = guidance_generator(generator) if guidance is not None else None
    stochastic = isinstance(scheduler, DDPMScheduler) or eta > 0
    step_generators = _step_noise_generators(generator, num_samples) if stochastic else None
    if initial_noise is None:
        initial_noise = _initial_noise(shape, generator, device, dtype)
    if guidance is not None:
        guidance.begin_trajectory(step_gains(scheduler, alphas, eta=eta))
    step_kwargs = {"eta": eta} if "eta" in inspect.signature(scheduler.step).parameters else {}
    total = math.ceil(num_samples / batch_size) * len(scheduler.timesteps)
    # The bar closes when a step raises too (a guidance's error, a NaN feature): else it stays half drawn.
    with eval_mode(model), tqdm(total=total, desc="sampling", disable=not progress_bar, leave=False) as bar:
        return _sample_batches(model, scheduler, initial_noise, guidance, guidance_gen, step_generators,
                               step_kwargs, batch_size, return_trajectory, bar)


def _check_finite_samples(samples: Tensor, images: Tensor, start: int, prediction_type: str,
                          guidance: Guidance | None = None) -> None:
    """ModelError when a batch's final samples or decoded images hold NaN or infinite values."""
    scale = getattr(guidance, "scale", None)
    # A huge scale without a data range to stop its push (clamp=None, a latent model) overflowed silently too.
    guided = " or a diverged denoiser" if not isinstance(scale, (int, float)) or scale <= 0 else (
        f", a diverged denoiser, or a guidance scale too large for samples without a data range to hold them "
        f"(scale = {scale:g}, clamp = {getattr(guidance, 'clamp', None)!r})")
    for what, values in (("samples", samples), ("decoded images", images)):
        if not bool(torch.isfinite(values).all()):
            raise ModelError(
                f"The sampler produced NaN or infinite {what} (batch from sample {start}), with prediction_type "
                f"{prediction_type!r}. Causes: a zero-terminal-SNR schedule with epsilon prediction, an overflow "
                f"in float16 (sample in float32){guided}.")


def _sample_batches(model: DiffusionModel, scheduler: Any, initial_noise: Tensor, guidance: Guidance | None,
                    guidance_gen: torch.Generator | None, step_generators: list[torch.Generator] | None,
                    step_kwargs: dict[str, Any], batch_size: int, return_trajectory: bool,
                    bar: Any) -> SamplerOutput:
    """The loop of :func:`sample`, on checked arguments, batch by batch."""
    device, dtype = model.device, model.dtype
    num_samples = initial_noise.shape[0]
    timesteps = scheduler.timesteps
    alphas = scheduler.alphas_cumprod.to(device=device, dtype=torch.float32)
    images, samples, trajectories, objectives = [], [], [], []
    norms = torch.zeros(len(timesteps), dtype=torch.float64)
    for start in range(0, num_samples, batch_size):
        x = initial_noise[start:start + batch_size].to(device, dtype)
        batch_model = model.for_samples(start, start + x.shape[0], num_samples)  # per-sample conditioning sliced
        batch_generators = None if step_generators is None else step_generators[start:start + x.shape[0]]
        if guidance is not None:
            guidance.begin_batch(x.shape[0], generator=guidance_gen, device=device)
        traj = [x.detach()] if return_trajectory else None
        for i, t in enumerate(timesteps):
            a_t = alphas[t]
            if guidance is not None and guidance.acts_at(i, len(timesteps)):
                x0, eps, shift = guidance.guide(batch_model, x, t, a_t, step=i, num_steps=len(timesteps))
                norms[i] += float(shift.flatten(1).norm(dim=1).sum())
            else:
                with torch.no_grad():
                    x0, eps = split_model_output(batch_model.model_output(x, t), x, a_t, model.prediction_type)
            out = join_model_output(x0, eps, a_t, model.prediction_type).to(dtype)
            x = scheduler.step(out, t, x, generator=batch_generators, **step_kwargs).prev_sample.detach()
            if traj is not None:
                traj.append(x)
            bar.update(1)
        with torch.no_grad():
            decoded = batch_model.decode(x)
        _check_finite_samples(x, decoded, start, model.prediction_type, guidance)
        samples.append(x)
        images.append(decoded.detach())
        if traj is not None:
            trajectories.append(torch.stack(traj))
        if guidance is not None:
            objectives.append(guidance.final_objective(batch_model, x))
    return SamplerOutput(
        images=torch.cat(images),
        samples=torch.cat(samples),
        timesteps=timesteps.detach().cpu().long(),
        trajectory=torch.cat(trajectories, dim=1) if return_trajectory else None,
        objective=torch.cat(objectives) if objectives else None,
        guidance_norms=norms / num_samples,
    )
