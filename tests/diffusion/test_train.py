from __future__ import annotations

import json

import pytest
import torch

from papa_bayes.diffusion import PCAFeatures, load_base_model, load_feature_map, sample
from papa_bayes.diffusion.train import fit_default_features, main, train_base_model
from papa_bayes.exceptions import InputDataError


def test_training_script_writes_a_loadable_checkpoint(tmp_path):
    summary = main(["--out", str(tmp_path), "--steps", "2", "--batch-size", "8", "--no-progress",
                    "--feature-samples", "16", "--feature-steps", "2"])
    assert summary["steps"] == 2
    assert (tmp_path / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    from diffusers import DDPMPipeline

    from papa_bayes.diffusion import DEFAULT_CHECKPOINT

    for folder in (tmp_path, DEFAULT_CHECKPOINT):  # diffusers opens a trained folder, the shipped one too
        assert type(DDPMPipeline.from_pretrained(folder).scheduler).__name__ == "DDPMScheduler"
    assert json.loads((tmp_path / "train_log.json").read_text())["seed"] == 0
    assert load_feature_map(tmp_path / "pca_features").num_features == 8
    wide = load_feature_map(tmp_path / "midblock32_features", model=load_base_model(tmp_path))
    assert wide.whiten is False and wide.num_features == 16  # 32, capped by the 16 fitting samples
    fit_default_features(tmp_path, num_samples=16, num_features=4, num_inference_steps=2, progress_bar=False)
    model = load_base_model(tmp_path, scheduler="ddpm")
    assert model.dtype == torch.float32 and type(model.scheduler).__name__ == "DDPMScheduler"
    assert not model.scheduler.config.clip_sample
    out = sample(model, 3, num_inference_steps=2, progress_bar=False)
    features = load_feature_map(tmp_path / "pca_features")
    assert isinstance(features, PCAFeatures) and features(out.images).shape == (3, 4)


TINY = {"block_out_channels": (8, 16), "layers_per_block": 1, "norm_num_groups": 4,
        "down_block_types": ("DownBlock2D", "DownBlock2D"), "up_block_types": ("UpBlock2D", "UpBlock2D")}


def test_training_is_seeded(tmp_path):
    a = train_base_model(tmp_path / "a", steps=2, batch_size=4, seed=3, unet_config=TINY, progress_bar=False)
    b = train_base_model(tmp_path / "b", steps=2, batch_size=4, seed=3, unet_config=TINY, progress_bar=False)
    c = train_base_model(tmp_path / "c", steps=2, batch_size=4, seed=4, unet_config=TINY, progress_bar=False)
    assert c["final_loss"] != a["final_loss"]
    assert a["final_loss"] == b["final_loss"]
    with pytest.raises(InputDataError):
        train_base_model(tmp_path / "d", steps=0)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"steps": 2.5}, "steps"),
        ({"steps": "3"}, "steps"),
        ({"batch_size": 0}, "batch_size"),
        ({"learning_rate": -1.0}, "learning_rate"),
        ({"learning_rate": "2e-3"}, "learning_rate"),
        ({"ema_decay": -1.0}, "ema_decay"),
        ({"ema_decay": 1.0}, "ema_decay"),
        ({"device": "cpux"}, "device"),  # was PyTorch's RuntimeError, after the UNet was built
        ({"device": "cuda:99"}, "device"),
        ({"seed": 1.5}, "seed"),  # was RuntimeError from manual_seed
        ({"seed": "1"}, "seed"),
        ({"unet_config": [("layers_per_block", 1)]}, "unet_config"),  # was TypeError
        ({"unet_config": {"layers": 1}}, "unet_config"),  # was UNet2DModel's TypeError
    ],
)
def test_training_numbers_are_checked_before_the_unet_is_built(tmp_path, monkeypatch, kwargs, field):
    import papa_bayes.diffusion.train as train

    def no_unet(**config):
        raise AssertionError("built the UNet before checking the arguments")

    monkeypatch.setattr(train, "make_digits_unet", no_unet)
    with pytest.raises(InputDataError) as info:
        train_base_model(tmp_path, **{"steps": 2, "batch_size": 4, "progress_bar": False, **kwargs})
    assert info.value.field == field


