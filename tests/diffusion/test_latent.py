"""The Stable-Diffusion-shaped path: UNet2DConditionModel + AutoencoderKL, tiny, from configs."""

from __future__ import annotations

import pytest
import torch

from papa_bayes.diffusion import Guidance, MidBlockFeatures, PCAFeatures, PosteriorObjective, sample
from papa_bayes.exceptions import InputDataError


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def latent_setup(latent_model):
    base = sample(latent_model, 12, num_inference_steps=3, generator=gen(0), progress_bar=False)
    return base, PCAFeatures.fit(base.images, num_features=3)


def test_latent_base_sampling_decodes_images(latent_model, latent_setup):
    base, _ = latent_setup
    assert base.samples.shape == (12, 4, 4, 4)
    assert base.images.shape == (12, 1, 8, 8)


def test_gradient_reaches_latents_through_the_decoder(latent_model, latent_setup, make_posterior):
    _, pca = latent_setup
    objective = PosteriorObjective(make_posterior(torch.randn(8, 3, generator=gen(1))), pca, kind="mean")
    z = torch.randn(5, 4, 4, 4, generator=gen(2), requires_grad=True)
    objective(latent_model.decode(z)).sum().backward()
    assert z.grad is not None and float(z.grad.abs().sum()) > 0
    x_t = torch.randn(5, 4, 4, 4, generator=gen(3))
    a = latent_model.scheduler.alphas_cumprod[600]
    for mode in ("x0", "dps"):
        _, _, shift = Guidance(objective, scale=0.5, mode=mode, clamp=None).guide(
            latent_model, x_t, torch.tensor(600), a, step=0, num_steps=4)
        assert float(shift.abs().sum()) > 0, mode


@pytest.mark.parametrize("kind", ["ddim", "ddpm"])
@pytest.mark.parametrize("mode", ["x0", "dps"])
def test_latent_guided_sampling_end_to_end(make_latent_model, latent_setup, make_posterior, kind, mode):
    model = make_latent_model(kind)
    _, pca = latent_setup
    objective = PosteriorObjective(make_posterior(torch.randn(8, 3, generator=gen(1))), pca, kind="mean")
    plain = sample(model, 6, num_inference_steps=3, generator=gen(4), progress_bar=False)
    guided = sample(model, 6, num_inference_steps=3, generator=gen(4), progress_bar=False,
                    guidance=Guidance(objective, scale=1.0, mode=mode, clamp=None))
    with torch.no_grad():
        before = objective(plain.images).mean()
    assert float(guided.objective.mean()) > float(before)


def test_classifier_free_guidance_and_midblock_features(make_latent_model, make_posterior):
    model = make_latent_model(cfg_scale=3.0, negative_encoder_hidden_states=torch.zeros(1, 3, 8))
    base = sample(model, 6, num_inference_steps=3, generator=gen(0), progress_bar=False)
    features = MidBlockFeatures(model, timestep=50, num_features=2).fit(base.samples)
    assert features.input_space == "sample"
    objective = PosteriorObjective(make_posterior(torch.randn(8, 2, generator=gen(1))), features, kind="mean")
    guided = sample(model, 6, num_inference_steps=3, generator=gen(0), progress_bar=False,
                    guidance=Guidance(objective, scale=1.0, clamp=None))
    with torch.no_grad():
        assert float(guided.objective.mean()) > float(objective(base.samples).mean())
    with pytest.raises(InputDataError):
        make_latent_model(cfg_scale=3.0)  # no negative embeddings


