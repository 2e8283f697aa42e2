"""Fine-tuners on tiny UNets built from configs: distillation, PAPA, checkpoints, bad input."""

from __future__ import annotations


import pytest
import torch

from papa_bayes.diffusion import (
    Guidance,
    PCAFeatures,
    PosteriorObjective,
    distill_guidance,
    finetune_on_samples,
    load_digits_splits,
    load_finetuned,
    papa_finetune,
    sample,
    save_finetuned,
)
from papa_bayes.diffusion.sampler import join_model_output
from papa_bayes.exceptions import InputDataError, ModelError



def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.unet.state_dict().items()}


def assert_unchanged(model, before: dict[str, torch.Tensor]) -> None:
    after = model.unet.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any(p.requires_grad for p in model.unet.parameters())


def max_weight_change(a, b) -> float:
    sa, sb = a.unet.state_dict(), b.unet.state_dict()
    return max(float((sa[k].float() - sb[k].float()).abs().max()) for k in sa)


def denoising_errors(model, x0: torch.Tensor, t: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """`n` per-sample denoising errors at fixed noise (lower = higher ELBO term)."""
    noise = torch.randn(x0.shape, generator=gen(seed))
    a = model.scheduler.alphas_cumprod[t].view(-1, 1, 1, 1).float()
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
    with torch.no_grad():
        out = model.conditional_output(x_t, t)
    return (out - join_model_output(x0, noise, a, model.prediction_type)).pow(2).flatten(1).mean(1)


@pytest.fixture(scope="module")
def warm_model(pixel_model):
    """The tiny UNet after 100 steps on real digits: samples in a sane range, as a base model's."""
    digits = load_digits_splits().generator.images[:256]
    return finetune_on_samples(pixel_model, digits, steps=100, lr=3e-3, batch_size=32, anchor_weight=0.0,
                               generator=gen(9), progress_bar=False)


@pytest.fixture
def objective(warm_model, make_posterior):
    """Posterior-mean objective over PCA features of the warm model's samples."""
    base = sample(warm_model, 64, num_inference_steps=4, generator=gen(0), progress_bar=False)
    pca = PCAFeatures.fit(base.images, num_features=4)
    draws = torch.tensor([1.0, -0.5, 0.3, 0.0]) + 0.1 * torch.randn(16, 4, generator=gen(5))
    return PosteriorObjective(make_posterior(draws), pca, kind="mean")


@pytest.fixture(scope="module")
def labeled():
    """Two kinds of 8x8 images: liked ones bright on the left, disliked ones on the right."""
    g = gen(3)
    left = torch.full((16, 1, 8, 8), -0.8)
    left[..., :4] = 0.8
    right = left.flip(-1)
    images = torch.cat([left, right]) + 0.05 * torch.randn(32, 1, 8, 8, generator=g)
    signs = torch.cat([torch.ones(16), -torch.ones(16)])
    return images, signs


def test_distillation_moves_unguided_samples_toward_the_objective(warm_model, objective):
    before_weights = snapshot(warm_model)
    guidance = Guidance(objective, scale=2.0)
    kw = dict(num_inference_steps=4, generator=gen(1), progress_bar=False)
    train = dict(steps=40, batch_size=32, lr=3e-3, anchor_weight=0.1, progress_bar=False)
    plain = sample(warm_model, 64, **kw)
    guided = sample(warm_model, 64, guidance=guidance, **kw)
    distilled = distill_guidance(warm_model, guidance, num_samples=64, num_inference_steps=4, generator=gen(2),
                                 **train)
    # Control: the same fine-tune on unguided samples.
    control = finetune_on_samples(warm_model, sample(warm_model, 64, num_inference_steps=4, generator=gen(2),
                                                     progress_bar=False).samples, generator=gen(2), **train)
    with torch.no_grad():
        v_plain, v_guided, v_after, v_control = (
            float(objective(sample(m, 64, **kw).images if m is not None else o.images).mean())
            for m, o in ((None, plain), (None, guided), (distilled, None), (control, None)))
    gap = v_guided - v_plain
    assert gap > 1.0  # the setup has something to distill
    # Unguided samples of the distilled model close a good share of the gap (about 45%
    # in 40 steps); the same fine-tune on unguided samples drifts by about 10%.
    assert v_after - v_plain > 0.3 * gap, (v_plain, v_after, v_control, v_guided)
    assert v_after - v_control > 0.2 * gap, (v_plain, v_after, v_control, v_guided)
    assert_unchanged(warm_model, before_weights)
    assert max_weight_change(distilled, warm_model) > 1e-4
    assert distilled.unet is not warm_model.unet and not distilled.unet.training
    assert distilled.scheduler is warm_model.scheduler


def test_anchor_weight_keeps_the_denoiser_near_the_base(pixel_model):
    targets = torch.full((16, 1, 8, 8), -0.7)  # (+0.7, none negative, warns: images in [0, 1]?)
    kw = dict(steps=15, lr=1e-3, batch_size=16, progress_bar=False)
    free = finetune_on_samples(pixel_model, targets, anchor_weight=0.0, generator=gen(4), **kw)
    anchored = finetune_on_samples(pixel_model, targets, anchor_weight=20.0, generator=gen(4), **kw)
    x_t = torch.randn(16, 1, 8, 8, generator=gen(5))
    t = torch.full((16,), 500)

    def distance(model) -> float:
        with torch.no_grad():
            return float((model.conditional_output(x_t, t) - pixel_model.conditional_output(x_t, t)).pow(2).mean())

    assert distance(anchored) < 0.5 * distance(free)


def test_papa_raises_likelihood_of_liked_relative_to_disliked(pixel_model, labeled):
    images, signs = labeled
    before_weights = snapshot(pixel_model)
    tuned = papa_finetune(pixel_model, images, signs, steps=40, lr=1e-3, batch_size=32, timestep_cutoff=0.4,
                          generator=gen(6), progress_bar=False)
    t = torch.randint(400, 1000, (32,), generator=gen(7))
    base_err = denoising_errors(pixel_model, images, t)
    tuned_err = denoising_errors(tuned, images, t)
    liked, disliked = signs > 0, signs < 0
    change = tuned_err - base_err
    assert float(tuned_err[liked].mean()) < 0.9 * float(base_err[liked].mean())
    assert float(change[liked].mean()) < float(change[disliked].mean())
    assert float(tuned_err[disliked].mean()) > float(base_err[disliked].mean())
    assert_unchanged(pixel_model, before_weights)


def test_papa_dislikes_cannot_diverge(pixel_model, labeled):
    """All dislikes, a large step, no regulariser: the bound keeps errors finite; without it they run off."""
    images, _ = labeled
    t = torch.randint(400, 1000, (32,), generator=gen(9))
    base_err = denoising_errors(pixel_model, images, t).mean()
    ratios = {}
    for bound in (0.5, 1e6):
        tuned = papa_finetune(pixel_model, images, -torch.ones(32), steps=40, lr=3e-3, dislike_weight=10.0,
                              dislike_bound=bound, regularizer_weight=0.0, batch_size=32, generator=gen(8),
                              progress_bar=False)
        ratios[bound] = float(denoising_errors(tuned, images, t).mean() / base_err)
    # Adam overshoots the per-sample bound a little (about 3x with bound 0.5), never without limit.
    assert 1.0 < ratios[0.5] < 4.0 and ratios[1e6] > 2 * ratios[0.5], ratios
    out = sample(tuned, 8, num_inference_steps=4, generator=gen(1), progress_bar=False)
    assert bool(torch.isfinite(out.images).all())


def test_save_load_round_trip(pixel_model, labeled, tmp_path):
    images, signs = labeled
    tuned = papa_finetune(pixel_model, images, signs, steps=3, lr=1e-3, generator=gen(0), progress_bar=False)
    path = save_finetuned(tuned, tmp_path / "tuned", info={"method": "papa"})
    assert (path / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    for loaded in (load_finetuned(path), load_finetuned(path, base=pixel_model)):
        assert type(loaded.scheduler) is type(tuned.scheduler)
        assert max_weight_change(loaded, tuned) == 0.0
        kw = dict(num_inference_steps=3, progress_bar=False)
        torch.testing.assert_close(sample(loaded, 4, generator=gen(2), **kw).images,
                                   sample(tuned, 4, generator=gen(2), **kw).images)
    with pytest.raises(InputDataError, match="path"):
        load_finetuned(tmp_path / "missing")


def test_latent_model_fine_tunes_end_to_end(latent_model):
    before_weights = snapshot(latent_model)
    images = torch.rand(6, 1, 8, 8, generator=gen(0)) * 2 - 1
    tuned = papa_finetune(latent_model, images, [1, -1, 1, -1, 1, 1], steps=3, lr=1e-3, batch_size=4,
                          generator=gen(1), progress_bar=False)
    latents = torch.randn(6, *latent_model.sample_shape, generator=gen(2))
    distilled = finetune_on_samples(latent_model, latents, steps=3, lr=1e-3, batch_size=4, generator=gen(3),
                                    progress_bar=False)
    for model in (tuned, distilled):
        assert max_weight_change(model, latent_model) > 0
        out = sample(model, 2, num_inference_steps=2, generator=gen(4), progress_bar=False)
        assert out.images.shape == (2, 1, 8, 8) and bool(torch.isfinite(out.images).all())
    assert_unchanged(latent_model, before_weights)
    with pytest.raises(InputDataError, match="images"):
        papa_finetune(latent_model, torch.zeros(2, 3, 8, 8), [1, -1], steps=1, progress_bar=False)


def test_mixed_precision_runs_and_returns_the_base_dtype(pixel_model, labeled):
    images, signs = labeled
    tuned = papa_finetune(pixel_model, images, signs, steps=2, mixed_precision=True, generator=gen(0),
                          progress_bar=False)
    assert tuned.dtype == pixel_model.dtype == torch.float32


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"images": torch.zeros(4, 1, 7, 8)}, "images"),
        ({"images": torch.zeros(4, 64)}, "images"),
        ({"images": torch.full((4, 1, 8, 8), float("nan"))}, "images"),
        ({"signs": [1, -1, 0, 1]}, "signs"),
        ({"signs": [1, -1, 2, 1]}, "signs"),
        ({"signs": [1, -1, 1]}, "signs"),
        ({"signs": torch.tensor([True, False, True, True])}, "signs"),
        ({"lr": -1e-4}, "lr"),
        ({"lr": float("nan")}, "lr"),
        ({"steps": 0}, "steps"),
        ({"timestep_cutoff": 1.0}, "timestep_cutoff"),
        ({"regularizer_weight": -1.0}, "regularizer_weight"),
        ({"dislike_bound": 0.0}, "dislike_bound"),
        ({"device": "cpux"}, "device"),  # was PyTorch's RuntimeError
        ({"device": "cuda:99"}, "device"),  # was an AssertionError (no CUDA) or a CUDA error
        ({"mixed_precision": "no"}, "mixed_precision"),  # "no" switched bf16 autocast on
        ({"lora_alpha": -1.0}, "lora_alpha"),  # was ignored without lora_rank
        ({"lora_rank": 2, "lora_targets": "to_q"}, "lora_targets"),  # was LoRA on modules 't', 'o', '_', 'q'
    ],
)
def test_papa_bad_input(pixel_model, kwargs, field):
    args = {"images": -torch.ones(4, 1, 8, 8), "signs": [1, -1, 1, -1], **kwargs}  # a blank digit
    with pytest.raises(InputDataError) as info:
        papa_finetune(pixel_model, args.pop("images"), args.pop("signs"), progress_bar=False, **args)
    assert info.value.field == field


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"samples": torch.zeros(4, 1, 8)}, "samples"),
        ({"samples": torch.zeros(4, 3, 8, 8)}, "samples"),
        ({"lr": -1.0}, "lr"),
        ({"anchor_weight": -0.1}, "anchor_weight"),
        ({"batch_size": 0}, "batch_size"),
        ({"device": "cpux"}, "device"),
        ({"mixed_precision": "no"}, "mixed_precision"),
    ],
)
def test_distillation_bad_input(pixel_model, kwargs, field):
    args = {"samples": torch.zeros(4, 1, 8, 8), **kwargs}
    with pytest.raises(InputDataError) as info:
        finetune_on_samples(pixel_model, args.pop("samples"), progress_bar=False, **args)
    assert info.value.field == field
    with pytest.raises(InputDataError, match="guidance"):
        distill_guidance(pixel_model, lambda x: x.mean((1, 2, 3)), progress_bar=False)
    with pytest.raises(InputDataError, match="num_samples"):
        distill_guidance(pixel_model, Guidance(lambda x: x.mean((1, 2, 3))), num_samples=-3, progress_bar=False)


