from __future__ import annotations

import pytest
import torch

from papa_bayes.diffusion import (
    Guidance,
    ManifoldGuard,
    manifold_membership,
    PCAFeatures,
    PosteriorObjective,
    sample,
    sample_preferred,
    select_guidance_scale,
    select_preferred,
    select_recommendation_scale,
)
from papa_bayes.exceptions import InputDataError, PapaBayesWarning


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_select_preferred_is_uniform_among_eligible_then_fills():
    p = torch.tensor([0.95, 0.2, 0.99, 0.91, 0.5, 0.97])
    on = torch.tensor([True, True, True, False, True, True])
    idx = select_preferred(p, 3, on_manifold=on, min_probability=0.9, generator=gen(0))
    assert sorted(idx.tolist()) == [0, 2, 5]
    idx = select_preferred(p, 5, on_manifold=on, min_probability=0.9, generator=gen(0))
    assert sorted(idx[:3].tolist()) == [0, 2, 5] and idx[3:].tolist() == [4, 1]  # on-manifold first
    counts = torch.zeros(6)
    for s in range(200):
        counts[select_preferred(p, 1, on_manifold=on, generator=gen(s))] += 1
    assert counts[[1, 3, 4]].sum() == 0 and counts[[0, 2, 5]].min() > 40  # uniform among eligible
    with pytest.raises(InputDataError):
        select_preferred(p, 7)


def test_manifold_guard_accepts_reference_and_rejects_far_points():
    ref = torch.randn(50, 1, 8, 8, generator=gen(0))
    guard = ManifoldGuard(ref)
    assert bool(guard(ref).all())
    assert not bool(guard(ref + 10).any())


def test_sample_preferred_keeps_confident_on_manifold_samples(pixel_model, make_posterior):
    base = sample(pixel_model, 48, num_inference_steps=3, generator=gen(0), progress_bar=False)
    pca = PCAFeatures.fit(base.images, num_features=3)
    posterior = make_posterior(torch.tensor([[1.0, 0.0, 0.0]]) + 0.1 * torch.randn(32, 3, generator=gen(1)))
    objective = PosteriorObjective(posterior, pca, kind="region").calibrate(base.images, quantile=0.5)
    guard = ManifoldGuard(base.images)
    out = sample_preferred(pixel_model, 8, guidance=Guidance(objective, scale=0.3), guard=guard, oversample=3,
                           min_probability=0.8, num_inference_steps=3, generator=gen(2), progress_bar=False)
    assert out.images.shape == (8, 1, 8, 8) and out.pool_size == 24
    assert out.eligible >= 8
    assert bool((out.probability >= 0.8).all()) and bool(out.on_manifold.all())
    again = sample_preferred(pixel_model, 8, guidance=Guidance(objective, scale=0.3), guard=guard, oversample=3,
                             min_probability=0.8, num_inference_steps=3, generator=gen(2), progress_bar=False)
    assert torch.equal(out.images, again.images)
    with pytest.raises(InputDataError):
        sample_preferred(pixel_model, 8, oversample=0.5, progress_bar=False)


def test_scale_rule_stops_at_the_precision_cliff(pixel_model, make_posterior):
    base = sample(pixel_model, 64, num_inference_steps=3, generator=gen(0), progress_bar=False)
    pca = PCAFeatures.fit(base.images, num_features=3)
    objective = PosteriorObjective(make_posterior(torch.randn(16, 3, generator=gen(1))), pca, kind="mean")
    guard = ManifoldGuard(base.images)
    # guided to the last step without the range guard, so that a huge push is not repaired
    result = select_guidance_scale(pixel_model, Guidance(objective, window=(0.0, 1.0), clamp=None), guard,
                                   scales=(0.05, 0.5, 5.0, 500.0), radius_scale=1.0,
                                   num_samples=16, num_inference_steps=3, generator=gen(3))
    assert result.base_precision > 0.5
    assert result.scale in (0.05, 0.5, 5.0)  # a huge push leaves the manifold
    assert result.precision[result.scale] >= result.threshold
    failed = [s for s, p in result.precision.items() if p < result.threshold]
    assert len(failed) == 1 and failed[0] > result.scale
    with pytest.raises(InputDataError):
        select_guidance_scale(pixel_model, Guidance(objective), guard, scales=(-1.0,))


