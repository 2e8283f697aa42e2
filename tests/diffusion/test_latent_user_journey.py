"""A Stable-Diffusion user's journey: a tiny latent, text-conditioned model built from configs (no weights).

Conditioning (one prompt's embeddings for all samples, one per sample, a negative prompt with classifier-free
guidance), reward guidance on decoded images or latents, a preference session over DiffusionCandidates with
fine-tuning and resume, and the mistakes such a user makes.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from papa_bayes.diffusion import (CallableFeatures, DiffusionCandidates, Guidance, LatentDiffusion, ManifoldGuard,
                                  PCAFeatures, PosteriorObjective, sample)
from papa_bayes.exceptions import InputDataError, PapaBayesWarning

DIM = 16  # cross_attention_dim: the text embeddings' width


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def make_unet():
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=4, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=DIM, norm_num_groups=4, attention_head_dim=2,
    ).eval().requires_grad_(False)


def make_vae(**overrides):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=4, sample_size=8, layers_per_block=1, **overrides,
    ).eval().requires_grad_(False)


def scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(clip_sample=False)


@pytest.fixture(scope="module")
def parts():
    return make_unet(), make_vae()


def prompt(seed: int, rows: int = 1) -> torch.Tensor:
    """Stand-in text embeddings `rows x L x D` (no text encoder here)."""
    return torch.randn(rows, 5, DIM, generator=gen(seed))


class DrawsPosterior:
    """Duck-typed RewardPosterior: linear utility over fixed draws."""

    def __init__(self, draws: torch.Tensor) -> None:
        self.draws = draws
        self.num_features, self.num_draws = int(draws.shape[1]), int(draws.shape[0])

    def utility(self, features: torch.Tensor) -> torch.Tensor:
        return self.draws.to(features.dtype) @ features.T


def test_conditioning_steers_the_samples_and_per_sample_rows_follow_their_samples(parts):
    unet, vae = parts
    noise = torch.randn(3, 4, 4, 4, generator=gen(9))
    cat, dog = prompt(1), prompt(2)

    def draw(**kwargs):
        return sample(LatentDiffusion(unet, vae, scheduler(), **kwargs), noise.shape[0], num_inference_steps=2,
                      initial_noise=noise, progress_bar=False)

    plain = draw(encoder_hidden_states=cat)
    assert plain.samples.shape == (3, 4, 4, 4) and plain.images.shape == (3, 3, 8, 8)
    assert float((draw(encoder_hidden_states=dog).samples - plain.samples).abs().max()) > 1e-2  # not ignored
    neg = torch.zeros(1, 5, DIM)
    cfg = draw(encoder_hidden_states=cat, negative_encoder_hidden_states=neg, cfg_scale=4.0)
    assert float((cfg.samples - plain.samples).abs().max()) > 1e-2
    # Per-sample prompts with one shared negative prompt, across sampler batches: row i conditions sample i.
    rows = torch.cat([dog, cat, dog])
    per_sample = LatentDiffusion(unet, vae, scheduler(), encoder_hidden_states=rows,
                                 negative_encoder_hidden_states=neg, cfg_scale=4.0)
    mixed = sample(per_sample, 3, num_inference_steps=2, initial_noise=noise, batch_size=2, progress_bar=False)
    torch.testing.assert_close(mixed.samples[1], cfg.samples[1], atol=1e-4, rtol=0)


def test_prompts_given_as_strings_are_refused_naming_the_missing_text_encoder(parts):
    """A prompt was refused as "got str" / "got list", which did not say that no text encoder is there."""
    unet, vae = parts
    for field, kwargs in (("encoder_hidden_states", {"encoder_hidden_states": "a photo of a cat"}),
                          ("encoder_hidden_states", {"encoder_hidden_states": ["a cat", "a dog"]}),
                          ("negative_encoder_hidden_states", {"encoder_hidden_states": prompt(1), "cfg_scale": 7.5,
                                                              "negative_encoder_hidden_states": "blurry"})):
        with pytest.raises(InputDataError, match=f"^{field}: expected text embeddings.*no text encoder"):
            LatentDiffusion(unet, vae, scheduler(), **kwargs)
    with pytest.raises(InputDataError, match=rf"^encoder_hidden_states: .*D = {DIM}.*got \(1, 5, 8\)"):
        LatentDiffusion(unet, vae, scheduler(), encoder_hidden_states=torch.zeros(1, 5, 8))  # another width


@pytest.mark.parametrize("value", [0.0, -0.18215, float("nan"), "0.18215"])
def test_a_vae_scaling_factor_that_cannot_scale_latents_is_refused_when_wrapped(parts, value):
    """scaling_factor 0 was read as 1.0 silently; a negative one flipped the latents; NaN gave NaN images only
    after every step; a string failed in the division."""
    vae = make_vae()
    vae.register_to_config(scaling_factor=value)
    with pytest.raises(InputDataError, match="^vae: expected an autoencoder whose config's scaling_factor is a "
                                             "finite number > 0"):
        LatentDiffusion(parts[0], vae, scheduler(), encoder_hidden_states=prompt(1))


def test_an_autoencoder_without_a_config_decodes_unscaled(parts):
    """A custom autoencoder module without `config` wrapped, then failed with AttributeError when decoding."""

    class Decoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(4, 3, 1)

        def decode(self, z):
            return type("Out", (), {"sample": self.conv(z)})()

    vae = Decoder()
    model = LatentDiffusion(parts[0], vae, scheduler(), encoder_hidden_states=prompt(1))
    assert (model.scaling_factor, model.shift_factor) == (1.0, 0.0)
    z = torch.randn(2, 4, 4, 4, generator=gen(3))
    torch.testing.assert_close(model.decode(z), vae.conv(z))


def test_a_shift_factor_is_applied_when_decoding_and_undone_when_encoding(parts):
    """SD3- / Flux-style autoencoders shift their latents (decode(z / scaling + shift)): the shift was ignored,
    in decoding and in fine-tuning's encoding of images."""
    from papa_bayes.diffusion.finetune.common import encode_images

    vae = make_vae(shift_factor=0.5)
    model = LatentDiffusion(parts[0], vae, scheduler(), encoder_hidden_states=prompt(1))
    z = torch.randn(2, 4, 4, 4, generator=gen(4))
    sf = vae.config.scaling_factor
    torch.testing.assert_close(model.decode(z), vae.decode(z / sf + 0.5).sample)
    images = torch.rand(2, 3, 8, 8, generator=gen(5)) * 2 - 1
    expected = (vae.encode(images).latent_dist.mean - 0.5) * sf
    torch.testing.assert_close(encode_images(model, images), expected)
    plain = LatentDiffusion(parts[0], parts[1], scheduler(), encoder_hidden_states=prompt(1))
    torch.testing.assert_close(plain.decode(z), parts[1].decode(z / sf).sample)  # scaled once, not twice