def test_lora_without_peft_is_a_clear_error(pixel_model, labeled, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "peft", None)  # `import peft` now fails as if it were absent
    images, signs = labeled
    with pytest.raises(ModelError, match="pip install peft"):
        papa_finetune(pixel_model, images, signs, steps=1, lora_rank=4, progress_bar=False)
    with pytest.raises(ModelError, match="pip install peft"):
        distill_guidance(pixel_model, Guidance(lambda x: x.mean((1, 2, 3))), lora_rank=4, progress_bar=False)


def test_lora_fine_tune_merges_into_a_plain_unet(latent_model):  # peft is a test dependency
    latents = torch.randn(6, *latent_model.sample_shape, generator=gen(2))
    tuned = finetune_on_samples(latent_model, latents, steps=3, lr=1e-2, lora_rank=2, generator=gen(3),
                                progress_bar=False)
    assert type(tuned.unet) is type(latent_model.unet)
    assert max_weight_change(tuned, latent_model) > 0


def test_load_finetuned_keeps_the_saved_scheduler_and_checks_base(make_pixel_model, tmp_path):
    ddpm, ddim = make_pixel_model("ddpm"), make_pixel_model("ddim")
    path = save_finetuned(ddpm, tmp_path / "ddpm")
    for loaded in (load_finetuned(path), load_finetuned(path, base=ddim)):
        assert type(loaded.scheduler).__name__ == "DDPMScheduler"  # was the base's DDIM with base=
    assert type(ddim.scheduler).__name__ == "DDIMScheduler"  # the base is untouched
    with pytest.raises(InputDataError) as info:  # was AttributeError: 'str' object has no attribute 'device'
        load_finetuned(path, base="x")
    assert info.value.field == "base"


