"""scikit-learn's 8x8 digits, split once by a fixed seed.

The digits ship with scikit-learn (no download). Three disjoint, class-stratified
splits keep the measurement honest:

- **generator** (50%) trains the base diffusion model and is the reference of the
  package's own quality guard and guidance-scale rule;
- **user** (25%) trains the simulated person's classifier;
- **judge** (25%) trains the judge and is the reference of manifold precision, so
  that steering cannot win by fooling the classifier that scores it.

Images stay 8x8: a two-level UNet halves them once (8 -> 4), which is all the
spatial structure the digits have; padding to 16x16 would quadruple the cost of
every guided step for no gain in quality.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

from papa_bayes.exceptions import InputDataError

__all__ = ["DIGITS_SPLIT_SEED", "DigitsSplit", "DigitsSplits", "load_digits_splits", "digits_to_pixels"]

#: The seed of the one generator / user / judge split. Changing it invalidates the
#: committed checkpoint's claim that it never saw a user or judge digit.
DIGITS_SPLIT_SEED = 20240611


@dataclass(frozen=True)
class DigitsSplit:
    """One split of the digits.

    Attributes:
        images: `n x 1 x 8 x 8` float32 pixels in `[-1, 1]`.
        labels: `n` long digit classes 0-9.
    """

    images: Tensor
    labels: Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass(frozen=True)
class DigitsSplits:
    """The three disjoint splits: ``generator``, ``user`` and ``judge``."""

    generator: DigitsSplit
    user: DigitsSplit
    judge: DigitsSplit


def digits_to_pixels(raw: np.ndarray | Tensor) -> Tensor:
    """Scale scikit-learn digit intensities `0..16` to pixels in `[-1, 1]`.

    Args:
        raw: `n x 64` or `n x 8 x 8` intensities, real numbers in `[0, 16]`.

    Returns:
        `n x 1 x 8 x 8` float32 pixels.

    Raises:
        InputDataError: on any other shape, or values that are not numbers in `[0, 16]`.
    """
    array = np.asarray(raw.detach().cpu() if isinstance(raw, Tensor) else raw)
    if array.dtype.kind not in "iuf":  # no text, objects, bools or complex numbers
        raise InputDataError("raw", "real intensities in [0, 16]", f"dtype {array.dtype}")
    t = torch.as_tensor(array, dtype=torch.float32)
    if tuple(t.shape[1:]) not in ((64,), (8, 8)):
        raise InputDataError("raw", "an array of shape `n x 64` or `n x 8 x 8`", tuple(t.shape))
    inside = (t >= 0) & (t <= 16)  # False for NaN
    if not bool(inside.all()):
        raise InputDataError("raw", "intensities in [0, 16]", t[~inside][0].item())
    return (t.reshape(-1, 1, 8, 8) / 8.0 - 1.0).contiguous()


@lru_cache(maxsize=1)
def load_digits_splits() -> DigitsSplits:
    """Load the digits and split them 50/25/25, stratified by class, by a fixed seed.

    Returns:
        The splits; tensors are on the CPU and shared between calls (do not modify).
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    labels = np.asarray(digits.target)
    rng = np.random.default_rng(DIGITS_SPLIT_SEED)
    parts: dict[str, list[np.ndarray]] = {"generator": [], "user": [], "judge": []}
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(labels == c))
        a, b = len(idx) // 2, len(idx) // 2 + len(idx) // 4
        parts["generator"].append(idx[:a])
        parts["user"].append(idx[a:b])
        parts["judge"].append(idx[b:])
    out = {}
    for name, chunks in parts.items():
        idx = np.sort(np.concatenate(chunks))
        out[name] = DigitsSplit(
            images=digits_to_pixels(digits.data[idx]),
            labels=torch.as_tensor(labels[idx], dtype=torch.long),
        )
    return DigitsSplits(**out)
