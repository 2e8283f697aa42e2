"""Image grids of samples (PNG), for reports and people labelling samples."""

from __future__ import annotations

import functools
import io
import math
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from papa_bayes.checks import check_finite, check_int, check_path, shape_of
from papa_bayes.exceptions import InputDataError

__all__ = ["image_grid", "save_image_grid"]


@functools.cache
def _image_formats() -> frozenset[str]:
    """File extensions ``matplotlib.image.imsave`` writes: its vector formats and Pillow's RGBA writers.

    imsave hands Pillow an RGBA image (gray images too, through the colormap) and
    drops the alpha for JPEG only; Pillow's other writers that cannot store RGBA
    (PCX, MSP, XBM, Palm, BLP, MPO, ...) or have no handler installed (GRIB, HDF5,
    WMF, ...) failed with Pillow's own error. Each writer is tried once, on a tiny
    image, as imsave calls it.
    """
    import PIL.Image

    PIL.Image.init()
    probe = PIL.Image.new("RGBA", (4, 4))
    writers = set()
    for name in PIL.Image.SAVE:
        try:
            with warnings.catch_warnings():  # Pillow deprecates some writers (IM): not ours to show at each save
                warnings.simplefilter("ignore", DeprecationWarning)
                probe.save(io.BytesIO(), format=name, dpi=(100, 100))
        except Exception:  # each plugin words its refusal its own way: OSError, ValueError, ...
            continue
        writers.add(name.lower())
    return frozenset({"pdf", "ps", "eps", "svg", "jpg", "jpeg"} | writers)


def image_grid(images: Tensor, *, ncol: int | None = None, pad: int = 1) -> np.ndarray:
    """Tile `n x c x h x w` images in `[-1, 1]` into one `H x W` (c=1) or `H x W x c` array in `[0, 1]`.

    Args:
        images: the images, finite and real (clipped to `[-1, 1]`); `n, c, h, w >= 1`.
        ncol: images per row (>= 1); about a square when None.
        pad: pixels between images (>= 0; drawn at 1, white).
    """
    if not isinstance(images, Tensor) or images.ndim != 4 or 0 in images.shape:
        shape = shape_of(images)
        raise InputDataError("images", "a non-empty tensor of shape `n x c x h x w`", shape)
    check_finite("images", images, "pixels")
    if ncol is not None:
        ncol = check_int("ncol", ncol)  # a 0-d tensor passes the check but not divmod
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
    The images have 1 (gray), 3 (RGB) or 4 (RGBA) channels; ``path`` ends in an
    image format matplotlib writes in RGBA (``.png``; ``.jpg``, ``.pdf``, ``.svg``, ``.tiff``,
    ``.webp``, ...; the error on another lists those this Pillow writes).

    Raises:
        InputDataError: on bad images (see :func:`image_grid`) or channel count, a
            bad ``upscale``, or a ``path`` without a known image extension.
    """
    import matplotlib.image

    upscale = check_int("upscale", upscale)
    out = check_path("path", path)
    if out.suffix.lower().lstrip(".") not in _image_formats():
        formats = ", ".join(f".{name}" for name in sorted(_image_formats()))
        raise InputDataError("path", f"a file name ending in an image format matplotlib writes ({formats})", str(out))
    if isinstance(images, Tensor) and images.ndim == 4 and images.shape[1] not in (1, 3, 4):
        raise InputDataError("images", "1 (gray), 3 (RGB) or 4 (RGBA) channels", images.shape[1])
    grid = image_grid(images, ncol=ncol)
    grid = np.kron(grid, np.ones((upscale, upscale) + (() if grid.ndim == 2 else (1,)), dtype=np.float32))
    out.parent.mkdir(parents=True, exist_ok=True)
    if grid.ndim == 2:
        matplotlib.image.imsave(out, 1 - grid, cmap="gray", vmin=0, vmax=1)
    else:
        matplotlib.image.imsave(out, grid)
    return out