def test_per_sample_conditioning_follows_its_samples_across_batches(latent_model):
    from papa_bayes.diffusion import LatentDiffusion

    cond = torch.randn(4, 3, 8, generator=gen(2))

    def model(**kwargs):
        return LatentDiffusion(latent_model.unet, latent_model.vae, latent_model.scheduler, **kwargs)

    for kwargs in ({"encoder_hidden_states": cond},
                   {"encoder_hidden_states": cond, "negative_encoder_hidden_states": cond.flip(0), "cfg_scale": 2.0}):
        whole = sample(model(**kwargs), 4, num_inference_steps=2, generator=gen(0), progress_bar=False)
        parts = sample(model(**kwargs), 4, num_inference_steps=2, generator=gen(0), batch_size=3, progress_bar=False)
        torch.testing.assert_close(parts.images, whole.images, atol=1e-5, rtol=1e-5)
    # the last sample (alone in the second batch) is conditioned on its own row
    noise = torch.randn(4, 4, 4, 4, generator=gen(0))
    parts = sample(model(encoder_hidden_states=cond), 4, num_inference_steps=2, initial_noise=noise, batch_size=3,
                   progress_bar=False)
    last = sample(model(encoder_hidden_states=cond[3:]), 1, num_inference_steps=2, initial_noise=noise[3:],
                  progress_bar=False)
    torch.testing.assert_close(parts.images[3:], last.images, atol=1e-5, rtol=1e-5)
    for field, kwargs in (("encoder_hidden_states", {"encoder_hidden_states": cond[:3]}),
                          ("negative_encoder_hidden_states", {"negative_encoder_hidden_states": cond[:2],
                                                              "cfg_scale": 2.0})):
        with pytest.raises(InputDataError, match=f"^{field}:"):
            sample(model(**kwargs), 4, num_inference_steps=2, progress_bar=False)


def test_midblock_features_refuse_per_sample_conditioning_and_steer_it_from_a_shared_one(latent_model,
                                                                                       make_posterior):
    """A map on a model with one conditioning row per sample failed mid-sampling whenever a batch held
    another number of samples than rows (batch_size, fitting, pools), and read each sample by its place in
    the batch."""
    from papa_bayes.diffusion import LatentDiffusion

    cond = torch.randn(4, 3, 8, generator=gen(2))
    per_sample = LatentDiffusion(latent_model.unet, latent_model.vae, latent_model.scheduler,
                                 encoder_hidden_states=cond)
    with pytest.raises(InputDataError, match=r"^model: .*1 row.*got encoder_hidden_states of 4 rows") as info:
        MidBlockFeatures(per_sample, timestep=50)
    assert info.value.field == "model"
    base = sample(per_sample, 4, num_inference_steps=2, generator=gen(0), progress_bar=False)
    shared = MidBlockFeatures(latent_model, timestep=50, num_features=2).fit(torch.cat([base.samples] * 2),
                                                                            batch_size=3)
    objective = PosteriorObjective(make_posterior(torch.randn(8, 2, generator=gen(1))), shared, kind="mean")
    runs = [sample(per_sample, 4, num_inference_steps=2, generator=gen(0), batch_size=batch_size, progress_bar=False,
                   guidance=Guidance(objective, scale=1.0, clamp=None)) for batch_size in (4, 3)]
    torch.testing.assert_close(runs[1].samples, runs[0].samples, atol=1e-5, rtol=1e-5)


