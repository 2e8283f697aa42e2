"""Tiny diffusers models built from configs (no weights) and a stand-in posterior."""

from __future__ import annotations

import pytest
import torch

from papa_bayes.diffusion import LatentDiffusion, PixelDiffusion, make_digits_unet, make_sampling_scheduler


class DrawsPosterior:
    """Duck-typed RewardPosterior: linear utility ``w_s . phi`` over fixed draws ``w``."""

    def __init__(self, draws: torch.Tensor) -> None:
        self.draws = draws  # s x d

    @property
    def num_features(self) -> int:
        return int(self.draws.shape[1])

    @property
    def num_draws(self) -> int:
        return int(self.draws.shape[0])

    def utility(self, features: torch.Tensor) -> torch.Tensor:
        return self.draws.to(features.dtype) @ features.T


def tiny_pixel_model(kind: str = "ddim", prediction_type: str = "epsilon", **overrides) -> PixelDiffusion:
    """A tiny pixel model in eval mode; ``overrides`` replace UNet config entries (e.g. ``dropout``)."""
    torch.manual_seed(0)
    unet = make_digits_unet(**{
        "block_out_channels": (8, 16), "layers_per_block": 1, "norm_num_groups": 4,
        "down_block_types": ("DownBlock2D", "DownBlock2D"), "up_block_types": ("UpBlock2D", "UpBlock2D"),
        **overrides,
    }).eval().requires_grad_(False)
    scheduler = make_sampling_scheduler(kind=kind)
    scheduler = type(scheduler).from_config(scheduler.config, prediction_type=prediction_type)
    return PixelDiffusion(unet, scheduler)


def tiny_latent_model(kind: str = "ddim", **kwargs) -> LatentDiffusion:
    from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=4, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=8, norm_num_groups=4, attention_head_dim=2,
    ).eval().requires_grad_(False)
    vae = AutoencoderKL(
        in_channels=1, out_channels=1, latent_channels=4, block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=4, sample_size=8, layers_per_block=1,
    ).eval().requires_grad_(False)
    scheduler = (DDIMScheduler if kind == "ddim" else DDPMScheduler)(clip_sample=False)
    cond = torch.randn(1, 3, 8, generator=torch.Generator().manual_seed(1))
    return LatentDiffusion(unet, vae, scheduler, encoder_hidden_states=cond, **kwargs)


@pytest.fixture(scope="session")
def pixel_model() -> PixelDiffusion:
    return tiny_pixel_model()


@pytest.fixture(scope="session")
def latent_model() -> LatentDiffusion:
    return tiny_latent_model()


@pytest.fixture
def make_pixel_model():
    """Factory of tiny pixel models: ``make_pixel_model(kind, prediction_type, **unet_overrides)``."""
    return tiny_pixel_model


@pytest.fixture
def make_latent_model():
    """Factory of tiny latent models: ``make_latent_model(kind, **LatentDiffusion kwargs)``."""
    return tiny_latent_model


@pytest.fixture
def make_posterior():
    """Factory of stand-in posteriors from `s x d` weight draws."""
    return DrawsPosterior


@pytest.fixture
def recorded_bars(monkeypatch):
    """``record(module)``: the module's ``tqdm`` records its bars; returns the list they go into.

    Each bar gets ``was_closed``, set when its own ``close`` runs (not by the garbage collector finalizing an
    iterator, which CPython happens to do at once and another interpreter need not).
    """
    import tqdm.auto

    def record(module) -> list:
        bars = []

        class RecordedBar(tqdm.auto.tqdm):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                self.was_closed = False
                bars.append(self)

            def close(self):
                self.was_closed = True
                super().close()

        monkeypatch.setattr(module, "tqdm", RecordedBar)
        return bars

    return record
