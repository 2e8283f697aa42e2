"""Checkpoints of fine-tuned models, in the base checkpoint's layout.

A folder holds ``unet/`` (diffusers ``save_pretrained``, safetensors),
``scheduler/`` (the model's sampling scheduler), ``finetune.json`` (what was saved,
a latent model's ``cfg_scale`` and any caller's notes) and, when given, ``features/``
(a feature map). A pixel model's folder is also a valid
:func:`~papa_bayes.diffusion.load_base_model` path and, through its
``model_index.json``, a diffusers pipeline folder: ``DDIMPipeline.from_pretrained(path)``
(``DDPMPipeline`` for a model saved with a DDPM scheduler) opens it.
"""

from __future__ import annotations

import copy
import json
import math
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from papa_bayes.checks import check_device, check_float, check_float_dtype, check_path, read_json_object
from papa_bayes.diffusion.base import check_loaded, load_base_model, reading_checkpoint
from papa_bayes.diffusion.finetune.common import has_adapters, merge_adapters
from papa_bayes.diffusion.models import DiffusionModel, LatentDiffusion, PixelDiffusion, same_device
from papa_bayes.exceptions import InputDataError, ModelError

__all__ = ["save_finetuned", "load_finetuned", "check_checkpoint_folder", "pipeline_index"]

_INFO = "finetune.json"
_PIPELINE_INDEX = "model_index.json"


