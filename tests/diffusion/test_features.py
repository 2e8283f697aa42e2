from __future__ import annotations

import pytest
import torch

from papa_bayes.diffusion import (
    CallableFeatures,
    ConcatFeatures,
    MidBlockFeatures,
    PCAFeatures,
    load_feature_map,
    sample,
    save_feature_map,
)
from papa_bayes.exceptions import InputDataError, ModelError


@pytest.fixture(scope="module")
def images(pixel_model):
    return sample(pixel_model, 40, num_inference_steps=3, generator=torch.Generator().manual_seed(0),
                  progress_bar=False).images


def test_pca_whitens_and_is_differentiable(images):
    pca = PCAFeatures.fit(images, num_features=5)
    z = pca(images)
    assert z.shape == (40, 5)
    torch.testing.assert_close(z.mean(0), torch.zeros(5), atol=1e-4, rtol=0)
    torch.testing.assert_close(z.std(0), torch.ones(5), atol=1e-3, rtol=0)
    x = images[:3].clone().requires_grad_(True)
    pca(x).sum().backward()
    assert float(x.grad.abs().sum()) > 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_pca_save_load_round_trip(images, tmp_path, dtype):
    pca = PCAFeatures.fit(images, num_features=4)
    save_feature_map(pca, tmp_path / "pca")
    loaded = load_feature_map(tmp_path / "pca")
    assert isinstance(loaded, PCAFeatures) and loaded.num_features == 4
    torch.testing.assert_close(loaded(images.to(dtype)), pca(images.to(dtype)))


def test_midblock_save_load_round_trip(pixel_model, images, tmp_path):
    mid = MidBlockFeatures(pixel_model, timestep=80, num_features=3).fit(images)
    z = mid(images)
    assert z.shape == (40, 3)
    torch.testing.assert_close(z.std(0), torch.ones(3), atol=1e-3, rtol=0)  # whitened projection
    save_feature_map(mid, tmp_path / "mid")
    loaded = load_feature_map(tmp_path / "mid", model=pixel_model)
    assert loaded.timestep == 80
    torch.testing.assert_close(loaded(images), z)
    with pytest.raises(InputDataError, match="model"):
        load_feature_map(tmp_path / "mid")
    x = images[:2].clone().requires_grad_(True)
    loaded(x).sum().backward()
    assert float(x.grad.abs().sum()) > 0  # differentiable through the denoiser


def test_midblock_without_whitening_keeps_relative_variances(pixel_model, images, tmp_path):
    white = MidBlockFeatures(pixel_model, timestep=80, num_features=4).fit(images)
    raw = MidBlockFeatures(pixel_model, timestep=80, num_features=4, whiten=False).fit(images)
    var = raw(images).double().var(0)
    torch.testing.assert_close(var.sum(), torch.tensor(4.0, dtype=torch.float64), atol=1e-3, rtol=0)
    assert bool((var[:-1] >= var[1:]).all()) and float(var[0] / var[-1]) > 1.5  # leading components keep more
    # the same directions as the whitened map, rescaled per component
    ratio = raw(images).double() / white(images).double()
    torch.testing.assert_close(ratio, ratio[:1].expand_as(ratio), atol=1e-3, rtol=1e-3)
    save_feature_map(raw, tmp_path / "raw")
    loaded = load_feature_map(tmp_path / "raw", model=pixel_model)
    assert loaded.whiten is False
    torch.testing.assert_close(loaded(images), raw(images))


def test_callable_save_load_round_trip(images, tmp_path):
    torch.manual_seed(1)
    encoder = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 6))
    feats = CallableFeatures(encoder, 6, name="tiny-encoder")
    save_feature_map(feats, tmp_path / "enc")
    torch.manual_seed(2)
    fresh = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 6))
    loaded = load_feature_map(tmp_path / "enc", fn=fresh)
    torch.testing.assert_close(loaded(images), feats(images))
    assert loaded.name == "tiny-encoder"
    with pytest.raises(InputDataError, match="fn"):
        load_feature_map(tmp_path / "enc")


def test_callable_wrong_output_shape_raises(images):
    feats = CallableFeatures(lambda x: x.reshape(x.shape[0], -1)[:, :3], 4)
    with pytest.raises(InputDataError, match="features"):
        feats(images)
    nan = CallableFeatures(lambda x: torch.full((x.shape[0], 3), float("nan")), 3)  # passed through before
    with pytest.raises(InputDataError, match="^features: expected finite"):
        nan(images)