def test_numbers_are_checked_under_their_own_names(pixel_model, labeled):
    images, signs = labeled
    g = Guidance(lambda x: x.mean((1, 2, 3)))
    cases = [
        (lambda: distill_guidance(pixel_model, g, sample_batch_size=0, progress_bar=False), "sample_batch_size"),
        (lambda: distill_guidance(pixel_model, g, lora_rank=2, lora_alpha=0.0, progress_bar=False), "lora_alpha"),
        (lambda: finetune_on_samples(pixel_model, images, steps=1, lora_rank=2, lora_alpha=-1.0,
                                     progress_bar=False), "lora_alpha"),
        (lambda: papa_finetune(pixel_model, images, signs, steps=1, lr="0.001", progress_bar=False), "lr"),
    ]
    for call, field in cases:
        with pytest.raises(InputDataError) as info:
            call()
        assert info.value.field == field


def test_distillation_checks_its_options_before_sampling(pixel_model, monkeypatch):
    import papa_bayes.diffusion.finetune.distill as distill

    def no_sampling(*args, **kwargs):
        raise AssertionError("sampled before checking the arguments")

    monkeypatch.setattr(distill, "sample", no_sampling)
    g = Guidance(lambda x: x.mean((1, 2, 3)))
    for args, kwargs, field in (((pixel_model, g), {"device": "cpux"}, "device"),
                                ((pixel_model, g), {"generator": "seed"}, "generator"),  # was AttributeError
                                ((pixel_model, g), {"mixed_precision": "yes"}, "mixed_precision"),
                                (("model", g), {}, "model")):  # was AttributeError
        with pytest.raises(InputDataError) as info:
            distill_guidance(*args, progress_bar=False, **kwargs)
        assert info.value.field == field


def test_training_copy_and_encoder_check_their_arguments(pixel_model, latent_model):
    from papa_bayes.diffusion.finetune.common import TrainingCopy, encode_images

    run = TrainingCopy.create(pixel_model, generator=gen(0))
    weight = run.model.unet.conv_in.weight

    def step(i):
        return weight.pow(2).sum(), {}

    for kwargs, field in (({"steps": 0}, "steps"),  # returned no history, silently
                          ({"lr": -1.0}, "lr"), ({"lr": float("nan")}, "lr"),  # were AdamW's ValueError
                          ({"max_grad_norm": 0.0}, "max_grad_norm")):  # zeroed every gradient, silently
        with pytest.raises(InputDataError) as info:
            run.train(step, **{"steps": 1, "lr": 1e-3, "desc": "t", "progress_bar": False, **kwargs})
        assert info.value.field == field
    for loss in (1.0, torch.ones(2, requires_grad=True)):  # were TypeError / RuntimeError
        with pytest.raises(InputDataError, match="^step:"):
            run.train(lambda i: (loss, {}), steps=1, lr=1e-3, desc="t", progress_bar=False)
    images = torch.zeros(2, 1, 8, 8)
    for args, kwargs, field in (((latent_model, images), {"batch_size": 0}, "batch_size"),  # ValueError from range
                                (("model", images), {}, "model")):  # was AttributeError
        with pytest.raises(InputDataError) as info:
            encode_images(*args, **kwargs)
        assert info.value.field == field


def test_checkpoint_arguments_are_checked(pixel_model, latent_model, tmp_path):
    with pytest.raises(InputDataError, match="^path:"):  # was TypeError from pathlib
        save_finetuned(pixel_model, None)
    path = save_finetuned(pixel_model, tmp_path / "pixel")
    for kwargs, field in (({"path": None}, "path"), ({"dtype": "float16"}, "dtype"),  # text loaded float32
                          ({"dtype": torch.int64}, "dtype"), ({"device": "cpux"}, "device"),
                          ({"base": pixel_model, "dtype": "float16"}, "dtype")):  # was TypeError from .to
        with pytest.raises(InputDataError) as info:
            load_finetuned(**{"path": path, **kwargs})
        assert info.value.field == field
    latent = save_finetuned(latent_model, tmp_path / "latent")
    with pytest.raises(InputDataError, match="^base:"):  # was diffusers' ValueError
        load_finetuned(latent, base=pixel_model)
    (path / "finetune.json").write_text("not json")
    with pytest.raises(InputDataError, match="^path:"):  # was JSONDecodeError
        load_finetuned(path)


