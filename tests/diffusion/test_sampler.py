from __future__ import annotations

import pytest
import torch

from papa_bayes.diffusion import sample
from papa_bayes.diffusion.sampler import join_model_output, split_model_output
from papa_bayes.exceptions import InputDataError


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_same_generator_same_samples_and_trajectory(pixel_model):
    a = sample(pixel_model, 6, num_inference_steps=4, generator=gen(3), progress_bar=False, return_trajectory=True)
    b = sample(pixel_model, 6, num_inference_steps=4, generator=gen(3), progress_bar=False, return_trajectory=True)
    c = sample(pixel_model, 6, num_inference_steps=4, generator=gen(4), progress_bar=False)
    assert torch.equal(a.images, b.images)
    assert not torch.allclose(a.images, c.images)
    assert a.trajectory.shape == (5, 6, 1, 8, 8)
    assert torch.equal(a.trajectory[-1], a.samples)
    assert a.timesteps.shape == (4,) and bool((a.timesteps[:-1] > a.timesteps[1:]).all())
    assert a.objective is None


def test_batching_does_not_change_samples(pixel_model):
    whole = sample(pixel_model, 6, num_inference_steps=3, generator=gen(0), progress_bar=False)
    parts = sample(pixel_model, 6, num_inference_steps=3, generator=gen(0), batch_size=4, progress_bar=False)
    torch.testing.assert_close(whole.images, parts.images, atol=1e-5, rtol=1e-5)


def test_ddpm_is_stochastic_but_seeded(make_pixel_model):
    model = make_pixel_model("ddpm")
    a = sample(model, 4, num_inference_steps=3, generator=gen(1), progress_bar=False)
    b = sample(model, 4, num_inference_steps=3, generator=gen(1), progress_bar=False)
    noise = torch.randn(4, 1, 8, 8, generator=gen(9))
    c = sample(model, 4, num_inference_steps=3, generator=gen(1), initial_noise=noise, progress_bar=False)
    d = sample(model, 4, num_inference_steps=3, generator=gen(2), initial_noise=noise, progress_bar=False)
    assert torch.equal(a.images, b.images)
    assert not torch.allclose(c.images, d.images)  # same start, different step noise


@pytest.mark.parametrize("ptype", ["epsilon", "sample", "v_prediction"])
def test_model_output_split_join_round_trip(ptype):
    x_t, out = torch.randn(3, 1, 8, 8), torch.randn(3, 1, 8, 8)
    a = torch.tensor(0.3)
    x0, eps = split_model_output(out, x_t, a, ptype)
    torch.testing.assert_close(a.sqrt() * x0 + (1 - a).sqrt() * eps, x_t)  # consistent with x_t
    torch.testing.assert_close(join_model_output(x0, eps, a, ptype), out)


@pytest.mark.parametrize("ptype", ["sample", "v_prediction"])
def test_other_prediction_types_sample(make_pixel_model, ptype):
    out = sample(make_pixel_model(prediction_type=ptype), 3, num_inference_steps=3, generator=gen(), progress_bar=False)
    assert out.images.shape == (3, 1, 8, 8) and bool(torch.isfinite(out.images).all())


@pytest.mark.parametrize("kwargs", [{"num_samples": 0}, {"num_inference_steps": 0}, {"batch_size": -1},
                                    {"initial_noise": torch.zeros(2, 1, 8, 8)}])
def test_bad_sampler_input_raises(pixel_model, kwargs):
    args = {"num_samples": 3, "num_inference_steps": 2, **kwargs}
    with pytest.raises(InputDataError):
        sample(pixel_model, args.pop("num_samples"), progress_bar=False, **args)


@pytest.mark.parametrize(("field", "kwargs"), [("eta", {"eta": 1.5}), ("eta", {"eta": -0.1}),
                                               ("eta", {"eta": float("nan")}),
                                               ("num_inference_steps", {"num_inference_steps": 1001})])