def test_select_preferred_ranks_without_a_threshold():
    p = torch.tensor([0.95, 0.2, 0.99, 0.91, 0.5, 0.97])
    on = torch.tensor([True, True, True, False, True, True])
    idx = select_preferred(p, 3, on_manifold=on, min_probability=None, generator=gen(0))
    assert idx.tolist() == [2, 5, 0]  # the best on the manifold, in order; 3 is off it
    idx = select_preferred(p, 6, on_manifold=on, min_probability=None)
    assert idx.tolist() == [2, 5, 0, 4, 1, 3]


def test_recommendation_scale_is_the_mildest_that_reaches_the_target(pixel_model, make_posterior):
    base = sample(pixel_model, 64, num_inference_steps=3, generator=gen(0), progress_bar=False)
    pca = PCAFeatures.fit(base.images, num_features=3)
    posterior = make_posterior(torch.tensor([[1.0, 0.0, 0.0]]) + 0.3 * torch.randn(64, 3, generator=gen(1)))
    objective = PosteriorObjective(posterior, pca, kind="region").calibrate(base.images, quantile=0.95)
    g = Guidance(objective, window=(0.0, 1.0))
    def score(x):
        p = objective.region_probability(x)
        return p, p

    kw = dict(score=score, keep=0.25,
              scales=(0.01, 0.3, 3.0, 30.0), num_samples=32, num_inference_steps=3)

    def select(**options):
        return select_recommendation_scale(pixel_model, g, generator=gen(2), **{**kw, **options})

    every = {sc: select(target=0.99, scales=(sc,)).expected_share[sc] for sc in kw["scales"]}  # each alone
    assert every[30.0] > every[0.01] + 0.1  # stronger steering, purer kept samples
    target = 0.5 * (every[0.01] + every[30.0])
    chosen = select(target=target)
    assert chosen.reached and chosen.expected_share[chosen.scale] >= target
    assert all(v < target for sc, v in chosen.expected_share.items() if sc < chosen.scale)
    assert len(chosen.expected_share) <= 3  # bisection of 4 scales
    for sc, v in chosen.expected_share.items():  # the same starting noise: the same pools
        assert v == pytest.approx(every[sc])
    never = select(target=0.999999, max_scale=0.3)
    assert set(never.expected_share) <= {0.01, 0.3}
    assert never.reached == (max(never.expected_share.values()) >= 0.999999)
    if not never.reached:
        assert never.scale == 0.3  # the largest allowed when none reaches the target
    for bad in (dict(target=1.0), dict(keep=0.0), dict(max_scale=0.0), dict(scales=()), dict(target="0.5"),
                dict(keep="1"), dict(max_scale=float("nan")), dict(keep=float("nan"))):
        with pytest.raises(InputDataError, match=next(iter(bad))):
            select(**{"target": 0.5, **bad})


@pytest.mark.parametrize(
    ("args", "kwargs", "field"),
    [
        ((torch.tensor([3.0, 0.5]), 1), {}, "probability"),  # > 1 would outrank on-manifold candidates
        ((torch.tensor([-0.1, 0.5]), 1), {}, "probability"),
        ((torch.tensor([float("nan"), 0.5]), 1), {}, "probability"),
        ((torch.tensor([[0.9, 0.2], [0.8, 0.1]]), 1), {}, "probability"),
        ((torch.tensor([0.9, 0.2]), 1), {"on_manifold": torch.tensor([True])}, "on_manifold"),
        ((torch.tensor([0.9, 0.2]), 1), {"on_manifold": torch.tensor([1.0, 0.0])}, "on_manifold"),
        ((torch.tensor([0.9, 0.2]), 1.0), {}, "num"),
        ((torch.tensor([0.9, 0.2]), "1"), {}, "num"),
        ((torch.tensor([0.9, 0.2]), 1), {"min_probability": float("nan")}, "min_probability"),
        ((torch.tensor([0.9, 0.2]), 1), {"generator": "seed"}, "generator"),  # was AttributeError
    ],
)
def test_select_preferred_bad_input(args, kwargs, field):
    with pytest.raises(InputDataError) as info:
        select_preferred(*args, **kwargs)
    assert info.value.field == field


