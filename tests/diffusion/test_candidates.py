"""DiffusionCandidates: the session's source of pools and recommendations."""

from __future__ import annotations

import pytest
import torch

from papa_bayes import LinearReward, PreferenceData, fit
from papa_bayes.demo import DigitsUser, make_setup
from papa_bayes.diffusion.candidates import DiffusionCandidates
from papa_bayes.diffusion.sampler import sample


def test_pools_mix_exploration_and_steering_and_scale_rule_runs():
    setup = make_setup()
    src = DiffusionCandidates(setup.model, setup.feature_map, setup.guard, num_base=32, pool_steps=4,
                              recommend_steps=4, oversample=2.0, scales=(0.1, 1.0), seed=0)
    gen = torch.Generator().manual_seed(0)
    first = src.candidates(None, 6, exploration=0.25, generator=gen)
    assert first.features.shape == (6, setup.feature_map.num_features) and not bool(first.steered.any())
    user = DigitsUser(setup.person)
    ratings = torch.stack([torch.arange(6), user.rate(first.images)], -1)
    post = fit(LinearReward(rationality=1.0), PreferenceData(items=first.features, ratings=ratings), method="laplace")
    pool = src.candidates(post, 8, exploration=0.25, generator=gen)
    assert int(pool.steered.sum()) == 6 and pool.images.shape == (8, 1, 8, 8)
    assert src.last_scale_selection is not None and src._chosen_scale in (0.0, 0.1, 1.0)
    rec = src.recommend(post, 4, generator=gen)
    assert rec.images.shape == (4, 1, 8, 8) and torch.isfinite(rec.features).all()


def test_session_finetunes_every_k_rounds_and_resume_reloads_the_weights(tmp_path):
    from papa_bayes.session import PreferenceSession

    setup = make_setup()

    def source():
        return DiffusionCandidates(setup.model, setup.feature_map, setup.guard, num_base=32, pool_steps=4,
                                   recommend_steps=4, oversample=2.0, scale=0.5, seed=0)

    src = source()
    path = tmp_path / "ft.db"
    session = PreferenceSession(path, src, DigitsUser(setup.person), pool_size=6, seed=0, finetune_every=2,
                                finetune_options={"num_samples": 8, "steps": 2, "batch_size": 4})
    session.run(3, progress_bar=False)
    hist = session.history
    assert [h.get("finetuned", 0.0) for h in hist] == [0.0, 1.0, 0.0]
    assert hist[1]["seconds_finetune"] > 0
    assert src.finetuned is not None and (session.finetune_path / "unet" / "config.json").is_file()
    base_w = next(setup.model.unet.parameters())
    tuned_w = next(src.finetuned.unet.parameters())
    assert not torch.equal(base_w, tuned_w)  # the weights moved; the base model did not
    rec = session.recommend(3)
    assert rec.images.shape == (3, 1, 8, 8)
    session.close()

    src2 = source()
    again = PreferenceSession.resume(path, src2, DigitsUser(setup.person))
    assert src2.finetuned is not None and again.finetune_every == 2
    assert torch.equal(next(src2.finetuned.unet.parameters()), tuned_w)
    again.run(1, progress_bar=False)
    assert again.history[-1]["finetuned"] == 1.0  # round 3 is the second fine-tune


def test_make_setup_features():
    import pytest

    from papa_bayes.diffusion import ConcatFeatures
    from papa_bayes.exceptions import InputDataError

    both = make_setup()  # the default: pixel PCA and mid-block features together
    assert isinstance(both.feature_map, ConcatFeatures) and both.feature_map.num_features == 16
    assert both.feature_map.input_space == "sample"
    wide = make_setup(features="midblock32")  # 32 mid-block components, not whitened
    assert wide.feature_map.num_features == 32 and not wide.feature_map.whiten
    assert make_setup(features="pca").feature_map.num_features == 8
    with pytest.raises(InputDataError, match="features"):
        make_setup(features="clip")


