"""A resumed diffusion session is refused on another model; PCA maps refuse samples of another shape."""

from __future__ import annotations

import json

import pytest
import torch

from papa_bayes.diffusion import DiffusionCandidates, ManifoldGuard, PCAFeatures, sample
from papa_bayes.diffusion.features import load_feature_map, save_feature_map
from papa_bayes.exceptions import InputDataError
from papa_bayes.session import PreferenceSession
from papa_bayes.store import PreferenceStore
from papa_bayes.users import CallbackUser


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _source(model, *, fit_on=None, **kwargs) -> DiffusionCandidates:
    """A small source on ``model``, its feature map and guard fitted on samples of ``fit_on`` (default ``model``)."""
    reference = sample(fit_on or model, 16, num_inference_steps=2, generator=gen(0), progress_bar=False)
    phi = PCAFeatures.fit(reference.images, num_features=2)
    options = dict(scale=0.5, num_base=4, pool_steps=2, recommend_steps=2, recommend_scale="pool") | kwargs
    return DiffusionCandidates(model, phi, ManifoldGuard(reference.images), **options)


def _refusal(path, source) -> str:
    with pytest.raises(InputDataError) as err:
        PreferenceSession.resume(path, source, USER)
    message = str(err.value)
    assert err.value.field == "source" and message.startswith("source: expected the session's source"), message
    return message


USER = CallbackUser(lambda a, b: 0)


def test_a_pixel_session_resumed_with_other_weights_or_scheduler_is_refused(tmp_path, make_pixel_model):
    """Another model's samples were not what the stored answers were about: the resume went on silently."""
    from diffusers import DDIMScheduler
    tiny_pixel_model = make_pixel_model

    path, base = tmp_path / "s.db", tiny_pixel_model()  # feature maps fitted on its samples: one map throughout
    PreferenceSession(path, _source(base), USER, pool_size=4, num_draws=8).run(1, progress_bar=False)

    retrained = tiny_pixel_model()
    with torch.no_grad():
        next(iter(retrained.unet.parameters())).add_(0.01)  # other weights, one config
    message = _refusal(path, _source(retrained, fit_on=base))
    assert "model.weights=" in message and "scheduler" not in message and "feature_map" not in message, message

    rescheduled = tiny_pixel_model()
    rescheduled.scheduler = DDIMScheduler.from_config(rescheduled.scheduler.config, beta_end=0.03)
    message = _refusal(path, _source(rescheduled, fit_on=base))
    # The one setting that differs, not the scheduler's whole config.
    assert "model.scheduler.beta_end=0.02" in message and "model.scheduler.beta_end=0.03" in message, message
    assert "beta_start" not in message and "weights" not in message, message

    message = _refusal(path, _source(tiny_pixel_model("ddim", "v_prediction"), fit_on=base))
    assert "model.scheduler.prediction_type='epsilon'" in message, message
    message = _refusal(path, _source(tiny_pixel_model(dropout=0.1), fit_on=base))  # other config
    assert "model.denoiser.dropout=0.0" in message and "model.denoiser.dropout=0.1" in message, message

    from papa_bayes.diffusion.candidates import model_fingerprint

    rebuilt = model_fingerprint(tiny_pixel_model())  # the same model rebuilt, in float16 too (rounding alone
    assert model_fingerprint(tiny_pixel_model().to(dtype=torch.float16))["weights"] == rebuilt["weights"]  # ...)
    PreferenceSession.resume(path, _source(tiny_pixel_model()), USER).close()


def test_a_latent_session_refuses_other_conditioning_or_autoencoder_scaling(tmp_path, make_latent_model):
    """Other prompt embeddings, classifier-free guidance or latent scaling: other samples, accepted silently."""
    tiny_latent_model = make_latent_model
    path, base = tmp_path / "s.db", tiny_latent_model()  # feature maps fitted on its samples: one map throughout
    PreferenceSession(path, _source(base), USER, pool_size=4, num_draws=8).run(1, progress_bar=False)

    prompted = tiny_latent_model()
    prompted.encoder_hidden_states = torch.randn(1, 3, 8, generator=gen(5))  # another prompt's embeddings
    message = _refusal(path, _source(prompted, fit_on=base))
    assert "model.conditioning=" in message and "vae" not in message and "feature_map" not in message, message

    rescaled = tiny_latent_model()
    rescaled.vae.register_to_config(scaling_factor=0.5)
    message = _refusal(path, _source(rescaled, fit_on=base))
    assert "model.vae.scaling_factor=0.18215" in message and "model.vae.scaling_factor=0.5" in message, message

    negative = torch.zeros(1, 3, 8)
    guided = tiny_latent_model(negative_encoder_hidden_states=negative, cfg_scale=3.0)
    message = _refusal(path, _source(guided, fit_on=base))
    assert "model.cfg_scale=1.0" in message and "model.cfg_scale=3.0" in message, message

    # A prompt changed on purpose: accepted when the source says so; the model itself is still compared.
    PreferenceSession.resume(path, _source(prompted, fit_on=base, accept_new_conditioning=True), USER).close()
    with pytest.raises(InputDataError, match=r"model\.vae\.scaling_factor=0\.5"):
        PreferenceSession.resume(path, _source(rescaled, fit_on=base, accept_new_conditioning=True), USER)
    PreferenceSession.resume(path, _source(tiny_latent_model()), USER).close()