def test_missing_feature_map_folder_raises(tmp_path):
    with pytest.raises(InputDataError, match="feature_map.json"):
        load_feature_map(tmp_path / "nowhere")


def test_a_midblock_map_without_its_statistics_is_ours_to_reject(pixel_model, images, tmp_path):
    """It loaded as fitted with identity whitening: other features than the saved map's, silently."""
    mid = MidBlockFeatures(pixel_model, timestep=80, num_features=3).fit(images)
    save_feature_map(mid, tmp_path / "mid")
    (tmp_path / "mid" / "feature_map.safetensors").unlink()
    with pytest.raises(InputDataError, match="^directory:.*mean, components and std.*without"):
        load_feature_map(tmp_path / "mid", model=pixel_model)


def test_pca_rejects_too_many_components(images):
    with pytest.raises(InputDataError, match="num_features"):
        PCAFeatures.fit(images[:3], num_features=5)


def test_concat_stacks_parts_and_reads_samples_when_a_part_does(pixel_model, images, tmp_path):
    pca = PCAFeatures.fit(images, num_features=4)
    mid = MidBlockFeatures(pixel_model, timestep=80, num_features=3).fit(images)
    both = ConcatFeatures([pca, mid], decode=pixel_model.decode)
    assert both.num_features == 7 and both.input_space == "sample"
    assert ConcatFeatures([pca, pca]).input_space == "image"
    z = both(images)
    assert z.shape == (40, 7)
    torch.testing.assert_close(z, torch.cat([pca(images), mid(images)], 1))
    x = images[:2].clone().requires_grad_(True)
    both(x).sum().backward()
    assert float(x.grad.abs().sum()) > 0
    with pytest.raises(InputDataError, match="parts"):
        ConcatFeatures([])
    with pytest.raises(InputDataError, match="parts"):
        ConcatFeatures([pca, torch.nn.Identity()])  # type: ignore[list-item]
    with pytest.raises(InputDataError, match="feature_map"):
        save_feature_map(both, tmp_path / "both")


def test_midblock_checks_its_width_and_timestep(pixel_model, images):
    channels = int(pixel_model.unet.mid_block.resnets[-1].out_channels)
    for bad in (0, channels + 1):
        with pytest.raises(InputDataError, match="num_features"):
            MidBlockFeatures(pixel_model, num_features=bad)
    for bad in (-1, 1000):
        with pytest.raises(InputDataError, match="timestep"):
            MidBlockFeatures(pixel_model, timestep=bad)
    for num_features, width in ((None, channels), (channels, channels), (1, 1)):
        mid = MidBlockFeatures(pixel_model, timestep=999, num_features=num_features).fit(images)
        assert mid.num_features == width and mid(images[:2]).shape == (2, width)


