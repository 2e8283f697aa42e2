"""A practitioner's mistakes with the training and model-wrapping parts: each fails early, in papa_bayes's words."""

from __future__ import annotations

import pytest
import torch

from papa_bayes.diffusion import LatentDiffusion, PixelDiffusion, make_sampling_scheduler
from papa_bayes.diffusion.train import train_base_model
from papa_bayes.exceptions import InputDataError

TINY = {"block_out_channels": (8, 16), "layers_per_block": 1, "norm_num_groups": 4,
        "down_block_types": ("DownBlock2D", "DownBlock2D"), "up_block_types": ("UpBlock2D", "UpBlock2D")}


def _fail_if_trained(monkeypatch):
    import papa_bayes.diffusion.train as train

    def no_training(*args, **kwargs):
        raise AssertionError("the mistake should be caught before training")

    monkeypatch.setattr(train, "load_digits_splits", no_training)


@pytest.mark.parametrize("overrides", [
    {"in_channels": 3, "out_channels": 3},  # was torch's RuntimeError at the first step
    {"out_channels": 2},  # was a ModelError once the whole training had run
    {"sample_size": 16},  # was accepted: trained on 8x8 digits, saved to sample 16x16 noise
])
def test_a_unet_config_that_changes_the_digits_shape_is_refused_before_training(tmp_path, monkeypatch, overrides):
    _fail_if_trained(monkeypatch)
    with pytest.raises(InputDataError) as err:
        train_base_model(tmp_path / "m", steps=1, batch_size=2, unet_config={**TINY, **overrides}, progress_bar=False)
    assert err.value.field == "unet_config"
    assert not (tmp_path / "m").exists()


def test_a_unet_config_that_restates_the_digits_shape_trains(tmp_path):
    config = {**TINY, "sample_size": (8, 8), "in_channels": 1, "out_channels": 1}
    summary = train_base_model(tmp_path, steps=1, batch_size=2, unet_config=config, progress_bar=False)
    assert summary["steps"] == 1


@pytest.mark.parametrize("overrides", [
    {"block_out_channels": (8, 16, 32)},  # was diffusers' bare ValueError (blocks of another count)
    {"norm_num_groups": 5},  # was torch's ValueError (channels not divisible by the groups)
])
def test_a_unet_config_diffusers_cannot_build_is_an_input_data_error(tmp_path, overrides):
    with pytest.raises(InputDataError) as err:
        train_base_model(tmp_path / "m", steps=1, batch_size=2, unet_config={**TINY, **overrides}, progress_bar=False)
    assert err.value.field == "unet_config"


def test_an_output_path_that_is_a_file_fails_before_training(tmp_path, monkeypatch):
    _fail_if_trained(monkeypatch)
    afile = tmp_path / "file"
    afile.write_text("x")
    for out in (afile, afile / "inside"):  # was FileExistsError / NotADirectoryError after the whole training
        with pytest.raises(InputDataError) as err:
            train_base_model(out, steps=1, batch_size=2, unet_config=TINY, progress_bar=False)
        assert err.value.field == "out_dir"


def test_dropout_masks_come_from_the_seed_and_the_global_rng_is_left_alone(tmp_path):
    config = {**TINY, "dropout": 0.5}
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    a = train_base_model(tmp_path / "a", steps=3, batch_size=4, seed=1, unet_config=config, progress_bar=False)
    after = torch.rand(3)
    torch.manual_seed(999)  # another global state: the run must not depend on it
    b = train_base_model(tmp_path / "b", steps=3, batch_size=4, seed=1, unet_config=config, progress_bar=False)
    assert torch.equal(before, after)
    assert a["final_loss"] == b["final_loss"]
    from safetensors.torch import load_file

    wa = load_file(tmp_path / "a" / "unet" / "diffusion_pytorch_model.safetensors")
    wb = load_file(tmp_path / "b" / "unet" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_a_pixel_denoiser_without_a_sample_size_is_refused_when_wrapped():
    from diffusers import UNet2DModel

    unet = UNet2DModel(sample_size=None, in_channels=1, out_channels=1, **TINY)
    with pytest.raises(InputDataError) as err:  # was a TypeError from sample_shape, at sampling time
        PixelDiffusion(unet, make_sampling_scheduler())
    assert err.value.field == "unet"


def test_a_vae_whose_latents_do_not_fit_the_denoiser_is_refused_when_wrapped(latent_model):
    from diffusers import AutoencoderKL

    good = latent_model
    vae = AutoencoderKL(in_channels=1, out_channels=1, latent_channels=2, block_out_channels=(8,),
                        down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",),
                        norm_num_groups=4, layers_per_block=1)
    # was accepted: sampling ran every denoising step, then decoding failed in torch's words
    with pytest.raises(InputDataError) as err:
        LatentDiffusion(good.unet, vae, good.scheduler, encoder_hidden_states=good.encoder_hidden_states)
    assert err.value.field == "vae" and "latent_channels = 4" in err.value.expected
