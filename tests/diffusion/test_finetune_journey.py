"""A practitioner fine-tuning and training the diffusion model: what they meet, each in papa_bayes's words."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from papa_bayes.diffusion import papa_finetune
from papa_bayes.diffusion.train import fit_default_features, main, train_base_model
from papa_bayes.exceptions import InputDataError

TINY = {"block_out_channels": (8, 16), "layers_per_block": 1, "norm_num_groups": 4,
        "down_block_types": ("DownBlock2D", "DownBlock2D"), "up_block_types": ("UpBlock2D", "UpBlock2D")}


def _fail_if_trained(monkeypatch):
    import papa_bayes.diffusion.train as train

    def no_training(*args, **kwargs):
        raise AssertionError("the mistake should be caught before training")

    monkeypatch.setattr(train, "_train", no_training)
    monkeypatch.setattr(train, "sample", no_training)


def test_a_seed_beyond_torchs_range_is_refused_before_training(tmp_path, monkeypatch):
    # Was torch's bare ValueError "Overflow when unpacking long long" (a traceback from `train-base --seed`).
    _fail_if_trained(monkeypatch)
    for call in (lambda: train_base_model(tmp_path / "m", steps=1, batch_size=2, seed=2**64, unet_config=TINY,
                                          progress_bar=False),
                 lambda: fit_default_features(tmp_path / "m", num_samples=16, seed=2**64, progress_bar=False)):
        with pytest.raises(InputDataError, match=r"^seed: expected an integer in \[0, 18446744073709551615\], "
                                                 r"got 18446744073709551616"):
            call()
    assert not (tmp_path / "m").exists()


def test_the_largest_seed_torch_takes_trains(tmp_path):
    summary = train_base_model(tmp_path, steps=1, batch_size=2, seed=2**64 - 1, unet_config=TINY, progress_bar=False)
    assert summary["seed"] == 2**64 - 1


def test_a_unet_config_of_numpy_numbers_trains_and_saves(tmp_path):
    # Was "TypeError: Object of type float32 is not JSON serializable" once the training was over, with the
    # folder half written (unet/ without its config).
    config = {**TINY, "dropout": np.float32(0.25), "layers_per_block": np.int64(1), "norm_eps": torch.tensor(1e-5),
              "block_out_channels": np.array([8, 16])}
    summary = train_base_model(tmp_path, steps=1, batch_size=2, unet_config=config, progress_bar=False)
    saved = json.loads((tmp_path / "unet" / "config.json").read_text())
    assert saved["dropout"] == pytest.approx(0.25) and saved["layers_per_block"] == 1
    assert saved["norm_eps"] == pytest.approx(1e-5) and saved["block_out_channels"] == [8, 16]
    logged = json.loads((tmp_path / "train_log.json").read_text())["unet_config"]
    assert logged["dropout"] == pytest.approx(0.25) and type(summary["unet_config"]["layers_per_block"]) is int


def test_a_unet_config_json_cannot_write_is_refused_before_training(tmp_path, monkeypatch):
    # A Fraction was torch's "dropout(): argument 'p' (position 2) must be float, not Fraction" at the first step.
    from fractions import Fraction

    _fail_if_trained(monkeypatch)
    with pytest.raises(InputDataError, match=r"^unet_config: expected UNet2DModel arguments JSON can write .*"
                                             r"got dropout = Fraction\(1, 4\)"):
        train_base_model(tmp_path / "m", steps=1, unet_config={**TINY, "dropout": Fraction(1, 4)}, progress_bar=False)
    assert not (tmp_path / "m").exists()


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_training_logs_no_diffusers_dtype_warning(tmp_path):
    # Every run printed "There are modules in UNet2DModel that should be kept in float32: []. Casting directly
    # with `to()` can lead to inconsistent results; ..." (diffusers' own `to` with a dtype).
    records = _Records()
    logger = logging.getLogger("diffusers")
    logger.addHandler(records)
    try:
        train_base_model(tmp_path, steps=1, batch_size=2, unet_config=TINY, progress_bar=False)
    finally:
        logger.removeHandler(records)
    assert not [m for m in records.messages if "kept in float32" in m], records.messages


def test_train_base_checks_its_output_folder_once(tmp_path, monkeypatch):
    import papa_bayes.diffusion.train as train

    calls = []
    check = train._check_out_folder
    monkeypatch.setattr(train, "_check_out_folder",
                        lambda *args, **kwargs: (calls.append(args), check(*args, **kwargs)))

    class Stop(Exception):
        pass

    def stop(*args, **kwargs):
        raise Stop

    monkeypatch.setattr(train, "_train", stop)
    with pytest.raises(Stop):
        main(["--out", str(tmp_path / "m"), "--no-progress"])
    assert len(calls) == 1
    (tmp_path / "file").write_text("x")  # still refused before training, named as the option
    with pytest.raises(InputDataError, match=r"^--out: expected a folder .*\(a file\)"):
        main(["--out", str(tmp_path / "file"), "--no-progress"])


def test_labels_as_int_float_and_numpy_give_the_same_fine_tune_and_bools_are_refused(pixel_model):
    images = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    kw = dict(steps=1, progress_bar=False)
    runs = [papa_finetune(pixel_model, images, signs, generator=torch.Generator().manual_seed(0), **kw)
            for signs in ([1, -1, -1, 1], [1.0, -1.0, -1.0, 1.0], np.array([1, -1, -1, 1]),
                          torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=torch.float64))]
    first = list(runs[0].unet.parameters())
    assert not all(torch.equal(a, b) for a, b in zip(first, pixel_model.unet.parameters()))
    for run in runs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(first, run.unet.parameters()))
    for run in runs:  # a frozen eval copy; the input model is left as it was
        assert not run.unet.training and not any(p.requires_grad for p in run.unet.parameters())
        assert run.unet is not pixel_model.unet
    with pytest.raises(InputDataError, match=r"^signs: expected \+1 \(like\) / -1 \(dislike\) numbers, not bools"):
        papa_finetune(pixel_model, images, [True, False, False, True], **kw)


def _latent_unet(**overrides):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    config = dict(sample_size=4, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
                  down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                  up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=8, norm_num_groups=4,
                  attention_head_dim=2)
    return UNet2DConditionModel(**{**config, **overrides}).eval()


def test_a_latent_checkpoint_of_another_base_is_refused_on_loading(latent_model, tmp_path):
    # Loaded without a word, then failed mid-sampling in torch's words ("Expected size for first two dimensions
    # of batch2 tensor to be: [2, 8] but got: [2, 16]"; a latent-channel mismatch only when decoding).
    from diffusers import AutoencoderKL

    from papa_bayes.diffusion import LatentDiffusion, load_finetuned, save_finetuned

    wide = LatentDiffusion(_latent_unet(cross_attention_dim=16), latent_model.vae, latent_model.scheduler,
                           encoder_hidden_states=torch.zeros(1, 3, 16))
    with pytest.raises(InputDataError, match=r"^base: expected a model whose encoder_hidden_states are `L x D` with "
                                             r"D = 16 \(the saved denoiser's cross_attention_dim; .*got D = 8"):
        load_finetuned(save_finetuned(wide, tmp_path / "wide"), base=latent_model)
    torch.manual_seed(0)
    vae8 = AutoencoderKL(in_channels=1, out_channels=1, latent_channels=8, block_out_channels=(8, 16),
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         norm_num_groups=4, sample_size=8, layers_per_block=1).eval()
    deep = LatentDiffusion(_latent_unet(in_channels=8, out_channels=8), vae8, latent_model.scheduler,
                           encoder_hidden_states=latent_model.encoder_hidden_states)
    with pytest.raises(InputDataError, match=r"^base: expected a model whose autoencoder has latent_channels = 8 "
                                             r"\(the saved denoiser's in_channels; .*got latent_channels = 4"):
        load_finetuned(save_finetuned(deep, tmp_path / "deep"), base=latent_model)
    same = load_finetuned(save_finetuned(latent_model, tmp_path / "same"), base=latent_model)  # its own base loads
    assert same.sample_shape == latent_model.sample_shape


def test_an_empty_out_is_refused_not_read_as_the_current_folder(tmp_path, monkeypatch):
    # `train-base --out "$UNSET"`: argparse's Path("") is ".", so the checkpoint was trained into the current folder.
    _fail_if_trained(monkeypatch)
    monkeypatch.chdir(tmp_path)
    for extra in ([], ["--features-only"]):
        with pytest.raises(InputDataError, match=r"^--out: expected a path \(str or os.PathLike\), got ''"):
            main(["--out", "", "--no-progress", *extra])
    assert list(tmp_path.iterdir()) == []


def test_a_diverging_base_training_fails_and_writes_nothing(tmp_path):
    # A learning rate too high trained on through NaN and saved a checkpoint of NaN weights ("final_loss": NaN).
    from papa_bayes.exceptions import ModelError

    with pytest.raises(ModelError, match=r"^train base UNet: the loss became nan at step \d+; lower the learning"):
        train_base_model(tmp_path / "m", steps=30, batch_size=8, learning_rate=1e8, unet_config=TINY,
                         progress_bar=False)
    assert not (tmp_path / "m").exists()


def test_a_diverging_fine_tune_says_so_without_a_torch_warning(pixel_model):
    # Our ModelError came with torch's "Converting a tensor with requires_grad=True to a scalar may lead to
    # unexpected behavior" (a float() of the loss itself).
    import warnings

    from papa_bayes.diffusion import finetune_on_samples
    from papa_bayes.exceptions import ModelError

    samples = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(3)) * 2 - 1
    with warnings.catch_warnings(record=True) as caught, \
            pytest.raises(ModelError, match=r"^fine-tune on samples: the loss became nan at step \d+; lower the"):
        warnings.simplefilter("always")
        finetune_on_samples(pixel_model, samples, steps=3, lr=1e30, progress_bar=False)
    assert [str(w.message) for w in caught] == []
