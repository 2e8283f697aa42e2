"""Feature maps are told apart and misused ones refused: fingerprints, pixel ranges, loading, sample shapes."""

from __future__ import annotations

import warnings

import pytest
import torch

from papa_bayes.diffusion import (
    CallableFeatures,
    DigitsPerson,
    ManifoldGuard,
    MidBlockFeatures,
    PCAFeatures,
    PixelDiffusion,
    PosteriorObjective,
    load_feature_map,
    make_digits_unet,
    make_sampling_scheduler,
    manifold_membership,
    save_feature_map,
)
from papa_bayes.exceptions import InputDataError, PapaBayesWarning


class _Posterior:
    """Duck-typed RewardPosterior over fixed linear draws, optionally recording its features' fingerprint."""

    def __init__(self, d: int, feature_fingerprint: str | None = None) -> None:
        self.draws = torch.randn(5, d, generator=torch.Generator().manual_seed(0))
        self.num_features, self.num_draws = d, 5
        if feature_fingerprint is not None:
            self.feature_fingerprint = feature_fingerprint

    def utility(self, features: torch.Tensor) -> torch.Tensor:
        return self.draws.to(features.dtype) @ features.T


def _digits(n: int = 30, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _first_two(x):
    return x.reshape(x.shape[0], -1)[:, :2]


def _last_two(x):
    return x.reshape(x.shape[0], -1)[:, -2:]


def _scaled(k: float):
    return lambda x: x.reshape(x.shape[0], -1)[:, :2] * k


def test_callable_fingerprints_follow_the_function():
    a, b = CallableFeatures(_first_two, 2), CallableFeatures(_last_two, 2)
    assert a.fingerprint() != b.fingerprint()  # other features, one dimension
    lam1, lam2 = CallableFeatures(lambda x: x.flatten(1)[:, :2], 2), CallableFeatures(lambda x: x.flatten(1)[:, 2:4], 2)
    assert lam1.name == lam2.name == "<lambda>" and lam1.fingerprint() != lam2.fingerprint()
    assert CallableFeatures(_scaled(1.0), 2).fingerprint() != CallableFeatures(_scaled(2.0), 2).fingerprint()
    # Same function (or the same code with the same closure): same fingerprint, also across calls.
    assert CallableFeatures(_first_two, 2).fingerprint() == a.fingerprint() == a.fingerprint()
    assert CallableFeatures(_scaled(3.0), 2).fingerprint() == CallableFeatures(_scaled(3.0), 2).fingerprint()


def test_objective_refuses_a_map_other_than_the_posteriors(tmp_path):
    a, b = CallableFeatures(_first_two, 2), CallableFeatures(_last_two, 2)
    with pytest.raises(InputDataError, match="fingerprint") as err:
        PosteriorObjective(_Posterior(2, a.fingerprint()), b, kind="mean")
    assert err.value.field == "feature_map"
    with pytest.raises(InputDataError) as err:
        PosteriorObjective(_Posterior(2), b, kind="mean", feature_fingerprint=a.fingerprint())
    assert err.value.field == "feature_map" and a.fingerprint() in str(err.value) and b.fingerprint() in str(err.value)
    # The map it was fitted on passes, also reloaded; unknown fingerprints pass as before.
    loaded = load_feature_map(save_feature_map(a, tmp_path / "a"), fn=_first_two)
    objective = PosteriorObjective(_Posterior(2, a.fingerprint()), loaded, kind="mean")
    assert objective(_digits(3)).shape == (3,)
    PosteriorObjective(_Posterior(2), b, kind="mean")
    pca = PCAFeatures.fit(_digits(), num_features=2)
    other = PCAFeatures.fit(_digits(seed=1), num_features=2)
    with pytest.raises(InputDataError):
        PosteriorObjective(_Posterior(2), other, kind="mean", feature_fingerprint=pca.fingerprint())
    with pytest.raises(InputDataError) as err:
        PosteriorObjective(_Posterior(2), pca, kind="mean", feature_fingerprint=3)  # type: ignore[arg-type]
    assert err.value.field == "feature_fingerprint"


def _range_warnings(call) -> list[warnings.WarningMessage]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        call()
    return [w for w in caught if issubclass(w.category, PapaBayesWarning)]


def test_0_255_images_warn():
    reference = _digits(40)
    pixels = (reference[:10] + 1) * 127.5  # the uint8 range, as floats
    guard = ManifoldGuard(reference, k=3)
    for call in (lambda: guard(pixels), lambda: manifold_membership(pixels, reference),
                 lambda: DigitsPerson().utility(pixels)):
        caught = _range_warnings(call)
        assert len(caught) == 1 and "127.5" in str(caught[0].message) and caught[0].filename == __file__
    pca = PCAFeatures.fit(reference, num_features=4)
    caught = _range_warnings(lambda: pca(pixels))
    assert len(caught) == 1 and "127.5" in str(caught[0].message) and caught[0].filename == __file__
    assert len(_range_warnings(lambda: pca(pixels.to(torch.uint8)))) == 1
    # Images in range stay quiet; a map fitted on 0..255 pixels reads them quietly.
    assert not _range_warnings(lambda: (guard(reference[:5]), pca(reference[:5])))
    assert not _range_warnings(lambda: PCAFeatures.fit(pixels, num_features=4)(pixels))


class _Encoder(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(64, 3)

    def forward(self, x):
        return self.proj(x.reshape(x.shape[0], 64))


def test_load_refuses_an_fn_it_would_ignore(tmp_path):
    saved = save_feature_map(CallableFeatures(_Encoder(), 3), tmp_path / "enc")
    with pytest.raises(InputDataError, match="torch.nn.Module") as err:
        load_feature_map(saved, fn=lambda x: x.reshape(x.shape[0], 64)[:, :3])
    assert err.value.field == "fn"
    assert load_feature_map(saved, fn=_Encoder()).num_features == 3
    pca_dir = save_feature_map(PCAFeatures.fit(_digits(), num_features=2), tmp_path / "pca")
    with pytest.raises(InputDataError) as err:
        load_feature_map(pca_dir, fn=_first_two)
    assert err.value.field == "fn" and "pca" in str(err.value)
    # A map saved from a plain function (no weights) loads with any callable.
    plain = save_feature_map(CallableFeatures(_first_two, 2), tmp_path / "plain")
    assert load_feature_map(plain, fn=_first_two).num_features == 2


def _tiny_model() -> PixelDiffusion:
    torch.manual_seed(0)
    unet = make_digits_unet(
        block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
    ).eval().requires_grad_(False)
    return PixelDiffusion(unet, make_sampling_scheduler())


def test_midblock_refuses_samples_of_another_size():
    model = _tiny_model()
    assert model.sample_shape == (1, 8, 8)
    mid = MidBlockFeatures(model, timestep=10).fit(_digits(8))
    assert mid(_digits(2)).shape == (2, mid.num_features)
    big = torch.rand(2, 1, 16, 16) * 2 - 1
    with pytest.raises(InputDataError, match=r"1 x 8 x 8") as err:
        mid(big)
    assert err.value.field == "x" and err.value.actual == (2, 1, 16, 16)
    with pytest.raises(InputDataError) as err:
        MidBlockFeatures(model, timestep=10).fit(torch.rand(4, 1, 16, 16))
    assert err.value.field == "samples"
