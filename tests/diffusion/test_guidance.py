from __future__ import annotations

import math

import pytest
import torch

from papa_bayes.diffusion import Guidance, PCAFeatures, PosteriorObjective, sample
from papa_bayes.diffusion.sampler import guidance_generator
from papa_bayes.exceptions import InputDataError, ModelError


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def base_and_pca(pixel_model):
    base = sample(pixel_model, 32, num_inference_steps=4, generator=gen(0), progress_bar=False)
    return base, PCAFeatures.fit(base.images, num_features=4)


@pytest.fixture
def posterior(make_posterior):
    w = torch.tensor([1.0, -0.5, 0.3, 0.0]) + 0.3 * torch.randn(64, 4, generator=gen(5))
    return make_posterior(w)


def mean_utility(objective: PosteriorObjective, images: torch.Tensor) -> float:
    with torch.no_grad():
        return float(objective.utility(images).mean())


@pytest.mark.parametrize("mode", ["x0", "dps"])
@pytest.mark.parametrize("kind", ["mean", "ucb", "thompson", "region"])
def test_guidance_increases_objective_over_unguided(pixel_model, base_and_pca, posterior, mode, kind):
    base, pca = base_and_pca
    objective = PosteriorObjective(posterior, pca, kind=kind).calibrate(base.images)
    kwargs = dict(num_inference_steps=4, progress_bar=False)
    plain = sample(pixel_model, 16, generator=gen(1), **kwargs)
    guided = sample(pixel_model, 16, guidance=Guidance(objective, scale=0.5, mode=mode), generator=gen(1), **kwargs)
    objective.begin_batch(16, generator=guidance_generator(gen(1)))  # the guided run's Thompson draws
    with torch.no_grad():
        before = objective(plain.images).mean()
    assert float(guided.objective.mean()) > float(before) + 0.05
    assert bool(torch.isfinite(guided.images).all())


@pytest.mark.parametrize("space, kind, eta", [("pixel", "ddpm", 0.0), ("pixel", "ddim", 0.5), ("latent", "ddim", 0.0),
                                              ("latent", "ddpm", 0.0), ("latent", "ddim", 0.5)])
@pytest.mark.parametrize("mode", ["x0", "dps"])
def test_guidance_raises_the_objective_of_every_sample_for_each_model_and_scheduler(
        make_pixel_model, make_latent_model, make_posterior, space, kind, eta, mode):
    """From the same noise (and step noise), each guided sample ends with a higher objective than its unguided twin."""
    model = make_pixel_model(kind) if space == "pixel" else make_latent_model(kind)
    kwargs = dict(num_inference_steps=4, progress_bar=False, eta=eta, batch_size=3)  # 3 does not divide 5
    base = sample(model, 16, generator=gen(0), **kwargs)
    objective = PosteriorObjective(make_posterior(torch.randn(20, 4, generator=gen(3))),
                                   PCAFeatures.fit(base.images, num_features=4), kind="region").calibrate(base.images)
    clamp = None if space == "latent" else (-1, 1)
    guidance = Guidance(objective, scale=1.0, mode=mode, window=(0.0, 1.0), clamp=clamp)
    guided = sample(model, 5, guidance=guidance, generator=gen(1), **kwargs)
    plain = sample(model, 5, guidance=guidance.with_scale(0.0), generator=gen(1), **kwargs)
    assert bool((guided.objective > plain.objective).all()), (guided.objective, plain.objective)


def test_mean_utility_rises_monotonically_with_scale(pixel_model, base_and_pca, posterior):
    base, pca = base_and_pca
    objective = PosteriorObjective(posterior, pca, kind="mean")
    values = []
    for scale in (0.0, 0.05, 0.1, 0.2, 0.4):
        out = sample(pixel_model, 16, num_inference_steps=4, progress_bar=False, generator=gen(2),
                     guidance=Guidance(objective, scale=scale))
        values.append(mean_utility(objective, out.images))
    assert all(b > a for a, b in zip(values, values[1:])), values