def test_eta_and_step_count_are_checked(pixel_model, field, kwargs):
    with pytest.raises(InputDataError, match=f"^{field}:"):
        sample(pixel_model, 2, progress_bar=False, **{"num_inference_steps": 2, **kwargs})
    ddim = sample(pixel_model, 2, num_inference_steps=3, eta=1.0, generator=gen(0), progress_bar=False)
    assert bool(torch.isfinite(ddim.images).all())


@pytest.mark.parametrize(("field", "kwargs"), [
    ("num_samples", {"num_samples": True}),  # was a TypeError from torch.randn
    ("num_inference_steps", {"num_inference_steps": True}),  # was one step, silently
    ("batch_size", {"batch_size": True}),  # was batches of one, silently
    ("eta", {"eta": "0.5"}),  # was a TypeError from the scheduler
    ("eta", {"eta": None}),
    ("initial_noise", {"initial_noise": [[0.0]]}),  # was AttributeError
    ("initial_noise", {"initial_noise": torch.full((2, 1, 8, 8), float("nan"))}),  # was NaN samples
    ("generator", {"generator": 0}),  # was AttributeError
    ("guidance", {"guidance": lambda images: images.sum((1, 2, 3))}),  # was AttributeError
    ("model", {"model": "unet"}),  # was AttributeError
])
def test_sampler_arguments_are_ours_to_reject(pixel_model, field, kwargs):
    args = {"model": pixel_model, "num_samples": 2, "num_inference_steps": 2, **kwargs}
    with pytest.raises(InputDataError, match=f"^{field}:"):
        sample(args.pop("model"), args.pop("num_samples"), progress_bar=False, **args)


def test_unknown_prediction_type_is_not_read_as_v_prediction():
    x, a = torch.randn(2, 1, 8, 8), torch.tensor(0.5)
    with pytest.raises(InputDataError, match="^prediction_type:"):
        split_model_output(x, x, a, "eps")
    with pytest.raises(InputDataError, match="^prediction_type:"):
        join_model_output(x, x, a, "v")


class _CudaGenerator(torch.Generator):
    """A CPU generator that reports a CUDA device (this machine may have none)."""

    @property
    def device(self) -> torch.device:
        return torch.device("cuda")


def test_generator_on_another_device_than_the_model_is_ours_to_reject(pixel_model):
    # was a RuntimeError from torch.randn (no CUDA), or diffusers' ValueError at the first DDPM step
    with pytest.raises(InputDataError, match="^generator:.*model's device"):
        sample(pixel_model, 2, num_inference_steps=2, generator=_CudaGenerator(), progress_bar=False)


def test_a_generator_on_another_gpu_than_the_model_is_ours_to_reject(pixel_model):
    """Only the device type was compared: a generator on cuda:1 passed for a model on cuda:0 and failed in torch."""
    import copy

    from papa_bayes.diffusion import PixelDiffusion

    class OnFirstGpu(PixelDiffusion):
        @property
        def device(self) -> torch.device:
            return torch.device("cuda:0")

    class SecondGpuGenerator(torch.Generator):
        @property
        def device(self) -> torch.device:
            return torch.device("cuda:1")

    model = copy.copy(pixel_model)
    model.__class__ = OnFirstGpu
    with pytest.raises(InputDataError, match=r"^generator:.*model's device \(cuda:0\).*cuda:1"):
        sample(model, 2, num_inference_steps=2, generator=SecondGpuGenerator(), progress_bar=False)


def test_steps_past_the_last_timestep_by_a_steps_offset_are_ours_to_reject(pixel_model):
    from diffusers import DDIMScheduler

    from papa_bayes.diffusion import PixelDiffusion

    shifted = PixelDiffusion(pixel_model.unet, DDIMScheduler.from_config(pixel_model.scheduler.config, steps_offset=1))
    with pytest.raises(InputDataError, match="^num_inference_steps:.*999"):  # was IndexError from alphas[t]
        sample(shifted, 1, num_inference_steps=1000, progress_bar=False)
    assert sample(shifted, 1, num_inference_steps=2, progress_bar=False).timesteps.max() < 1000