def test_filter_quantile_narrows_the_recommendation_filter():
    import pytest

    from papa_bayes.exceptions import InputDataError

    setup = make_setup(features="pca")
    kw = dict(num_base=32, pool_steps=4, recommend_steps=4, oversample=2.0, scale=0.5, seed=0)
    with pytest.raises(InputDataError, match="filter_quantile"):
        DiffusionCandidates(setup.model, setup.feature_map, setup.guard, filter_quantile=1.5, **kw)
    src = DiffusionCandidates(setup.model, setup.feature_map, setup.guard, filter_quantile=0.7, **kw)
    assert src.config()["filter_quantile"] == 0.7
    gen = torch.Generator().manual_seed(0)
    first = src.candidates(None, 6, exploration=0.25, generator=gen)
    ratings = torch.stack([torch.arange(6), DigitsUser(setup.person).rate(first.images)], -1)
    post = fit(LinearReward(rationality=1.0), PreferenceData(items=first.features, ratings=ratings), method="laplace")
    rec = src.recommend(post, 4, generator=gen)
    assert rec.images.shape == (4, 1, 8, 8)


def test_recommendations_rank_a_mildly_steered_pool():
    import pytest

    from papa_bayes.exceptions import InputDataError

    setup = make_setup(features="pca")
    kw = dict(num_base=32, pool_steps=4, recommend_steps=4, oversample=2.0, scale=1.0, scales=(0.1, 0.5, 1.0), seed=0)
    for bad in (dict(recommend_scale="max"), dict(recommend_scale=-1.0), dict(recommend_target=1.0),
                dict(region_method="median"), dict(min_probability=1.5), dict(recommend_rule_pool=(0, 5)),
                dict(recommend_rule_pool=5), dict(recommend_target="0.5"), dict(min_probability="0.5"),
                dict(oversample=0.5), dict(quantile=1.5), dict(quantile="a"), dict(rescale_every=-1),
                dict(pool_steps=2.5), dict(recommend_steps=0), dict(min_relative_precision=2.0),
                dict(radius_scale=-1.0), dict(kind="median"), dict(window=(0.9, 0.1)), dict(window=(0.1,)),
                dict(scales=()), dict(scales=(-1.0,)), dict(num_base=0), dict(seed=1.5)):
        with pytest.raises(InputDataError, match=next(iter(bad))):
            DiffusionCandidates(setup.model, setup.feature_map, setup.guard, **{**kw, **bad})
    src = DiffusionCandidates(setup.model, setup.feature_map, setup.guard, **kw)
    cfg = src.config()
    assert cfg["min_probability"] is None and cfg["recommend_scale"] == "auto" and cfg["region_method"] == "gaussian"
    assert src.recommend_rule_pool == (128, 4)  # the rule's pools take the pools' steps
    gen = torch.Generator().manual_seed(0)
    first = src.candidates(None, 8, exploration=0.25, generator=gen)
    ratings = torch.stack([torch.arange(8), DigitsUser(setup.person).rate(first.images)], -1)
    post = fit(LinearReward(rationality=1.0), PreferenceData(items=first.features, ratings=ratings), method="laplace")
    rec = src.recommend(post, 4, generator=torch.Generator().manual_seed(1))
    sel = src.last_recommendation_scale
    assert rec.images.shape == (4, 1, 8, 8) and sel is not None
    assert sel.scale in (0.1, 0.5, 1.0) and set(sel.expected_share) <= {0.1, 0.5, 1.0}  # never above the pools'
    assert sel.reached == (sel.expected_share[sel.scale] >= 0.8)
    # the kept samples are the pool's best (on the guard first) by region probability
    fixed = DiffusionCandidates(setup.model, setup.feature_map, setup.guard, recommend_scale=sel.scale, **kw)
    rec_fixed = fixed.recommend(post, 4, generator=torch.Generator().manual_seed(5))
    g = fixed.guidance(post)
    pool = sample(setup.model, 8, num_inference_steps=4, guidance=g.with_scale(sel.scale),
                  generator=torch.Generator().manual_seed(5), progress_bar=False).images
    p_pool = g.objective.region_probability(pool, method="gaussian")
    order = torch.argsort(setup.guard(pool).double() * 2 + p_pool, descending=True)
    assert torch.equal(rec_fixed.images, pool[order[:4]])