def test_region_objective_saturates(pixel_model, base_and_pca, posterior):
    """A sample surely in the preferred region feels no push: guided equals unguided."""
    base, pca = base_and_pca
    sure = PosteriorObjective(posterior, pca, kind="region", threshold=-1e6)
    plain = sample(pixel_model, 8, num_inference_steps=4, generator=gen(3), progress_bar=False)
    guided = sample(pixel_model, 8, num_inference_steps=4, generator=gen(3), progress_bar=False,
                    guidance=Guidance(sure, scale=2.0))
    torch.testing.assert_close(guided.images, plain.images)
    assert bool((guided.guidance_norms == 0).all())
    assert torch.allclose(sure.region_probability(plain.images), torch.ones(8))


def test_thompson_uses_one_seeded_draw_per_sample(base_and_pca, posterior):
    _, pca = base_and_pca
    objective = PosteriorObjective(posterior, pca, kind="thompson")
    objective.begin_batch(50, generator=gen(7))
    first = objective._draw_index.clone()
    objective.begin_batch(50, generator=gen(7))
    assert torch.equal(first, objective._draw_index)
    assert first.unique().numel() > 10
    fresh = PosteriorObjective(posterior, pca, kind="thompson")
    with pytest.raises(ModelError):
        fresh(torch.zeros(3, 1, 8, 8))


def test_range_guard_keeps_shift_inside_data_range(pixel_model, base_and_pca, posterior):
    _, pca = base_and_pca
    objective = PosteriorObjective(posterior, pca, kind="mean")
    guidance = Guidance(objective, scale=5.0)
    x_t = torch.randn(4, 1, 8, 8, generator=gen(0))
    t = torch.tensor(500)
    a = pixel_model.scheduler.alphas_cumprod[500]
    x0, eps, shift = guidance.guide(pixel_model, x_t, t, a, step=0, num_steps=10)
    base_x0 = x0 - shift
    moved = shift.abs() > 0
    assert bool(moved.any())
    # a moved value ends inside [-1, 1] unless the base prediction was already outside on that side
    assert bool(((x0 <= torch.clamp(base_x0, min=1.0) + 1e-6) & (x0 >= torch.clamp(base_x0, max=-1.0) - 1e-6)).all())
    torch.testing.assert_close(a.sqrt() * x0 + (1 - a).sqrt() * eps, x_t)  # eps re-derived


def test_guidance_window_and_schedule(pixel_model, base_and_pca, posterior):
    _, pca = base_and_pca
    objective = PosteriorObjective(posterior, pca, kind="mean")
    out = sample(pixel_model, 4, num_inference_steps=10, progress_bar=False, generator=gen(0),
                 guidance=Guidance(objective, scale=0.3, window=(0.2, 0.6), schedule="decay"))
    acting = out.guidance_norms > 0
    assert acting.tolist() == [False, False, True, True, True, True, False, False, False, False]
    assert out.guidance_norms[2] > out.guidance_norms[5]


def test_a_schedule_of_small_values_pushes_as_hard_as_its_normalized_shape(pixel_model, base_and_pca, posterior):
    """The normalizer divides by the schedule: a constant 1e-4 pushes as "constant" does (the floor was absolute)."""
    _, pca = base_and_pca
    objective = PosteriorObjective(posterior, pca, kind="mean")
    norms = [sample(pixel_model, 4, num_inference_steps=5, progress_bar=False, generator=gen(1),
                    guidance=Guidance(objective, scale=1.0, window=(0.0, 1.0), clamp=None,
                                      schedule=lambda p, c=c: c)).guidance_norms for c in (1.0, 1e-4)]
    assert bool((norms[0] > 0).all())
    torch.testing.assert_close(norms[1], norms[0])


