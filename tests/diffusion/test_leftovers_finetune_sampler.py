"""Leftovers of reviews: PAPA's checks before encoding, the sampler's initial noise, train.py's folder check."""

from __future__ import annotations

import inspect
import warnings

import pytest
import torch

from papa_bayes.diffusion import LatentDiffusion, PixelDiffusion, finetune_on_samples, papa_finetune, sample
from papa_bayes.exceptions import InputDataError, PapaBayesWarning


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def counted_latent(make_latent_model, monkeypatch):
    """A tiny latent model whose autoencoder counts the images it encodes."""
    model = make_latent_model()
    encoded = []
    encode = model.vae.encode

    def counting(x, *args, **kwargs):
        encoded.append(x.shape[0])
        return encode(x, *args, **kwargs)

    monkeypatch.setattr(model.vae, "encode", counting)
    return model, encoded


def images(n: int) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, generator=gen(3)) * 2 - 1


@pytest.mark.parametrize("kwargs, field", [
    ({"signs": [1, -1, 1]}, "signs"),  # 3 labels for 4 images
    ({"signs": [1, -1, 0, 1]}, "signs"),  # 0 is no label
    ({"signs": [True, False, True, True]}, "signs"),
    ({"reference": "base"}, "reference"),
    ({"encoder_hidden_states": torch.zeros(3, 3, 8)}, "encoder_hidden_states"),  # 3 rows for 4 images
])
def test_papa_checks_its_arguments_before_the_autoencoder_runs(counted_latent, kwargs, field):
    """Bad signs, reference or conditioning rows failed only after every image was encoded."""
    model, encoded = counted_latent
    kwargs = {"signs": [1, -1, 1, -1], **kwargs}
    if "encoder_hidden_states" in kwargs:
        model = LatentDiffusion(model.unet, model.vae, model.scheduler,
                                encoder_hidden_states=kwargs.pop("encoder_hidden_states"))
    with pytest.raises(InputDataError, match=f"^{field}:"):
        papa_finetune(model, images(4), kwargs.pop("signs"), steps=1, batch_size=2, progress_bar=False, **kwargs)
    assert encoded == []


def test_papa_still_encodes_valid_images_once_and_warns_once(counted_latent):
    model, encoded = counted_latent
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tuned = papa_finetune(model, (images(4) + 1) / 2, [1, -1, 1, -1], steps=1, batch_size=2,
                              progress_bar=False, generator=gen(0))  # images in [0, 1]: warned
    assert sum(encoded) == 4
    unit = [w for w in caught if issubclass(w.category, PapaBayesWarning) and "images" in str(w.message)]
    assert len(unit) == 1, [str(w.message) for w in caught]
    assert tuned.unet is not model.unet


@pytest.mark.parametrize("dtype", [torch.int64, torch.uint8, torch.bool])
def test_sample_refuses_non_floating_initial_noise(pixel_model, dtype):
    """Integer noise (all zeros here) was cast to the model's dtype silently: every sample the same."""
    noise = torch.zeros(2, *pixel_model.sample_shape, dtype=dtype)
    with pytest.raises(InputDataError, match=rf"^initial_noise: expected floating-point values, got {dtype}"):
        sample(pixel_model, 2, num_inference_steps=2, initial_noise=noise, progress_bar=False)


def test_sample_still_takes_float_initial_noise_of_another_float_dtype(pixel_model):
    noise = torch.randn(2, *pixel_model.sample_shape, generator=gen(0))
    kw = dict(num_inference_steps=2, progress_bar=False)
    torch.testing.assert_close(sample(pixel_model, 2, initial_noise=noise.double(), **kw).samples,
                               sample(pixel_model, 2, initial_noise=noise, **kw).samples)


def test_check_out_folder_names_the_field_it_is_given(tmp_path):
    """Its default name, "--out", named an option no caller checks with it any more."""
    from papa_bayes.diffusion import train

    assert inspect.signature(train._check_out_folder).parameters["name"].default is inspect.Parameter.empty
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputDataError, match="^out_dir:.*a file"):
        train._check_out_folder(tmp_path / "file", "out_dir")


def _rescheduled(model, **config):
    return PixelDiffusion(model.unet, type(model.scheduler).from_config(model.scheduler.config, **config))


@pytest.mark.parametrize("config, found", [
    ({"prediction_type": "v_prediction"}, "'v_prediction'"),
    ({"num_train_timesteps": 10}, "10 timesteps"),
    ({"beta_schedule": "linear"}, "1000 timesteps of other alphas_cumprod"),
])
@pytest.mark.parametrize("tuner", ["papa", "samples"])
def test_a_reference_of_another_prediction_type_or_schedule_is_refused(pixel_model, config, found, tuner):
    """The regulariser / anchor compared raw outputs of another parametrisation or schedule, silently."""
    reference = _rescheduled(pixel_model, **config)
    kw = dict(steps=1, batch_size=2, reference=reference, progress_bar=False, generator=gen(0))
    with pytest.raises(InputDataError, match=f"^reference: expected a model of .*, got {found}"):
        if tuner == "papa":
            papa_finetune(pixel_model, images(4), [1, -1, 1, -1], **kw)
        else:
            finetune_on_samples(pixel_model, images(4), **kw)


def test_a_reference_with_another_sampling_scheduler_is_fine(pixel_model):
    """DDPM sampling over the same training schedule is the same reference."""
    from diffusers import DDPMScheduler

    reference = PixelDiffusion(pixel_model.unet, DDPMScheduler.from_config(pixel_model.scheduler.config))
    tuned = papa_finetune(pixel_model, images(4), [1, -1, 1, -1], steps=1, batch_size=2, reference=reference,
                          progress_bar=False, generator=gen(0))
    assert tuned.unet is not pixel_model.unet


@pytest.mark.parametrize("hw", [1, 6, 16])
def test_latent_images_of_another_size_are_refused_before_encoding(counted_latent, hw):
    """1 x 1 images failed inside the autoencoder's conv (a RuntimeError); 6 x 6 ones were encoded, then refused."""
    model, encoded = counted_latent
    expected = r"`n x 1 x 8 x 8` \(the latents' 4 x 4 times the autoencoder's downsampling 2\)"
    with pytest.raises(InputDataError, match=rf"^images: expected a tensor of shape {expected}, got \(2, 1, {hw}"):
        papa_finetune(model, torch.zeros(2, 1, hw, hw), [1, -1], steps=1, batch_size=2, progress_bar=False)
    assert encoded == []