def test_feature_map_arguments_are_checked(pixel_model, images, tmp_path):
    for bad in (2.5, "3", True, None):  # were truncated, parsed, read as 1, or a TypeError
        with pytest.raises(InputDataError, match="^num_features:"):
            CallableFeatures(lambda x: x.flatten(1)[:, :2], bad)
        with pytest.raises(InputDataError, match="^num_features:"):
            PCAFeatures.fit(images, num_features=bad)
    with pytest.raises(InputDataError, match="^num_features:"):  # -1 was accepted: every component but one
        PCAFeatures.fit(images, num_features=-1)
    for bad in ([[0.0] * 4] * 5, images[:1], torch.full((5, 1, 8, 8), float("nan"))):  # foreign errors or 1e8 std
        with pytest.raises(InputDataError, match="^samples:"):
            PCAFeatures.fit(bad, num_features=1)
    mean, comps = torch.zeros(4), torch.eye(4)[:2]
    for std in (torch.ones(3), torch.ones(2, 1), torch.zeros(2)):  # were accepted: broadcast or inf features
        with pytest.raises(InputDataError, match="^std:"):
            PCAFeatures(mean, comps, std)
    with pytest.raises(InputDataError, match="^mean:"):
        PCAFeatures([0.0] * 4, comps, torch.ones(2))
    pca = PCAFeatures.fit(images, num_features=3)
    assert pca(images[:0]).shape == (0, 3)  # an empty batch was a RuntimeError
    for bad in ([0.0], torch.tensor(1.0)):
        with pytest.raises(InputDataError, match="^images:"):
            pca(bad)
    for bad in (None, "model"):
        with pytest.raises(InputDataError, match="^model:"):
            MidBlockFeatures(bad)
    mid = MidBlockFeatures(pixel_model, timestep=80, num_features=3)
    with pytest.raises(ModelError, match="not fitted"):  # were the first 3 raw channels
        mid(images)
    for bad, field in ((dict(samples=[1.0]), "samples"), (dict(samples=images[:, 0]), "samples"),  # 3-D: conv error
                       (dict(samples=images[:0]), "samples"), (dict(samples=torch.full((5, 1, 8, 8), float("nan"))),
                                                               "samples"),
                       (dict(samples=images, batch_size=0), "batch_size"), (dict(samples=images, batch_size=2.5),
                                                                            "batch_size")):
        with pytest.raises(InputDataError, match=f"^{field}:"):
            mid.fit(**bad)
    with pytest.raises(InputDataError, match="^x:"):
        mid.fit(images)(images[:, 0])
    with pytest.raises(InputDataError, match="^parts:"):
        ConcatFeatures(pca)  # type: ignore[arg-type]
    with pytest.raises(InputDataError, match="^decode:"):
        ConcatFeatures([pca, mid], decode=3)  # type: ignore[arg-type]
    with pytest.raises(InputDataError, match="^directory:"):
        load_feature_map(3)  # type: ignore[arg-type]
    with pytest.raises(InputDataError, match="^directory:"):
        save_feature_map(pca, None)  # type: ignore[arg-type]
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "feature_map.json").write_text("not json")
    with pytest.raises(InputDataError, match="^feature_map.json:"):
        load_feature_map(tmp_path / "broken")
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "feature_map.json").write_text('{"kind": "pca"}')
    with pytest.raises(InputDataError, match="^directory:"):  # was KeyError
        load_feature_map(tmp_path / "bare")


def test_midblock_map_loaded_with_another_model_is_ours_to_reject(pixel_model, images, tmp_path):
    from papa_bayes.diffusion import make_digits_unet, make_sampling_scheduler
    from papa_bayes.diffusion.models import PixelDiffusion

    path = save_feature_map(MidBlockFeatures(pixel_model, num_features=3).fit(images), tmp_path / "mid")
    wider = PixelDiffusion(make_digits_unet(block_out_channels=(8, 32), layers_per_block=1, norm_num_groups=4,
                                            down_block_types=("DownBlock2D", "DownBlock2D"),
                                            up_block_types=("UpBlock2D", "UpBlock2D")), make_sampling_scheduler())
    with pytest.raises(InputDataError, match="^model:.*fitted on"):  # was torch's RuntimeError from copy_
        load_feature_map(path, model=wider)


def test_save_feature_map_refuses_a_file_path(images, tmp_path):
    (tmp_path / "taken").write_text("x")
    with pytest.raises(InputDataError, match="^directory:.*not a file"):  # was FileExistsError
        save_feature_map(PCAFeatures.fit(images, num_features=2), tmp_path / "taken")