def test_push_does_not_depend_on_the_reward_scale_even_far_from_one(pixel_model, base_and_pca, posterior):
    """Per-sample normalization in float32 lost gradients below about 1e-19 per value (norm 0, or floored at
    1e-12) and above about 1e19 (norm inf): such rewards pushed nothing."""
    _, pca = base_and_pca
    objective = PosteriorObjective(posterior, pca, kind="mean")
    norms = [sample(pixel_model, 4, num_inference_steps=5, progress_bar=False, generator=gen(1),
                    guidance=Guidance(lambda x, c=c: c * objective(x), scale=1.0, window=(0.0, 1.0), clamp=None)
                    ).guidance_norms for c in (1.0, 1e-16, 1e-25, 1e30)]
    assert bool((norms[0] > 0).all())
    for other in norms[1:]:
        torch.testing.assert_close(other, norms[0], rtol=1e-5, atol=0)


@pytest.mark.parametrize("scale", [-0.1, float("nan"), float("inf"), "big", "0.5", True])  # text, bools: no numbers
def test_bad_guidance_scale_raises(base_and_pca, posterior, scale):
    _, pca = base_and_pca
    objective = PosteriorObjective(posterior, pca, kind="mean")
    with pytest.raises(InputDataError, match="scale"):
        Guidance(objective, scale=scale)


def test_feature_dimension_mismatch_raises(base_and_pca, make_posterior):
    _, pca = base_and_pca
    with pytest.raises(InputDataError, match="feature_map.*posterior's \\(3\\).*got 4"):
        PosteriorObjective(make_posterior(torch.randn(8, 3)), pca)


@pytest.mark.parametrize("kwargs", [{"kind": "best"}, {"kappa": -1.0}, {"temperature": 0.0},
                                    {"threshold": [0.0, 1.0]}, {"threshold": float("nan")}])
def test_bad_objective_options_raise(base_and_pca, posterior, kwargs):
    _, pca = base_and_pca
    with pytest.raises(InputDataError):
        PosteriorObjective(posterior, pca, **kwargs)


@pytest.mark.parametrize("kwargs", [{"mode": "x1"}, {"window": (0.5, 0.5)}, {"schedule": "cosine"},
                                    {"clamp": (1.0, -1.0)}, {"clamp": (0.0, 0.0)}])
def test_bad_guidance_options_raise(base_and_pca, posterior, kwargs):
    _, pca = base_and_pca
    with pytest.raises(InputDataError):
        Guidance(PosteriorObjective(posterior, pca, kind="mean"), **kwargs)


def test_region_needs_threshold_or_calibration(base_and_pca, posterior):
    _, pca = base_and_pca
    objective = PosteriorObjective(posterior, pca, kind="region")
    with pytest.raises(ModelError, match="calibrate"):
        objective(torch.zeros(2, 1, 8, 8))


def test_objective_of_wrong_shape_raises(pixel_model):
    guidance = Guidance(lambda images: images.sum(), scale=0.1)  # a scalar, not one value per sample
    with pytest.raises(InputDataError, match="objective"):
        sample(pixel_model, 2, num_inference_steps=2, guidance=guidance, progress_bar=False)


def test_region_calibration_sets_per_draw_quantiles(base_and_pca, posterior):
    base, pca = base_and_pca
    objective = PosteriorObjective(posterior, pca, kind="region").calibrate(base.images, quantile=0.75)
    p = objective.region_probability(base.images)
    assert math.isclose(float(p.mean()), 0.25, abs_tol=0.04)
    with pytest.raises(InputDataError):
        objective.calibrate(base.images, quantile=1.0)