def test_resume_continues_the_auto_scale_where_it_stopped(tmp_path, pixel_model):
    from papa_bayes.diffusion import ManifoldGuard, PCAFeatures
    from papa_bayes.session import PreferenceSession
    from papa_bayes.store import PreferenceStore

    class BrighterUser:
        def compare(self, a, b):
            return torch.tensor([bool(a.sum() > b.sum())]), torch.tensor([False])

    from papa_bayes.diffusion import sample

    # The model's own samples as the manifold: its unguided pools are on it, so the rule picks a real scale.
    reference = sample(pixel_model, 40, num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                       progress_bar=False).images
    pca, guard = PCAFeatures.fit(reference, num_features=3), ManifoldGuard(reference)

    def source():  # round 1 chooses the scale; round 2 (not a multiple of rescale_every) keeps it
        return DiffusionCandidates(pixel_model, pca, guard, scale="auto", scales=(0.5, 1.0), rescale_every=3,
                                   num_base=16, pool_steps=2, recommend_steps=2)

    kw = dict(pool_size=4, num_draws=32, seed=1)
    straight_src = source()
    straight = PreferenceSession(tmp_path / "a.db", straight_src, BrighterUser(), **kw)
    straight.run(3, progress_bar=False)
    PreferenceSession(tmp_path / "b.db", source(), BrighterUser(), **kw).run(2, progress_bar=False)
    resumed_src = source()
    resumed = PreferenceSession.resume(tmp_path / "b.db", resumed_src, BrighterUser())
    assert straight_src.state()["chosen_scale"] in (0.5, 1.0)
    assert resumed_src.state() == {"calls": 2, "chosen_scale": straight_src.state()["chosen_scale"]}
    resumed.run(1, progress_bar=False)
    assert resumed_src.state() == straight_src.state()
    a, b = PreferenceStore(tmp_path / "a.db"), PreferenceStore(tmp_path / "b.db")
    last_a, last_b = a.queries()[-1], b.queries()[-1]
    # No scale re-chosen on resume: the session's random stream is the straight run's.
    assert torch.equal(a.query_rng_state(last_a.id), b.query_rng_state(last_b.id))
    # Round 2's pool agrees up to the posterior refitted on resume (vs updated online): about 1e-3.
    assert torch.allclose(a.features(), b.features(), atol=1e-2)
    assert (last_a.item_a, last_a.item_b) == (last_b.item_a, last_b.item_b)


def test_candidates_check_model_features_and_guard_before_the_base_samples(monkeypatch):
    import pytest

    import papa_bayes.diffusion.candidates as candidates_module
    from papa_bayes.exceptions import InputDataError

    setup = make_setup()

    def no_sampling(*args, **kwargs):
        raise AssertionError("base samples were drawn before the arguments were checked")

    monkeypatch.setattr(candidates_module, "sample", no_sampling)
    parts = {"model": setup.model, "feature_map": setup.feature_map, "guard": setup.guard}
    for field, bad in (("model", setup.model.unet),
                       ("feature_map", lambda x: x.flatten(1)),  # was AttributeError: num_features
                       ("guard", setup.guard.reference)):  # was AttributeError at the first steered pool
        with pytest.raises(InputDataError, match=f"^{field}:"):
            DiffusionCandidates(**{**parts, field: bad}, num_base=4)