def test_corrupt_feature_map_weights_are_ours_to_reject(images, tmp_path):
    """A damaged feature_map.safetensors raised safetensors' own SafetensorError."""
    path = save_feature_map(PCAFeatures.fit(images, num_features=3), tmp_path / "pca")
    (path / "feature_map.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(InputDataError, match="^directory:.*SafetensorError") as info:
        load_feature_map(path)
    assert str(path / "feature_map.safetensors") in str(info.value)


def test_an_unreadable_feature_map_json_is_ours_to_reject(images, tmp_path, monkeypatch):
    """An OSError reading feature_map.json (no permission, say) came through raw."""
    from pathlib import Path

    path = save_feature_map(PCAFeatures.fit(images, num_features=3), tmp_path / "pca")
    read_text = Path.read_text

    def refuse(self, *args, **kwargs):
        if self.name == "feature_map.json":
            raise PermissionError(13, "Permission denied", str(self))
        return read_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", refuse)
    with pytest.raises(InputDataError, match="^feature_map.json: expected a JSON object saved by save_feature_map"):
        load_feature_map(path)


def test_a_feature_map_json_missing_a_setting_is_ours_to_reject(tmp_path):
    """A callable map's feature_map.json without num_features raised a raw KeyError."""
    import json

    fn = lambda x: x.flatten(1)[:, :2]  # noqa: E731
    path = save_feature_map(CallableFeatures(fn, 2, name="two-pixels"), tmp_path / "callable")
    config = json.loads((path / "feature_map.json").read_text())
    del config["num_features"]
    (path / "feature_map.json").write_text(json.dumps(config))
    with pytest.raises(InputDataError, match=r"^feature_map.json:.*without \['num_features'\]"):
        load_feature_map(path, fn=fn)


def test_fingerprints_tell_maps_of_one_dimension_apart():
    """Pixel PCA and mid-block maps both give 8 features; a session's config must still tell them apart."""
    from papa_bayes.diffusion import DEFAULT_CHECKPOINT, load_base_model, load_feature_map

    model = load_base_model()
    pca, mid = load_feature_map(), load_feature_map(DEFAULT_CHECKPOINT / "midblock_features", model=model)
    assert pca.num_features == mid.num_features and pca.fingerprint() != mid.fingerprint()
    assert load_feature_map().fingerprint() == pca.fingerprint()  # the same map loaded again
    refit = load_feature_map()
    refit.components.data[0, 0] += 1e-3  # one value changed: another map
    assert refit.fingerprint() != pca.fingerprint()


def test_an_unfitted_midblock_map_is_not_saved(pixel_model, images, tmp_path):
    """An unfitted map saved identity statistics and loaded as fitted: raw channels read as standardized ones."""
    from papa_bayes.diffusion import save_finetuned

    unfitted = MidBlockFeatures(pixel_model, num_features=3)
    with pytest.raises(InputDataError, match=r"^feature_map: expected a fitted map \(call \.fit\(samples\) first\)"):
        save_feature_map(unfitted, tmp_path / "mid")
    with pytest.raises(InputDataError, match="^feature_map:.*fit"):  # was raised after the weights were written
        save_finetuned(pixel_model, tmp_path / "ckpt", feature_map=unfitted)
    assert not (tmp_path / "mid").exists() and not (tmp_path / "ckpt").exists()
    save_feature_map(unfitted.fit(images), tmp_path / "mid")
    torch.testing.assert_close(load_feature_map(tmp_path / "mid", model=pixel_model)(images), unfitted(images))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_midblock_features_of_a_low_precision_denoiser_read_float32_samples(make_pixel_model, images, dtype):
    """A bfloat16 denoiser given float32 samples raised torch's "Input type (float) and bias type" error."""
    full = MidBlockFeatures(make_pixel_model(), num_features=3).fit(images)
    low = MidBlockFeatures(make_pixel_model().to(dtype=dtype), num_features=3).fit(images)  # the same weights
    z = low(images)
    assert z.dtype == torch.float32 and z.shape == (40, 3)
    torch.testing.assert_close(z, full(images), atol=0.1, rtol=0.05)
    x = images[:2].clone().requires_grad_(True)
    low(x).sum().backward()  # guidance differentiates through the cast
    assert x.grad.dtype == torch.float32 and float(x.grad.abs().sum()) > 0


def test_callable_features_name_input_that_is_no_tensor(images):
    """NumPy input reached the callable: a raw TypeError from torch (or a misleading "features" error)."""
    encoder = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
    for input_space, field in (("image", "images"), ("sample", "samples")):
        feats = CallableFeatures(encoder, 3, input_space=input_space)
        with pytest.raises(InputDataError, match=f"^{field}: expected a tensor.*got ndarray") as caught:
            feats(images.numpy())
        assert caught.value.field == field
    with pytest.raises(InputDataError, match="^images:.*got float"):
        CallableFeatures(encoder, 3)(1.0)
    assert CallableFeatures(encoder, 3)(images).shape == (40, 3)


def test_midblock_features_of_a_denoiser_in_train_mode_are_fixed(make_pixel_model, images):
    """A denoiser left in train mode added its dropout: the same images gave other features each call."""
    model = make_pixel_model(dropout=0.5)
    model.unet.train()
    mid = MidBlockFeatures(model, num_features=3).fit(images)
    torch.testing.assert_close(mid(images), mid(images), atol=0, rtol=0)
    assert model.unet.training  # its mode comes back
    model.unet.eval()
    torch.testing.assert_close(mid(images), MidBlockFeatures(model, num_features=3).fit(images)(images))


def test_feature_statistics_follow_the_samples_device(make_pixel_model, images):
    """Statistics fitted on the CPU met CUDA samples: "Tensor on device cpu is not on the expected device".

    The meta device stands in for a GPU: it checks devices as CUDA does, on any machine.
    """
    pca = PCAFeatures.fit(images, num_features=4)
    assert pca(images.to("meta")).device.type == "meta"
    model = make_pixel_model()
    mid = MidBlockFeatures(model, num_features=3).fit(images)  # as fit() on a CUDA model: buffers stay put
    torch.nn.Module.to(model.unet, "meta")
    z = mid(images.to("meta"))
    assert z.device.type == "meta" and z.shape == (40, 3)


def test_pca_of_integer_images_matches_their_float_values(images):
    """uint8 images cast the mean and components to integers: every feature came out 0."""
    pixels = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    pca = PCAFeatures.fit(pixels, num_features=4)  # fitting already read them as numbers
    z = pca(pixels)
    assert z.dtype == torch.float32
    torch.testing.assert_close(z, pca(pixels.float()))
    assert float(z.abs().max()) > 0.1


def test_a_callable_map_loaded_with_another_module_is_ours_to_reject(images, tmp_path):
    """Weights of another shape or names raised torch's RuntimeError from load_state_dict."""
    save_feature_map(CallableFeatures(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3)), 3),
                     tmp_path / "enc")
    for other in (torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 5)), torch.nn.Linear(64, 3)):
        with pytest.raises(InputDataError, match="^fn: expected a module whose weights match") as caught:
            load_feature_map(tmp_path / "enc", fn=other)
        assert caught.value.field == "fn"


