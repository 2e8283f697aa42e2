"""The shipped base model: a small diffusers UNet on the 8x8 digits.

The checkpoint lives in ``checkpoints/digits_unet`` in the layout of a diffusers
pipeline folder: ``unet/`` (``save_pretrained``, safetensors, stored as float16 to
keep the repository small), ``scheduler/`` (the DDPM training scheduler's config)
and ``pca_features/`` (the default feature map, fitted on base samples).
``papa-bayes train-base --out papa_bayes/diffusion/checkpoints/digits_unet`` reproduces it.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch

from papa_bayes.checks import check_device, check_float_dtype, check_path, reading
from papa_bayes.diffusion.models import PREDICTION_TYPES, PixelDiffusion, check_scheduler
from papa_bayes.exceptions import InputDataError, ModelError

__all__ = [
    "DEFAULT_CHECKPOINT",
    "DIGITS_UNET_CONFIG",
    "DIGITS_SCHEDULER_CONFIG",
    "make_digits_unet",
    "make_train_scheduler",
    "make_sampling_scheduler",
    "load_base_model",
]

#: Where the committed checkpoint lives.
DEFAULT_CHECKPOINT = Path(__file__).resolve().parent / "checkpoints" / "digits_unet"

#: The UNet of the base model: two levels (8x8 -> 4x4), attention at 4x4, ~1M weights.
DIGITS_UNET_CONFIG: dict[str, Any] = {
    "sample_size": 8,
    "in_channels": 1,
    "out_channels": 1,
    "layers_per_block": 2,
    "block_out_channels": (32, 64),
    "down_block_types": ("DownBlock2D", "AttnDownBlock2D"),
    "up_block_types": ("AttnUpBlock2D", "UpBlock2D"),
    "norm_num_groups": 8,
}

#: DDPM training noise schedule. ``clip_sample=False``: clipping the predicted x0
#: inside the scheduler step would fight reward guidance (it clips the guided x0
#: but keeps the unguided noise estimate).
DIGITS_SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_schedule": "squaredcos_cap_v2",
    "clip_sample": False,
    "prediction_type": "epsilon",
}


def make_digits_unet(**overrides: Any):
    """A fresh (untrained) base-model UNet in float32; ``overrides`` replace config entries.

    Built in float32 whatever torch's default dtype (as :func:`load_base_model` loads
    it): under ``torch.set_default_dtype(torch.float64)`` it came out in float64 and,
    its initialization drawn in float64, with other weights from the same seed.

    Raises:
        InputDataError: on an override that is no ``UNet2DModel`` argument.
    """
    from diffusers import UNet2DModel

    check_unet_overrides("overrides", overrides)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        return UNet2DModel(**{**DIGITS_UNET_CONFIG, **overrides})
    finally:
        torch.set_default_dtype(default)


def check_unet_overrides(name: str, overrides: Any) -> dict[str, Any]:
    """``overrides`` unless not a dict of ``UNet2DModel`` arguments: then InputDataError."""
    from diffusers import UNet2DModel

    if not isinstance(overrides, dict):
        raise InputDataError(name, "a dict of UNet2DModel arguments", type(overrides).__name__)
    known = set(inspect.signature(UNet2DModel.__init__).parameters) - {"self"}
    unknown = sorted(set(map(str, overrides)) - known)
    if unknown:
        raise InputDataError(name, "UNet2DModel config entries", unknown)
    return overrides


def make_train_scheduler():
    """The DDPM scheduler the base model is trained with."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(**DIGITS_SCHEDULER_CONFIG)


def make_sampling_scheduler(config: Any = None, *, kind: str = "ddim"):
    """A sampling scheduler sharing a training scheduler's noise schedule.

    Args:
        config: a scheduler config (``scheduler.config``, a mapping); defaults to the digits one.
        kind: ``"ddim"`` or ``"ddpm"``.

    Returns:
        A ``DDIMScheduler`` or ``DDPMScheduler`` with ``clip_sample=False``.

    Raises:
        InputDataError: on another ``kind``, or a ``config`` that is not a mapping,
            whose ``num_train_timesteps`` is not an integer >= 1 or whose
            ``prediction_type`` the sampler does not know.
    """
    from diffusers import DDIMScheduler, DDPMScheduler

    classes = {"ddim": DDIMScheduler, "ddpm": DDPMScheduler}
    if not isinstance(kind, str) or kind not in classes:
        raise InputDataError("kind", "'ddim' or 'ddpm'", kind)
    if config is not None and not isinstance(config, Mapping):  # a str would be fetched as a Hub repository
        raise InputDataError("config", "None or a scheduler config (a mapping)", type(config).__name__)
    config = DIGITS_SCHEDULER_CONFIG if config is None else config
    num_train = config.get("num_train_timesteps", 1000)  # diffusers' default
    if isinstance(num_train, bool) or not isinstance(num_train, int) or num_train < 1:
        raise InputDataError("config", "num_train_timesteps an integer >= 1", num_train)
    prediction = config.get("prediction_type", "epsilon")
    if prediction not in PREDICTION_TYPES:
        raise InputDataError("config", "prediction_type 'epsilon', 'sample' or 'v_prediction'", prediction)
    return classes[kind].from_config(config, clip_sample=False)


