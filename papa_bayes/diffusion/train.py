"""Train the digits base model: ``papa-bayes train-base --out DIR`` (or ``python -m papa_bayes.diffusion.train``).

DDPM training (Ho et al. 2020): the UNet learns to predict the noise added to a
generator-split digit at a uniformly drawn timestep; an exponential moving average
of the weights is what gets saved. With the defaults (3000 steps of 128 digits) it
runs in about ten minutes on two CPU cores and reproduces the committed checkpoint
(``checkpoints/digits_unet``) up to floating-point nondeterminism of the platform.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from papa_bayes.diffusion.base import (
    DEFAULT_CHECKPOINT,
    check_unet_overrides,
    load_base_model,
    make_digits_unet,
    make_train_scheduler,
)
from papa_bayes.diffusion.digits import DIGITS_SPLIT_SEED, load_digits_splits
from papa_bayes.diffusion.features import MidBlockFeatures, PCAFeatures, save_feature_map
from papa_bayes.checks import (
    MAX_SEED, caller_stacklevel, check_bool, check_device, check_float, check_int, check_path, renamed_option,
)
from papa_bayes.exceptions import InputDataError, ModelError, PapaBayesWarning
from papa_bayes.diffusion.sampler import sample

__all__ = ["train_base_model", "fit_default_features", "main"]

NUM_FEATURES = 8  # dimension of the shipped feature maps (fit_default_features' default)
#: The folders :func:`fit_default_features` saves its maps in, fitted to the checkpoint's UNet and its samples.
DEFAULT_FEATURE_MAPS = ("pca_features", "midblock_features", "midblock32_features")
#: What :func:`~papa_bayes.diffusion.save_feature_map` writes in a map's folder.
_FEATURE_MAP_FILES = frozenset({"feature_map.json", "feature_map.safetensors"})


@renamed_option("progress", "progress_bar")
def train_base_model(
    out_dir: str | Path,
    *,
    steps: int = 3000,
    batch_size: int = 128,
    learning_rate: float = 2e-3,
    ema_decay: float = 0.999,
    seed: int = 0,
    device: str | torch.device = "cpu",
    unet_config: dict | None = None,
    progress_bar: bool = True,
) -> dict:
    """Train the base UNet on the generator split and save it with ``save_pretrained``.

    Args:
        out_dir: folder to write ``unet/`` and ``scheduler/`` into.
        steps: optimizer steps.
        batch_size: digits per step.
        learning_rate: AdamW peak learning rate (> 0; linear warm-up, cosine decay).
        ema_decay: decay of the weight average that is saved, in `[0, 1)`.
        seed: seeds the weights, batches, timesteps and noise (an integer in [0, 2**64 - 1], torch's seeds).
        device: where to train.
        unet_config: entries replacing those of ``DIGITS_UNET_CONFIG`` (a larger or
            smaller UNet), a dict of ``UNet2DModel`` arguments that diffusers can build;
            ``sample_size``, ``in_channels`` and ``out_channels`` may only restate the
            digits' `1 x 8 x 8`. A UNet with dropout draws its masks from ``seed`` too.
        progress_bar: show a tqdm bar.

    An earlier model's default feature maps in ``out_dir`` (``pca_features/``,
    ``midblock_features/`` and ``midblock32_features/`` as :func:`fit_default_features`
    saved them) are removed once training is done: fitted to the earlier UNet, they
    do not describe the new one. Refit them with :func:`fit_default_features` (as
    ``papa-bayes train-base`` does). Any other feature map there, or one of those
    folders holding files of another origin, is kept, with a PapaBayesWarning naming it.

    Returns:
        A summary dict (final loss, seconds, steps), also written to ``train_log.json``.

    Raises:
        InputDataError: before any training, on a step count, batch size, learning
            rate, decay or seed out of range, a device this machine does not have, an
            ``out_dir`` that is (or lies inside) a file or is not writable, or a
            ``unet_config`` that is not a dict of UNet2DModel arguments, that diffusers
            cannot build, that changes the digits' shape or whose values the saved
            config (JSON) cannot hold (NumPy and tensor numbers and arrays are read as Python ones).
        ModelError: when the loss or the weights become NaN or infinite (a learning rate
            too high); nothing is written then.
    """
    # Checked before the UNet is built: a bad number should not cost a model.
    out = check_path("out_dir", out_dir)
    steps = check_int("steps", steps)
    batch_size = check_int("batch_size", batch_size)
    learning_rate = check_float("learning_rate", learning_rate, strict=True)
    ema_decay = check_float("ema_decay", ema_decay, maximum=1.0)
    seed = check_int("seed", seed, minimum=0, maximum=MAX_SEED)
    device = check_device("device", device)
    progress_bar = check_bool("progress_bar", progress_bar)
    if unet_config is not None:
        unet_config = _plain_config(check_unet_overrides("unet_config", unet_config))
        _check_digits_shape(unet_config)
    _check_out_folder(out, "out_dir")  # a file there would surface only after the minutes of training
    # diffusers initialises the weights, and dropout draws its masks, from the global RNG: both come from
    # `seed`, and the caller's RNG state comes back.
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        try:
            unet = make_digits_unet(**(unet_config or {}))
        except (ValueError, TypeError, ZeroDivisionError, RuntimeError) as err:  # diffusers' and torch's checks
            detail = str(err).splitlines()[0] if str(err) else ""
            raise InputDataError("unet_config", "UNet2DModel arguments diffusers can build",
                                 f"{unet_config} ({type(err).__name__}: {detail})") from None
        # torch.nn.Module.to: diffusers' own `to` logs a warning about float32 modules at any dtype.
        unet = torch.nn.Module.to(unet, device=device, dtype=torch.float32).train()
        ema, running, seconds, scheduler = _train(unet, steps=steps, batch_size=batch_size,
                                                  learning_rate=learning_rate, ema_decay=ema_decay, seed=seed,
                                                  device=device, progress_bar=progress_bar)
    _drop_stale_feature_maps(out)  # before the new weights: a crash while saving leaves no map of the old UNet
    out.mkdir(parents=True, exist_ok=True)
    # float16 storage halves the committed size; load_base_model casts back to float32.
    # (torch.nn.Module.to skips diffusers' warning about casting a loaded model.)
    torch.nn.Module.to(ema, dtype=torch.float16).save_pretrained(out / "unet", safe_serialization=True)
    scheduler.save_pretrained(out / "scheduler")
    from papa_bayes.diffusion.finetune.io import pipeline_index
    from papa_bayes.diffusion.models import PixelDiffusion

    # So that diffusers opens the folder too: DDPMPipeline.from_pretrained(out).
    (out / "model_index.json").write_text(json.dumps(pipeline_index(PixelDiffusion(ema, scheduler)), indent=2) + "\n")
    summary = {
        "steps": steps,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "ema_decay": ema_decay,
        "seed": seed,
        "split_seed": DIGITS_SPLIT_SEED,
        "unet_config": unet_config or {},
        "final_loss": running,
        "seconds": round(seconds, 1),
        "torch": torch.__version__,
    }
    (out / "train_log.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _plain_config(unet_config: dict) -> dict:
    """``unet_config`` with NumPy and tensor numbers (in lists and tuples too) and arrays as Python ones, or
    InputDataError unless JSON can write it: diffusers saves the config as JSON, which failed once the training
    was over."""
    def plain(value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return type(value)(plain(v) for v in value)
        if isinstance(value, np.generic) or (isinstance(value, (np.ndarray, torch.Tensor)) and value.ndim == 0):
            return value.item()
        return value.tolist() if isinstance(value, (np.ndarray, torch.Tensor)) else value

    config = {key: plain(value) for key, value in unet_config.items()}
    for key, value in config.items():
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            raise InputDataError("unet_config", "UNet2DModel arguments JSON can write (numbers, str, lists of them)",
                                 f"{key} = {value!r}") from None
    return config


#: What the digits fix in a UNet: `1 x 8 x 8` samples (``unet_config`` may only restate it).
_DIGITS_SHAPE = {"in_channels": 1, "out_channels": 1, "sample_size": 8}


def _check_digits_shape(unet_config: dict) -> None:
    """InputDataError when ``unet_config`` changes the digits' channels or size.

    A UNet is size-agnostic: one of ``sample_size`` 16 trains on the 8x8 digits
    without complaint and then samples 16x16 noise; 3 input channels fail at the
    first step, in torch's words; 2 output channels (a learned variance) only once
    the minutes of training are over.
    """
    for key, value in _DIGITS_SHAPE.items():
        given = unet_config.get(key, value)
        same = given == value or (key == "sample_size" and isinstance(given, (tuple, list))
                                  and list(given) == [value, value])
        if isinstance(given, bool) or not same:
            raise InputDataError("unet_config", f"{key} = {value} (the digits are `1 x 8 x 8`) or no {key} entry",
                                 f"{key} = {given!r}")


def _train(unet: torch.nn.Module, *, steps: int, batch_size: int, learning_rate: float, ema_decay: float,
           seed: int, device: torch.device, progress_bar: bool) -> tuple[torch.nn.Module, float, float, Any]:
    """The DDPM training loop of :func:`train_base_model`; returns ``(ema, final_loss, seconds, scheduler)``."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    ema = copy.deepcopy(unet).eval().requires_grad_(False)
    scheduler = make_train_scheduler()
    alphas = scheduler.alphas_cumprod.to(device=device, dtype=torch.float32)
    data = load_digits_splits().generator.images.to(device)
    opt = torch.optim.AdamW(unet.parameters(), lr=learning_rate, weight_decay=1e-4)
    warmup = min(200, steps // 10 + 1)

    def lr_at(i: int) -> float:
        if i < warmup:
            return (i + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (i - warmup) / max(1, steps - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    start, running = time.time(), None
    # Closed when a step raises too: an open bar would garble what is printed next.
    with tqdm(range(steps), desc="train base UNet", disable=not progress_bar) as bar:
        for i in bar:
            idx = torch.randint(0, data.shape[0], (batch_size,), generator=gen).to(device)
            x0 = data[idx]
            t = torch.randint(0, scheduler.config.num_train_timesteps, (batch_size,), generator=gen).to(device)
            noise = torch.randn(x0.shape, generator=gen, dtype=torch.float32).to(device)
            a = alphas[t].view(-1, 1, 1, 1)
            x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
            loss = torch.nn.functional.mse_loss(unet(x_t, t).sample, noise)
            value = loss.item()
            if not math.isfinite(value):  # was trained on, and saved, NaN weights: a checkpoint that samples NaN
                raise ModelError(f"train base UNet: the loss became {value} at step {i}; lower the learning rate.")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
            opt.step()
            sched.step()
            # Warm the average up quickly so that short runs still save a useful model.
            decay = min(ema_decay, (1 + i) / (10 + i))
            with torch.no_grad():
                for pe, p in zip(ema.parameters(), unet.parameters()):
                    pe.lerp_(p, 1 - decay)
            running = value if running is None else 0.98 * running + 0.02 * value
            if i % 20 == 0:
                bar.set_postfix(loss=f"{running:.4f}")
    if not all(bool(torch.isfinite(p).all()) for p in ema.parameters()):  # the last step's update
        raise ModelError(f"train base UNet: the weights became non-finite at step {steps - 1}; lower the learning "
                         "rate.")
    return ema, running, time.time() - start, scheduler


@renamed_option("progress", "progress_bar")
def fit_default_features(
    checkpoint: str | Path,
    *,
    num_samples: int = 1024,
    num_features: int = NUM_FEATURES,
    num_inference_steps: int = 50,
    seed: int = 0,
    progress_bar: bool = True,
) -> PCAFeatures:
    """Fit the shipped feature maps on base samples and save them in the checkpoint.

    The reward features describe what the base model makes, so they are fitted on
    its samples rather than on real digits: ``checkpoint/pca_features`` (whitened
    pixel PCA, the default) and ``checkpoint/midblock_features`` (the UNet's pooled
    mid-block activations at timestep 300, whitened PCA to the same dimension; load
    it with ``load_feature_map(path, model=model)``). On the digits task the second
    separates liked from disliked digits better from few labels (cross-validated
    AUC of a linear reward from 20 labels 0.89 against 0.81; top 20% by a reward
    fitted on all labels: 100% liked in both, class entropy 1.88 against 1.68 bits).
    ``checkpoint/midblock32_features`` is the same mid-block map with 32 components,
    not whitened (their relative variances kept; see :class:`MidBlockFeatures`).

    Returns:
        The PCA feature map.

    Raises:
        InputDataError: before any sampling, on a checkpoint folder without a UNet,
            counts that are not integers >= 1 (``num_samples`` >= 2), or more
            features than samples.
    """
    num_samples = check_int("num_samples", num_samples, minimum=2)  # PCA needs two
    num_features = check_int("num_features", num_features)
    progress_bar = check_bool("progress_bar", progress_bar)
    check_int("num_inference_steps", num_inference_steps)
    seed = check_int("seed", seed, minimum=0, maximum=MAX_SEED)
    if num_features > num_samples:
        raise InputDataError("num_features", f"at most num_samples = {num_samples}", num_features)
    model = load_base_model(checkpoint)
    out = sample(model, num_samples, num_inference_steps=num_inference_steps,
                 generator=torch.Generator().manual_seed(seed), progress_bar=progress_bar)
    pca = PCAFeatures.fit(out.images, num_features=num_features)
    mid = MidBlockFeatures(model, timestep=300, num_features=num_features).fit(out.images)
    wide = min(32, num_samples, mid.channels)  # fewer only for tiny test runs
    mid32 = MidBlockFeatures(model, timestep=300, num_features=wide, whiten=False).fit(out.images)
    for name, feature_map in zip(DEFAULT_FEATURE_MAPS, (pca, mid, mid32)):
        save_feature_map(feature_map, Path(checkpoint) / name)
    return pca


def _drop_stale_feature_maps(out: Path) -> None:
    """Remove the default feature maps (:data:`DEFAULT_FEATURE_MAPS`) of an earlier model in ``out``.

    Only a real folder of that name holding nothing but what ``save_feature_map`` writes
    is removed; any other folder with a ``feature_map.json`` (a map of the caller's, a
    link, a default folder with other files in it) is kept and named in a PapaBayesWarning.
    """
    if not out.is_dir():
        return
    kept = []
    for folder in sorted(out.iterdir()):
        if not (folder.is_dir() and (folder / "feature_map.json").is_file()):
            continue
        files = list(folder.iterdir())
        ours = folder.name in DEFAULT_FEATURE_MAPS and not folder.is_symlink() and all(
            f.name in _FEATURE_MAP_FILES and f.is_file() and not f.is_symlink() for f in files)
        if ours:
            shutil.rmtree(folder)
        else:
            kept.append(folder.name)
    if kept:
        warnings.warn(
            f"out_dir: {out} holds feature maps other than fit_default_features' own ({', '.join(kept)}), kept as "
            "they are; any fitted to the earlier model (its samples or its denoiser) does not match the new weights: "
            "refit it.",
            PapaBayesWarning,
            stacklevel=caller_stacklevel(),
        )


def _check_out_folder(out: Path, name: str) -> None:
    """InputDataError naming ``name`` unless the folder exists or can be made (nothing is made now)."""
    expected = "a folder (or a path where one can be made)"
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise InputDataError(name, expected, f"{out} (a file)" if existing == out else f"{out} ({existing} is a file)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputDataError(name, expected, f"{out} ({existing} is not writable)")


def main(argv: list[str] | None = None) -> dict:
    """Command-line entry point; see ``--help``."""
    parser = argparse.ArgumentParser(prog="papa-bayes train-base", description="Train the digits base diffusion model.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    # a str, checked by train_base_model / load_base_model: as a Path, an empty --out ("$UNSET") was "." (the cwd)
    parser.add_argument("--out", required=True,
                        help=f"output folder (to regenerate the shipped checkpoint: {DEFAULT_CHECKPOINT})")
    parser.add_argument("--steps", type=int, default=3000, help="optimizer steps")
    parser.add_argument("--batch-size", type=int, default=128, help="digits per step")
    parser.add_argument("--learning-rate", type=float, default=2e-3, help="AdamW's, with a cosine decay")
    parser.add_argument("--ema-decay", type=float, default=0.999, help="of the saved EMA weights")
    parser.add_argument("--seed", type=int, default=0, help="seeds initialization, batches, noise and the features")
    parser.add_argument("--device", default="cpu", help="torch device")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--feature-samples", type=int, default=1024,
                        help=f"base samples the feature maps are fitted on (at least their {NUM_FEATURES} features)")
    parser.add_argument("--feature-steps", type=int, default=50, help="DDIM steps of those samples")
    parser.add_argument("--features-only", action="store_true",
                        help="only refit the feature maps of an existing checkpoint (pca_features/, midblock_features/ "
                        "and midblock32_features/ are rewritten; the UNet is kept)")
    args = parser.parse_args(argv)
    # "path": load_base_model's name for the checkpoint (--features-only reads --out as one)
    options = {"out_dir": "--out", "checkpoint": "--out", "path": "--out", "steps": "--steps", "batch_size": "--batch-size",
               "learning_rate": "--learning-rate", "ema_decay": "--ema-decay", "seed": "--seed", "device": "--device",
               "num_samples": "--feature-samples", "num_inference_steps": "--feature-steps"}
    try:  # errors name the option the person typed, not the function's argument
        # The feature maps' options are checked before the minutes of training, not after (train_base_model
        # checks the output folder, and its own numbers, before it trains).
        check_int("num_samples", args.feature_samples, minimum=NUM_FEATURES)  # a PCA to as many components
        check_int("num_inference_steps", args.feature_steps)
        feature_kwargs = dict(num_samples=args.feature_samples, num_inference_steps=args.feature_steps,
                              seed=args.seed, progress_bar=not args.no_progress)
        if args.features_only:
            fit_default_features(args.out, **feature_kwargs)
            return {"features": str(Path(args.out) / "pca_features")}
        summary = train_base_model(
            args.out,
            steps=args.steps,
            batch_size=args.batch_size,
            learning_rate=args.learning_rate,
            ema_decay=args.ema_decay,
            seed=args.seed,
            device=args.device,
            progress_bar=not args.no_progress,
        )
        fit_default_features(args.out, **feature_kwargs)
    except InputDataError as err:
        if err.field not in options or err.expected is None:  # a whole message: no field to rename
            raise
        raise InputDataError(options[err.field], err.expected, err.actual) from None
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    import sys

    from papa_bayes.cli import main as cli_main

    # The same command as ``papa-bayes train-base``: a person's mistake reads as one line, not a traceback.
    raise SystemExit(cli_main(["train-base", *sys.argv[1:]]))