def test_at_quantile_equals_a_fresh_calibration(base_and_pca, posterior):
    base, pca = base_and_pca
    broad = PosteriorObjective(posterior, pca, kind="mean").calibrate(base.images, quantile=0.6)
    fresh = PosteriorObjective(posterior, pca, kind="region").calibrate(base.images, quantile=0.8)
    core = broad.at_quantile(0.8)
    torch.testing.assert_close(core.tau, fresh.tau)
    torch.testing.assert_close(core.region_probability(base.images), fresh.region_probability(base.images))
    assert float(broad.region_probability(base.images).mean()) > float(core.region_probability(base.images).mean())
    with pytest.raises(InputDataError, match="quantile"):
        broad.at_quantile(0.0)
    with pytest.raises(ModelError, match="calibrate"):
        PosteriorObjective(posterior, pca, kind="region").at_quantile(0.8)


def test_region_probability_methods(pixel_model, make_posterior):
    base = sample(pixel_model, 48, num_inference_steps=3, generator=torch.Generator().manual_seed(0), progress_bar=False)
    pca = PCAFeatures.fit(base.images, num_features=3)
    draws = torch.tensor([[1.0, 0.0, 0.0]]) + 0.05 * torch.randn(128, 3, generator=torch.Generator().manual_seed(1))
    objective = PosteriorObjective(make_posterior(draws), pca, kind="region").calibrate(base.images, quantile=0.5)
    share = objective.region_probability(base.images)
    gauss = objective.region_probability(base.images, method="gaussian")
    smooth = objective.region_probability(base.images, method="smooth")
    for p in (share, gauss, smooth):
        assert p.shape == (48,) and bool(((p >= 0) & (p <= 1)).all())
    # the draws nearly agree: most samples are surely in or out, and the Gaussian
    # version agrees with the share on which side each sure sample lies ...
    sure = (share == 1) | (share == 0)
    assert int(sure.sum()) > 24 and torch.equal(gauss[sure] > 0.5, share[sure] > 0.5)
    # ... but still ranks the samples every draw puts inside, by how far inside they
    # lie (up to about 8 posterior standard deviations, where float64 rounds to 1)
    inside = share == 1
    assert int(inside.sum()) >= 2 and len(set(gauss[inside].tolist())) >= 5
    assert float(torch.corrcoef(torch.stack([gauss, share]))[0, 1]) > 0.8
    with pytest.raises(InputDataError, match="method"):
        objective.region_probability(base.images, method="median")
    # utilities computed once serve every method, with the same values
    u = objective.utility(base.images)
    for method, p in (("share", share), ("gaussian", gauss), ("smooth", smooth)):
        assert torch.equal(objective.region_probability(utility=u, method=method), p)
    for both_or_neither in (dict(x=base.images, utility=u), {}):
        with pytest.raises(InputDataError, match="x / utility"):
            objective.region_probability(**both_or_neither)


@pytest.mark.parametrize("m", [0, 1])
def test_calibration_needs_two_base_samples(base_and_pca, posterior, m):
    base, pca = base_and_pca
    objective = PosteriorObjective(posterior, pca, kind="region")
    with pytest.raises(InputDataError, match="base: expected at least 2 base samples"):
        objective.calibrate(base.images[:m])
    assert objective.width is None  # nothing half-set


def test_calibration_refuses_base_samples_whose_utilities_do_not_differ(base_and_pca, posterior):
    """Copies of one image gave a width of 1e-12: a step function whose gradient is zero, silently."""
    base, pca = base_and_pca
    objective = PosteriorObjective(posterior, pca, kind="region")
    with pytest.raises(InputDataError, match="base: expected base samples whose utilities differ"):
        objective.calibrate(base.images[:1].expand(4, *base.images.shape[1:]))
    assert objective.width is None and objective.tau is None
    objective.calibrate(base.images[:4])
    assert bool((objective.width > 0.01).all())


