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