def test_a_store_written_before_the_fingerprint_resumes_with_any_model(tmp_path, make_pixel_model):
    """Stores without the model's record (or one of its keys) compare only what they hold (as before)."""
    tiny_pixel_model = make_pixel_model
    path = tmp_path / "s.db"
    PreferenceSession(path, _source(tiny_pixel_model()), USER, pool_size=4, num_draws=8).run(1, progress_bar=False)
    store = PreferenceStore(path)
    cfg = store.config
    assert set(cfg["source"]["model"]) >= {"weights", "scheduler", "denoiser"}
    cfg["source"]["model"]["scheduler"].pop("timestep_spacing")  # as an older diffusers wrote its config
    store.set_config(cfg)
    PreferenceSession.resume(path, _source(tiny_pixel_model()), USER).close()
    cfg["source"].pop("model")
    store.set_config(cfg)
    store.close()
    retrained = tiny_pixel_model()
    with torch.no_grad():
        next(iter(retrained.unet.parameters())).add_(0.01)
    session = PreferenceSession.resume(path, _source(retrained, fit_on=tiny_pixel_model()), USER)
    assert session.step().round == 1
    session.close()


def test_a_session_resumes_after_finetuning_and_keeps_the_base_fingerprint(tmp_path, make_pixel_model):
    """The fine-tuned weights saved beside the store reload on resume; the base model's fingerprint is compared."""
    tiny_pixel_model = make_pixel_model
    path = tmp_path / "s.db"
    source = _source(tiny_pixel_model())
    before = source.config()["model"]
    session = PreferenceSession(path, source, USER, pool_size=4, num_draws=8, finetune_every=1,
                                finetune_options={"num_samples": 4, "steps": 1, "batch_size": 2})
    session.run(1, progress_bar=False)
    session.close()
    assert source.finetuned is not None and (session.finetune_path / "unet" / "config.json").is_file()
    assert source.config()["model"] == before  # the base, untouched by the fine-tuning
    again = _source(tiny_pixel_model())
    resumed = PreferenceSession.resume(path, again, USER)
    assert again.finetuned is not None and resumed.round == 1
    resumed.close()


def test_a_pca_map_fitted_on_latents_refuses_images_of_as_many_values(tmp_path):
    """Fitted on `4 x 4 x 4` latents, the map read `1 x 8 x 8` decoded images (64 values too) without an error."""
    latents = torch.randn(12, 4, 4, 4, generator=gen(0))
    pca = PCAFeatures.fit(latents, num_features=3)
    with pytest.raises(InputDataError, match=r"^images: expected samples of shape `n x 4 x 4 x 4` .*"
                                             r"input_space='sample'.*got \(2, 1, 8, 8\)"):
        pca(torch.randn(2, 1, 8, 8))
    assert pca.input_shape == (4, 4, 4) and pca(latents[:2]).shape == (2, 3)
    with pytest.raises(InputDataError, match=r"got \(2, 64\)"):
        pca(latents[:2].reshape(2, -1))
    # Kept through save and load; the fingerprint is that of the same map without a shape (as saved before).
    loaded = load_feature_map(save_feature_map(pca, tmp_path / "pca"))
    assert loaded.input_shape == (4, 4, 4) and torch.allclose(loaded(latents[:3]), pca(latents[:3]), atol=1e-6)
    bare = PCAFeatures(pca.mean, pca.components, pca.std)
    assert bare.input_shape is None and bare.fingerprint() == pca.fingerprint() == loaded.fingerprint()
    assert bare(torch.randn(2, 1, 8, 8)).shape == (2, 3)  # no shape kept: any layout of 64 values, as before
    with pytest.raises(InputDataError, match=r"^input_shape: expected a shape of D = 64 values"):
        PCAFeatures(pca.mean, pca.components, pca.std, input_shape=(1, 8, 9))


def test_pca_maps_saved_before_the_shape_load_as_before(tmp_path):
    """The committed map (no shape saved) loads, reads images and keeps the fingerprint sessions stored."""
    committed = load_feature_map()
    assert committed.input_shape is None and committed.fingerprint() == "7cb0937820a30b51"
    assert committed(torch.zeros(2, 1, 8, 8)).shape == (2, committed.num_features)
    path = save_feature_map(PCAFeatures.fit(torch.randn(12, 1, 8, 8, generator=gen(1)), num_features=2),
                            tmp_path / "old")
    saved = json.loads((path / "feature_map.json").read_text())
    assert saved.pop("input_shape") == [1, 8, 8]
    (path / "feature_map.json").write_text(json.dumps(saved))  # as written before the shape was kept
    assert load_feature_map(path).input_shape is None
    saved["input_shape"] = "1x8x8"
    (path / "feature_map.json").write_text(json.dumps(saved))
    with pytest.raises(InputDataError, match="input_shape"):
        load_feature_map(path)
