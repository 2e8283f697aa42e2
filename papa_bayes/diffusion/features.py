"""Feature maps ``phi``: differentiable maps from samples to `n x d` reward features.

- :class:`PCAFeatures`: whitened principal components of base-model samples;
- :class:`MidBlockFeatures`: the denoiser's mid-block activations at a fixed
  timestep, pooled over space, standardized (and optionally projected on their
  principal components), i.e. what the model itself "sees";
- :class:`CallableFeatures`: any user callable, e.g. a CLIP or DINO image encoder;
- :class:`ConcatFeatures`: several maps side by side (e.g. pixel PCA and mid-block).

A feature map's ``input_space`` says what it reads: ``"image"`` (decoded images) or
``"sample"`` (the diffused tensor: pixels or latents). Feature maps save to and load
from a folder (``feature_map.json`` + ``feature_map.safetensors``), e.g. next to
the model checkpoint.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import types
import warnings
from pathlib import Path
from typing import Any, Callable, ClassVar

import torch
from torch import Tensor

from papa_bayes.checks import (caller_stacklevel, check_finite, check_int, check_path, read_json_object, reading,
                               shape_of)
from papa_bayes.diffusion.models import DiffusionModel, eval_mode
from papa_bayes.exceptions import InputDataError, ModelError, PapaBayesWarning

__all__ = [
    "FeatureMap",
    "PCAFeatures",
    "MidBlockFeatures",
    "CallableFeatures",
    "ConcatFeatures",
    "save_feature_map",
    "load_feature_map",
]


class FeatureMap(torch.nn.Module):
    """Base class: ``forward(x)`` maps `n x ...` samples to `n x num_features` features."""

    kind: ClassVar[str] = ""
    input_space: ClassVar[str] = "image"

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = check_int("num_features", num_features)

    def config(self) -> dict[str, Any]:
        """JSON-able settings that, with the saved tensors, rebuild the map."""
        return {"num_features": self.num_features}

    def fingerprint(self) -> str:
        """A short hash of the map's kind, settings and tensors: two maps with the same one compute the same features.

        Stored with a session (``DiffusionCandidates.config()``), so that items are never
        mixed from two maps of one dimension (pixel PCA and mid-block features both have
        8). Each tensor enters by its shape and at most 4,096 evenly spaced values, so
        that a large encoder's weights cost milliseconds, not a pass over all of them.
        """
        h = hashlib.sha256(json.dumps([type(self).__name__, self.kind, self.config()], sort_keys=True,
                                      default=str).encode())
        for name, t in sorted(self.state_dict().items()):
            _hash_tensor(h, name, t)
        return h.hexdigest()[:16]

    def _check_output(self, out: Tensor, n: int) -> Tensor:
        if not isinstance(out, Tensor) or tuple(out.shape) != (n, self.num_features):
            shape = shape_of(out)
            raise InputDataError("features", f"shape `n x d` = ({n}, {self.num_features})", shape)
        check_finite("features", out.detach())  # a NaN feature would give NaN utilities, gradients and samples
        return out


def _hash_tensor(h: Any, name: str, t: Tensor) -> None:
    """Feed ``h`` a tensor's name, shape and at most 4,096 evenly spaced values."""
    flat = t.detach().reshape(-1)
    h.update(f"{name}{tuple(t.shape)}".encode())
    if flat.is_complex():
        flat = torch.view_as_real(flat).reshape(-1)
    h.update(flat[:: max(1, flat.numel() // 4096)].to(torch.float64).cpu().numpy().tobytes())


_PLAIN_VALUES = (type(None), bool, int, float, complex, str, bytes)


def _code_names(code: types.CodeType) -> set[str]:
    """The global names ``code`` and the functions defined in it read."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _code_names(const)
    return names


def _hash_module_code(h: Any, module: torch.nn.Module, depth: int = 0) -> None:
    """Feed ``h`` a module's class, its ``forward``'s code and its plain settings (not its weights)."""
    h.update(f"module {type(module).__module__}.{type(module).__qualname__}".encode())
    _hash_callable(h, getattr(type(module).forward, "__code__", None), depth + 1)
    _hash_callable(h, {k: v for k, v in vars(module).items()
                       if isinstance(v, _PLAIN_VALUES) and not k.startswith("_") and k != "training"}, depth + 1)


def _hash_callable(h: Any, obj: Any, depth: int = 0) -> None:
    """Feed ``h`` what decides what ``obj`` computes, as far as it can be read.

    A function enters by its module, qualified name, bytecode and constants (not its
    line numbers), defaults, closure values and the plain values and tensors among
    the globals it reads; a bound method by its function and its object; a
    ``functools.partial`` by its function and arguments; a module by its class and
    weights; any other callable by its class, its ``__call__`` and its attributes.
    Tensors enter as in :meth:`FeatureMap.fingerprint`. Deeper than 6 levels,
    or for what is none of these (a C extension's object), only the type enters.
    """
    h.update(b"|")
    if depth > 6:
        h.update(type(obj).__qualname__.encode())
    elif isinstance(obj, _PLAIN_VALUES):
        h.update(f"{type(obj).__name__}:{obj!r}".encode())
    elif isinstance(obj, Tensor):
        _hash_tensor(h, "tensor", obj)
    elif isinstance(obj, (tuple, list, set, frozenset)):
        items = sorted(obj, key=repr) if isinstance(obj, (set, frozenset)) else obj
        h.update(f"{type(obj).__name__}{len(items)}".encode())
        for item in items:
            _hash_callable(h, item, depth + 1)
    elif isinstance(obj, dict):
        h.update(f"dict{len(obj)}".encode())
        for key in sorted(obj, key=repr):
            h.update(repr(key).encode())
            _hash_callable(h, obj[key], depth + 1)
    elif isinstance(obj, types.CodeType):
        h.update(obj.co_code + repr((obj.co_names, obj.co_argcount, obj.co_kwonlyargcount)).encode())
        _hash_callable(h, obj.co_consts, depth + 1)
    elif isinstance(obj, types.FunctionType):
        h.update(f"function {obj.__module__}.{obj.__qualname__}".encode())
        _hash_callable(h, obj.__code__, depth + 1)
        _hash_callable(h, (obj.__defaults__, obj.__kwdefaults__), depth + 1)
        cells = []
        for cell in obj.__closure__ or ():
            try:
                cells.append(cell.cell_contents)
            except ValueError:  # an empty cell (a name assigned after the function was made)
                cells.append(None)
        _hash_callable(h, cells, depth + 1)
        # Global values the function reads (a weight tensor, a scale), not modules or other functions.
        read = {name: obj.__globals__[name] for name in sorted(_code_names(obj.__code__))
                if name in obj.__globals__ and isinstance(obj.__globals__[name], (*_PLAIN_VALUES, Tensor))}
        _hash_callable(h, read, depth + 1)
    elif isinstance(obj, types.MethodType):
        _hash_callable(h, (obj.__func__, obj.__self__), depth + 1)
    elif isinstance(obj, functools.partial):
        _hash_callable(h, (obj.func, obj.args, obj.keywords), depth + 1)
    elif isinstance(obj, torch.nn.Module):
        _hash_module_code(h, obj, depth)
        for name, t in sorted(obj.state_dict().items()):
            _hash_tensor(h, name, t)
    elif isinstance(obj, (type, types.ModuleType, types.BuiltinFunctionType)):
        h.update(f"{type(obj).__name__} {getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', '')}".encode())
        h.update(getattr(obj, "__name__", "").encode())
    else:
        h.update(f"object {type(obj).__module__}.{type(obj).__qualname__}".encode())
        call = getattr(type(obj), "__call__", None)
        if isinstance(call, types.FunctionType):
            _hash_callable(h, call.__code__, depth + 1)
        state = getattr(obj, "__dict__", None)
        if isinstance(state, dict):
            _hash_callable(h, state, depth + 1)


def _check_fit_samples(name: str, samples: Any) -> Tensor:
    """``samples`` unless not a finite real tensor of at least 2 samples `n x ...`: then InputDataError."""
    if not isinstance(samples, Tensor) or samples.ndim < 1 or samples.shape[0] < 2 or samples[0].numel() == 0:
        found = shape_of(samples)
        raise InputDataError(name, "a tensor of at least 2 samples `n x ...`", found)
    check_finite(name, samples)
    return samples


def _pca(x: Tensor, num_features: int) -> tuple[Tensor, Tensor, Tensor]:
    """Mean `D`, components `d x D` (sign-fixed) and component std `d` of `n x D` data."""
    if num_features > min(x.shape):
        raise InputDataError("num_features", f"at most min(n, D) = {min(x.shape)}", num_features)
    x = x.to(torch.float64)
    mean = x.mean(0)
    _, s, vh = torch.linalg.svd(x - mean, full_matrices=False)
    comps = vh[:num_features]
    # Deterministic signs: the largest-magnitude loading of each component is positive.
    signs = torch.sign(comps.gather(1, comps.abs().argmax(1, keepdim=True)))
    comps = comps * signs
    std = (s[:num_features] / max(1, x.shape[0] - 1) ** 0.5).clamp_min(1e-8)
    return mean, comps, std


class PCAFeatures(FeatureMap):
    """Whitened principal components: ``phi(x) = (vec(x) - mean) @ components.T / std``.

    Args:
        mean: `D` mean of the fitting samples.
        components: `d x D` orthonormal principal directions.
        std: `d` standard deviations along them, finite and > 0 (ones when not whitened).
        input_shape: the shape `...` of one sample the map was fitted on (whose values make `D`), e.g.
            `(1, 8, 8)`; samples of another shape are refused, even of as many values (a map fitted on
            a latent model's `4 x 4 x 4` latents reading its `1 x 8 x 8` decoded images). None (maps
            saved before it was kept): any shape of `D` values. Not part of :meth:`fingerprint`, which
            stays that of maps saved before.

    Use :meth:`fit` to build one from samples (e.g. 1024 base-model samples).

    Images far beyond the scale of the fitting data warn (a PapaBayesWarning): values
    above 10 times the largest magnitude of ``mean`` (at least 1), such as 0..255
    pixels read by a map fitted on images in `[-1, 1]`, whose features would be
    hundreds of standard deviations out. Inputs that need a gradient (guidance's
    predicted clean samples, which stray far at high noise) are not checked.

    Raises:
        InputDataError: on tensors of mismatched shapes or with non-finite values, a
            ``std`` that is not > 0, or an ``input_shape`` that is not of `D` values.
    """

    kind = "pca"

    def __init__(self, mean: Tensor, components: Tensor, std: Tensor, *,
                 input_shape: tuple[int, ...] | list[int] | None = None) -> None:
        for name, value in (("mean", mean), ("components", components), ("std", std)):
            if not isinstance(value, Tensor):
                raise InputDataError(name, "a tensor", type(value).__name__)
            check_finite(name, value)
        if mean.ndim != 1 or components.ndim != 2 or components.shape[1] != mean.shape[0]:
            raise InputDataError("components", "shape `d x D` with mean of shape `D`",
                                 (tuple(components.shape), tuple(mean.shape)))
        if tuple(std.shape) != (components.shape[0],) or not bool((std > 0).all()):
            raise InputDataError("std", f"`d` = {components.shape[0]} values > 0 (one per component)",
                                 tuple(std.shape) if tuple(std.shape) != (components.shape[0],) else "values <= 0")
        if input_shape is not None:
            ok = isinstance(input_shape, (tuple, list)) and all(
                isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in input_shape)
            if not ok or math.prod(input_shape) != mean.shape[0]:
                raise InputDataError("input_shape", f"a shape of D = {mean.shape[0]} values (positive integers)",
                                     input_shape)
            input_shape = tuple(input_shape)
        super().__init__(components.shape[0])
        self.input_shape: tuple[int, ...] | None = input_shape
        self.register_buffer("mean", mean.to(torch.float32))
        self.register_buffer("components", components.to(torch.float32))
        self.register_buffer("std", std.to(torch.float32))

    @classmethod
    def fit(cls, samples: Tensor, *, num_features: int = 8, whiten: bool = True) -> PCAFeatures:
        """Fit on `n x ...` samples (decoded images; finite, n >= 2).

        Raises:
            InputDataError: on fewer than 2 samples or non-finite ones, or unless
                ``num_features`` is an integer in `[1, min(n, D)]`.
        """
        num_features = check_int("num_features", num_features)
        samples = _check_fit_samples("samples", samples)
        mean, comps, std = _pca(samples.detach().reshape(samples.shape[0], -1), num_features)
        return cls(mean, comps, std if whiten else torch.ones_like(std), input_shape=tuple(samples.shape[1:]))

    def forward(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor) or x.ndim < 1:
            raise InputDataError("images", "a tensor of samples `n x ...`",
                                 shape_of(x))
        flat = x.reshape(x.shape[0], math.prod(x.shape[1:]))  # not -1: an empty batch stays `0 x D`
        if flat.shape[1] != self.mean.shape[0]:
            # A map fitted on a latent model's latents, then handed its decoded images, said no more than this.
            raise InputDataError("images", f"{self.mean.shape[0]} values per sample (what the map was fitted on; "
                                 "it reads decoded images: one fitted on a latent model's diffused samples reads "
                                 "them as CallableFeatures(phi, phi.num_features, input_space='sample'))",
                                 flat.shape[1])
        if self.input_shape is not None and tuple(x.shape[1:]) != self.input_shape:
            # As many values in another layout (4 x 4 x 4 latents, 1 x 8 x 8 images): features of nothing, silently.
            shape = " x ".join(map(str, self.input_shape))
            raise InputDataError("images", f"samples of shape `n x {shape}` (what the map was fitted on; a map "
                                 "fitted on a latent model's diffused samples reads them as CallableFeatures(phi, "
                                 "phi.num_features, input_space='sample'))", tuple(x.shape))
        # Integer images (uint8) would cast the statistics to integers: every feature 0.
        flat = flat if flat.is_floating_point() else flat.to(torch.float32)
        _warn_far_scale("images", flat, self.mean)
        # The statistics follow the samples: a map fitted or loaded on the CPU reads CUDA samples too.
        dev, dt = flat.device, flat.dtype
        return ((flat - self.mean.to(dev, dt)) @ self.components.to(dev, dt).T) / self.std.to(dev, dt)


def _warn_far_scale(name: str, flat: Tensor, mean: Tensor) -> None:
    """PapaBayesWarning when ``flat`` reaches 10 times beyond the fitting data's scale (``mean``'s, at least 1)."""
    # Not inside guidance (inputs that need a gradient): its predicted clean samples stray far at high noise,
    # and a check there would cost a device sync per step. Meta tensors have no values to read.
    if flat.numel() == 0 or flat.requires_grad or flat.device.type == "meta":
        return
    scale = max(1.0, float(mean.abs().max()))
    top = float(flat.detach().abs().max())
    if top > 10 * scale:
        warnings.warn(
            f"{name}: values up to {top:.4g}, far beyond the scale of the data the map was fitted on (mean within "
            f"+-{scale:.3g}): their features lie many standard deviations out. Images in 0..255 pixels for a map "
            "fitted on images in [-1, 1]? Rescale them with `x / 127.5 - 1`.",
            PapaBayesWarning,
            stacklevel=caller_stacklevel(),
        )


class _StopForward(Exception):
    """Raised by the mid-block hook to skip the up path nobody needs."""


class MidBlockFeatures(FeatureMap):
    """Mid-block activations of the denoiser at a fixed timestep, pooled over space.

    The clean sample is scaled to timestep ``timestep`` without added noise (so the
    map is deterministic), run through the denoiser down to its mid-block, averaged
    over space (`n x C`), standardized by statistics of fitting samples and, with
    ``num_features`` set, projected on their principal components.

    Args:
        model: the diffusion model whose denoiser is read (not saved with the map); a
            conditional one with a single `1 x L x D` ``encoder_hidden_states`` row,
            shared by every sample (the map may steer a model with per-sample
            conditioning that shares its denoiser).
        timestep: the training timestep the sample is presented at, in
            `[0, num_train_timesteps)`.
        num_features: project to this many components (`1` to `C`); None keeps all
            `C` channels.
        whiten: with ``num_features``, give every component unit variance (True) or
            keep their relative variances, scaled so that the total is
            ``num_features`` (False). A reward ``w @ phi`` with the prior N(0, I) on
            ``w`` then puts its prior variance where the activations vary most, and
            more components add detail without diluting the leading ones. On the
            digits task (32 components at timestep 300) a linear like/dislike reward
            fitted to 20 random labels of real digits (the generator split) met "top samples >= 90% liked with >= 1.8
            bits of liked-class entropy" in 35% of draws against 13% whitened and 18%
            for the 16 whitened pixel-PCA + mid-block features.

    Raises:
        InputDataError: on a ``model`` that is not a DiffusionModel or conditions each
            sample on its own row, or a ``timestep`` / ``num_features`` out of range;
            when mapping or fitting, on samples that are not `n x C x H x W` of the
            model's ``sample_shape`` (its UNet's ``sample_size``; a latent model's
            latents, not decoded images).
        ModelError: on a denoiser without a ``mid_block``.
    """

    kind = "midblock"
    input_space = "sample"

    def __init__(self, model: DiffusionModel, *, timestep: int = 100, num_features: int | None = None,
                 whiten: bool = True) -> None:
        if not isinstance(model, DiffusionModel):
            raise InputDataError("model", "a DiffusionModel", type(model).__name__)
        mid_block = getattr(model.unet, "mid_block", None)
        if mid_block is None:
            raise ModelError("MidBlockFeatures needs a denoiser with a mid_block (a diffusers UNet).")
        cond = getattr(model, "encoder_hidden_states", None)
        if isinstance(cond, Tensor) and cond.shape[0] > 1:
            # Row i conditions the i-th sample of whatever batch the map reads (a sampler's batch, a pool being
            # scored, fitting samples): features of a sample would hang on its place in the batch, and batches of
            # other sizes fail, mid-sampling.
            raise InputDataError("model", "a model whose encoder_hidden_states has 1 row, shared by every sample "
                                 "(a feature map reads each sample alike; build it on a model with one shared "
                                 "conditioning)", f"encoder_hidden_states of {cond.shape[0]} rows {tuple(cond.shape)}")
        channels = int(mid_block.resnets[-1].out_channels)
        if num_features is not None:
            num_features = check_int("num_features", num_features, maximum=channels,
                                     expected=f"None or an integer in [1, {channels}] (the mid-block's channels)")
        num_train = int(model.scheduler.config.num_train_timesteps)
        timestep = check_int("timestep", timestep, minimum=0, maximum=num_train - 1,
                             expected=f"an integer in [0, {num_train}) (the training timesteps)")
        super().__init__(channels if num_features is None else num_features)
        self.model = model
        self.timestep = int(timestep)
        self.whiten = bool(whiten)
        self.channels = channels
        # float32, as PCAFeatures' (not the default dtype): under torch.set_default_dtype(torch.float64) the map was
        # saved in float64 and its fingerprint, over unrounded statistics, differed from one fitted under float32.
        self.register_buffer("mean", torch.zeros(channels, dtype=torch.float32))
        self.register_buffer("std", torch.ones(channels, dtype=torch.float32))
        self.register_buffer("components", torch.eye(channels, dtype=torch.float32)[: self.num_features])
        self.fitted = False
        # num_features = C projects on all C components too: whitened (or variance-kept) PCA, not raw channels.
        self._project = num_features is not None

    def _check_samples(self, name: str, x: Any) -> Tensor:
        """``x`` unless not `n x C x H x W` of the model's ``sample_shape``: then InputDataError.

        The denoiser, being convolutional, would run on another size too, but its
        mid-block would then see other content at every position: features unlike the
        fitted ones (and a latent model's decoded images, not its latents, fail so).
        """
        c, hgt, wid = self.model.sample_shape
        if not isinstance(x, Tensor) or x.ndim != 4 or tuple(x.shape[1:]) != (c, hgt, wid):
            found = shape_of(x)
            raise InputDataError(name, f"a tensor of diffused samples `n x {c} x {hgt} x {wid}` (the model's "
                                 "sample_shape)", found)
        return x

    def pooled(self, x: Tensor) -> Tensor:
        """`n x C` spatially averaged mid-block activations (not standardized) of `n x C x H x W` samples.

        The denoiser reads the samples on its own device, in its own dtype (a bfloat16
        one too) and in eval mode; the activations come back on the denoiser's device,
        in the samples' floating dtype (float32 for others).
        """
        x = self._check_samples("x", x)
        out_dtype = x.dtype if x.is_floating_point() else torch.float32
        # Differentiable: guidance's gradient reaches the caller's device and dtype.
        x = x.to(self.model.device, self.model.dtype)
        captured: list[Tensor] = []

        def hook(_module, _inputs, output):
            captured.append(output[0] if isinstance(output, tuple) else output)
            raise _StopForward

        unet = self.model.unet
        alpha = self.model.scheduler.alphas_cumprod[self.timestep].to(x.device, x.dtype)
        handle = unet.mid_block.register_forward_hook(hook)
        try:
            with eval_mode(self.model):  # a denoiser left in training would add its dropout to the features
                self.model.conditional_output(alpha.sqrt() * x, torch.tensor(self.timestep, device=x.device))
        except _StopForward:
            pass
        finally:
            handle.remove()
        if not captured:
            raise ModelError("The denoiser's mid_block did not run; MidBlockFeatures needs a UNet with one.")
        return captured[0].mean(dim=(-2, -1)).to(out_dtype)

    def fit(self, samples: Tensor, *, batch_size: int = 256) -> MidBlockFeatures:
        """Fit the standardization (and projection) on `n x C x H x W` samples; returns self.

        Raises:
            InputDataError: on fewer than 2 samples (at least ``num_features`` when
                projecting), non-finite ones, a shape other than the model's
                ``sample_shape``, or a ``batch_size`` that is not an integer >= 1.
        """
        batch_size = check_int("batch_size", batch_size)
        samples = _check_fit_samples("samples", self._check_samples("samples", samples))
        with torch.no_grad():
            acts = torch.cat([self.pooled(samples[i:i + batch_size]) for i in range(0, len(samples), batch_size)])
        acts = acts.to(torch.float64)
        self.mean.copy_(acts.mean(0))
        self.std.copy_(acts.std(0).clamp_min(1e-6))
        if self._project:
            _, comps, std = _pca((acts - acts.mean(0)) / acts.std(0).clamp_min(1e-6), self.num_features)
            if self.whiten:
                self.components.copy_(comps / std.unsqueeze(1))  # whitened projection
            else:  # relative variances kept, total variance num_features
                self.components.copy_(comps * (self.num_features / std.pow(2).sum()).sqrt())
        self.fitted = True
        return self

    def forward(self, x: Tensor) -> Tensor:
        if not self.fitted:  # unfitted: raw channels, neither standardized nor projected
            raise ModelError("MidBlockFeatures is not fitted: call .fit(samples) (e.g. 1024 base-model samples) "
                             "before mapping images.")
        acts = self.pooled(x)
        # The statistics stay where the map was built (the CPU) when the model runs elsewhere: they follow.
        dev, dt = acts.device, acts.dtype
        z = (acts - self.mean.to(dev, dt)) / self.std.to(dev, dt)
        return z @ self.components.to(dev, dt).T

    def config(self) -> dict[str, Any]:
        config = {"num_features": self.num_features, "timestep": self.timestep, "whiten": self.whiten}
        # num_features=None keeps the C raw channels, num_features=C projects on C components: both store
        # C, and only this tells them apart (a reloaded map refits as the saved one did). A projecting map
        # stores nothing more, so that its fingerprint (kept with labelling sessions) stays what it was.
        return config if self._project else {**config, "project": False}


class CallableFeatures(FeatureMap):
    """Wrap any differentiable callable `n x ...` -> `n x d` (a CLIP/DINO encoder, ...).

    Args:
        fn: the callable; if it is a ``torch.nn.Module`` its weights save with the map.
        num_features: ``d``.
        input_space: ``"image"`` (decoded images) or ``"sample"`` (diffused tensor).
        name: a label stored in the saved config.

    Its :meth:`fingerprint` covers the callable itself, so that two different lambdas
    of one dimension do not pass for one map: a function's module, qualified name,
    bytecode and constants, defaults, closure values and the plain values and tensors
    among the globals it reads; a module's class, ``forward`` code, plain settings and
    weights; a bound method's object, a ``functools.partial``'s arguments. It is
    stable across runs of one Python version (bytecode differs between versions), and
    blind to what the callable reaches beyond that (an attribute of a global object,
    a file it reads): give such callables distinct ``name`` s.
    """

    kind = "callable"

    def __init__(self, fn: Callable[[Tensor], Tensor], num_features: int, *,
                 input_space: str = "image", name: str = "") -> None:
        super().__init__(num_features)
        if not callable(fn):
            raise InputDataError("fn", "a callable", type(fn).__name__)
        if input_space not in ("image", "sample"):
            raise InputDataError("input_space", "'image' or 'sample'", input_space)
        self.fn = fn
        self.input_space = input_space  # type: ignore[misc]  (instance overrides the class default)
        self.name = name or getattr(fn, "__name__", type(fn).__name__)

    def forward(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor) or x.ndim < 1:  # NumPy arrays reached the callable: torch's own TypeError
            field = "samples" if self.input_space == "sample" else "images"
            raise InputDataError(field, "a tensor of samples `n x ...` (convert arrays with torch.as_tensor)",
                                 shape_of(x))
        return self._check_output(self.fn(x), x.shape[0])

    def config(self) -> dict[str, Any]:
        return {"num_features": self.num_features, "input_space": self.input_space, "name": self.name}

    def fingerprint(self) -> str:
        """A short hash of the settings, the weights and the callable's identity (see the class docstring)."""
        h = hashlib.sha256(super().fingerprint().encode())
        if isinstance(self.fn, torch.nn.Module):  # its weights entered with the map's own state_dict
            _hash_module_code(h, self.fn)
        else:
            _hash_callable(h, self.fn)
        return h.hexdigest()[:16]


class ConcatFeatures(FeatureMap):
    """Several feature maps side by side: ``phi(x) = [phi_1(x), ..., phi_k(x)]``.

    On the digits task a linear reward on pixel PCA and mid-block features together
    separates the liked digits better than on either alone (what the pixels show
    and what the denoiser "sees" err on different digits).

    The map reads diffused samples when any part does; parts that read decoded images
    then get ``decode(x)`` (the identity by default, right for pixel models where
    images equal samples; pass ``model.decode`` for a latent model).

    Args:
        parts: the feature maps, `n x d_i` each; the output is `n x sum(d_i)`.
        decode: diffused samples -> images, for image-space parts of a map that reads samples.

    Raises:
        InputDataError: on an empty ``parts`` or a part that is not a :class:`FeatureMap`,
            or a ``decode`` that is not callable.

    Example:
        The shipped pixel-PCA map (8 features) beside the shipped mid-block map (8):

        >>> import torch
        >>> from papa_bayes.diffusion import (DEFAULT_CHECKPOINT, ConcatFeatures, load_base_model,
        ...                                   load_feature_map, sample)
        >>> model = load_base_model()
        >>> mid = load_feature_map(DEFAULT_CHECKPOINT / "midblock_features", model=model)
        >>> phi = ConcatFeatures([load_feature_map(), mid])
        >>> phi.input_space  # the mid-block part reads diffused samples
        'sample'
        >>> samples = sample(model, 16, num_inference_steps=10, progress_bar=False,
        ...                  generator=torch.Generator().manual_seed(0)).samples
        >>> phi(samples).shape  # n x (8 + 8)
        torch.Size([16, 16])
    """

    kind = "concat"

    def __init__(self, parts: list[FeatureMap] | tuple[FeatureMap, ...], *,
                 decode: Callable[[Tensor], Tensor] | None = None) -> None:
        if not isinstance(parts, (list, tuple)):
            raise InputDataError("parts", "a non-empty list of FeatureMap", type(parts).__name__)
        parts = list(parts)
        if not parts or not all(isinstance(m, FeatureMap) for m in parts):
            raise InputDataError("parts", "a non-empty list of FeatureMap", [type(m).__name__ for m in parts])
        if decode is not None and not callable(decode):
            raise InputDataError("decode", "None or a callable of diffused samples", type(decode).__name__)
        super().__init__(sum(m.num_features for m in parts))
        self.parts = torch.nn.ModuleList(parts)
        reads_samples = any(m.input_space == "sample" for m in parts)
        self.input_space = "sample" if reads_samples else "image"  # type: ignore[misc]
        self.decode = decode

    def forward(self, x: Tensor) -> Tensor:
        images = None
        out = []
        for part in self.parts:
            if self.input_space == "sample" and part.input_space == "image":
                if images is None:
                    images = x if self.decode is None else self.decode(x)
                out.append(part(images))
            else:
                out.append(part(x))
        return self._check_output(torch.cat(out, dim=-1), x.shape[0])

    def config(self) -> dict[str, Any]:
        return {"num_features": self.num_features, "parts": [{"kind": m.kind, **m.config()} for m in self.parts]}


def check_savable(feature_map: Any) -> FeatureMap:
    """``feature_map`` unless it is no single FeatureMap (a ConcatFeatures) or an unfitted one: then InputDataError.

    An unfitted :class:`MidBlockFeatures` would save identity statistics that load
    as fitted ones: raw channels read as standardized features, silently.
    """
    if not isinstance(feature_map, FeatureMap):
        raise InputDataError("feature_map", "a FeatureMap", type(feature_map).__name__)
    if isinstance(feature_map, ConcatFeatures):
        raise InputDataError("feature_map", "a single map (save each part of a ConcatFeatures on its own)", "ConcatFeatures")
    if not getattr(feature_map, "fitted", True):
        raise InputDataError("feature_map", "a fitted map (call .fit(samples) first)",
                             f"an unfitted {type(feature_map).__name__}")
    return feature_map


def save_feature_map(feature_map: FeatureMap, directory: str | Path) -> Path:
    """Save a feature map to ``directory`` (``feature_map.json`` + ``feature_map.safetensors``).

    A :class:`MidBlockFeatures` saves its statistics, not the denoiser; a
    :class:`CallableFeatures` saves the callable's weights when it is a module.

    Raises:
        InputDataError: on a ``feature_map`` that is not a single FeatureMap or is
            not fitted (a :class:`MidBlockFeatures` before :meth:`~MidBlockFeatures.fit`),
            or a ``directory`` that is not a path or names a file (or lies inside one).
    """
    from safetensors.torch import save_file

    check_savable(feature_map)
    from papa_bayes.diffusion.finetune.io import check_checkpoint_folder

    out = check_checkpoint_folder("directory", directory)
    out.mkdir(parents=True, exist_ok=True)
    if isinstance(feature_map, CallableFeatures):
        module = feature_map.fn if isinstance(feature_map.fn, torch.nn.Module) else None
        tensors = dict(module.state_dict()) if module is not None else {}
    else:
        tensors = dict(feature_map.named_buffers(recurse=False))
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    if tensors:
        save_file(tensors, str(out / "feature_map.safetensors"))
    saved = {"kind": feature_map.kind, **feature_map.config()}
    if isinstance(feature_map, PCAFeatures) and feature_map.input_shape is not None:  # not in config(): as below
        saved["input_shape"] = list(feature_map.input_shape)
    if isinstance(feature_map, MidBlockFeatures):  # not in config(): the fingerprints sessions keep stay as they were
        saved["sample_shape"] = list(feature_map.model.sample_shape)
    (out / "feature_map.json").write_text(json.dumps(saved, indent=2))
    return out


def load_feature_map(
    directory: str | Path | None = None,
    *,
    model: DiffusionModel | None = None,
    fn: Callable[[Tensor], Tensor] | None = None,
) -> FeatureMap:
    """Load a feature map saved by :func:`save_feature_map`.

    Args:
        directory: the folder; defaults to the PCA map shipped with the base model.
        model: the diffusion model, needed by :class:`MidBlockFeatures`.
        fn: the callable, needed by :class:`CallableFeatures` and only by it: a
            ``torch.nn.Module`` when the map was saved with weights (they are restored
            into it), any callable otherwise.

    Raises:
        InputDataError: when the folder holds no feature map (or an unreadable one),
            ``model``/``fn`` is missing, ``model``'s mid-block differs from the one
            the map was fitted on (in width, or in the shape of the samples it reads,
            as saved since that was kept), ``fn``'s weights do not match the saved ones, or
            ``fn`` would be ignored: given for a map that is no callable one, or not
            a module where weights were saved (the weights could not be restored).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if directory is None:
        from papa_bayes.diffusion.base import DEFAULT_CHECKPOINT

        directory = DEFAULT_CHECKPOINT / "pca_features"
    root = check_path("directory", directory)
    if not (root / "feature_map.json").is_file():
        raise InputDataError("directory", "a folder holding `feature_map.json`", str(root))
    config = read_json_object("feature_map.json", root / "feature_map.json", "a JSON object saved by save_feature_map")
    weights = root / "feature_map.safetensors"
    tensors = {}
    if weights.is_file():
        with reading("directory", "a folder whose `feature_map.safetensors` safetensors can read", weights,
                     errors=(OSError, ValueError, SafetensorError)):
            tensors = load_file(str(weights))
    kind = config.get("kind")
    if fn is not None and kind in ("pca", "midblock"):  # silently unused: not the map the caller meant
        raise InputDataError("fn", f"None for the {kind} map in {str(root)} (fn is for a map saved from a "
                             "CallableFeatures)", getattr(fn, "__name__", type(fn).__name__))
    needed = {"midblock": ("timestep", "num_features"), "callable": ("num_features",)}.get(kind, ())
    if missing := [key for key in needed if key not in config]:
        raise InputDataError("feature_map.json", f"a {kind} map's settings {list(needed)}", f"{str(root)} without {missing}")
    if kind == "pca":
        missing = sorted({"mean", "components", "std"} - set(tensors))
        if missing:
            raise InputDataError("directory", "a PCA map's `feature_map.safetensors` with mean, components and std",
                                 f"{str(root)} without {missing}")
        shape = config.get("input_shape")  # absent: saved before it was kept (any shape of as many values)
        if shape is not None and not isinstance(shape, list):
            raise InputDataError("feature_map.json", "a PCA map's `input_shape` as a list of integers", shape)
        return PCAFeatures(tensors["mean"], tensors["components"], tensors["std"], input_shape=shape)
    if kind == "midblock":
        if model is None:
            raise InputDataError("model", "the DiffusionModel whose mid-block the map reads", None)
        # Without its statistics the map would read as fitted with identity whitening: other features, silently.
        missing = sorted({"mean", "components", "std"} - set(tensors))
        if missing:
            raise InputDataError("directory", "a mid-block map's `feature_map.safetensors` with mean, components "
                                 "and std", f"{str(root)} without {missing}")
        project = config.get("project", True)  # absent: saved by a projecting map, or before the key existed
        if not isinstance(project, bool):
            raise InputDataError("feature_map.json", "a mid-block map's `project` true or false", project)
        fmap = MidBlockFeatures(model, timestep=config["timestep"], num_features=config["num_features"] if project
                                else None, whiten=config.get("whiten", True))
        shape = config.get("sample_shape")  # absent: saved before it was kept
        if shape is not None and shape != list(model.sample_shape):
            # The mid-block, as wide, would read other inputs: statistics of other activations, silently.
            saved = tuple(shape) if isinstance(shape, list) else shape
            raise InputDataError("model", f"the DiffusionModel the map was fitted on (samples of shape {saved!r})",
                                 f"a model sampling {tuple(model.sample_shape)}")
        for name, value in tensors.items():
            buffer = getattr(fmap, name)
            if buffer.shape != value.shape:  # fitted on another model's mid-block
                raise InputDataError("model", f"the DiffusionModel the map was fitted on (saved {name} of shape "
                                     f"{tuple(value.shape)})", f"a model giving shape {tuple(buffer.shape)}")
            buffer.copy_(value)
        fmap.fitted = True
        return fmap
    if kind == "callable":
        if fn is None:
            raise InputDataError("fn", f"the callable of the saved map {config.get('name')!r}", None)
        if tensors and not isinstance(fn, torch.nn.Module):  # the saved weights would be dropped, silently
            raise InputDataError("fn", f"a torch.nn.Module to restore the {len(tensors)} saved weight tensors of the "
                                 f"map {config.get('name')!r} into ({str(root)} holds `feature_map.safetensors`)",
                                 f"a {type(fn).__name__} {getattr(fn, '__name__', '')}".rstrip())
        if tensors:
            try:
                fn.load_state_dict(tensors)
            except RuntimeError as err:  # missing, unexpected or resized weights: another module than was saved
                raise InputDataError("fn", f"a module whose weights match the saved map {config.get('name')!r}",
                                     str(err).splitlines()[-1].strip()) from None
        return CallableFeatures(fn, config["num_features"], input_space=config.get("input_space", "image"),
                                name=config.get("name", ""))
    raise InputDataError("feature_map.json", "kind 'pca', 'midblock' or 'callable'", kind)