@pytest.mark.parametrize("name", ["EulerDiscreteScheduler", "PNDMScheduler", "LCMScheduler"])
def test_schedulers_the_sampler_cannot_drive_are_refused_when_the_model_is_built(pixel_model, name):
    # were IndexError (Euler: float sigmas as timesteps) / TypeError (PNDM: no generator) mid-sampling,
    # and garbage samples (LCM: consistency steps), silently
    import diffusers

    from papa_bayes.diffusion import PixelDiffusion
    from papa_bayes.exceptions import ModelError

    scheduler = getattr(diffusers, name).from_config(pixel_model.scheduler.config)
    with pytest.raises(ModelError, match=f"{name} is not supported.*DDIMScheduler"):
        PixelDiffusion(pixel_model.unet, scheduler)


def test_a_schedule_without_training_timesteps_is_refused(pixel_model):
    from diffusers import DDIMScheduler

    from papa_bayes.diffusion import DIGITS_SCHEDULER_CONFIG, PixelDiffusion, make_sampling_scheduler
    from papa_bayes.exceptions import ModelError

    # was "num_inference_steps: expected at most num_train_timesteps = 0" at sampling time
    with pytest.raises(ModelError, match="num_train_timesteps"):
        PixelDiffusion(pixel_model.unet, DDIMScheduler(num_train_timesteps=0))
    with pytest.raises(InputDataError, match="^config:.*num_train_timesteps"):  # was a scheduler with no alphas
        make_sampling_scheduler({**DIGITS_SCHEDULER_CONFIG, "num_train_timesteps": 0})
    with pytest.raises(InputDataError, match="^config:.*prediction_type"):  # was accepted; PixelDiffusion refused it
        make_sampling_scheduler({**DIGITS_SCHEDULER_CONFIG, "prediction_type": "foo"})


def test_progress_flags_are_true_or_false_everywhere(pixel_model, tmp_path):
    """``progress_bar="no"`` was read by its truthiness (a bar shown); now refused under its name, before any work."""
    from papa_bayes.diffusion import (
        DiffusionCandidates,
        Guidance,
        ManifoldGuard,
        PCAFeatures,
        distill_guidance,
        finetune_on_samples,
        papa_finetune,
        sample_preferred,
        select_guidance_scale,
        select_recommendation_scale,
    )
    from papa_bayes.diffusion.train import fit_default_features, train_base_model

    images = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    guidance = Guidance(lambda x: x.sum((1, 2, 3)))
    guard, phi = ManifoldGuard(images), PCAFeatures.fit(images, num_features=2)
    calls = [
        lambda bad: sample(pixel_model, 2, progress_bar=bad),
        lambda bad: sample_preferred(pixel_model, 2, progress_bar=bad),
        lambda bad: select_guidance_scale(pixel_model, guidance, guard, progress_bar=bad),
        lambda bad: select_recommendation_scale(pixel_model, guidance, score=lambda x: x, progress_bar=bad),
        lambda bad: DiffusionCandidates(pixel_model, phi, guard, progress_bar=bad),
        lambda bad: train_base_model(tmp_path / "base", steps=1, progress_bar=bad),
        lambda bad: fit_default_features(tmp_path / "base", progress_bar=bad),
        lambda bad: finetune_on_samples(pixel_model, images, steps=1, progress_bar=bad),
        lambda bad: distill_guidance(pixel_model, guidance, num_samples=2, steps=1, progress_bar=bad),
        lambda bad: papa_finetune(pixel_model, images[:2], [1, -1], steps=1, progress_bar=bad),
    ]
    for fn in calls:
        for bad in ("no", 2, None):
            with pytest.raises(InputDataError, match="^progress_bar: expected True or False"):
                fn(bad)
    assert not (tmp_path / "base").exists()  # train_base_model refused before writing


class _ZeroNoiseDenoiser(torch.nn.Module):
    """Predicts zero noise everywhere: the state's clean estimate ``x_t / sqrt(a_t)`` is carried through unchanged,
    so whatever guidance adds to the final sample is exactly what its shifts left after each scheduler step."""

    def __init__(self) -> None:
        super().__init__()
        from types import SimpleNamespace

        self.config = SimpleNamespace(sample_size=4, in_channels=1, cross_attention_dim=None)
        self.anchor = torch.nn.Parameter(torch.zeros(()), requires_grad=False)  # gives the model a device and dtype

    def forward(self, x, t):
        from types import SimpleNamespace

        return SimpleNamespace(sample=torch.zeros_like(x))