def test_midblock_projects_on_every_component_when_asked_for_all_of_them(pixel_model, images):
    """num_features = C gave raw standardized channels (correlated, whiten ignored), unlike C - 1."""
    channels = MidBlockFeatures(pixel_model).channels
    samples = sample(pixel_model, 64, num_inference_steps=3, generator=torch.Generator().manual_seed(1),
                     progress_bar=False).samples
    for whiten in (True, False):
        z = MidBlockFeatures(pixel_model, num_features=channels, whiten=whiten).fit(samples)(samples).double()
        cov = torch.cov(z.T)
        torch.testing.assert_close(cov - torch.diag(torch.diag(cov)), torch.zeros_like(cov), atol=1e-4, rtol=0)
        assert float(torch.diag(cov).sum()) == pytest.approx(channels, rel=1e-3)
        assert (float(torch.diag(cov)[0]) > 2) == (not whiten)  # variance-kept: the leading component dominates
    raw = MidBlockFeatures(pixel_model).fit(samples)  # None: the standardized channels themselves
    variances = torch.diag(torch.cov(raw(samples).T.double()))
    torch.testing.assert_close(variances, torch.ones(channels, dtype=torch.float64), atol=1e-3, rtol=0)


def test_midblock_map_of_raw_channels_reloads_as_raw_channels(pixel_model, images, tmp_path):
    """num_features=None saved num_features = C and reloaded as a projection on C components: the same
    features until refitted, then whitened components instead of the standardized channels."""
    import json

    channels = MidBlockFeatures(pixel_model).channels
    for num_features in (None, channels):
        mid = MidBlockFeatures(pixel_model, timestep=80, num_features=num_features).fit(images)
        loaded = load_feature_map(save_feature_map(mid, tmp_path / f"mid{num_features}"), model=pixel_model)
        assert loaded.config() == mid.config() and loaded.fingerprint() == mid.fingerprint()
        torch.testing.assert_close(loaded(images), mid(images))
        refit = images[:20]
        torch.testing.assert_close(loaded.fit(refit)(images), mid.fit(refit)(images))
    projected = json.loads((tmp_path / f"mid{channels}" / "feature_map.json").read_text())
    assert "project" not in projected  # a projecting map's config, and so its fingerprint, stay as they were
    (tmp_path / "midNone" / "feature_map.json").write_text(json.dumps({**projected, "project": "no"}))
    with pytest.raises(InputDataError, match="^feature_map.json:.*project"):
        load_feature_map(tmp_path / "midNone", model=pixel_model)


def test_midblock_pooled_moves_the_samples_to_the_denoisers_device(make_pixel_model, images):
    """pooled() ran the denoiser on the caller's device: CPU samples met a CUDA model ("not on the expected device").

    The meta device stands in for a GPU: it checks devices as CUDA does, on any machine.
    """
    model = make_pixel_model()
    mid = MidBlockFeatures(model, num_features=3).fit(images)
    torch.nn.Module.to(model.unet, "meta")
    acts = mid.pooled(images[:4])
    assert acts.device.type == "meta" and tuple(acts.shape) == (4, mid.channels)
    z = mid(images[:4])  # forward reads pooled(): the same samples map too
    assert z.device.type == "meta" and tuple(z.shape) == (4, 3)
