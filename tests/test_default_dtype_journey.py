"""A BoTorch user's scripts begin with ``torch.set_default_dtype(torch.float64)``: the workflows keep their dtypes.

The suite runs with torch's default float32; each test here changes the default only through the
``default_dtype`` fixture, which puts the caller's back afterwards.
"""

from __future__ import annotations

import json

import pytest
import torch

from papa_bayes import LinearReward, PreferenceData, fit
from papa_bayes.acquisition import select_queries
from papa_bayes.diffusion import (
    MidBlockFeatures,
    PixelDiffusion,
    load_base_model,
    load_feature_map,
    make_digits_unet,
    make_sampling_scheduler,
    sample,
    save_feature_map,
)
from papa_bayes.users import SimulatedUser, simulate_comparisons

TINY_UNET = {"block_out_channels": (8, 16), "layers_per_block": 1, "norm_num_groups": 4,
             "down_block_types": ("DownBlock2D", "DownBlock2D"), "up_block_types": ("UpBlock2D", "UpBlock2D")}


@pytest.fixture
def default_dtype():
    """``torch.set_default_dtype``, the default restored after the test (whatever it set)."""
    before = torch.get_default_dtype()
    yield torch.set_default_dtype
    torch.set_default_dtype(before)


def tiny_model(seed: int = 0) -> PixelDiffusion:
    torch.manual_seed(seed)
    return PixelDiffusion(make_digits_unet(**TINY_UNET).eval().requires_grad_(False), make_sampling_scheduler())


def test_make_digits_unet_is_float32_with_the_same_weights_under_a_float64_default(default_dtype):
    # was: the UNet came out in float64, its initialization drawn in float64 (weights up to 0.6 apart from the
    # same seed's under float32): train-base from a float64 script trained another model
    reference = [p.clone() for p in tiny_model().unet.parameters()]
    default_dtype(torch.float64)
    unet = tiny_model().unet
    assert {p.dtype for p in unet.parameters()} == {torch.float32}
    assert all(torch.equal(a, b) for a, b in zip(reference, unet.parameters()))
    assert torch.get_default_dtype() == torch.float64  # the caller's default is left as it was


def test_load_base_model_dtype_none_is_float32_under_a_float64_default(default_dtype):
    default_dtype(torch.float64)
    # was: float64 (diffusers' default follows torch's), against the documented float32
    assert load_base_model(dtype=None).dtype == torch.float32
    assert load_base_model().dtype == torch.float32


def test_denoiser_reads_float64_inputs_in_its_own_dtype(default_dtype):
    model = tiny_model()
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor(500)
    expected = model.conditional_output(x, t)
    default_dtype(torch.float64)
    # was: RuntimeError "Input type (double) and bias type (float) should be the same" (a float64 x_t, as
    # torch.randn makes under this default, reached the float32 UNet: fine-tuning in a session crashed so)
    out = model.conditional_output(x.double(), t)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    torch.testing.assert_close(model.model_output(x.double(), t), expected, rtol=0, atol=0)


def test_latent_denoiser_reads_float64_latents_in_its_own_dtype(default_dtype):
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

    from papa_bayes.diffusion import LatentDiffusion

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=4, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=8, norm_num_groups=4, attention_head_dim=2).eval().requires_grad_(False)
    vae = AutoencoderKL(in_channels=1, out_channels=1, latent_channels=4, block_out_channels=(8, 16),
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        norm_num_groups=4, sample_size=8, layers_per_block=1).eval().requires_grad_(False)
    cond = torch.randn(1, 3, 8, generator=torch.Generator().manual_seed(1))
    model = LatentDiffusion(unet, vae, DDIMScheduler(clip_sample=False), encoder_hidden_states=cond, cfg_scale=2.0,
                            negative_encoder_hidden_states=torch.zeros(1, 3, 8))
    x = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    t = torch.tensor(500)
    expected = (model.conditional_output(x, t), model.model_output(x, t))
    default_dtype(torch.float64)
    # was: the RuntimeError above (the conditioning followed the float64 latents too)
    got = (model.conditional_output(x.double(), t), model.model_output(x.double(), t))
    assert {g.dtype for g in got} == {torch.float32}
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=0, atol=0)