def test_save_finetuned_refuses_a_file_path_and_bad_map_before_writing(pixel_model, tmp_path):
    (tmp_path / "taken").write_text("x")
    for path in (tmp_path / "taken", tmp_path / "taken" / "sub"):  # were FileExistsError / NotADirectoryError
        with pytest.raises(InputDataError, match="^path:.*not a file"):
            save_finetuned(pixel_model, path)
    with pytest.raises(InputDataError, match="^feature_map:"):
        save_finetuned(pixel_model, tmp_path / "fresh", feature_map="pca")
    with pytest.raises(InputDataError, match="^info:"):  # a list was written as the notes
        save_finetuned(pixel_model, tmp_path / "fresh", info=["distilled"])
    assert not (tmp_path / "fresh").exists()  # was a half-written checkpoint (unet/, scheduler/)


def test_saving_again_without_a_feature_map_drops_the_earlier_one(pixel_model, tmp_path):
    from papa_bayes.diffusion import load_feature_map

    phi = PCAFeatures.fit(torch.randn(16, 1, 8, 8), num_features=3)
    path = save_finetuned(pixel_model, tmp_path / "ckpt", feature_map=phi)
    assert load_feature_map(path / "features").num_features == 3
    save_finetuned(pixel_model, path)  # a new model, no map: the old map was left beside it
    assert not (path / "features").exists()


@pytest.mark.parametrize("damage", ["weights", "unet_config", "scheduler_config"])
def test_unreadable_checkpoints_are_ours_to_reject(pixel_model, tmp_path, damage):
    from papa_bayes.diffusion import load_base_model

    path = save_finetuned(pixel_model, tmp_path / "ckpt")
    if damage == "weights":
        (path / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    else:
        target = path / ("unet/config.json" if damage == "unet_config" else "scheduler/scheduler_config.json")
        target.write_text("{not json")
    for load in (lambda: load_finetuned(path), lambda: load_finetuned(path, base=pixel_model),
                 lambda: load_base_model(path)):
        with pytest.raises(InputDataError, match="^path:.*diffusers can read"):  # were diffusers' OSError
            load()


def test_low_precision_base_fine_tunes_under_mixed_precision(make_latent_model):
    """A float16 base with bf16 autocast: the frozen reference runs in its own dtype."""
    model = make_latent_model().to(dtype=torch.float16)
    before_weights = snapshot(model)
    latents = torch.randn(6, *model.sample_shape, generator=gen(2))
    images = torch.rand(4, 1, 8, 8, generator=gen(0)) * 2 - 1
    kw = dict(steps=2, lr=1e-2, batch_size=4, mixed_precision=True, generator=gen(3), progress_bar=False)
    for tuned in (finetune_on_samples(model, latents, **kw),  # were "mixed dtype (CPU)" RuntimeErrors
                  papa_finetune(model, images, [1, -1, 1, -1], **kw)):
        assert tuned.dtype == torch.float16 and max_weight_change(tuned, model) > 0
    assert_unchanged(model, before_weights)


def test_checkpoint_loaded_in_another_dtype_samples(latent_model, tmp_path):
    path = save_finetuned(latent_model, tmp_path / "latent")
    vae_dtype = next(latent_model.vae.parameters()).dtype
    loaded = load_finetuned(path, base=latent_model, dtype=torch.bfloat16)
    assert loaded.dtype == torch.bfloat16
    out = sample(loaded, 2, num_inference_steps=2, generator=gen(0), progress_bar=False)  # was a RuntimeError
    assert bool(torch.isfinite(out.images).all())
    assert next(latent_model.vae.parameters()).dtype == vae_dtype  # the base's autoencoder is untouched


@pytest.fixture
def adapted_model(make_latent_model):
    """A latent model whose denoiser carries the user's own LoRA adapter (diffusers' ``add_adapter``)."""
    from peft import LoraConfig

    model = make_latent_model()
    torch.manual_seed(1)
    model.unet.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=["to_q", "to_v"],
                                      init_lora_weights="gaussian"))
    with torch.no_grad():
        for name, p in model.unet.named_parameters():
            if "lora_B" in name:  # a trained adapter, not peft's zero initialisation
                p.normal_(0, 0.5, generator=gen(2))
    model.unet.requires_grad_(False)
    return model


def test_adapters_already_in_the_base_denoiser_are_kept(adapted_model, make_latent_model, tmp_path):
    x_t = torch.randn(2, *adapted_model.sample_shape, generator=gen(1))
    t = torch.tensor([500, 500])

    def output(model):
        with torch.no_grad():
            return model.conditional_output(x_t, t)

    assert float((output(adapted_model) - output(make_latent_model())).abs().max()) > 0.1  # the adapter matters
    latents = torch.randn(6, *adapted_model.sample_shape, generator=gen(2))
    kw = dict(steps=1, lr=1e-12, batch_size=4, generator=gen(3), progress_bar=False)
    for lora_rank in (None, 2):  # LoRA overwrote the user's adapter (both named "default")
        tuned = finetune_on_samples(adapted_model, latents, lora_rank=lora_rank, **kw)
        torch.testing.assert_close(output(tuned), output(adapted_model), atol=1e-4, rtol=1e-4)
        assert not any("lora" in key for key in tuned.unet.state_dict())
    kw = dict(num_inference_steps=2, progress_bar=False)
    for model in (adapted_model, tuned):  # the adapter's weights were saved under names diffusers cannot load
        loaded = load_finetuned(save_finetuned(model, tmp_path / "ckpt"), base=make_latent_model())
        torch.testing.assert_close(sample(loaded, 2, generator=gen(4), **kw).images,
                                   sample(model, 2, generator=gen(4), **kw).images, atol=1e-5, rtol=1e-5)
    assert any("lora" in key for key in adapted_model.unet.state_dict())  # the caller's model keeps its adapter


def test_lora_targets_must_name_modules_of_the_denoiser(latent_model, monkeypatch):
    import papa_bayes.diffusion.finetune.distill as distill

    latents = torch.randn(4, *latent_model.sample_shape, generator=gen(2))
    with pytest.raises(InputDataError, match="^lora_targets:.*to_V"):  # "to_V" was silently skipped
        finetune_on_samples(latent_model, latents, steps=1, lora_rank=2, lora_targets=["to_q", "to_V"],
                            progress_bar=False)

    def no_sampling(*args, **kwargs):
        raise AssertionError("sampled before checking the arguments")

    monkeypatch.setattr(distill, "sample", no_sampling)
    with pytest.raises(InputDataError, match="^lora_targets:"):  # was a ModelError after the guided samples
        distill_guidance(latent_model, Guidance(lambda x: x.mean((1, 2, 3))), lora_rank=2, lora_targets=["nope"],
                         progress_bar=False)