@pytest.mark.parametrize("num_inference_steps", [10, 50])
@pytest.mark.parametrize(("kind", "eta"), [("ddim", 0.0), ("ddpm", 0.0), ("ddim", 0.5), ("ddim", 1.0)])
def test_guidance_scale_is_the_total_shift_per_value_whatever_the_scheduler(kind, eta, num_inference_steps):
    """Was 1.375 (DDPM, 10 steps), 1.626 (DDPM, 50), 1.079 (DDIM eta 0.5): DDIM's eta-0 gain was used for all."""
    from papa_bayes.diffusion import Guidance, PixelDiffusion, make_sampling_scheduler

    model = PixelDiffusion(_ZeroNoiseDenoiser(), make_sampling_scheduler(kind=kind))
    guidance = Guidance(lambda x: x.flatten(1).sum(1), scale=1.0, window=(0.0, 1.0), clamp=None)
    kw = dict(num_inference_steps=num_inference_steps, eta=eta, progress_bar=False)
    guided = sample(model, 3, guidance=guidance, generator=gen(0), **kw).samples
    plain = sample(model, 3, generator=gen(0), **kw).samples  # same noise: the difference is the guidance's
    shift = guided - plain
    torch.testing.assert_close(shift, torch.ones_like(shift), atol=1e-3, rtol=0)


@pytest.mark.parametrize(("kind", "eta"), [("ddpm", 0.0), ("ddim", 1.0)])
def test_thompson_guidance_that_never_acts_samples_as_unguided(make_pixel_model, make_posterior, kind, eta):
    """Thompson draws came from the sampler's generator even at scale 0 and shifted the noise of every DDPM step."""
    from papa_bayes.diffusion import Guidance, PCAFeatures, PosteriorObjective

    model = make_pixel_model(kind)
    pca = PCAFeatures.fit(torch.randn(16, 1, 8, 8, generator=gen(1)), num_features=3)
    objective = PosteriorObjective(make_posterior(torch.randn(8, 3, generator=gen(2))), pca, kind="thompson")
    kw = dict(num_inference_steps=3, eta=eta, batch_size=2, progress_bar=False)
    guided = sample(model, 4, guidance=Guidance(objective, scale=0.0), generator=gen(3), **kw)
    plain = sample(model, 4, generator=gen(3), **kw)
    assert torch.equal(guided.images, plain.images)
    again = sample(model, 4, guidance=Guidance(objective, scale=1.0), generator=gen(3), **kw)  # acting: still seeded
    assert torch.equal(again.images, sample(model, 4, guidance=Guidance(objective, scale=1.0), generator=gen(3),
                                            **kw).images)


def test_guidance_generator_is_fixed_by_the_callers_state_and_leaves_it_alone():
    from papa_bayes.diffusion.sampler import guidance_generator

    caller = gen(4)
    state = caller.get_state()
    first = torch.randint(0, 1000, (8,), generator=guidance_generator(caller))
    assert torch.equal(caller.get_state(), state)  # not advanced
    assert torch.equal(first, torch.randint(0, 1000, (8,), generator=guidance_generator(gen(4))))
    assert not torch.equal(first, torch.randint(0, 1000, (8,), generator=guidance_generator(gen(5))))


def test_a_single_leading_step_is_ours_to_reject(make_pixel_model):
    """One step of "leading" spacing ran at t = 0 only and returned almost the starting noise."""
    from diffusers import DDIMScheduler

    from papa_bayes.diffusion import PixelDiffusion
    from papa_bayes.diffusion.sampler import check_sampling_arguments

    for kind in ("ddim", "ddpm"):
        model = make_pixel_model(kind)
        with pytest.raises(InputDataError, match="^num_inference_steps:.*upper half.*t = 0"):
            sample(model, 2, num_inference_steps=1, progress_bar=False)
        with pytest.raises(InputDataError, match="^num_inference_steps:"):  # the scale rules check the same way
            check_sampling_arguments(model, 2, 1, None)
        assert sample(model, 2, num_inference_steps=2, progress_bar=False).timesteps[0] >= 500
    # "trailing" spacing puts a single step at the last timestep: a valid (if coarse) sampler
    trailing = PixelDiffusion(model.unet, DDIMScheduler.from_config(model.scheduler.config,
                                                                    timestep_spacing="trailing"))
    assert sample(trailing, 2, num_inference_steps=1, progress_bar=False).timesteps.tolist() == [999]