def test_midblock_features_fitted_under_float64_default_save_float32_and_keep_the_fingerprint(default_dtype, tmp_path):
    from safetensors import safe_open

    model = tiny_model()
    samples = sample(model, 6, num_inference_steps=2, progress_bar=False,
                     generator=torch.Generator().manual_seed(0)).samples
    reference = MidBlockFeatures(model, num_features=2).fit(samples)
    default_dtype(torch.float64)
    fmap = MidBlockFeatures(model, num_features=2).fit(samples)
    # was: float64 statistics (unrounded), saved in float64, and a fingerprint other than the same map's fitted
    # under float32: a session begun in one process refused the map of another
    assert {b.dtype for b in fmap.buffers()} == {torch.float32}
    assert fmap.fingerprint() == reference.fingerprint()
    save_feature_map(fmap, tmp_path / "mb")
    with safe_open(str(tmp_path / "mb" / "feature_map.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float32}
    loaded = load_feature_map(tmp_path / "mb", model=model)
    assert loaded.fingerprint() == reference.fingerprint()
    torch.testing.assert_close(loaded(samples), reference(samples), rtol=0, atol=0)


def test_finetune_on_samples_runs_under_a_float64_default(default_dtype):
    from papa_bayes.diffusion.finetune import finetune_on_samples

    model = tiny_model()
    samples = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1

    def tune():
        return finetune_on_samples(model, samples, steps=2, batch_size=16, progress_bar=False,
                                   generator=torch.Generator().manual_seed(0))

    under_float32 = tune()
    default_dtype(torch.float64)
    # was: the RuntimeError above, from its float64 noise; then other weights, the training noise drawn in float64
    tuned = tune()
    assert tuned.dtype == torch.float32
    moved = [not torch.equal(a, b) for a, b in zip(model.unet.parameters(), tuned.unet.parameters())]
    assert any(moved) and all(bool(torch.isfinite(p).all()) for p in tuned.unet.parameters())
    for a, b in zip(under_float32.unet.parameters(), tuned.unet.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def _readme_fit_and_queries() -> tuple[torch.Tensor, torch.Tensor, list]:
    items = torch.randn(12, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    user = SimulatedUser(torch.tensor([1.0, -0.5, 0.3], dtype=torch.float64), seed=0)
    data = simulate_comparisons(user, items, 15, generator=torch.Generator().manual_seed(1))
    post = fit(LinearReward(), data, seed=0)
    post = post.update(data.append(comparisons=[[3, 7]]))
    chosen = select_queries(post, items, k=2, generator=torch.Generator().manual_seed(0))
    return post.utility(items), post.utility(items.float()), chosen.indices.tolist()


def test_inference_and_queries_are_the_same_under_either_default(default_dtype):
    u64, u32, chosen = _readme_fit_and_queries()
    default_dtype(torch.float64)
    v64, v32, again = _readme_fit_and_queries()
    assert (v64.dtype, v32.dtype) == (torch.float64, torch.float32)  # the features' dtype, not the default's
    torch.testing.assert_close(v64, u64, rtol=0, atol=1e-12)
    torch.testing.assert_close(v32, u32, rtol=0, atol=0)
    assert again == chosen


def test_guided_digits_samples_are_the_same_under_either_default(default_dtype):
    from papa_bayes.diffusion import Guidance, PosteriorObjective

    def readme() -> torch.Tensor:
        model, phi = load_base_model(), load_feature_map()
        base = sample(model, 8, num_inference_steps=3, progress_bar=False,
                      generator=torch.Generator().manual_seed(0)).images
        post = fit(LinearReward(), PreferenceData(items=phi(base).detach(), ratings=[[0, 1], [1, -1], [2, 1]]))
        objective = PosteriorObjective(post, phi, kind="region").calibrate(base)
        return sample(model, 4, num_inference_steps=3, guidance=Guidance(objective, scale=0.5), progress_bar=False,
                      generator=torch.Generator().manual_seed(1)).images

    expected = readme()
    default_dtype(torch.float64)
    out = readme()
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    json.dumps(out.tolist())  # plain floats out


def test_diffusion_session_finetunes_under_a_float64_default(default_dtype, tmp_path):
    from safetensors import safe_open

    from papa_bayes.demo import DigitsUser, make_setup
    from papa_bayes.diffusion.candidates import DiffusionCandidates
    from papa_bayes.session import PreferenceSession

    default_dtype(torch.float64)
    setup = make_setup()
    assert {b.dtype for b in setup.feature_map.buffers()} == {torch.float32}  # was float64 for the mid-block part
    src = DiffusionCandidates(setup.model, setup.feature_map, setup.guard, num_base=16, pool_steps=3,
                              recommend_steps=3, oversample=2.0, scale=0.5, seed=0)
    # was: the RuntimeError above at the first fine-tuning, after the round's answer was committed
    with PreferenceSession(tmp_path / "s.db", src, DigitsUser(setup.person), pool_size=4, seed=0, finetune_every=2,
                           finetune_options={"num_samples": 4, "steps": 2, "batch_size": 2}) as session:
        session.run(2, progress_bar=False)
        assert [h.get("finetuned", 0.0) for h in session.history] == [0.0, 1.0]
        weights = session.finetune_path / "unet" / "diffusion_pytorch_model.safetensors"
        assert src.finetuned is not None and src.finetuned.dtype == torch.float32
        rec = session.recommend(2)
    with safe_open(str(weights), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float32}
    assert rec.images.dtype == torch.float32 and rec.features.dtype == torch.float64


def test_fixture_restores_the_default():
    assert torch.get_default_dtype() == torch.float32  # the tests above set float64: it did not leak