def test_latent_model_arguments_are_checked(latent_model):
    from papa_bayes.diffusion import LatentDiffusion, PixelDiffusion

    def model(**kwargs):
        args = {"unet": latent_model.unet, "vae": latent_model.vae, **kwargs}
        return LatentDiffusion(args.pop("unet"), args.pop("vae"), latent_model.scheduler, **args)

    neg = torch.zeros(1, 1, 8)  # L x D of the default conditioning
    cases = [
        ("cfg_scale", {"cfg_scale": float("nan"), "negative_encoder_hidden_states": neg}),  # were NaN samples
        ("cfg_scale", {"cfg_scale": "2", "negative_encoder_hidden_states": neg}),
        ("cfg_scale", {"cfg_scale": None}),  # was TypeError
        ("encoder_hidden_states", {"encoder_hidden_states": [[[0.0] * 8]]}),  # was AttributeError
        ("encoder_hidden_states", {"encoder_hidden_states": torch.zeros(1, 3, 5)}),  # a matmul error when sampling
        ("encoder_hidden_states", {"encoder_hidden_states": torch.zeros(1, 0, 8)}),  # attended to nothing
        ("encoder_hidden_states", {"encoder_hidden_states": torch.full((1, 3, 8), float("nan"))}),  # NaN samples
        ("negative_encoder_hidden_states", {"cfg_scale": 2.0, "negative_encoder_hidden_states": torch.zeros(3, 8)}),
        ("negative_encoder_hidden_states", {"cfg_scale": 2.0, "negative_encoder_hidden_states": torch.zeros(1, 4, 8)}),
        ("latent_size", {"latent_size": 0}), ("latent_size", {"latent_size": -2}),  # were shapes (4, 0, 0) ...
        ("latent_size", {"latent_size": (4,)}), ("latent_size", {"latent_size": 2.5}),  # ... or foreign errors
        ("latent_size", {"latent_size": True}),
        ("vae", {"vae": None}),
        ("unet", {"unet": "unet"}),
    ]
    for field, kwargs in cases:
        with pytest.raises(InputDataError, match=f"^{field}:"):
            model(**kwargs)
    with pytest.raises(InputDataError, match="^unet:"):
        PixelDiffusion(None, latent_model.scheduler)
    assert model(cfg_scale=0.0, negative_encoder_hidden_states=neg).cfg_scale == 0.0  # unconditional: allowed
    assert model(latent_size=(4, 6)).sample_shape == (4, 4, 6)
    for kwargs, field in (({"device": "cpux"}, "device"), ({"dtype": "float16"}, "dtype"),
                          ({"dtype": torch.int64}, "dtype")):
        with pytest.raises(InputDataError, match=f"^{field}:"):
            latent_model.to(**kwargs)
    assert latent_model.to(None).device == torch.device("cpu")  # None keeps the device


def test_pixel_and_latent_denoisers_are_not_mixed_up(pixel_model, latent_model):
    from papa_bayes.diffusion import LatentDiffusion, PixelDiffusion

    with pytest.raises(InputDataError, match="^unet:.*LatentDiffusion"):  # was TypeError at the first step
        PixelDiffusion(latent_model.unet, latent_model.scheduler)
    with pytest.raises(InputDataError, match="^unet:.*cross_attention_dim"):  # was AttributeError
        LatentDiffusion(pixel_model.unet, latent_model.vae, latent_model.scheduler)
    with pytest.raises(InputDataError, match="^vae:"):  # was accepted, then AttributeError when decoding
        LatentDiffusion(latent_model.unet, pixel_model.unet, latent_model.scheduler)


def test_denoiser_and_autoencoder_may_differ_in_dtype(make_latent_model, latent_setup, make_posterior):
    """A float16 denoiser with a float32 autoencoder (as SDXL upcasts its VAE) samples and guides."""
    model = make_latent_model()
    torch.nn.Module.to(model.unet, torch.float16)
    _, pca = latent_setup
    objective = PosteriorObjective(make_posterior(torch.randn(8, 3, generator=gen(1))), pca, kind="mean")
    for guidance in (None, Guidance(objective, scale=0.5, clamp=None)):  # was a RuntimeError when decoding
        out = sample(model, 2, num_inference_steps=2, generator=gen(0), progress_bar=False, guidance=guidance)
        assert out.samples.dtype == torch.float16 and bool(torch.isfinite(out.images).all())


def test_a_latent_model_with_a_clipping_scheduler_warns(latent_model):
    """DDIMScheduler() clips the predicted clean sample to [-1, 1] by default: right for pixels, wrong for latents,
    and a latent model took it without a word."""
    import warnings

    from diffusers import DDIMScheduler, DDPMScheduler

    from papa_bayes.diffusion import LatentDiffusion
    from papa_bayes.exceptions import PapaBayesWarning

    cond = torch.randn(1, 3, 8, generator=gen(1))
    for scheduler in (DDIMScheduler(), DDPMScheduler(clip_sample=False, thresholding=True)):
        with pytest.warns(PapaBayesWarning, match=r"^scheduler: expected clip_sample=False and thresholding=False") as w:
            LatentDiffusion(latent_model.unet, latent_model.vae, scheduler, encoder_hidden_states=cond)
        assert w[0].filename == __file__
    with warnings.catch_warnings():
        warnings.simplefilter("error", PapaBayesWarning)
        LatentDiffusion(latent_model.unet, latent_model.vae, DDIMScheduler(clip_sample=False),
                        encoder_hidden_states=cond)