def test_finetune_checks_its_path_before_distilling(tmp_path, pixel_model, monkeypatch):
    import pytest

    import papa_bayes.diffusion.finetune as finetune_module
    from papa_bayes.diffusion import ManifoldGuard, PCAFeatures
    from papa_bayes.exceptions import InputDataError

    phi = PCAFeatures.fit(torch.randn(16, 1, 8, 8), num_features=2)
    src = DiffusionCandidates(pixel_model, phi, ManifoldGuard(torch.randn(16, 1, 8, 8)), scale=0.5, num_base=4,
                              pool_steps=2)
    (tmp_path / "taken").write_text("x")

    def no_distillation(*args, **kwargs):
        raise AssertionError("distilled before the path was checked")

    monkeypatch.setattr(finetune_module, "distill_guidance", no_distillation)
    post = fit(LinearReward(rationality=1.0), PreferenceData(items=torch.randn(4, 2, dtype=torch.float64),
                                                             comparisons=torch.tensor([[0, 1]])), method="laplace")
    with pytest.raises(InputDataError, match="^path:"):  # was FileExistsError after the distillation
        src.finetune(post, generator=torch.Generator().manual_seed(0), path=tmp_path / "taken")


@pytest.mark.parametrize("option", ["model", "guidance", "stepz"])
def test_finetune_refuses_options_it_sets_itself_or_distillation_lacks(pixel_model, option):
    """finetune(post, generator=g, model=m) was distill_guidance's TypeError "got multiple values for argument
    'model'" (a misspelt option its "unexpected keyword argument"), after the guidance was built."""
    from papa_bayes.diffusion import ManifoldGuard, PCAFeatures
    from papa_bayes.exceptions import InputDataError

    phi = PCAFeatures.fit(torch.randn(16, 1, 8, 8), num_features=2)
    src = DiffusionCandidates(pixel_model, phi, ManifoldGuard(torch.randn(16, 1, 8, 8)), scale=0.5, num_base=4,
                              pool_steps=2)
    post = fit(LinearReward(rationality=1.0), PreferenceData(items=torch.randn(4, 2, dtype=torch.float64),
                                                             comparisons=torch.tensor([[0, 1]])), method="laplace")
    with pytest.raises(InputDataError, match=rf"^options: .*steps.*got \['{option}'\]"):
        src.finetune(post, generator=torch.Generator().manual_seed(0), **{option: pixel_model})


def _pixel_source(pixel_model, **kwargs):
    from papa_bayes.diffusion import ManifoldGuard, PCAFeatures

    reference = sample(pixel_model, 40, num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                       progress_bar=False).images
    options = dict(scale="auto", scales=(0.5, 1.0), num_base=16, pool_steps=2, recommend_steps=2,
                   recommend_rule_pool=(8, 2)) | kwargs
    return DiffusionCandidates(pixel_model, PCAFeatures.fit(reference, num_features=3), ManifoldGuard(reference),
                               **options)


def test_a_recommendation_before_the_first_steered_pool_leaves_the_pools_alone(pixel_model):
    """recommend() (or finetune()) before the first steered pool chose the pools' 'auto' scale on its own
    generator and kept it: the next pool skipped the rule, so the pools and the session's random stream
    depended on whether anyone had looked at recommendations."""
    runs = []
    for look in (False, True):
        src, gen = _pixel_source(pixel_model), torch.Generator().manual_seed(0)
        first = src.candidates(None, 6, exploration=0.5, generator=gen)
        ratings = torch.stack([torch.arange(6), torch.tensor([1, -1, 1, -1, 1, -1])], -1)
        post = fit(LinearReward(rationality=1.0), PreferenceData(items=first.features, ratings=ratings), num_samples=32)
        if look:
            src.recommend(post, 2, generator=torch.Generator().manual_seed(9))
            assert src.state()["chosen_scale"] is None
        pools = [src.candidates(post, 4, exploration=0.5, generator=gen).features for _ in range(2)]
        runs.append((pools, gen.get_state(), src.state()))
    assert all(torch.equal(a, b) for a, b in zip(runs[0][0], runs[1][0]))
    assert torch.equal(runs[0][1], runs[1][1]) and runs[0][2] == runs[1][2]


