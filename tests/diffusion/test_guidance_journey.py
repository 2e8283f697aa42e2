"""A diffusers user's journey through guided sampling: what is refused up front, what warns, what reproduces."""

from __future__ import annotations

import importlib.util
import sys
import warnings
from pathlib import Path

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from papa_bayes.diffusion import Guidance, PixelDiffusion, make_digits_unet, sample
from papa_bayes.exceptions import InputDataError, ModelError, PapaBayesWarning

_SMALL_UNET = {"block_out_channels": (8, 16), "layers_per_block": 1, "norm_num_groups": 4,
               "down_block_types": ("DownBlock2D", "DownBlock2D"), "up_block_types": ("UpBlock2D", "UpBlock2D")}


def _unet(**overrides):
    torch.manual_seed(0)
    return make_digits_unet(**{**_SMALL_UNET, **overrides}).eval().requires_grad_(False)


def test_score_sde_unet_is_refused_when_wrapped():
    """A fourier (score-SDE) UNet divides its output by the timestep: NaN samples, reported only after sampling."""
    unet = _unet(time_embedding_type="fourier")
    with pytest.raises(InputDataError, match=r"^unet: expected a denoiser of discrete timesteps.*'fourier'"):
        PixelDiffusion(unet, DDIMScheduler(clip_sample=False))


def test_learned_time_embedding_shorter_than_the_schedule_is_refused_when_wrapped():
    """A 100-row learned embedding under a 1000-step schedule failed at the first step with torch's IndexError."""
    unet = _unet(time_embedding_type="learned", num_train_timesteps=100)
    with pytest.raises(InputDataError, match=r"^unet: .*num_train_timesteps >= 1000\), got num_train_timesteps = 100"):
        PixelDiffusion(unet, DDIMScheduler(clip_sample=False))
    # One row per training timestep is what the sampler needs, and it samples.
    model = PixelDiffusion(unet, DDIMScheduler(num_train_timesteps=100, clip_sample=False))
    out = sample(model, 2, num_inference_steps=3, progress_bar=False, generator=torch.Generator().manual_seed(0))
    assert bool(torch.isfinite(out.images).all())


def test_objective_with_zero_gradient_warns_that_nothing_is_guided(pixel_model):
    """A feature map through round() has a gradient of 0 everywhere: guidance did nothing, silently."""
    model = pixel_model
    flat = Guidance(lambda images: torch.round(images * 4).sum((1, 2, 3)), scale=1.0, window=(0.0, 1.0))
    with pytest.warns(PapaBayesWarning, match="gradient is zero for every sample .* step 0 of 4") as record:
        sample(model, 2, num_inference_steps=4, guidance=flat, progress_bar=False,
               generator=torch.Generator().manual_seed(0))
    assert len([w for w in record if issubclass(w.category, PapaBayesWarning)]) == 1  # once per trajectory
    assert record[0].filename == __file__  # points at the user's call
    smooth = Guidance(lambda images: images.sum((1, 2, 3)), scale=1.0, window=(0.0, 1.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error", PapaBayesWarning)
        sample(model, 2, num_inference_steps=4, guidance=smooth, progress_bar=False,
               generator=torch.Generator().manual_seed(0))


def test_overflowing_guidance_names_its_scale_in_the_nan_error(pixel_model):
    """Without a data range (clamp=None) a huge scale overflowed; the error blamed the schedule, float16 or the
    denoiser only."""
    model = pixel_model
    huge = Guidance(lambda images: images.sum((1, 2, 3)), scale=1e30, clamp=None)
    with pytest.raises(ModelError, match=r"guidance scale too large .*scale = 1e\+30, clamp = None"):
        sample(model, 2, num_inference_steps=4, guidance=huge, progress_bar=False,
               generator=torch.Generator().manual_seed(0))
    # With the pixel range (the default for a pixel model) the same scale stays finite and in range.
    out = sample(model, 2, num_inference_steps=4, guidance=Guidance(huge.objective, scale=1e30), progress_bar=False,
                 generator=torch.Generator().manual_seed(0))
    assert bool(torch.isfinite(out.images).all())


@pytest.mark.parametrize("kind", ["ddim", "ddpm"])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_scale_zero_reproduces_unguided_sampling(make_pixel_model, kind, prediction_type):
    """Guidance of scale 0 never acts: the same seed gives the very samples of unguided sampling (batch of 1,
    an odd step count, eta > 0 for DDIM), and a repeated seed repeats them."""
    model = make_pixel_model(kind, prediction_type)
    run = dict(num_inference_steps=3, eta=0.5, progress_bar=False)
    plain = sample(model, 1, generator=torch.Generator().manual_seed(7), **run).samples
    zero = sample(model, 1, generator=torch.Generator().manual_seed(7), **run,
                  guidance=Guidance(lambda images: images.sum((1, 2, 3)), scale=0.0)).samples
    again = sample(model, 1, generator=torch.Generator().manual_seed(7), **run).samples
    assert torch.equal(plain, zero) and torch.equal(plain, again)
    other = sample(model, 1, generator=torch.Generator().manual_seed(8), **run).samples
    assert not torch.equal(plain, other)


@pytest.mark.parametrize("generator", [0, [torch.Generator().manual_seed(0)]])
def test_seed_or_list_of_generators_is_refused_by_name(pixel_model, generator):
    model = pixel_model
    with pytest.raises(InputDataError, match="^generator: expected None or a torch.Generator"):
        sample(model, 1, num_inference_steps=2, generator=generator, progress_bar=False)


def test_ddpm_scheduler_in_float64_samples_in_float64():
    model = PixelDiffusion(_unet().double(), DDPMScheduler(clip_sample=False))
    out = sample(model, 1, num_inference_steps=2, progress_bar=False, generator=torch.Generator().manual_seed(0),
                 guidance=Guidance(lambda images: images.sum((1, 2, 3)), scale=0.5, window=(0.0, 1.0)))
    assert out.samples.dtype == torch.float64 and out.objective.dtype == torch.float64


def _example_07():
    path = Path(__file__).resolve().parents[2] / "examples" / "07_custom_feature_map.py"
    spec = importlib.util.spec_from_file_location("_example_07_custom_feature_map", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_example_ink_features_follow_the_images_device():
    """The example's feature map made its row indices on the CPU: guidance of a model on a GPU failed there."""
    ink_features = _example_07().ink_features
    images = torch.zeros(2, 1, 8, 8, device="meta")  # any device but the CPU
    assert ink_features(images).device.type == "meta"
    cpu = ink_features(torch.linspace(-1, 1, 128).reshape(2, 1, 8, 8))
    assert cpu.shape == (2, 4) and bool(torch.isfinite(cpu).all())