def test_per_sample_conditioning_follows_its_samples_in_fine_tuning(latent_model, monkeypatch):
    from papa_bayes.diffusion import LatentDiffusion

    cond = torch.arange(4.0).view(4, 1, 1).expand(4, 3, 8).contiguous()  # row i: all i
    model = LatentDiffusion(latent_model.unet, latent_model.vae, latent_model.scheduler, encoder_hidden_states=cond)
    latents = torch.randn(4, *model.sample_shape, generator=gen(2))
    seen = []
    forward = LatentDiffusion.conditional_output

    def spy(self, x_t, t):
        seen.append(self.encoder_hidden_states[:, 0, 0].tolist())
        return forward(self, x_t, t)

    monkeypatch.setattr(LatentDiffusion, "conditional_output", spy)
    for batch_size in (2, 4):  # 2 was an InputDataError in the first step; 4 paired rows 0-3 with any samples
        seen.clear()
        finetune_on_samples(model, latents, steps=1, batch_size=batch_size, anchor_weight=0.0, generator=gen(3),
                            progress_bar=False)
        batch = torch.randint(0, 4, (batch_size,), generator=gen(3))  # the step's first draw
        assert seen == [batch.float().tolist()]
    with pytest.raises(InputDataError, match="^encoder_hidden_states:"):  # 4 rows, 3 samples
        finetune_on_samples(model, latents[:3], steps=1, progress_bar=False)
    papa_finetune(model, -torch.ones(4, 1, 8, 8), [1, -1, 1, -1], steps=1, batch_size=3, progress_bar=False)


def test_max_grad_norm_is_an_option(pixel_model, labeled):
    images, signs = labeled
    kw = dict(steps=2, lr=1e-2, generator=gen(0), progress_bar=False)
    with pytest.raises(InputDataError, match="^max_grad_norm:"):
        papa_finetune(pixel_model, images, signs, max_grad_norm=0.0, **kw)
    with pytest.raises(InputDataError, match="^max_grad_norm:"):
        finetune_on_samples(pixel_model, images, max_grad_norm=-1.0, **kw)
    clipped = finetune_on_samples(pixel_model, images, max_grad_norm=1e-6, **kw)
    free = finetune_on_samples(pixel_model, images, max_grad_norm=1e6, **kw)
    assert max_weight_change(clipped, pixel_model) < max_weight_change(free, pixel_model)


def test_lora_options_without_lora_rank_warn(pixel_model, labeled):
    from papa_bayes.exceptions import PapaBayesWarning

    images, signs = labeled
    for kwargs in ({"lora_alpha": 4.0}, {"lora_targets": ("to_q",)}):  # were silently ignored
        with pytest.warns(PapaBayesWarning, match="lora_rank"):
            papa_finetune(pixel_model, images, signs, steps=1, progress_bar=False, **kwargs)


def test_distilled_classifier_free_guidance_is_not_applied_twice(make_latent_model):
    """The targets are sampled with the base's CFG; the returned model kept cfg_scale 3 and applied it again."""
    negative = torch.zeros(1, 3, 8)
    base = make_latent_model(cfg_scale=3.0, negative_encoder_hidden_states=negative)
    distilled = distill_guidance(base, Guidance(lambda x: x.sum((1, 2, 3))), num_samples=4, num_inference_steps=2,
                                 steps=1, batch_size=2, generator=gen(0), progress_bar=False)
    assert distilled.cfg_scale == 1.0 and base.cfg_scale == 3.0  # the caller's model keeps its own


# diffusers' from_pretrained hands the list it read to from_config, which takes a non-dict for a path and warns
# "config-passed-as-path" before failing: the corrupted file's doing, not a deprecated call of ours.
@pytest.mark.filterwarnings("ignore:It is deprecated to pass a pretrained model name or path:FutureWarning")
def test_a_scheduler_config_that_is_no_json_object_is_ours_to_reject(pixel_model, latent_model, tmp_path):
    """A scheduler_config.json holding a list raised AttributeError ('list' object has no attribute 'get')."""
    path = save_finetuned(latent_model, tmp_path / "ckpt")
    (path / "finetune.json").unlink()  # without the record, the scheduler's class is read from its config
    (path / "scheduler" / "scheduler_config.json").write_text("[1]")
    with pytest.raises(InputDataError, match="^path:.*diffusers can read.*holds a list"):
        load_finetuned(path, base=latent_model)
    # a pixel base reads a folder without the record as load_base_model does (diffusers reads the config)
    path = save_finetuned(pixel_model, tmp_path / "pixel")
    (path / "finetune.json").unlink()
    (path / "scheduler" / "scheduler_config.json").write_text("[1]")
    with pytest.raises(InputDataError, match="^path:.*diffusers can read"):
        load_finetuned(path, base=pixel_model)


def test_an_unreadable_record_is_ours_to_reject(pixel_model, tmp_path, monkeypatch):
    """An OSError reading finetune.json (no permission, say) came through raw."""
    from pathlib import Path

    path = save_finetuned(pixel_model, tmp_path / "ckpt")
    read_text = Path.read_text

    def refuse(self, *args, **kwargs):
        if self.name == "finetune.json":
            raise PermissionError(13, "Permission denied", str(self))
        return read_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", refuse)
    with pytest.raises(InputDataError, match="^path: expected a folder whose `finetune.json` is a JSON object"):
        load_finetuned(path)


def test_loaders_name_a_missing_path(tmp_path):
    from papa_bayes.diffusion import load_base_model, load_feature_map

    missing = tmp_path / "nowhere"
    for load, field in ((load_base_model, "path"), (load_finetuned, "path"), (load_feature_map, "directory")):
        with pytest.raises(InputDataError, match=f"^{field}:") as info:
            load(missing)
        assert str(missing) in str(info.value)


