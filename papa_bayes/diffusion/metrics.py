"""Measurements of the digits preference task (DESIGN.md section 8).

- *preferred fraction*: share of samples whose judged class is liked;
- *judge share*: share with judge max-probability >= 0.5 (fooled by blobs);
- *manifold precision / recall* (Kynkaanniemi et al. 2019, "Improved precision and
  recall metric for assessing generative models"): a sample is on the manifold when
  it lies inside the union of the k-nearest-neighbour balls (k=3, pixel space) of
  real digits; recall swaps the roles;
- *liked class entropy*: entropy (bits) of the judged classes among liked samples,
  2 bits when four liked digits are equally present; collapse onto one digit is 0.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from papa_bayes.diffusion.classifiers import DEFAULT_LIKED, _check_images, _check_liked, _warn_unit_range, load_judge
from papa_bayes.diffusion.digits import load_digits_splits
from papa_bayes.checks import check_finite, check_int, shape_of
from papa_bayes.exceptions import InputDataError

__all__ = [
    "knn_radii",
    "manifold_membership",
    "manifold_precision",
    "manifold_recall",
    "class_entropy",
    "evaluate_samples",
]


def _check_points(name: str, x: Tensor) -> Tensor:
    """``x`` unless not a finite real tensor of non-empty points `n x ...` (n >= 1): then InputDataError."""
    if not isinstance(x, Tensor) or x.ndim < 1 or x.shape[0] == 0 or x[0].numel() == 0:
        found = shape_of(x)
        raise InputDataError(name, "a non-empty tensor of shape `n x ...`", found)
    check_finite(name, x)  # a NaN point is in no ball and has no ball
    return x


def _check_pair(samples: Tensor, reference: Tensor, *, name: str = "samples", check_reference: bool = True) -> None:
    """Both point sets checked, and ``samples`` with as many values per point as ``reference``.

    Args:
        samples: `n x ...` points, named ``name`` in errors (a caller's own argument name).
        reference: `m x ...` points.
        check_reference: False when ``reference`` was checked once already (a
            :class:`~papa_bayes.diffusion.selection.ManifoldGuard`'s, at construction),
            so that a call does not scan the whole reference again.
    """
    _check_points(name, samples)
    if check_reference:
        _check_points("reference", reference)
    if samples[0].numel() != reference[0].numel():
        raise InputDataError(name, f"{reference[0].numel()} values per point like the reference",
                             samples[0].numel())


def _flat(x: Tensor) -> Tensor:
    return x.detach().to("cpu", torch.float64).reshape(x.shape[0], -1)


def knn_radii(reference: Tensor, *, k: int = 3) -> Tensor:
    """Distance of each reference point to its k-th nearest other reference point.

    Args:
        reference: `m x ...` finite points (flattened to `m x D`), m > k.
        k: the neighbour rank (an integer >= 1).

    Returns:
        `m` radii.
    """
    k = check_int("k", k)
    ref = _flat(_check_points("reference", reference))
    if ref.shape[0] <= k:
        raise InputDataError("reference", f"more than k={k} points", ref.shape[0])
    d = torch.cdist(ref, ref)
    return d.kthvalue(k + 1, dim=1).values  # +1: the point itself is at distance 0


def manifold_membership(samples: Tensor, reference: Tensor, *, k: int = 3, radii: Tensor | None = None) -> Tensor:
    """`n` bool: which samples lie inside the union of the reference's k-NN balls.

    Args:
        samples: `n x ...` finite points (n >= 1).
        reference: `m x ...` finite points with as many values per point.
        k: the neighbour rank of the balls (an integer >= 1).
        radii: precomputed `m` radii of ``reference`` (from :func:`knn_radii`), finite and >= 0.

    Samples with no negative value beside a reference with some (images in `[0, 1]`
    measured against data in `[-1, 1]`) warn: a PapaBayesWarning.
    """
    _check_pair(samples, reference)
    _warn_unit_range("samples", samples, reference=reference)
    return _membership(samples, reference, k=k, radii=radii)


def _membership(samples: Tensor, reference: Tensor, *, k: int, radii: Tensor | None) -> Tensor:
    """:func:`manifold_membership` of checked points, without the range warning."""
    x, ref = _flat(samples), _flat(reference)
    if radii is None:
        radii = knn_radii(ref, k=k)
    elif not isinstance(radii, Tensor) or tuple(radii.shape) != (ref.shape[0],):
        found = shape_of(radii)
        raise InputDataError("radii", f"a tensor of shape `m` = ({ref.shape[0]},)", found)
    elif not bool(((radii >= 0) & torch.isfinite(radii)).all()):
        raise InputDataError("radii", "finite radii >= 0", "negative, NaN or inf radii")
    return (torch.cdist(x, ref) <= radii.to("cpu", torch.float64).unsqueeze(0)).any(dim=1)


def manifold_precision(samples: Tensor, reference: Tensor, *, k: int = 3) -> float:
    """Share of ``samples`` inside the k-NN manifold of ``reference`` (Kynkaanniemi 2019)."""
    return float(manifold_membership(samples, reference, k=k).double().mean())


def manifold_recall(samples: Tensor, reference: Tensor, *, k: int = 3) -> float:
    """Share of ``reference`` points inside the k-NN manifold of ``samples``."""
    _check_pair(samples, reference)  # before the roles swap, so that errors name the right argument
    k = check_int("k", k)
    if samples.shape[0] <= k:  # the balls are the samples' own
        raise InputDataError("samples", f"more than k={k} points", samples.shape[0])
    _warn_unit_range("samples", samples, reference=reference)
    return _recall(samples, reference, k=k)


def _recall(samples: Tensor, reference: Tensor, *, k: int) -> float:
    return float(_membership(reference, samples, k=k, radii=None).double().mean())


def class_entropy(classes: Tensor | np.ndarray, *, num_classes: int = 10) -> float:
    """Entropy in bits of the empirical distribution of `n` integer ``classes`` (0 if empty).

    Raises:
        InputDataError: unless ``classes`` is 1-D (one class per sample, not one-hot
            rows) and every class is an integer in ``0..num_classes-1``.
    """
    num_classes = check_int("num_classes", num_classes)
    values = classes.detach().cpu().numpy() if isinstance(classes, Tensor) else np.asarray(classes)  # GPU, autograd
    expected = f"integer classes in 0..{num_classes - 1}"
    if values.ndim != 1:
        raise InputDataError("classes", f"shape `n` ({expected})", values.shape)
    if values.dtype.kind not in "iuf":
        raise InputDataError("classes", expected, f"dtype {values.dtype}")
    bad = (values != np.round(values)) | (values < 0) | (values >= num_classes)  # no float truncated
    if bad.any():
        raise InputDataError("classes", expected, values[bad][0].item())
    counts = np.bincount(values.astype(np.int64), minlength=num_classes)
    total = counts.sum()
    if total == 0:
        return 0.0
    p = counts[counts > 0] / total
    return 0.0 - float((p * np.log2(p)).sum())  # 0.0 - x: one class gives 0.0, not -0.0


def evaluate_samples(
    images: Tensor,
    liked: Sequence[int] = DEFAULT_LIKED,
    *,
    reference: Tensor | None = None,
    k: int = 3,
) -> dict:
    """Every measure of the digits task for `n x 1 x 8 x 8` samples in `[-1, 1]`.

    Args:
        images: the samples (n >= 1; clipped to `[-1, 1]` before measuring, as when shown).
            Images with no negative pixel warn (a PapaBayesWarning): they are likely
            in `[0, 1]`, as diffusers pipelines give, and every measure shifts.
        liked: the liked digit classes.
        reference: `m x 1 x 8 x 8` real digits for precision and recall (m > k); the
            judge split by default.
        k: neighbour rank of the manifold balls (an integer >= 1).

    Returns:
        A dict with ``preferred_fraction``, ``judge_share``, ``precision``, ``recall``,
        ``liked_class_entropy`` (bits), ``class_fractions`` (list of 10) and
        ``num_samples``.

    Example:
        >>> import torch
        >>> from papa_bayes.diffusion import evaluate_samples, load_base_model, sample
        >>> images = sample(load_base_model(), 64, num_inference_steps=20, progress_bar=False,
        ...                 generator=torch.Generator().manual_seed(0)).images
        >>> metrics = evaluate_samples(images)
        >>> metrics["num_samples"], len(metrics["class_fractions"])
        (64, 10)
        >>> bool(metrics["precision"] > 0.8)  # the shipped base model: about 0.93 (256 samples, 50 steps)
        True
    """
    images = _check_images(images)
    if images.shape[0] == 0:
        raise InputDataError("images", "a non-empty tensor of shape `n x 1 x 8 x 8`", tuple(images.shape))
    liked = _check_liked(liked)
    k = check_int("k", k)
    if images.shape[0] <= k:  # recall's balls are the images' own
        raise InputDataError("images", f"more than k={k} images (recall's k-NN balls are theirs)", images.shape[0])
    if reference is not None:
        reference = _check_images(reference, "reference")
    # Warned here, once, in the digits' own range; the measures below are called unwarned.
    _warn_unit_range("images", images)
    if reference is not None:
        _warn_unit_range("reference", reference)
    images = images.detach().to("cpu", torch.float32).clamp(-1, 1)
    ref = load_digits_splits().judge.images if reference is None else reference
    proba = load_judge()._predict_proba(images)
    classes = proba.argmax(axis=1)
    in_liked = np.isin(classes, liked)
    n = images.shape[0]
    counts = np.bincount(classes, minlength=10)
    return {
        "num_samples": int(n),
        "preferred_fraction": float(in_liked.mean()),
        "judge_share": float((proba.max(axis=1) >= 0.5).mean()),
        "precision": float(_membership(images, ref, k=k, radii=None).double().mean()),
        "recall": _recall(images, ref, k=k),
        "liked_class_entropy": class_entropy(classes[in_liked]),
        "class_fractions": [float(c) / n for c in counts],
    }


def liked_entropy_max(liked: Sequence[int] = DEFAULT_LIKED) -> float:
    """The largest possible liked class entropy, ``log2(len(liked))`` bits."""
    return math.log2(len(_check_liked(liked)))