@pytest.mark.parametrize(("field", "kwargs"), [
    ("window", {"window": (0.0,)}), ("window", {"window": 0.5}),  # were ValueError / TypeError
    ("window", {"window": ("0", "0.5")}),  # text was read as numbers
    ("clamp", {"clamp": 1.0}), ("clamp", {"clamp": ("a", "b")}),
    ("schedule", {"schedule": 3}), ("schedule", {"schedule": None}),  # were accepted, failing mid-sampling
])
def test_guidance_options_are_checked_under_their_names(field, kwargs):
    with pytest.raises(InputDataError, match=f"^{field}:"):
        Guidance(lambda images: images.sum((1, 2, 3)), **kwargs)


class _Weighted:
    """An objective with a push weight that is no weight."""

    def __call__(self, images):
        return images.sum((1, 2, 3))

    def push_weight(self, values):
        return values * float("nan")


@pytest.mark.parametrize(("field", "guidance"), [
    ("schedule", Guidance(lambda images: images.sum((1, 2, 3)), scale=1.0, schedule=lambda p: float("nan"))),
    ("schedule", Guidance(lambda images: images.sum((1, 2, 3)), scale=1.0, schedule=lambda p: -1.0)),
    ("schedule", Guidance(lambda images: images.sum((1, 2, 3)), scale=1.0, schedule=lambda p: "high")),
    ("objective", Guidance(lambda images: torch.ones(images.shape[0]), scale=1.0)),  # was RuntimeError from autograd
    ("objective", Guidance(_Weighted(), scale=1.0)),  # NaN weights gave NaN samples
])
def test_guidance_rejects_what_its_callables_return(pixel_model, field, guidance):
    with pytest.raises(InputDataError, match=f"^{field}:"):
        sample(pixel_model, 2, num_inference_steps=2, guidance=guidance, progress_bar=False)


@pytest.mark.parametrize(("field", "kwargs"), [
    ("kappa", {"kappa": "1"}), ("kappa", {"kappa": True}), ("kappa", {"kappa": float("inf")}),
    ("kappa", {"kappa": None}),  # was TypeError
    ("temperature", {"temperature": float("inf")}), ("temperature", {"temperature": "0.1"}),
    ("temperature", {"temperature": None}),
    ("threshold", {"threshold": "0.5"}),  # was TypeError from torch
    ("threshold", {"threshold": True}),
])
def test_objective_numbers_are_numbers(base_and_pca, posterior, field, kwargs):
    _, pca = base_and_pca
    with pytest.raises(InputDataError, match=f"^{field}:"):
        PosteriorObjective(posterior, pca, **kwargs)


def test_objective_inputs_are_checked(base_and_pca, posterior, make_posterior):
    base, pca = base_and_pca
    with pytest.raises(InputDataError, match="^posterior:"):  # was a RuntimeError at the first Thompson draw
        PosteriorObjective(make_posterior(torch.zeros(0, 4)), pca, kind="thompson")
    objective = PosteriorObjective(posterior, pca, kind="thompson")
    for bad, field in ((dict(base=[[0.0]]), "base"), (dict(base=torch.full((4, 1, 8, 8), float("nan"))), "base"),
                       (dict(base=base.images, batch_size=0), "batch_size")):
        with pytest.raises(InputDataError, match=f"^{field}:"):
            objective.calibrate(**bad)
    objective.calibrate(base.images)
    u = objective.utility(base.images)
    for bad, field in ((dict(x=[0.0]), "x"), (dict(utility=u[:3]), "utility"),  # was a RuntimeError
                       (dict(utility=u[0]), "utility"),  # `n` was broadcast against the draws
                       (dict(utility=torch.full_like(u, float("nan"))), "utility"),  # NaN read as outside
                       (dict(x=base.images.clone().fill_(float("nan"))), "x")):  # was a share of 0.0, silently
        with pytest.raises(InputDataError, match=f"^{field}:"):
            objective.region_probability(**bad)
    for kwargs, field in ((dict(n=-1), "n"), (dict(n=2.0), "n"), (dict(n=2, generator="seed"), "generator"),
                          (dict(n=2, device="cpux"), "device")):
        with pytest.raises(InputDataError, match=f"^{field}:"):
            objective.begin_batch(**kwargs)
    with pytest.raises(InputDataError, match="^values:"):
        objective.push_weight([0.5])