def test_fine_tuners_and_guided_sampling_are_fixed_by_their_generator(pixel_model, labeled, make_posterior):
    """Same generator, same weights and samples, whatever the global RNG did in between; another seed differs."""
    images, signs = labeled
    pca = PCAFeatures.fit(images, num_features=4)
    guidance = Guidance(PosteriorObjective(make_posterior(torch.randn(8, 4, generator=gen(4))), pca, kind="mean"),
                        scale=1.0)
    runs = {
        "papa": lambda g: papa_finetune(pixel_model, images, signs, steps=6, batch_size=8, generator=g,
                                        progress_bar=False),
        "samples": lambda g: finetune_on_samples(pixel_model, images, steps=6, batch_size=8, generator=g,
                                                 progress_bar=False),
        "distill": lambda g: distill_guidance(pixel_model, guidance, num_samples=8, num_inference_steps=3, steps=4,
                                              batch_size=8, generator=g, progress_bar=False),
    }
    for name, run in runs.items():
        torch.manual_seed(1)
        first = snapshot(run(gen(11)))
        torch.manual_seed(2)
        torch.rand(17)  # the global stream moved on: it must not matter
        again, other = snapshot(run(gen(11))), snapshot(run(gen(12)))
        # Equal up to the last bits torch's CPU reductions may round differently from run to run;
        # a draw from the global RNG, or another seed, moves the weights by about 1e-3.
        gap = lambda a, b: max(float((a[k].float() - b[k].float()).abs().max()) for k in a)  # noqa: E731
        assert gap(first, again) <= 1e-6 and gap(first, other) > 1e-4, (name, gap(first, again), gap(first, other))
    draws = []
    for seed, global_seed in ((5, 1), (5, 2), (6, 1)):
        torch.manual_seed(global_seed)
        draws.append(sample(pixel_model, 4, guidance=guidance, num_inference_steps=3, generator=gen(seed),
                            progress_bar=False).images)
    assert float((draws[0] - draws[1]).abs().max()) <= 1e-5 < float((draws[0] - draws[2]).abs().max())


def test_a_distilled_latent_models_cfg_scale_survives_its_checkpoint(make_latent_model, tmp_path):
    """load_finetuned copied the base's cfg_scale 3 onto the distilled denoiser: CFG applied twice after reloading."""
    import json

    base = make_latent_model(cfg_scale=3.0, negative_encoder_hidden_states=torch.zeros(1, 3, 8))
    distilled = distill_guidance(base, Guidance(lambda x: x.sum((1, 2, 3)), clamp=None), num_samples=2,
                                 num_inference_steps=2, steps=1, batch_size=2, generator=gen(0), progress_bar=False)
    path = save_finetuned(distilled, tmp_path / "distilled", info={"method": "distill_guidance"})
    loaded = load_finetuned(path, base=base)
    assert loaded.cfg_scale == 1.0 and base.cfg_scale == 3.0
    kw = dict(num_inference_steps=2, progress_bar=False)
    torch.testing.assert_close(sample(loaded, 2, generator=gen(1), **kw).images,
                               sample(distilled, 2, generator=gen(1), **kw).images)
    # a checkpoint written before cfg_scale was recorded: a distilled model's is 1.0, another's the base's
    record = json.loads((path / "finetune.json").read_text())
    del record["cfg_scale"]
    (path / "finetune.json").write_text(json.dumps(record))
    assert load_finetuned(path, base=base).cfg_scale == 1.0
    record["info"] = {"method": "papa"}
    (path / "finetune.json").write_text(json.dumps(record))
    assert load_finetuned(path, base=base).cfg_scale == 3.0
    # a saved scale the base has no negative embeddings for
    record["cfg_scale"] = 2.0
    (path / "finetune.json").write_text(json.dumps(record))
    with pytest.raises(InputDataError, match="^base:.*negative_encoder_hidden_states.*cfg_scale = 2.0"):
        load_finetuned(path, base=make_latent_model())


def test_load_finetuned_without_base_keeps_the_saved_scheduler_config(pixel_model, tmp_path):
    """Without base, the scheduler was rebuilt from the training config: clip_sample=True was dropped."""
    from diffusers import DDIMScheduler

    from papa_bayes.diffusion import PixelDiffusion

    scheduler = DDIMScheduler.from_config(pixel_model.scheduler.config, clip_sample=True,
                                          timestep_spacing="trailing")
    clipped = PixelDiffusion(pixel_model.unet, scheduler)
    loaded = load_finetuned(save_finetuned(clipped, tmp_path / "clipped"))
    assert type(loaded.scheduler) is DDIMScheduler
    assert loaded.scheduler.config.clip_sample and loaded.scheduler.config.timestep_spacing == "trailing"
    kw = dict(num_inference_steps=3, progress_bar=False)
    torch.testing.assert_close(sample(loaded, 3, generator=gen(2), **kw).images,
                               sample(clipped, 3, generator=gen(2), **kw).images)


def test_a_base_checkpoint_reads_the_same_with_a_pixel_base_as_without(pixel_model):
    """With base, a folder save_finetuned did not write sampled with its training DDPMScheduler (a pixel base was
    to set only the device and dtype); without, with the DDIM sampler load_base_model builds from it."""
    from papa_bayes.diffusion import load_base_model
    from papa_bayes.diffusion.base import DEFAULT_CHECKPOINT

    without = load_finetuned(DEFAULT_CHECKPOINT)
    with_base = load_finetuned(DEFAULT_CHECKPOINT, base=pixel_model)
    assert type(with_base.scheduler) is type(without.scheduler) is type(load_base_model().scheduler)
    assert dict(with_base.scheduler.config) == dict(without.scheduler.config)
    assert with_base.device == pixel_model.device and with_base.dtype == pixel_model.dtype


@pytest.mark.parametrize("with_base", [False, True])
def test_a_checkpoint_whose_scheduler_the_sampler_cannot_drive_is_refused_on_loading(pixel_model, latent_model,
                                                                                       tmp_path, with_base):
    """A folder's PNDMScheduler (Stable Diffusion's) replaced the model's unchecked: sampling failed at its first
    step (PNDM's step takes no generator) instead of load_finetuned naming the checkpoint."""
    import json

    from diffusers import PNDMScheduler

    base = latent_model if with_base else None
    path = save_finetuned(latent_model if with_base else pixel_model, tmp_path / "ckpt")
    PNDMScheduler.from_config(pixel_model.scheduler.config).save_pretrained(path / "scheduler")
    record = json.loads((path / "finetune.json").read_text())
    (path / "finetune.json").write_text(json.dumps({**record, "scheduler": "PNDMScheduler"}))
    with pytest.raises(InputDataError, match="^path:.*DDIMScheduler or DDPMScheduler.*PNDMScheduler"):
        load_finetuned(path, base=base)