def test_sample_preferred_rejects_non_finite_probabilities_and_checks_numbers_first(pixel_model, monkeypatch):
    import papa_bayes.diffusion.selection as selection

    def half_nan(x):
        p = torch.full((x.shape[0],), 0.1)
        p[::2] = float("nan")
        return p

    kw = dict(num_inference_steps=2, generator=gen(0), progress_bar=False)
    with pytest.raises(InputDataError, match="probability"):  # NaN was read as 1 and won
        sample_preferred(pixel_model, 2, probability=half_nan, **kw)
    with pytest.raises(InputDataError, match="probability"):
        sample_preferred(pixel_model, 2, probability=lambda x: torch.tensor(0.5), **kw)
    out = sample_preferred(pixel_model, 2, oversample=2, **kw)  # no probability: every candidate counts
    assert out.eligible == 4 and bool(out.probability.isnan().all())

    def no_sampling(*args, **kwargs):
        raise AssertionError("sampled before checking the arguments")

    monkeypatch.setattr(selection, "sample", no_sampling)
    for bad, field in ((dict(num_samples=2.5), "num_samples"), (dict(min_probability=1.5), "min_probability"),
                       (dict(batch_size=0), "batch_size"),
                       (dict(guard="guard"), "guard"), (dict(probability=0.5), "probability"),  # failed after sampling
                       (dict(guidance=lambda x: x.flatten(1).mean(1)), "guidance")):  # was AttributeError
        with pytest.raises(InputDataError) as info:
            sample_preferred(pixel_model, **{"num_samples": 2, **bad}, **kw)
        assert info.value.field == field