def test_training_output_folder_is_a_path():
    with pytest.raises(InputDataError, match="^out_dir:"):  # was TypeError from pathlib
        train_base_model(None, steps=2, batch_size=4, progress_bar=False)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"num_features": 0}, "num_features"), ({"num_samples": 1}, "num_samples"),
     ({"num_samples": 4, "num_features": 8}, "num_features"), ({"num_inference_steps": 2.0}, "num_inference_steps"),
     ({"seed": "0"}, "seed")],
)
def test_feature_fitting_checks_its_numbers_before_sampling(monkeypatch, kwargs, field):
    import papa_bayes.diffusion.train as train
    from papa_bayes.diffusion import DEFAULT_CHECKPOINT

    def no_sampling(*args, **kw):
        raise AssertionError("sampled before checking the arguments")

    monkeypatch.setattr(train, "sample", no_sampling)  # nothing is written to the checkpoint either
    with pytest.raises(InputDataError) as info:
        fit_default_features(DEFAULT_CHECKPOINT, **{"num_samples": 16, "num_features": 4, "progress_bar": False, **kwargs})
    assert info.value.field == field


def test_module_entry_point_reports_a_bad_option_in_one_line(tmp_path):
    """``python -m papa_bayes.diffusion.train`` is ``papa-bayes train-base``: our error, exit 2, no traceback."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "papa_bayes.diffusion.train", "--out", str(tmp_path / "m"), "--steps", "-3"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "--steps" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "m").exists()


def test_training_into_a_checkpoint_removes_its_stale_default_feature_maps(tmp_path):
    """The feature maps fitted to the earlier UNet stayed beside the new weights, and loaded without a word."""
    import warnings

    from papa_bayes.diffusion import save_feature_map
    from papa_bayes.exceptions import PapaBayesWarning

    DEFAULT_FEATURE_MAPS = ("pca_features", "midblock_features", "midblock32_features")  # fit_default_features'

    kw = dict(steps=2, batch_size=4, unet_config=TINY, progress_bar=False)
    train_base_model(tmp_path, **kw)
    fit_default_features(tmp_path, num_samples=8, num_features=2, num_inference_steps=2, progress_bar=False)
    assert all((tmp_path / name / "feature_map.json").is_file() for name in DEFAULT_FEATURE_MAPS)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PapaBayesWarning)  # only ours there: removed without a word
        train_base_model(tmp_path, seed=1, **kw)
    assert not any((tmp_path / name).exists() for name in DEFAULT_FEATURE_MAPS)
    assert (tmp_path / "unet").is_dir() and (tmp_path / "scheduler").is_dir()

    # Maps it does not recognise as fit_default_features' own are kept, and named.
    fit_default_features(tmp_path, num_samples=8, num_features=2, num_inference_steps=2, progress_bar=False)
    save_feature_map(load_feature_map(tmp_path / "pca_features"), tmp_path / "my_features")
    (tmp_path / "midblock_features" / "notes.txt").write_text("mine")
    (tmp_path / "unrelated").mkdir()
    with pytest.warns(PapaBayesWarning, match=r"^out_dir: .* feature maps other than fit_default_features' own "
                                              r"\(midblock_features, my_features\), kept") as caught:
        train_base_model(tmp_path, seed=2, **kw)
    assert caught[0].filename == __file__
    assert not (tmp_path / "pca_features").exists() and not (tmp_path / "midblock32_features").exists()
    assert (tmp_path / "midblock_features" / "notes.txt").read_text() == "mine"
    assert (tmp_path / "my_features" / "feature_map.json").is_file() and (tmp_path / "unrelated").is_dir()
    assert list(load_base_model(tmp_path).unet.config.block_out_channels) == [8, 16]