def test_a_negative_prompt_without_classifier_free_guidance_warns(parts):
    """cfg_scale defaults to 1.0 (off; diffusers' guidance_scale to 7.5): the negative prompt was dropped silently."""
    unet, vae = parts
    with pytest.warns(PapaBayesWarning, match=r"^negative_encoder_hidden_states: expected cfg_scale != 1") as w:
        LatentDiffusion(unet, vae, scheduler(), encoder_hidden_states=prompt(1),
                        negative_encoder_hidden_states=prompt(2))
    assert w[0].filename == __file__
    with warnings.catch_warnings():
        warnings.simplefilter("error", PapaBayesWarning)
        LatentDiffusion(unet, vae, scheduler(), encoder_hidden_states=prompt(1),
                        negative_encoder_hidden_states=prompt(2), cfg_scale=7.5)


def test_cfg_scale_set_afterwards_without_negative_embeddings_is_our_error(parts):
    """Setting model.cfg_scale = 7.5 on a model without negatives failed with AttributeError ('NoneType' ... 'to')."""
    model = LatentDiffusion(*parts, scheduler(), encoder_hidden_states=prompt(1))
    model.cfg_scale = 7.5
    with pytest.raises(InputDataError, match=r"^negative_encoder_hidden_states: expected a tensor when cfg_scale "
                                             r"!= 1 \(cfg_scale = 7.5\), got None"):
        sample(model, 2, num_inference_steps=2, progress_bar=False, generator=gen(0))