def check_checkpoint_folder(name: str, path: Any) -> Path:
    """``path`` as a Path, or InputDataError unless a str/os.PathLike folder that could be created or overwritten."""
    root = check_path(name, path)
    existing = next((p for p in (root, *root.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise InputDataError(name, "a folder to create or overwrite (not a file, nor inside one)", str(root))
    return root


def save_finetuned(
    model: DiffusionModel,
    path: str | Path,
    *,
    feature_map: Any = None,
    info: dict[str, Any] | None = None,
) -> Path:
    """Save a (fine-tuned) model's denoiser and scheduler with ``save_pretrained``.

    A pixel model with a diffusers denoiser also gets a ``model_index.json``, so that
    the folder opens as a diffusers pipeline: ``DDIMPipeline.from_pretrained(path)``
    (the pipeline of the saved scheduler, ``DDPMPipeline`` for a DDPM one; either class
    reads the folder). A latent model's folder is no pipeline (its autoencoder and
    text encoder stay with the base model) and gets none.

    Args:
        model: the model; only its denoiser and scheduler are written (a latent
            model's autoencoder and conditioning stay with the base model).
            Adapters injected into the denoiser (peft, diffusers' ``add_adapter``)
            are saved merged into its weights; ``model`` keeps them.
        path: the folder (created; an earlier checkpoint there is overwritten,
            its ``features/`` removed when no ``feature_map`` is given).
        feature_map: a :class:`~papa_bayes.diffusion.FeatureMap` to save in ``features/``.
        info: a mapping of notes (method, settings, ...) stored in ``finetune.json``,
            with str keys (nested mappings too); values JSON cannot hold are written
            as their ``str()``.

    Returns:
        The folder.

    Raises:
        InputDataError: on a ``model`` that is not a DiffusionModel, a ``path`` that
            is not a str or os.PathLike or that names a file (or lies inside one), or
            a ``feature_map`` that is not a single fitted FeatureMap, or an ``info``
            that is not a mapping with str keys JSON can write; before anything is written.
    """
    from papa_bayes.diffusion.features import ConcatFeatures, FeatureMap, check_savable, save_feature_map

    if not isinstance(model, DiffusionModel):
        raise InputDataError("model", "a DiffusionModel", type(model).__name__)
    root = check_path("path", path)
    if not hasattr(model.unet, "save_pretrained"):
        raise ModelError(f"{type(model.unet).__name__} has no save_pretrained; save its state_dict instead.")
    # Checked before anything is written, so that a bad argument leaves no half-written folder.
    if feature_map is not None and (not isinstance(feature_map, FeatureMap) or isinstance(feature_map, ConcatFeatures)):
        raise InputDataError("feature_map", "None or a single FeatureMap (not a ConcatFeatures)",
                             type(feature_map).__name__)
    if feature_map is not None:
        check_savable(feature_map)  # fitted
    record = {
        "model": type(model).__name__,
        "unet": type(model.unet).__name__,
        "scheduler": type(model.scheduler).__name__,
        # what loading builds when the class above is no diffusers class (a subclass saves as its diffusers base)
        "diffusers_scheduler": getattr(_diffusers_class(type(model.scheduler)), "__name__", None),
        "dtype": str(model.dtype).replace("torch.", ""),
        "info": _checked_notes(info),
    }
    if isinstance(model, LatentDiffusion):
        # A distilled denoiser learned its base's classifier-free guidance (cfg_scale 1.0);
        # the base's own scale, applied again on loading, would double it.
        record["cfg_scale"] = float(model.cfg_scale)
        # Its latents decode right only through an autoencoder of the same scaling (checked on loading).
        record["scaling_factor"], record["shift_factor"] = model.scaling_factor, model.shift_factor
    text = json.dumps(record, indent=2, default=str) + "\n"  # the notes were checked to write
    check_checkpoint_folder("path", root)
    unet = model.unet
    if has_adapters(unet):  # saved as peft's `base_layer` / `lora_A` keys, which from_pretrained drops
        unet = merge_adapters(copy.deepcopy(unet))
    root.mkdir(parents=True, exist_ok=True)
    unet.save_pretrained(root / "unet", safe_serialization=True)
    model.scheduler.save_pretrained(root / "scheduler")
    index = pipeline_index(model)
    if index is not None:
        (root / _PIPELINE_INDEX).write_text(json.dumps(index, indent=2) + "\n")
    elif (root / _PIPELINE_INDEX).is_file():  # an earlier save's index would open this model as its pipeline
        (root / _PIPELINE_INDEX).unlink()
    if feature_map is not None:
        save_feature_map(feature_map, root / "features")
    elif (root / "features" / "feature_map.json").is_file():  # an earlier save's map does not belong to this model
        shutil.rmtree(root / "features")
    (root / _INFO).write_text(text)
    return root


def _checked_notes(info: Any) -> dict[str, Any]:
    """``info`` as the dict ``finetune.json`` holds, or InputDataError unless JSON can write it as it reads back.

    Keys must be str at every level: JSON turns ``1`` into ``"1"`` and has no tuple
    keys. Values JSON cannot hold are written as their ``str()``; a mapping that
    contains itself is refused.
    """
    expected = "None or a mapping of notes with str keys (nested mappings too) that JSON can write"
    if info is None:
        return {}
    if not isinstance(info, Mapping):
        raise InputDataError("info", "None or a mapping of notes (a dict)", type(info).__name__)
    notes = dict(info)
    try:
        json.dumps(notes, default=str)
    except (TypeError, ValueError) as err:  # a key of another type JSON refuses, a circular reference
        raise InputDataError("info", expected, f"{type(err).__name__}: {err}") from None
    pending: list[Any] = [notes]
    while pending:  # what JSON writes as objects and arrays: no cycle left (json.dumps found none)
        value = pending.pop()
        if isinstance(value, dict):
            keys = [k for k in value if not isinstance(k, str)]
            if keys:
                raise InputDataError("info", expected, f"the key {keys[0]!r} ({type(keys[0]).__name__})")
            pending.extend(value.values())
        elif isinstance(value, (list, tuple)):
            pending.extend(value)
    return notes


def pipeline_index(model: DiffusionModel) -> dict[str, Any] | None:
    """The ``model_index.json`` of a diffusers pipeline of ``model``'s denoiser and scheduler, or None.

    None for a latent model (its pipeline needs the base's autoencoder and text
    encoder) or a denoiser diffusers does not export, which a pipeline cannot load.
    """
    import diffusers

    if not isinstance(model, PixelDiffusion):
        return None
    unet, scheduler = _diffusers_class(type(model.unet)), _diffusers_class(type(model.scheduler))
    if unet is None or scheduler is None:
        return None
    # DDIMPipeline converts any scheduler to DDIM on loading; DDPMPipeline keeps the saved one.
    pipeline = "DDPMPipeline" if issubclass(scheduler, diffusers.DDPMScheduler) else "DDIMPipeline"
    return {
        "_class_name": pipeline,
        "_diffusers_version": diffusers.__version__,
        "unet": ["diffusers", unet.__name__],
        "scheduler": ["diffusers", scheduler.__name__],
    }


def _diffusers_class(cls: type) -> type | None:
    """The first class in ``cls``'s MRO that diffusers exports by its name (a subclass saves as its base), or None.

    Mixins (``ModelMixin``, ``SchedulerMixin``) are no answer: a pipeline cannot build one from a config.
    """
    import diffusers

    for base in cls.__mro__:
        if not base.__module__.startswith("diffusers.") or base.__name__.endswith("Mixin"):
            continue
        try:
            exported = getattr(diffusers, base.__name__, None)
        except ImportError:  # a lazily imported class whose backend is missing
            exported = None
        if exported is base:
            return base
    return None


def load_finetuned(
    path: str | Path,
    *,
    base: DiffusionModel | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> DiffusionModel:
    """Load a model saved by :func:`save_finetuned`.

    Args:
        path: the folder.
        base: the model it was fine-tuned from; required for latent models (it
            supplies the autoencoder and conditioning); for pixel models it only sets
            the defaults of ``device`` and ``dtype``.
        device: where the denoiser goes (``base.device``, else CPU).
        dtype: the denoiser's dtype, a floating-point torch.dtype (``base.dtype``, else float32).

    Returns:
        The model, frozen and in eval mode, with the saved sampling scheduler (its
        class and config too, whatever ``base`` samples with; a subclass of a diffusers
        scheduler, such as of ``DDPMScheduler``, as that diffusers class, which
        ``model_index.json`` names too; ``base``'s class only when the saved one is
        neither; a folder that
        :func:`save_finetuned` did not write reads as :func:`load_base_model` reads it,
        with a pixel ``base`` too). A latent model gets the
        saved ``cfg_scale`` (1.0 for a distilled model saved without one), not
        ``base``'s.

    Raises:
        InputDataError: when ``path`` holds no saved denoiser (or unreadable or
            missing weights, an unreadable ``finetune.json`` or scheduler config, or a
            scheduler the sampler cannot drive, such as PNDM),
            ``base`` is not a DiffusionModel or not of the kind the checkpoint was
            saved from, a latent ``base`` whose autoencoder's latent channels,
            ``scaling_factor`` or ``shift_factor``, or conditioning width do not fit the
            saved denoiser, a latent model is loaded without ``base``, a saved
            ``cfg_scale`` that is not a number >= 0 or that ``base`` has no negative
            embeddings for, or on a device this machine does not have or a ``dtype``
            that is not a floating-point torch.dtype.
    """
    from diffusers import DDPMScheduler

    if base is not None and not isinstance(base, DiffusionModel):
        raise InputDataError("base", "None or a DiffusionModel", type(base).__name__)
    if device is not None:
        device = check_device("device", device)
    if dtype is not None:
        dtype = check_float_dtype("dtype", dtype)
    root = check_path("path", path)
    if not (root / "unet" / "config.json").is_file():
        raise InputDataError("path", "a folder holding `unet/config.json`", str(root))
    record = {}
    if (root / _INFO).is_file():
        expected = f"a folder whose `{_INFO}` is a JSON object (as save_finetuned writes)"
        record = read_json_object("path", root / _INFO, expected, actual=str(root))
    if base is not None:
        for key, found, expected in (("model", type(base).__name__, "a {} (what the checkpoint was saved from)"),
                                     ("unet", type(base.unet).__name__, "a model with a {} denoiser, as saved")):
            saved = record.get(key)
            if isinstance(saved, str) and saved != found:
                raise InputDataError("base", expected.format(saved), found)
    if device is None:
        device = base.device if base is not None else "cpu"
    if dtype is None:
        dtype = base.dtype if base is not None else torch.float32
    with reading_checkpoint(root):
        saved_class = _saved_scheduler_class(root, record)
    # the sampler load_base_model builds for a folder save_finetuned did not write: DDIM, whatever trained it
    saved_ddpm = "scheduler" in record and saved_class is not None and issubclass(saved_class, DDPMScheduler)
    kind = "ddpm" if saved_ddpm else "ddim"
    # A folder save_finetuned did not write (a base checkpoint) keeps a training scheduler in `scheduler/`, which
    # load_base_model turns into a sampler; a pixel base only sets the device and dtype, so it reads the same.
    if base is None or (isinstance(base, PixelDiffusion) and "scheduler" not in record):
        if record.get("model", "PixelDiffusion") != "PixelDiffusion":
            raise InputDataError("base", f"the {record['model']} the checkpoint was fine-tuned from", None)
        model = load_base_model(root, scheduler=kind, device=device, dtype=dtype)
        if "scheduler" not in record:  # not saved by save_finetuned: a base checkpoint, read as load_base_model does
            return model
        # load_base_model rebuilds a sampler from the training config (clip_sample=False);
        # the saved sampling scheduler is the model's own, clipping and spacing included.
        with reading_checkpoint(root):
            scheduler = _saved_scheduler(root, saved_class or type(model.scheduler))
        if scheduler is not None:
            check_loaded(root, model.unet, scheduler)
        return model if scheduler is None else PixelDiffusion(model.unet, scheduler)
    cfg_scale = _saved_cfg_scale(record, base)
    model = copy.copy(base)
    with reading_checkpoint(root):
        unet = type(base.unet).from_pretrained(root / "unet", local_files_only=True, torch_dtype=dtype)
        scheduler = _saved_scheduler(root, saved_class or type(base.scheduler))
        if scheduler is not None:
            model.scheduler = scheduler
    if isinstance(base, LatentDiffusion):
        _check_fits_base(unet, base)
        _check_latent_factors(record, base)
    model.unet = torch.nn.Module.to(unet, device=device, dtype=dtype).eval().requires_grad_(False)
    check_loaded(root, model.unet, model.scheduler)
    if cfg_scale is not None:
        model.cfg_scale = cfg_scale
    if isinstance(model, LatentDiffusion) and model.vae is not None and device is not None:
        if not same_device(next(model.vae.parameters()).device, device):
            model.vae = copy.deepcopy(model.vae).to(device)
    return model


def _check_fits_base(unet: torch.nn.Module, base: LatentDiffusion) -> None:
    """InputDataError on ``base`` unless its autoencoder and conditioning fit the loaded latent denoiser ``unet``.

    ``base`` is copied, not rebuilt: without this, a checkpoint of another base (other latent
    channels, text embeddings of another width) loaded, then failed in torch's words mid-sampling.
    """
    ins = getattr(unet.config, "in_channels", None)
    latent = getattr(getattr(base.vae, "config", None), "latent_channels", None)
    if isinstance(ins, int) and isinstance(latent, int) and ins != latent:
        raise InputDataError("base", f"a model whose autoencoder has latent_channels = {ins} (the saved "
                             "denoiser's in_channels; the model the checkpoint was fine-tuned from)",
                             f"latent_channels = {latent}")
    dim = LatentDiffusion._embedding_dim(unet)
    for name in LatentDiffusion._CONDITIONING:
        cond = getattr(base, name)
        if dim is not None and isinstance(cond, torch.Tensor) and cond.ndim == 3 and cond.shape[2] != dim[0]:
            raise InputDataError("base", f"a model whose {name} are `L x D` with D = {dim[0]} (the saved denoiser's "
                                 f"{dim[1]}; the model the checkpoint was fine-tuned from)", f"D = {cond.shape[2]}")


def _check_latent_factors(record: Mapping[str, Any], base: LatentDiffusion) -> None:
    """InputDataError unless ``base``'s autoencoder scales latents as the saved model's did (when recorded).

    Another ``scaling_factor`` (a base rebuilt with ``AutoencoderKL``'s default 0.18215 instead of SDXL's
    0.13025, or none) decoded the fine-tuned denoiser's latents to images of the wrong range, silently.
    """
    for key in ("scaling_factor", "shift_factor"):
        saved, actual = record.get(key), getattr(base, key)
        if isinstance(saved, (int, float)) and not isinstance(saved, bool) \
                and not math.isclose(float(saved), actual, rel_tol=1e-6, abs_tol=1e-12):
            raise InputDataError("base", f"a model whose autoencoder has {key} = {saved} (the model the checkpoint "
                                 "was fine-tuned from: its latents decode through that scaling)", f"{key} = {actual}")


def _saved_scheduler(root: Path, cls: type) -> Any:
    """The scheduler saved in ``root / "scheduler"``, built as ``cls``, or None when there is none."""
    if not (root / "scheduler" / "scheduler_config.json").is_file():
        return None
    return cls.from_pretrained(root / "scheduler", local_files_only=True)


def _saved_scheduler_class(root: Path, record: Mapping[str, Any]) -> type | None:
    """The diffusers class of the scheduler saved in ``root``, or None when nothing names one.

    The first diffusers class among: the class ``finetune.json`` records, the diffusers
    class it saved as (a subclass of one, such as of ``DDPMScheduler``, is not
    importable by name), the pipeline's ``model_index.json`` entry (which names that
    diffusers class; checkpoints saved before it was recorded) and the scheduler
    config's ``_class_name``.
    """
    def names() -> Any:  # read in turn: a file is read only when the ones before name no diffusers class
        yield record.get("scheduler")
        yield record.get("diffusers_scheduler")
        index = root / _PIPELINE_INDEX
        if index.is_file():
            entry = json.loads(index.read_text())
            entry = entry.get("scheduler") if isinstance(entry, dict) else None
            if isinstance(entry, list) and len(entry) == 2:
                yield entry[1]
        config = root / "scheduler" / "scheduler_config.json"
        if config.is_file():
            yield _saved_class_name(config)

    return next((cls for cls in map(_scheduler_class, names()) if cls is not None), None)


def _saved_cfg_scale(record: Mapping[str, Any], base: DiffusionModel) -> float | None:
    """The classifier-free guidance scale a latent checkpoint samples with (None for pixel models).

    Files written before ``cfg_scale`` was recorded hold none: a distilled model's is
    1.0 (its denoiser learned the guidance), any other's the base's.
    """
    if not isinstance(base, LatentDiffusion):
        return None
    info = record.get("info")
    distilled = isinstance(info, Mapping) and info.get("method") == "distill_guidance"
    saved = record.get("cfg_scale", 1.0 if distilled else base.cfg_scale)
    cfg_scale = check_float("path", saved, expected="a checkpoint whose `finetune.json` cfg_scale is a number >= 0")
    if cfg_scale != 1.0 and base.negative_encoder_hidden_states is None:
        raise InputDataError("base", f"a LatentDiffusion with negative_encoder_hidden_states (the checkpoint samples "
                             f"with cfg_scale = {cfg_scale})", None)
    return cfg_scale


def _saved_class_name(config: Path) -> Any:
    """The ``_class_name`` in a scheduler config; a ValueError (read as a corrupt file) when it holds no JSON object."""
    saved = json.loads(config.read_text())
    if not isinstance(saved, dict):  # was an AttributeError; diffusers reads a list as a Hub repository's name
        raise ValueError(f"{config.name} holds a {type(saved).__name__}, not a JSON object")
    return saved.get("_class_name")


def _scheduler_class(name: Any) -> type | None:
    """The diffusers scheduler class called ``name`` (as saved), else None."""
    import diffusers

    try:
        cls = getattr(diffusers, name) if isinstance(name, str) else None
    except (AttributeError, ImportError):
        cls = None
    return cls if isinstance(cls, type) and issubclass(cls, diffusers.SchedulerMixin) else None