def test_the_config_holds_every_setting_the_pools_depend_on(tmp_path, pixel_model):
    """A session resumed with another num_base or window was accepted: config() left them out."""
    from papa_bayes.exceptions import InputDataError
    from papa_bayes.session import PreferenceSession
    from papa_bayes.users import CallbackUser

    user = CallbackUser(lambda a, b: 0)
    PreferenceSession(tmp_path / "s.db", _pixel_source(pixel_model, scale=0.5), user, pool_size=4,
                      num_draws=32).run(1, progress_bar=False)
    for change in ({"num_base": 8}, {"window": (0.0, 0.2)}, {"scales": (0.5, 2.0)}, {"rescale_every": 2},
                   {"radius_scale": 2.0}, {"min_relative_precision": 0.5}, {"recommend_rule_pool": (4, 2)}):
        with pytest.raises(InputDataError, match="source: expected the session's source"):
            PreferenceSession.resume(tmp_path / "s.db", _pixel_source(pixel_model, scale=0.5, **change), user)
    PreferenceSession.resume(tmp_path / "s.db", _pixel_source(pixel_model, scale=0.5), user).close()


def test_exploration_is_checked_before_any_sample(pixel_model):
    from papa_bayes.exceptions import InputDataError

    src = _pixel_source(pixel_model, scale=0.5)
    for bad in (1.5, -0.5, float("nan")):
        with pytest.raises(InputDataError, match="exploration"):
            src.candidates(None, 4, exploration=bad, generator=torch.Generator().manual_seed(0))
    assert src.state()["calls"] == 0


def test_a_latent_model_with_a_feature_map_of_diffused_samples(latent_model):
    """The pools, the calibration and the recommendations handed decoded images to a map that reads diffused
    samples: 'expected a tensor of diffused samples n x 4 x h x w, got (3, 1, 8, 8)'."""
    from papa_bayes.diffusion import ManifoldGuard, MidBlockFeatures

    base = sample(latent_model, 8, num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                  progress_bar=False)
    phi = MidBlockFeatures(latent_model, timestep=50, num_features=2).fit(base.samples)
    src = DiffusionCandidates(latent_model, phi, ManifoldGuard(base.images), pool_steps=2, num_base=8, scale=0.5,
                              recommend_scale="pool", recommend_steps=2)
    gen = torch.Generator().manual_seed(1)
    first = src.candidates(None, 4, exploration=0.5, generator=gen)
    assert first.features.shape == (4, 2) and first.images.shape == (4, 1, 8, 8)
    post = fit(LinearReward(rationality=1.0), PreferenceData(items=first.features, comparisons=[[0, 1], [2, 3]]),
               num_samples=16)
    pool = src.candidates(post, 4, exploration=0.5, generator=gen)
    assert int(pool.steered.sum()) == 2 and torch.isfinite(pool.features).all()
    rec = src.recommend(post, 2, generator=gen)
    assert rec.features.shape == (2, 2) and rec.images.shape == (2, 1, 8, 8)