def test_a_pca_map_fitted_on_latents_says_how_to_read_latents(parts):
    """PCAFeatures fitted on latents reads decoded images: the error said only '64 values per sample, got 192'."""
    model = LatentDiffusion(*parts, scheduler(), encoder_hidden_states=prompt(1))
    base = sample(model, 8, num_inference_steps=2, generator=gen(0), progress_bar=False)
    pca = PCAFeatures.fit(base.samples, num_features=3)
    objective = PosteriorObjective(DrawsPosterior(torch.randn(8, 3, generator=gen(1))), pca, kind="mean")
    with pytest.raises(InputDataError, match=r"^images: expected 64 values per sample .*input_space='sample'"):
        sample(model, 2, num_inference_steps=2, generator=gen(0), progress_bar=False,
               guidance=Guidance(objective, scale=0.5))
    # As the message says: the same map reading latents guides.
    latent_objective = PosteriorObjective(objective.posterior, CallableFeatures(pca, 3, input_space="sample"),
                                          kind="mean")
    plain = sample(model, 4, num_inference_steps=3, generator=gen(2), progress_bar=False)
    guided = sample(model, 4, num_inference_steps=3, generator=gen(2), progress_bar=False,
                    guidance=Guidance(latent_objective, scale=1.0))
    with torch.no_grad():
        assert float(guided.objective.mean()) > float(latent_objective(plain.samples).mean())


def test_a_finetuned_latent_model_refuses_a_base_with_another_latent_scaling(parts, tmp_path):
    """A checkpoint loaded onto a base whose autoencoder scales latents otherwise decoded them wrongly, silently."""
    from papa_bayes.diffusion.finetune import load_finetuned, save_finetuned

    model = LatentDiffusion(*parts, scheduler(), encoder_hidden_states=prompt(1))
    save_finetuned(model, tmp_path / "ft")
    assert load_finetuned(tmp_path / "ft", base=model).scaling_factor == model.scaling_factor
    other = make_vae()
    other.register_to_config(scaling_factor=0.13025)  # SDXL's, where the model was trained with SD's 0.18215
    rebuilt = LatentDiffusion(parts[0], other, scheduler(), encoder_hidden_states=prompt(1))
    with pytest.raises(InputDataError, match=r"^base: expected a model whose autoencoder has scaling_factor = "
                                             r"0.18215.*got scaling_factor = 0.13025"):
        load_finetuned(tmp_path / "ft", base=rebuilt)


def test_a_session_on_a_cfg_latent_model_finetunes_with_lora_and_resumes(parts, tmp_path):
    """Three rounds with classifier-free guidance and reward guidance over decoded images, a LoRA distillation,
    then a resume that reloads the fine-tuned weights (guidance learned: cfg_scale 1.0) and recommends."""
    pytest.importorskip("peft")
    from papa_bayes.session import PreferenceSession
    from papa_bayes.users import SimulatedUser

    unet, vae = parts
    model = LatentDiffusion(unet, vae, scheduler(), encoder_hidden_states=prompt(1),
                            negative_encoder_hidden_states=torch.zeros(1, 5, DIM), cfg_scale=4.0)
    base = sample(model, 16, num_inference_steps=3, generator=gen(0), progress_bar=False)
    pca = PCAFeatures.fit(base.images, num_features=3)
    weights = torch.tensor([1.0, -0.5, 0.2], dtype=torch.float64)
    user = SimulatedUser(lambda x: pca(x).double() @ weights, seed=0)

    def source():
        return DiffusionCandidates(model, pca, ManifoldGuard(base.images), pool_steps=3, num_base=16, scale=0.5,
                                   recommend_scale="pool", recommend_steps=3)

    first = source()
    path = tmp_path / "session.db"
    session = PreferenceSession(path, first, user, pool_size=4, finetune_every=3, num_draws=16,
                                finetune_options={"num_samples": 4, "steps": 2, "lora_rank": 2})
    session.run(3, progress_bar=False)
    session.close()
    assert first.finetuned.cfg_scale == 1.0 and model.cfg_scale == 4.0  # the base is untouched
    second = source()
    resumed = PreferenceSession.resume(path, second, user)
    assert resumed.round == 3 and second.finetuned is not None and second.finetuned.cfg_scale == 1.0
    noise = torch.randn(2, 4, 4, 4, generator=gen(7))
    expected = sample(first.finetuned, 2, num_inference_steps=2, initial_noise=noise, progress_bar=False).samples
    got = sample(second.finetuned, 2, num_inference_steps=2, initial_noise=noise, progress_bar=False).samples
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    resumed.run(1, progress_bar=False)
    assert resumed.recommend(2).images.shape == (2, 3, 8, 8)
    resumed.close()