@pytest.mark.parametrize("kind", ["ddim", "ddpm"])
def test_pixel_checkpoint_opens_as_a_diffusers_pipeline(make_pixel_model, latent_model, tmp_path, kind):
    import diffusers

    model = make_pixel_model(kind)
    path = save_finetuned(model, tmp_path / "ckpt", info={"method": "papa"})
    pipeline = diffusers.DDIMPipeline.from_pretrained(path)  # was OSError: no file named model_index.json
    saved = model.unet.state_dict()
    loaded = pipeline.unet.state_dict()
    assert loaded.keys() == saved.keys()
    assert all(torch.equal(loaded[k], saved[k]) for k in saved)
    assert pipeline.scheduler.config.clip_sample == model.scheduler.config.clip_sample
    native = diffusers.DiffusionPipeline.from_pretrained(path)  # the pipeline of the saved scheduler
    assert type(native).__name__ == ("DDIMPipeline" if kind == "ddim" else "DDPMPipeline")
    assert type(native.scheduler) is type(model.scheduler)
    assert type(load_finetuned(path).scheduler) is type(model.scheduler)  # still our checkpoint too
    save_finetuned(latent_model, path)  # no pipeline folder: the pixel model's index would open the wrong one
    assert not (path / "model_index.json").exists()


def _with_dropout(model, p: float = 0.5):
    """``model`` with every dropout of its denoiser at ``p``, in train mode (as left by a training loop)."""
    for module in model.unet.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = p
    model.unet.train()
    return model


def test_the_frozen_reference_is_an_eval_copy_of_a_denoiser_in_train_mode(make_pixel_model, make_latent_model):
    """A base left in train mode was the reference itself: its dropout gave another anchor every call."""
    from papa_bayes.diffusion.finetune.common import TrainingCopy

    x_t, t = torch.randn(3, 1, 8, 8, generator=gen(1)), torch.tensor([900, 500, 100])
    base = make_pixel_model(dropout=0.5).to()
    base.unet.train()
    run = TrainingCopy.create(base, generator=gen(0))
    assert run.reference is not base and not run.reference.unet.training
    torch.testing.assert_close(run.reference_output(x_t, t), run.reference_output(x_t, t), atol=0, rtol=0)
    assert base.unet.training  # the caller's model keeps its mode
    base.unet.eval()
    torch.testing.assert_close(run.reference_output(x_t, t), base.conditional_output(x_t, t))
    assert TrainingCopy.create(base, generator=gen(0)).reference is base  # in eval mode: no copy needed

    latent = _with_dropout(make_latent_model())  # LoRA: the reference is the copy with its adapters off
    z = torch.randn(2, *latent.sample_shape, generator=gen(2))
    lora = TrainingCopy.create(latent, lora_rank=2, generator=gen(0))
    assert lora.reference is None and lora.model.unet.training
    torch.testing.assert_close(lora.reference_output(z, t[:2]), lora.reference_output(z, t[:2]), atol=0, rtol=0)
    assert lora.model.unet.training  # back in training after the reference pass


def test_a_device_named_without_its_index_is_the_one_the_reference_is_on(pixel_model, monkeypatch):
    """device="cuda" met a reference on "cuda:0" (torch.device("cuda") != torch.device("cuda:0")): a needless
    deep copy of the reference denoiser. "cpu:0" against the CPU shows the same on any machine."""
    from papa_bayes.diffusion.finetune.common import TrainingCopy

    assert TrainingCopy.create(pixel_model, device="cpu:0", generator=gen(0)).reference is pixel_model
    from papa_bayes.diffusion.models import same_device

    assert same_device("cpu", torch.device("cpu:0")) and not same_device("cpu", "meta")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)  # "cuda" is the current GPU, here the second
    assert same_device("cuda", "cuda:1") and not same_device("cuda", "cuda:0") and not same_device("cuda:1", "cpu")


def test_the_training_bar_is_closed_when_a_step_raises(pixel_model, recorded_bars):
    """The bar is closed by the loop itself when a step raises, not by the garbage collector finalizing
    tqdm's iterator (which CPython happens to do at once; another interpreter need not)."""
    import papa_bayes.diffusion.finetune.common as common

    bars = recorded_bars(common)

    def failing_step(i):
        raise RuntimeError("the step failed")

    run = common.TrainingCopy.create(pixel_model, generator=gen(0))
    with pytest.raises(RuntimeError, match="the step failed"):
        run.train(failing_step, steps=3, lr=1e-3, desc="test", progress_bar=True)
    assert len(bars) == 1 and bars[0].was_closed


def test_save_finetuned_checks_its_notes_before_writing(pixel_model, tmp_path):
    """Notes JSON cannot write raised a raw TypeError after the weights were written."""
    for info in ({(1, 2): "pair key"}, {1: "int key"}, {"nested": {(1, 2): 3}}):
        with pytest.raises(InputDataError, match="^info:.*str keys") as caught:
            save_finetuned(pixel_model, tmp_path / "notes", info=info)
        assert caught.value.field == "info"
        assert not (tmp_path / "notes").exists()
    loop: dict = {}
    loop["self"] = loop
    with pytest.raises(InputDataError, match="^info:"):  # was ValueError: Circular reference detected
        save_finetuned(pixel_model, tmp_path / "notes", info=loop)
    assert not (tmp_path / "notes").exists()
    import json

    path = save_finetuned(pixel_model, tmp_path / "notes", info={"scale": 0.5, "device": torch.device("cpu")})
    assert json.loads((path / "finetune.json").read_text())["info"] == {"scale": 0.5, "device": "cpu"}


def test_a_denoiser_with_dropout_fine_tunes_the_same_for_the_same_generator(make_pixel_model, labeled):
    """Dropout masks came from the global RNG: the same generator gave other weights after another global seed."""
    images, signs = labeled
    base = make_pixel_model(dropout=0.3)
    for run in (lambda g: papa_finetune(base, images, signs, steps=4, batch_size=8, generator=g, progress_bar=False),
                lambda g: finetune_on_samples(base, images, steps=4, batch_size=8, generator=g, progress_bar=False)):
        torch.manual_seed(1)
        first = snapshot(run(gen(11)))
        torch.manual_seed(2)
        state = torch.get_rng_state()
        again = run(gen(11))
        assert max_weight_change(again, base) > 1e-4  # it trained
        assert all(torch.equal(first[k], v) for k, v in again.unet.state_dict().items())
        assert torch.equal(torch.get_rng_state(), state)  # and left the global stream where it was