def test_a_latent_models_guidance_does_not_clamp_latents(latent_model, pixel_model):
    """Guidance on latents was clamped to the pixels' [-1, 1]: shifts of latents outside it were cut to nothing."""
    from papa_bayes.diffusion import ManifoldGuard, MidBlockFeatures

    base = sample(latent_model, 8, num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                  progress_bar=False)
    phi = MidBlockFeatures(latent_model, timestep=50, num_features=2).fit(base.samples)
    src = DiffusionCandidates(latent_model, phi, ManifoldGuard(base.images), pool_steps=2, num_base=8, scale=0.5,
                              recommend_steps=2)
    post = fit(LinearReward(rationality=1.0), PreferenceData(items=torch.randn(4, 2, dtype=torch.float64),
                                                             comparisons=[[0, 1], [2, 3]]), num_samples=16)
    g = src.guidance(post)
    assert g.data_range(latent_model) is None and g.scale == 0.5
    # Latents far outside [-1, 1] still move (a clamp kept each value's base prediction there).
    x_t = 3.0 * torch.randn(2, *latent_model.sample_shape, generator=torch.Generator().manual_seed(1))
    g.begin_trajectory(torch.ones(2))
    t = torch.tensor(500)
    guided, _, shift = g.guide(latent_model, x_t, t, latent_model.scheduler.alphas_cumprod[t], step=0, num_steps=2)
    x0 = guided - shift
    outward = ((x0 > 1) & (shift > 0)) | ((x0 < -1) & (shift < 0))  # a clamp to [-1, 1] zeroes these
    assert bool(outward.any())
    assert _pixel_source(pixel_model, scale=0.5).guidance(_pixel_posterior()).data_range(pixel_model) == (-1.0, 1.0)


def _pixel_posterior():
    return fit(LinearReward(rationality=1.0), PreferenceData(items=torch.randn(4, 3, dtype=torch.float64),
                                                             comparisons=[[0, 1], [2, 3]]), num_samples=16)


def test_step_counts_and_num_base_are_checked_under_their_own_names(pixel_model, monkeypatch):
    """A step count the scheduler cannot run failed as "num_inference_steps" when first used (recommend_steps:
    at the first recommendation), and num_base = 1 as "base" in the calibration of the first steered pool."""
    import papa_bayes.diffusion.candidates as candidates_module
    from papa_bayes.diffusion import ManifoldGuard, PCAFeatures
    from papa_bayes.exceptions import InputDataError

    def no_sampling(*args, **kwargs):
        raise AssertionError("base samples were drawn before the options were checked")

    monkeypatch.setattr(candidates_module, "sample", no_sampling)
    reference = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    parts = (pixel_model, PCAFeatures.fit(reference, num_features=2), ManifoldGuard(reference))
    for options, field, detail in (
            ({"pool_steps": 1}, "pool_steps", "upper half"),  # "leading" spacing: one step at t = 0
            ({"pool_steps": 5000}, "pool_steps", "at most num_train_timesteps = 1000"),
            ({"recommend_steps": 1}, "recommend_steps", "upper half"),
            ({"recommend_steps": 5000}, "recommend_steps", "at most num_train_timesteps = 1000"),
            ({"recommend_rule_pool": (8, 5000)}, r"recommend_rule_pool\[1\] \(steps\)", "at most"),
            ({"num_base": 1}, "num_base", "an integer >= 2")):
        with pytest.raises(InputDataError, match=f"^{field}: expected .*{detail}"):
            DiffusionCandidates(*parts, scale=0.5, **{"pool_steps": 2, "recommend_steps": 2, **options})


def test_load_state_refuses_a_chosen_scale_that_is_no_number_as_bad_input(pixel_model):
    """A stored chosen_scale "abc" raised float()'s ValueError (a list: TypeError); "1.5", True, NaN and -1 were
    taken as scales."""
    from papa_bayes.exceptions import InputDataError

    src = _pixel_source(pixel_model, num_base=4)
    src.load_state({"calls": 1, "chosen_scale": 0.5})
    for bad in ("abc", "1.5", [1.0], True, float("nan"), -1.0):
        with pytest.raises(InputDataError, match=r"^state\['chosen_scale'\]: expected a finite number >= 0") as info:
            src.load_state({"calls": 3, "chosen_scale": bad})
        assert info.value.field == "state['chosen_scale']"
    assert src.state() == {"calls": 1, "chosen_scale": 0.5}  # a refused state leaves the source as it was
    src.load_state({"calls": 2, "chosen_scale": None})
    assert src.state() == {"calls": 2, "chosen_scale": None}
