"""Image grids: shapes, and bad layout numbers name their field."""

from __future__ import annotations

import pytest
import torch

from papa_bayes.diffusion import image_grid, save_image_grid
from papa_bayes.exceptions import InputDataError

IMAGES = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1


def test_grid_shape_follows_ncol_and_pad():
    assert image_grid(IMAGES).shape == (19, 28)  # 3 columns, 2 rows
    assert image_grid(IMAGES, ncol=6, pad=0).shape == (8, 48)
    assert image_grid(IMAGES, ncol=1).shape == (55, 10)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"ncol": 0}, "ncol"), ({"ncol": -1}, "ncol"), ({"ncol": 2.5}, "ncol"), ({"pad": -1}, "pad"),
     ({"pad": 1.5}, "pad")],
)
def test_image_grid_bad_input(kwargs, field):
    with pytest.raises(InputDataError) as info:
        image_grid(IMAGES, **kwargs)
    assert info.value.field == field


def test_save_image_grid_checks_upscale(tmp_path):
    assert save_image_grid(IMAGES, tmp_path / "g.png", upscale=2).is_file()
    for upscale in (0, 2.0):
        with pytest.raises(InputDataError) as info:
            save_image_grid(IMAGES, tmp_path / "bad.png", upscale=upscale)
        assert info.value.field == "upscale"
    assert not (tmp_path / "bad.png").exists()


@pytest.mark.parametrize(
    ("images", "field"),
    [(torch.full((2, 1, 8, 8), float("nan")), "images"),  # was a grid of NaN
     (torch.zeros(2, 0, 8, 8), "images"), (torch.zeros(2, 1, 0, 8), "images")],  # were empty grids
)
def test_image_grid_rejects_nonsense_images(images, field):
    with pytest.raises(InputDataError) as info:
        image_grid(images)
    assert info.value.field == field


@pytest.mark.parametrize(
    ("images", "name", "field"),
    [(torch.zeros(2, 2, 8, 8), "g.png", "images"), (torch.zeros(2, 5, 8, 8), "g.png", "images"),  # ValueError
     (IMAGES, None, "path"),  # TypeError
     (IMAGES, "noext", "path"), (IMAGES, "g.xyz", "path")],  # ValueError / KeyError from the writers
)
def test_save_image_grid_checks_channels_and_path(tmp_path, images, name, field):
    with pytest.raises(InputDataError) as info:
        save_image_grid(images, None if name is None else tmp_path / name)
    assert info.value.field == field
    assert save_image_grid(torch.zeros(2, 3, 8, 8), tmp_path / "rgb.jpg").is_file()


def test_image_grid_accepts_a_0d_integer_tensor_as_ncol():
    """check_int accepts a 0-d integer tensor; the layout then failed in divmod with a TypeError."""
    assert image_grid(IMAGES, ncol=torch.tensor(3)).shape == image_grid(IMAGES, ncol=3).shape == (19, 28)


@pytest.mark.parametrize("suffix", ["pcx", "msp", "xbm", "palm", "mpo"])
def test_save_image_grid_refuses_writers_that_cannot_store_its_rgba_image(tmp_path, suffix):
    """Every Pillow writer counted as a format, but imsave hands Pillow an RGBA image: "Cannot save RGBA images
    as PCX" (Pillow's OSError or ValueError) after the check had let the name through."""
    with pytest.raises(InputDataError, match=r"^path: .*\.png.*\.tiff") as info:
        save_image_grid(IMAGES, tmp_path / f"g.{suffix}")
    assert info.value.field == "path" and f".{suffix}," not in str(info.value).split("got")[0]
    assert not (tmp_path / f"g.{suffix}").exists()
    for fine in ("g.tiff", "g.bmp", "g.jpeg"):
        assert save_image_grid(IMAGES, tmp_path / fine).is_file()