def load_base_model(
    path: str | Path | None = None,
    *,
    scheduler: str = "ddim",
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> PixelDiffusion:
    """Load the committed digits base model (or another checkpoint of the same layout).

    Args:
        path: a folder with ``unet/`` and ``scheduler/``; defaults to the committed one.
        scheduler: sampling scheduler, ``"ddim"`` or ``"ddpm"``.
        device: where the UNet runs.
        dtype: the UNet's dtype, a floating-point torch.dtype (float32; bfloat16/float16
            on CUDA at the caller's choice).

    Returns:
        A :class:`PixelDiffusion` in eval mode with frozen weights.

    Raises:
        InputDataError: when ``path`` is not a folder holding ``unet/config.json`` (or
            its weights or configs are missing or unreadable, or its scheduler or
            denoiser has a learned variance, which the sampler cannot drive, or its
            denoiser is one :class:`PixelDiffusion` refuses), or
            on an unknown ``scheduler``, a device this machine does not have, or a
            ``dtype`` that is not a floating-point torch.dtype.
    """
    from diffusers import DDPMScheduler, UNet2DModel

    device = check_device("device", device)
    # None: float32, as documented (diffusers' own default follows torch's: float64 after
    # torch.set_default_dtype(torch.float64), twice the memory and not the dtype the model was trained in).
    dtype = torch.float32 if dtype is None else check_float_dtype("dtype", dtype)
    if scheduler not in ("ddim", "ddpm"):
        raise InputDataError("scheduler", "'ddim' or 'ddpm'", scheduler)
    root = DEFAULT_CHECKPOINT if path is None else check_path("path", path)
    if not (root / "unet" / "config.json").is_file():
        raise InputDataError("path", "a checkpoint folder holding `unet/config.json`", str(root))
    with reading_checkpoint(root):
        unet = UNet2DModel.from_pretrained(root / "unet", local_files_only=True, torch_dtype=dtype,
                                           low_cpu_mem_usage=False)
        if (root / "scheduler" / "scheduler_config.json").is_file():
            train_config = DDPMScheduler.from_pretrained(root / "scheduler", local_files_only=True).config
        else:
            train_config = DIGITS_SCHEDULER_CONFIG
    try:  # the folder's config, not an argument of the caller's, is at fault
        sampler = make_sampling_scheduler(train_config, kind=scheduler)
    except InputDataError as err:
        raise InputDataError("path", "a checkpoint whose scheduler config the sampler reads",
                             f"{root} ({err})") from None
    check_loaded(root, unet, sampler)  # a learned-variance scheduler or denoiser: was a ModelError
    unet = unet.to(device).eval().requires_grad_(False)
    try:
        return PixelDiffusion(unet, sampler)
    except InputDataError as err:  # a sample_size its blocks cannot restore, class labels: the folder's denoiser
        raise InputDataError("path", "a checkpoint whose denoiser PixelDiffusion drives", f"{root} ({err})") from None


def check_loaded(root: Path, unet: torch.nn.Module, scheduler: Any) -> None:
    """InputDataError on ``path`` unless the sampler can drive checkpoint ``root``'s denoiser ``unet`` with the
    ``scheduler`` loaded from it: a folder's PNDM or learned-variance scheduler failed mid-sampling."""
    try:
        check_scheduler(unet, scheduler)
    except ModelError as err:
        raise InputDataError("path", "a checkpoint whose scheduler the sampler drives (a DDIMScheduler or "
                             "DDPMScheduler with a fixed variance)", f"{root} ({err})") from None


def reading_checkpoint(root: Path) -> AbstractContextManager[None]:
    """Within: diffusers' OSError / ValueError for a missing or corrupt file of checkpoint folder ``root``
    (JSONDecodeError too) raises InputDataError on ``path``."""
    return reading("path", "a checkpoint whose `unet/` and `scheduler/` diffusers can read", root)
