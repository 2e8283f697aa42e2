"""A diffusers user bringing their own denoiser: what the wrappers cannot drive is refused when wrapped."""

from __future__ import annotations

import pytest
import torch

from papa_bayes.diffusion import LatentDiffusion, PixelDiffusion, sample
from papa_bayes.exceptions import InputDataError

TINY_PIXEL = dict(in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
                  down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2)

TINY_LATENT = dict(sample_size=4, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
                   down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                   up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=8, norm_num_groups=4,
                   attention_head_dim=2)


def _scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(clip_sample=False)


@pytest.mark.parametrize("extra", [{"num_class_embeds": 10}, {"class_embed_type": "timestep"}])
def test_a_class_conditional_pixel_denoiser_is_refused_when_wrapped(extra):
    """Sampling it failed at the first step with diffusers' ValueError: the wrapper never passes class labels."""
    from diffusers import UNet2DModel

    unet = UNet2DModel(sample_size=8, **TINY_PIXEL, **extra)
    with pytest.raises(InputDataError, match="^unet: .*class labels"):
        PixelDiffusion(unet, _scheduler())


def test_a_subclass_passing_class_labels_itself_may_wrap_a_class_conditional_denoiser():
    from diffusers import UNet2DModel

    class OneClass(PixelDiffusion):
        def model_output(self, x_t, t):
            return self.unet(x_t, t, class_labels=torch.zeros(x_t.shape[0], dtype=torch.long)).sample

    model = OneClass(UNet2DModel(sample_size=8, **TINY_PIXEL, num_class_embeds=3).eval(), _scheduler())
    out = sample(model, 2, num_inference_steps=2, progress_bar=False, generator=torch.Generator().manual_seed(0))
    assert out.images.shape == (2, 1, 8, 8)


@pytest.mark.parametrize("extra, needs", [
    ({"num_class_embeds": 4}, "class labels"),
    ({"addition_embed_type": "text_time", "addition_time_embed_dim": 4,
      "projection_class_embeddings_input_dim": 8 + 6 * 4}, "addition_embed_type 'text_time'"),
])
def test_a_latent_denoiser_needing_more_than_embeddings_is_refused_when_wrapped(latent_model, extra, needs):
    """An SDXL-shaped (added time ids) or class-conditional UNet failed mid-sampling with a TypeError or ValueError."""
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel(**TINY_LATENT, **extra)
    with pytest.raises(InputDataError, match=f"^unet: .*{needs}"):
        LatentDiffusion(unet, latent_model.vae, _scheduler())


@pytest.mark.parametrize("size", [6, (8, 6), 7])
def test_a_pixel_sample_size_the_unet_cannot_halve_and_restore_is_refused_when_wrapped(size):
    """Three levels halve 6 to 3 to 2 and double back to 4: torch's size mismatch at the first step."""
    from diffusers import UNet2DModel

    config = {**TINY_PIXEL, "block_out_channels": (4, 8, 8), "down_block_types": ("DownBlock2D",) * 3,
              "up_block_types": ("UpBlock2D",) * 3}
    unet = UNet2DModel(sample_size=size, **config)
    with pytest.raises(InputDataError, match="^unet: .*divisible by 4"):
        PixelDiffusion(unet, _scheduler())
    ok = PixelDiffusion(UNet2DModel(sample_size=12, **config).eval(), _scheduler())  # 12 -> 6 -> 3 and back
    assert sample(ok, 1, num_inference_steps=2, progress_bar=False).images.shape == (1, 1, 12, 12)


def test_a_latent_denoiser_projecting_its_embeddings_reads_them_at_encoder_hid_dim(latent_model):
    """With ``encoder_hid_dim`` (a text projection to cross_attention_dim) the right embeddings were refused, the
    wrong ones (and the default zeros) failed at the first step with torch's matmul error."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**TINY_LATENT, encoder_hid_dim=12).eval()
    scheduler = _scheduler()
    with pytest.raises(InputDataError, match=r"^encoder_hidden_states: .*D = 12 \(encoder_hid_dim\)"):
        LatentDiffusion(unet, latent_model.vae, scheduler, encoder_hidden_states=torch.zeros(1, 3, 8))
    for cond in (torch.randn(1, 3, 12), None):
        model = LatentDiffusion(unet, latent_model.vae, scheduler, encoder_hidden_states=cond)
        out = sample(model, 1, num_inference_steps=2, progress_bar=False, generator=torch.Generator().manual_seed(0))
        assert out.images.shape == (1, 1, 8, 8)


def test_a_per_block_cross_attention_dim_needs_embeddings_given(latent_model):
    """A tuple ``cross_attention_dim`` without ``encoder_hidden_states`` raised a raw TypeError (``int(tuple)``)."""
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel(**{**TINY_LATENT, "cross_attention_dim": (8, 8)}).eval()
    with pytest.raises(InputDataError, match="^encoder_hidden_states: expected a tensor"):
        LatentDiffusion(unet, latent_model.vae, _scheduler())
    model = LatentDiffusion(unet, latent_model.vae, _scheduler(), encoder_hidden_states=torch.zeros(1, 2, 8))
    assert sample(model, 1, num_inference_steps=2, progress_bar=False).images.shape == (1, 1, 8, 8)


def test_a_midblock_map_loaded_with_a_model_of_other_samples_is_refused(make_pixel_model, tmp_path):
    """A map fitted on 8x8 samples loaded silently onto a 16x16 model of the same mid-block width: its statistics
    standardized activations of other inputs (the mid-block sees other content at every position)."""
    from papa_bayes.diffusion import MidBlockFeatures, load_feature_map, save_feature_map

    small, large = make_pixel_model(), make_pixel_model(sample_size=16)
    samples = sample(small, 8, num_inference_steps=2, progress_bar=False,
                     generator=torch.Generator().manual_seed(0)).samples
    path = save_feature_map(MidBlockFeatures(small, num_features=3).fit(samples), tmp_path / "mid")
    with pytest.raises(InputDataError, match=r"^model: .*samples of shape \(1, 8, 8\).*\(1, 16, 16\)"):
        load_feature_map(path, model=large)
    reloaded = load_feature_map(path, model=small)
    torch.testing.assert_close(reloaded(samples), MidBlockFeatures(small, num_features=3).fit(samples)(samples))


def test_a_checkpoint_whose_denoiser_the_sampler_cannot_drive_is_refused_naming_the_path(tmp_path):
    """The folder, not an argument of the caller's, is at fault: load_base_model names ``path``."""
    from diffusers import UNet2DModel

    from papa_bayes.diffusion import load_base_model

    config = {**TINY_PIXEL, "block_out_channels": (4, 8, 8), "down_block_types": ("DownBlock2D",) * 3,
              "up_block_types": ("UpBlock2D",) * 3}
    UNet2DModel(sample_size=6, **config).save_pretrained(tmp_path / "odd" / "unet")
    UNet2DModel(sample_size=8, num_class_embeds=3, **TINY_PIXEL).save_pretrained(tmp_path / "classes" / "unet")
    for name, why in (("odd", "divisible by 4"), ("classes", "class labels")):
        with pytest.raises(InputDataError, match=f"^path: .*{tmp_path / name}.*{why}"):
            load_base_model(tmp_path / name)