@pytest.mark.parametrize(("kind", "eta"), [("ddpm", 0.0), ("ddim", 0.5), ("ddim", 1.0)])
def test_stochastic_samples_do_not_depend_on_the_batch_size(make_pixel_model, kind, eta):
    """The step noise was drawn per batch: sample i changed with batch_size (only the initial noise did not)."""
    model = make_pixel_model(kind)
    kw = dict(num_inference_steps=3, eta=eta, progress_bar=False)
    whole = sample(model, 5, generator=gen(7), **kw).samples
    for batch_size in (1, 2, 3):
        parts = sample(model, 5, generator=gen(7), batch_size=batch_size, **kw).samples
        torch.testing.assert_close(parts, whole, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(whole, sample(model, 5, generator=gen(8), **kw).samples)


def test_deterministic_sampling_leaves_the_generator_where_the_initial_noise_left_it(pixel_model):
    """No step noise is drawn at eta 0: the caller's stream advances by the initial noise alone."""
    generator = gen(3)
    sample(pixel_model, 4, num_inference_steps=3, generator=generator, progress_bar=False)
    reference = gen(3)
    torch.randn(4, 1, 8, 8, generator=reference)
    assert torch.equal(generator.get_state(), reference.get_state())


def test_sampling_runs_the_denoiser_in_eval_mode_and_restores_its_mode(make_pixel_model):
    """A denoiser left in train mode sampled with dropout: the same seed gave other samples each call."""
    model = make_pixel_model(dropout=0.5)
    model.unet.train()
    model.unet.mid_block.eval()  # a mixed state: each module's own mode comes back
    kw = dict(num_inference_steps=3, progress_bar=False)
    a = sample(model, 3, generator=gen(0), **kw).samples
    b = sample(model, 3, generator=gen(0), **kw).samples
    assert torch.equal(a, b)
    assert model.unet.training and not model.unet.mid_block.training
    assert all(m.training for name, m in model.unet.named_modules() if not name.startswith("mid_block"))
    model.unet.eval()
    torch.testing.assert_close(sample(model, 3, generator=gen(0), **kw).samples, a)


def test_learned_variance_denoisers_are_refused_when_the_model_is_built(make_pixel_model):
    """A DDPM scheduler with learned variance (a denoiser of 2 x C outputs) sampled garbage, silently."""
    from diffusers import DDPMScheduler

    from papa_bayes.diffusion import PixelDiffusion, make_digits_unet
    from papa_bayes.exceptions import ModelError

    wide = make_digits_unet(block_out_channels=(8, 16), norm_num_groups=4, out_channels=2)  # noise and variance
    for variance_type in ("learned", "learned_range"):
        with pytest.raises(ModelError, match=f"variance_type {variance_type!r}.*not supported"):
            PixelDiffusion(wide, DDPMScheduler(variance_type=variance_type, clip_sample=False))
    with pytest.raises(ModelError, match="out_channels = 2.*in_channels = 1"):  # was a raw broadcast error
        PixelDiffusion(wide, DDPMScheduler(clip_sample=False))
    narrow = make_pixel_model().unet
    with pytest.raises(ModelError, match="variance_type 'learned_range'"):
        PixelDiffusion(narrow, DDPMScheduler(variance_type="learned_range", clip_sample=False))
    for variance_type in ("fixed_small", "fixed_large"):  # the fixed variances stay supported
        model = PixelDiffusion(narrow, DDPMScheduler(variance_type=variance_type, clip_sample=False))
        assert bool(torch.isfinite(sample(model, 2, num_inference_steps=3, progress_bar=False).samples).all())


def test_the_progress_bar_is_closed_when_a_guided_step_raises(pixel_model, recorded_bars):
    """The sampling bar was closed after the loop only: a guidance that raised left it open (half drawn, in a
    notebook for as long as the traceback lived)."""
    import papa_bayes.diffusion.sampler as sampler

    bars = recorded_bars(sampler)

    class FailingGuidance:  # what sample() calls on a guidance; guide() fails at the first step
        def begin_trajectory(self, gains):
            pass

        def begin_batch(self, n, *, generator, device):
            pass

        def acts_at(self, step, num_steps):
            return True

        def guide(self, *args, **kwargs):
            raise RuntimeError("the guidance failed")

        def final_objective(self, model, x):
            pass

    with pytest.raises(RuntimeError, match="the guidance failed"):
        sample(pixel_model, 2, num_inference_steps=3, guidance=FailingGuidance(), generator=gen(0))
    assert len(bars) == 1 and bars[0].was_closed


@pytest.mark.parametrize("flag", ["no", "False", 2, None])
def test_return_trajectory_is_true_or_false(pixel_model, flag):
    """return_trajectory="no" was truthy: every x_t was kept, `(T + 1)` times the samples' memory, silently."""
    with pytest.raises(InputDataError, match="^return_trajectory: expected True or False") as info:
        sample(pixel_model, 2, num_inference_steps=2, return_trajectory=flag, progress_bar=False)
    assert info.value.field == "return_trajectory"
    assert sample(pixel_model, 2, num_inference_steps=2, return_trajectory=1, progress_bar=False).trajectory is not None


@pytest.mark.parametrize("kind", ["ddim", "ddpm"])
def test_noise_prediction_on_a_zero_terminal_snr_schedule_is_refused(make_pixel_model, kind):
    """A zero-terminal-SNR schedule with epsilon prediction gave NaN images silently ("trailing": the first step
    divides by sqrt(alphas_cumprod[-1]) = 0); v-prediction is what such schedules need."""
    from diffusers import DDIMScheduler, DDPMScheduler

    from papa_bayes.diffusion import PixelDiffusion
    from papa_bayes.exceptions import ModelError

    cls = DDIMScheduler if kind == "ddim" else DDPMScheduler
    zero_snr = dict(rescale_betas_zero_snr=True, timestep_spacing="trailing", clip_sample=False)
    unet = make_pixel_model(kind).unet
    with pytest.raises(ModelError, match="zero signal-to-noise.*v_prediction"):
        PixelDiffusion(unet, cls(**zero_snr))
    v_model = PixelDiffusion(unet, cls(prediction_type="v_prediction", **zero_snr))
    out = sample(v_model, 2, num_inference_steps=4, generator=gen(0), progress_bar=False)
    assert bool(torch.isfinite(out.images).all())
    swapped = make_pixel_model(kind)
    swapped.scheduler = cls(**zero_snr)  # after the model's check: the sampler refuses the NaN samples themselves
    with pytest.raises(ModelError, match="NaN or infinite samples"):
        sample(swapped, 2, num_inference_steps=4, generator=gen(0), progress_bar=False)


@pytest.mark.parametrize(("kind", "eta"), [("ddpm", 0.0), ("ddim", 0.5)])
def test_stochastic_samples_do_not_depend_on_the_number_of_samples(make_pixel_model, kind, eta):
    """The step-noise seeds were drawn from the generator after the `n`-sized initial noise: sample 0 of a
    4-sample DDPM run differed from sample 0 of an 8-sample one (DDIM at eta 0 kept them, drawing no step noise)."""
    model = make_pixel_model(kind)
    kw = dict(num_inference_steps=3, eta=eta, progress_bar=False)
    few = sample(model, 4, generator=gen(7), **kw).samples
    many = sample(model, 8, generator=gen(7), **kw).samples
    torch.testing.assert_close(few, many[:4], atol=1e-5, rtol=1e-5)
    generator = gen(3)  # as at eta 0: the caller's stream advances by the initial noise alone
    sample(model, 4, generator=generator, **kw)
    reference = gen(3)
    torch.randn(4, 1, 8, 8, generator=reference)
    assert torch.equal(generator.get_state(), reference.get_state())