@pytest.mark.parametrize("variance_type", ["learned", "learned_range"])
def test_load_base_model_refuses_a_learned_variance_training_scheduler_as_a_bad_path(pixel_model, tmp_path,
                                                                                        variance_type):
    """A folder whose training scheduler learns its variance raised the model's ModelError, where load_finetuned
    names the folder (InputDataError on path)."""
    from diffusers import DDPMScheduler

    from papa_bayes.diffusion import load_base_model

    pixel_model.unet.save_pretrained(tmp_path / "unet")
    DDPMScheduler(variance_type=variance_type, clip_sample=False).save_pretrained(tmp_path / "scheduler")
    for load in (lambda: load_base_model(tmp_path), lambda: load_base_model(tmp_path, scheduler="ddpm"),
                 lambda: load_finetuned(tmp_path)):
        with pytest.raises(InputDataError, match=f"^path:.*fixed variance.*{tmp_path}.*{variance_type}") as info:
            load()
        assert info.value.field == "path"


def test_a_checkpoint_of_a_ddpm_scheduler_subclass_reloads_with_ddpm(pixel_model, latent_model, tmp_path):
    """A subclass of DDPMScheduler (no diffusers name) reloaded as a DDIMScheduler with the DDPM config, though
    model_index.json named DDPMScheduler: the reloaded model sampled another way than the saved one."""
    import json

    from diffusers import DDPMScheduler

    from papa_bayes.diffusion import LatentDiffusion, PixelDiffusion

    class MyDDPM(DDPMScheduler):
        pass

    pixel = PixelDiffusion(pixel_model.unet, MyDDPM.from_config(pixel_model.scheduler.config,
                                                                 variance_type="fixed_large"))
    path = save_finetuned(pixel, tmp_path / "pixel")
    assert json.loads((path / "model_index.json").read_text())["scheduler"] == ["diffusers", "DDPMScheduler"]
    kw = dict(num_inference_steps=3, progress_bar=False)
    for base in (None, pixel_model):  # pixel_model samples with DDIM
        loaded = load_finetuned(path, base=base)
        assert type(loaded.scheduler) is DDPMScheduler and loaded.scheduler.config.variance_type == "fixed_large"
        torch.testing.assert_close(sample(loaded, 2, generator=gen(3), **kw).images,
                                   sample(pixel, 2, generator=gen(3), **kw).images)
    # a checkpoint written before finetune.json recorded the diffusers class: model_index.json names it
    record = json.loads((path / "finetune.json").read_text())
    del record["diffusers_scheduler"]
    (path / "finetune.json").write_text(json.dumps(record))
    assert type(load_finetuned(path).scheduler) is DDPMScheduler
    # a latent model has no model_index.json: finetune.json records the diffusers class
    latent = LatentDiffusion(latent_model.unet, latent_model.vae, MyDDPM(clip_sample=False),
                             encoder_hidden_states=latent_model.encoder_hidden_states)
    assert type(load_finetuned(save_finetuned(latent, tmp_path / "latent"), base=latent_model).scheduler) \
        is DDPMScheduler


def test_each_fine_tuner_labels_its_training_bar_with_its_own_name(pixel_model, recorded_bars):
    """finetune_on_samples' bar read "distill guidance", the label of the function that calls it."""
    import papa_bayes.diffusion.finetune.common as common

    bars = recorded_bars(common)
    targets = sample(pixel_model, 4, num_inference_steps=2, generator=gen(0), progress_bar=False).samples
    finetune_on_samples(pixel_model, targets, steps=1, batch_size=2, generator=gen(0), progress_bar=True)
    distill_guidance(pixel_model, Guidance(lambda x: x.flatten(1).mean(1)), num_samples=2, num_inference_steps=2,
                     steps=1, batch_size=2, generator=gen(0), progress_bar=True)
    assert [bar.desc for bar in bars] == ["fine-tune on samples", "distill guidance"]


def test_fine_tuning_on_pixels_outside_the_models_range_warns(pixel_model, latent_model, labeled):
    """0..255 targets trained a [-1, 1] model toward them silently, where the judges and guards warn."""
    import warnings

    from papa_bayes.exceptions import PapaBayesWarning

    images, _ = labeled  # in [-1, 1]
    kw = dict(steps=1, batch_size=4, generator=gen(0), progress_bar=False)
    for bad, message in ((images * 127.5 + 127.5, r"far outside it.*`x / 127\.5 - 1`"),
                         ((images + 1) / 2, r"none negative.*`2 \* x - 1`")):
        with pytest.warns(PapaBayesWarning, match=r"^samples: expected images in the model's range \[-1, 1\], "
                                                  f"got values in .*{message}") as caught:
            finetune_on_samples(pixel_model, bad, **kw)
        assert caught[0].filename == __file__  # the user's line
    with warnings.catch_warnings():
        warnings.simplefilter("error", PapaBayesWarning)
        finetune_on_samples(pixel_model, images, **kw)
        latents = 50 * torch.randn(4, *latent_model.sample_shape, generator=gen(2))  # latents: no range of theirs
        finetune_on_samples(latent_model, latents, **kw)


def test_papa_on_images_outside_the_models_range_warns(pixel_model, labeled):
    """PAPA's fine-tune took 0..255 or [0, 1] labeled images without a word (finetune_on_samples warned)."""
    import warnings

    from papa_bayes.exceptions import PapaBayesWarning

    images, signs = labeled  # in [-1, 1]
    kw = dict(steps=1, batch_size=4, generator=gen(0), progress_bar=False)
    for bad in (images * 127.5 + 127.5, (images + 1) / 2):
        with pytest.warns(PapaBayesWarning, match=r"^images: expected images in the model's range \[-1, 1\]") as w:
            papa_finetune(pixel_model, bad, signs, **kw)
        assert w[0].filename == __file__  # the user's line
    with warnings.catch_warnings():
        warnings.simplefilter("error", PapaBayesWarning)
        papa_finetune(pixel_model, images, signs, **kw)
