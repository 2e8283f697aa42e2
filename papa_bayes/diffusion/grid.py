"""Image grids of samples (PNG), for reports and people labelling samples."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from papa_bayes.checks import check_int
from papa_bayes.exceptions import InputDataError

__all__ = ["image_grid", "save_image_grid"]


def image_grid(images: Tensor, *, ncol: int | None = None, pad: int = 1) -> np.ndarray:
    """Tile `n x c x h x w` images in `[-1, 1]` into one `H x W` (c=1) or `H x W x c` array in `[0, 1]`.

    Args:
        images: the images (clipped to `[-1, 1]`).
        ncol: images per row (>= 1); about a square when None.
        pad: pixels between images (>= 0; drawn at 1, white).
    """
    if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[0] == 0:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise InputDataError("images", "a non-empty tensor of shape `n x c x h x w`", shape)
    if ncol is not None:
        check_int("ncol", ncol)
    pad = check_int("pad", pad, minimum=0)
    x = ((images.detach().to("cpu", torch.float32).clamp(-1, 1) + 1) / 2).numpy()
    n, c, h, w = x.shape
    ncol = ncol if ncol is not None else math.ceil(math.sqrt(n))
    nrow = math.ceil(n / ncol)
    grid = np.ones((c, nrow * (h + pad) + pad, ncol * (w + pad) + pad), dtype=np.float32)
    for i in range(n):
        r, k = divmod(i, ncol)
        top, left = pad + r * (h + pad), pad + k * (w + pad)
        grid[:, top:top + h, left:left + w] = x[i]
    return grid[0] if c == 1 else grid.transpose(1, 2, 0)


def save_image_grid(images: Tensor, path: str | Path, *, ncol: int | None = None, upscale: int = 4) -> Path:
    """Save a grid of images as a PNG (digits drawn dark on light, upscaled); returns the path.

    ``ncol`` is :func:`image_grid`'s; ``upscale`` (>= 1) is the side in PNG pixels of one image pixel.
    """
    import matplotlib.image

    upscale = check_int("upscale", upscale)
    grid = image_grid(images, ncol=ncol)
    grid = np.kron(grid, np.ones((upscale, upscale) + (() if grid.ndim == 2 else (1,)), dtype=np.float32))
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    if grid.ndim == 2:
        matplotlib.image.imsave(out, 1 - grid, cmap="gray", vmin=0, vmax=1)
    else:
        matplotlib.image.imsave(out, grid)
    return out