def test_ucb_needs_two_posterior_draws(base_and_pca, make_posterior):
    """A 1-draw posterior's standard deviation is NaN: UCB guidance failed mid-sampling with a ModelError."""
    _, pca = base_and_pca
    single = make_posterior(torch.randn(1, 4, generator=gen(0)))
    with pytest.raises(InputDataError, match="^posterior: expected num_draws >= 2 for kind='ucb'.*got 1"):
        PosteriorObjective(single, pca, kind="ucb")
    for kind in ("mean", "thompson"):  # one draw is enough for these
        PosteriorObjective(single, pca, kind=kind)


def test_a_window_that_holds_no_step_warns_that_nothing_is_guided(pixel_model, base_and_pca, posterior):
    """window=(0.9, 1.0) with 5 steps holds no step (i / 5 for i < 5): the samples came out unguided, silently."""
    import warnings

    from papa_bayes.exceptions import PapaBayesWarning

    base, pca = base_and_pca
    objective = PosteriorObjective(posterior, pca, kind="mean").calibrate(base.images)
    kwargs = dict(num_inference_steps=5, progress_bar=False)
    with pytest.warns(PapaBayesWarning, match=r"window=\(0.9, 1.0\)\) holds none of the 5 sampler steps") as record:
        guided = sample(pixel_model, 2, guidance=Guidance(objective, scale=1.0, window=(0.9, 1.0)), generator=gen(1),
                        **kwargs)
    assert record[0].filename == __file__  # the caller's line (was the progress= shim's, in papa_bayes.checks)
    assert torch.equal(guided.images, sample(pixel_model, 2, generator=gen(1), **kwargs).images)  # indeed unguided
    with warnings.catch_warnings():
        warnings.simplefilter("error", PapaBayesWarning)  # a window that holds a step, or scale 0, stays quiet
        sample(pixel_model, 2, guidance=Guidance(objective, scale=1.0, window=(0.7, 1.0)), generator=gen(1), **kwargs)
        sample(pixel_model, 2, guidance=Guidance(objective, scale=0.0, window=(0.9, 1.0)), generator=gen(1), **kwargs)


class _SumOfSample:
    """An objective of the diffused sample itself: its gradient pushes every value up."""

    input_space = "sample"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1).sum(1)


def test_the_default_range_guard_clamps_pixels_but_not_latents(pixel_model, latent_model):
    """The pixel range (-1, 1) was the default for every model: a latent model's guided sample() had its push cut
    wherever a latent exceeded 1 (latents are not in [-1, 1]), silently."""
    for model, pixel in ((latent_model, False), (pixel_model, True)):
        x_t = 3 * torch.randn(4, *model.sample_shape, generator=gen(3))  # many predicted x0 values beyond 1
        t = torch.tensor(600)
        a = model.scheduler.alphas_cumprod[600]
        kw = dict(step=0, num_steps=4)
        x0, _, default = Guidance(_SumOfSample(), scale=1.0).guide(model, x_t, t, a, **kw)
        _, _, free = Guidance(_SumOfSample(), scale=1.0, clamp=None).guide(model, x_t, t, a, **kw)
        _, _, pixels = Guidance(_SumOfSample(), scale=1.0, clamp=(-1, 1)).guide(model, x_t, t, a, **kw)
        assert bool((x0 > 1).any()) and bool((free > 0).all())
        torch.testing.assert_close(default, pixels if pixel else free)
        assert Guidance(_SumOfSample()).data_range(model) == ((-1.0, 1.0) if pixel else None)
    with pytest.raises(InputDataError, match="'auto'") as info:
        Guidance(_SumOfSample(), clamp="pixels")
    assert info.value.field == "clamp"