class _OnAnotherDevice(torch.Tensor):
    """A tensor that says it lies elsewhere (as on a GPU): any op with it but a copy (`.to`, `.cpu`) fails."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func in (torch.Tensor.to, torch.Tensor.cpu) or func.__name__ == "__get__":  # copies, .shape, .dtype
            plain = [a.as_subclass(torch.Tensor) if isinstance(a, _OnAnotherDevice) else a for a in args]
            return func(*plain, **(kwargs or {}))
        raise RuntimeError(f"Expected all tensors to be on the same device ({func.__name__})")


def test_sample_preferred_reads_a_guards_verdicts_on_the_cpu(pixel_model):
    """select_preferred copied a guard's verdicts to the CPU, but sample_preferred went on with the original:
    a guard answering on the images' GPU failed at `on & (p >= min_probability)`."""

    def guard(images):
        return torch.tensor([True, False] * (images.shape[0] // 2)).as_subclass(_OnAnotherDevice)

    out = sample_preferred(pixel_model, 2, guard=guard, probability=lambda x: torch.full((x.shape[0],), 0.9),
                           min_probability=0.5, num_inference_steps=2, generator=gen(0), progress_bar=False)
    assert type(out.on_manifold) is torch.Tensor and out.on_manifold.tolist() == [True, True] and out.eligible == 4


def test_scale_rule_does_not_steer_when_no_unguided_sample_is_on_the_manifold(pixel_model):
    far = torch.full((20, 1, 8, 8), 50.0) + torch.randn(20, 1, 8, 8, generator=gen(0))
    guard = ManifoldGuard(far)  # nothing the model makes lies near it: base precision 0
    g = Guidance(lambda x: x.flatten(1).mean(1))
    kw = dict(scales=(0.5, 50.0), num_samples=4, num_inference_steps=2, generator=gen(1))
    with pytest.warns(PapaBayesWarning, match="precision 0") as record:
        result = select_guidance_scale(pixel_model, g, guard, **kw)
    assert record[0].filename == __file__  # the caller's line, not the progress= shim's
    assert result.base_precision == 0.0 and result.scale == 0.0 and result.precision == {}  # was 50.0
    floor = select_guidance_scale(pixel_model, g, guard, min_precision=0.5, **kw)  # an absolute floor still scans
    assert floor.scale == 0.0 and floor.precision == {0.5: 0.0}
    for bad in (dict(radius_scale=0.0), dict(radius_scale=-1.0), dict(min_precision=float("nan")),
                dict(min_precision=-5.0), dict(min_precision=0.0), dict(min_relative_precision="0.8")):
        with pytest.raises(InputDataError) as info:
            select_guidance_scale(pixel_model, g, guard, **{**kw, **bad})
        assert info.value.field == next(iter(bad))


def test_manifold_guard_bad_input():
    ref = torch.randn(10, 1, 8, 8, generator=gen(0))
    for args, kwargs, field in (((ref.numpy(),), {}, "reference"), ((ref,), {"radius_scale": "x"}, "radius_scale"),
                                ((ref,), {"k": 0}, "k"),
                                ((torch.full((10, 1, 8, 8), float("nan")),), {}, "reference")):  # NaN radii: no ball
        with pytest.raises(InputDataError) as info:
            ManifoldGuard(*args, **kwargs)
        assert info.value.field == field
    with pytest.raises(InputDataError, match="radius_scale"):
        ManifoldGuard(ref)(ref, radius_scale=-1.0)


def test_manifold_guard_names_its_own_arguments_and_refuses_complex_reference():
    """guard(images) blamed bad images on "samples", a name the caller never used; a complex reference lost
    its imaginary part with only torch's warning."""
    ref = torch.randn(10, 1, 8, 8, generator=gen(0))
    guard = ManifoldGuard(ref)
    for bad in (torch.randn(3, 1, 8, 7), torch.full((3, 1, 8, 8), float("nan")), ref[:0], ref.numpy()):
        for check in (guard, guard.precision):
            with pytest.raises(InputDataError, match="^images: expected") as info:
                check(bad)
            assert info.value.field == "images"
    with pytest.raises(InputDataError, match=r"^reference: expected a real tensor .*complex64") as info:
        ManifoldGuard(ref.to(torch.complex64) + 1j)
    assert info.value.field == "reference"


def test_manifold_guard_checks_its_reference_once_and_each_call_only_its_images(monkeypatch):
    """Each guard(images) scanned the images twice and the whole stored reference again for NaN
    (its own check, then manifold_membership's), and its range warning named the images "samples"."""
    import papa_bayes.diffusion.metrics as metrics_module

    ref = torch.randn(40, 1, 8, 8, generator=gen(0))
    guard = ManifoldGuard(ref)
    scanned = []
    real_check_finite = metrics_module.check_finite

    def counting(name, value, *args, **kwargs):
        scanned.append(name)
        return real_check_finite(name, value, *args, **kwargs)

    monkeypatch.setattr(metrics_module, "check_finite", counting)
    images = torch.randn(5, 1, 8, 8, generator=gen(1))
    assert guard(images).tolist() == manifold_membership(images, ref).tolist()
    scanned.clear()
    guard(images)
    guard.precision(images)
    assert scanned == ["images", "images"]
    with pytest.warns(PapaBayesWarning, match=r"^images: expected images in the reference's range"):
        guard((images.clamp(-1, 1) + 1) / 2)


def test_scale_rules_check_model_guidance_guard_and_pool_before_sampling(pixel_model, monkeypatch):
    import papa_bayes.diffusion.scale as scale_module

    guard = ManifoldGuard(torch.rand(16, 1, 8, 8) * 2 - 1)
    objective = lambda x: -x.flatten(1).pow(2).mean(1)  # noqa: E731
    g = Guidance(objective)
    score = lambda x: (torch.zeros(x.shape[0]), torch.ones(x.shape[0]))  # noqa: E731

    def no_pool(*args, **kwargs):
        raise AssertionError("a pool was drawn before the arguments were checked")

    monkeypatch.setattr(scale_module, "sample", no_pool)
    monkeypatch.setattr(scale_module, "_initial_noise", no_pool)
    for kwargs, field in (
        ({"guidance": objective}, "guidance"),  # was AttributeError after the unguided pool
        ({"guard": guard.reference}, "guard"),  # was AttributeError after the unguided pool
        ({"model": pixel_model.unet}, "model"),  # was AttributeError
        ({"num_samples": "8"}, "num_samples"),  # was TypeError from torch.randn
        ({"num_inference_steps": 1001}, "num_inference_steps"),
        ({"generator": 0}, "generator"),  # was AttributeError
        ({"scales": 0.5}, "scales"),  # was TypeError: not iterable
    ):
        args = {"model": pixel_model, "guidance": g, "guard": guard, "num_samples": 4, "num_inference_steps": 2,
                **kwargs}
        with pytest.raises(InputDataError) as info:
            select_guidance_scale(args.pop("model"), args.pop("guidance"), args.pop("guard"), **args)
        assert info.value.field == field
        if field != "guard":
            args = {"model": pixel_model, "guidance": g, "score": score, "num_samples": 4,
                    "num_inference_steps": 2, **kwargs}
            args.pop("guard", None)
            with pytest.raises(InputDataError) as info:
                select_recommendation_scale(args.pop("model"), args.pop("guidance"), **args)
            assert info.value.field == field
    with pytest.raises(InputDataError, match="^score:"):  # was TypeError after the first pool
        select_recommendation_scale(pixel_model, g, score=None, num_samples=4, num_inference_steps=2)


def test_sample_preferred_refuses_an_objective_without_region_before_sampling(pixel_model, make_posterior,
                                                                              monkeypatch):
    """A "mean" objective has region_probability, but no region: its ModelError came after the whole pool."""
    import papa_bayes.diffusion.selection as selection
    from papa_bayes.exceptions import ModelError

    def no_sampling(*args, **kwargs):
        raise AssertionError("sampled before checking the objective's region")

    monkeypatch.setattr(selection, "sample", no_sampling)
    pca = PCAFeatures.fit(torch.rand(16, 1, 8, 8, generator=gen(0)) * 2 - 1, num_features=3)
    objective = PosteriorObjective(make_posterior(torch.randn(8, 3, generator=gen(1))), pca, kind="mean")
    for min_probability in (0.75, None):
        with pytest.raises(ModelError, match="calibrate"):
            sample_preferred(pixel_model, 2, guidance=Guidance(objective), min_probability=min_probability,
                             num_inference_steps=2, progress_bar=False)


@pytest.mark.parametrize(("score", "found"), [
    (lambda x: (torch.zeros(x.shape[0]), torch.full((x.shape[0],), -0.1)), r"in \[0, 1\], got -0.1"),  # logs
    (lambda x: (torch.zeros(x.shape[0]), torch.full((x.shape[0],), float("nan"))), r"in \[0, 1\], got nan"),
    (lambda x: (torch.full((x.shape[0],), float("nan")), torch.full((x.shape[0],), 0.9)), "NaN ranks"),
    (lambda x: (torch.zeros(x.shape[0]), torch.ones(x.shape[0] + 1)), r"probabilities.*\(4,\), got \(5,\)"),
    (lambda x: torch.zeros(x.shape[0]), "a pair.*got Tensor"),  # was ValueError: too many values to unpack
])
def test_recommendation_scale_rejects_nan_ranks_and_non_probabilities(pixel_model, score, found):
    """Such scores never reached the target (the largest scale, silently) or kept NaN-ranked samples first."""
    g = Guidance(lambda x: -x.flatten(1).pow(2).mean(1))
    with pytest.raises(InputDataError, match=f"^score:.*{found}"):
        select_recommendation_scale(pixel_model, g, score=score, scales=(0.5, 1.0), num_samples=4,
                                    num_inference_steps=2, generator=gen(0))


def test_a_bad_guard_is_refused_under_its_own_name_before_the_pool_is_sampled(pixel_model, monkeypatch):
    """The class ManifoldGuard (callable) or a guard of other-sized reference images passed the check, the whole
    pool was sampled, then the error named `on_manifold` (select_preferred's argument) or `images`."""
    import papa_bayes.diffusion.selection as selection

    kw = dict(num_inference_steps=2, generator=gen(0), progress_bar=False)
    with pytest.raises(InputDataError) as info:  # verdicts of another kind can only be seen after sampling
        sample_preferred(pixel_model, 2, guard=lambda images: torch.ones(images.shape[0]), **kw)
    assert info.value.field == "guard"

    def no_sampling(*args, **kwargs):
        raise AssertionError("sampled before checking the guard")

    monkeypatch.setattr(selection, "sample", no_sampling)
    small = ManifoldGuard(torch.randn(10, 1, 4, 4, generator=gen(0)))  # 16 values per image; the model's have 64
    for guard in (ManifoldGuard, small, "guard"):
        with pytest.raises(InputDataError) as info:
            sample_preferred(pixel_model, 2, guard=guard, **kw)
        assert info.value.field == "guard"
