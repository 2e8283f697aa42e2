"""ArviZ hand-off: groups, dims, coordinates, and that ArviZ's own tools run unchanged."""

from __future__ import annotations

import warnings

import arviz as az
import matplotlib.pyplot as plt
import pytest
import torch

from papa_bayes import HierarchicalLinearReward, LinearReward, PreferenceData, fit
from papa_bayes.users import SimulatedUser, random_unit_vector, simulate_comparisons


@pytest.fixture(scope="module")
def logit_data():
    g = torch.Generator().manual_seed(21)
    w = random_unit_vector(4, generator=g) * 2.0
    X = torch.randn(200, 4, generator=g, dtype=torch.float64)
    data = simulate_comparisons(SimulatedUser(w, seed=4), X, 150, generator=g)
    return PreferenceData(items=X, comparisons=data.comparisons, ratings=[[0, 1], [1, -1], [2, 1]])


@pytest.fixture(scope="module")
def idata(logit_data):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        post = fit(LinearReward(), logit_data, method="nuts", num_samples=150, warmup_steps=150, seed=0)
    return post.to_inference_data()


def test_groups_dims_and_coords(idata, logit_data):
    for group in ("posterior", "sample_stats", "log_likelihood", "posterior_predictive", "observed_data",
                  "constant_data"):
        assert hasattr(idata, group), group
    post = idata.posterior
    assert post["w"].dims == ("chain", "draw", "feature")
    assert list(post["feature"].values) == ["x0", "x1", "x2", "x3"]
    assert post.sizes["chain"] == 2 and post.sizes["draw"] == 150
    assert idata.log_likelihood["comparisons"].dims == ("chain", "draw", "comparison")
    assert idata.log_likelihood["comparisons"].shape[-1] == logit_data.num_comparisons
    assert idata.log_likelihood["ratings"].shape[-1] == 3
    # every variable in log_likelihood / posterior_predictive has its observed twin
    for var in idata.log_likelihood.data_vars:
        assert var in idata.observed_data and var in idata.posterior_predictive
    assert "lp" in idata.sample_stats and "diverging" in idata.sample_stats
    assert idata.constant_data["items"].dims == ("item", "feature")
    assert idata.constant_data["compared_items"].shape == (logit_data.num_comparisons, 2)


def test_arviz_tools_run_unchanged(idata, tmp_path):
    summary = az.summary(idata, var_names=["w", "rationality"])
    assert summary["r_hat"].max() < 1.05
    assert float(az.rhat(idata)["w"].max()) < 1.05
    assert float(az.ess(idata)["w"].min()) > 50
    loo = az.loo(idata, var_name="comparisons")
    assert loo.elpd_loo < 0 and loo.n_data_points == idata.log_likelihood.sizes["comparison"]
    az.plot_trace(idata, var_names=["w"])
    az.plot_forest(idata, var_names=["w"])
    plt.savefig(tmp_path / "forest.png")
    plt.close("all")
    assert (tmp_path / "forest.png").stat().st_size > 1000


def test_compare_ranks_true_model_first(logit_data):
    """Logit model on all features vs a misspecified one that sees only one feature."""
    d_strict = PreferenceData(items=logit_data.items, comparisons=logit_data.comparisons)
    d_missing = PreferenceData(items=logit_data.items[:, :1], comparisons=logit_data.comparisons)
    good = fit(LinearReward(), d_strict, method="laplace", seed=0).to_inference_data()
    bad = fit(LinearReward(), d_missing, method="laplace", seed=0).to_inference_data()
    cmp = az.compare({"logit": good, "one_feature": bad})
    assert cmp.index[0] == "logit"


def test_laplace_and_hierarchical_convert(logit_data):
    post = fit(LinearReward(), logit_data, method="laplace", num_samples=64)
    idata = post.to_inference_data()
    assert idata.posterior.sizes["draw"] == 64 and idata.attrs["method"] == "laplace"
    rated = PreferenceData(
        items=logit_data.items, comparisons=logit_data.comparisons[:40],
        comparison_rater=torch.arange(40) % 3,
    )
    h = fit(HierarchicalLinearReward(), rated, method="laplace", num_samples=32).to_inference_data()
    assert h.posterior["w"].dims == ("chain", "draw", "rater", "feature")
    assert list(h.posterior["rater"].values) == [0, 1, 2]
    from papa_bayes import InputDataError
    from papa_bayes.diagnostics.arviz import data_coords, to_inference_data

    for bad in (-1, 1.5, "0"):
        with pytest.raises(InputDataError, match="seed"):
            to_inference_data(post, seed=bad)
    with pytest.raises(InputDataError, match="post"):
        to_inference_data("not a posterior")
    with pytest.raises(InputDataError, match="data"):
        data_coords("not data")


def _hand_made_idata():
    """3 comparisons, 6 draws: some replicate every answer (a degenerate sample), some do not."""
    from papa_bayes.diagnostics.arviz import build_inference_data

    data = PreferenceData(items=torch.randn(4, 2, dtype=torch.float64), comparisons=[[0, 1], [2, 3], [1, 2]])
    replicated = torch.ones(1, 6, 3, dtype=torch.float64)
    replicated[0, ::2, 1] = 0.0
    return build_inference_data(
        posterior={"utility": torch.randn(1, 6, 4, dtype=torch.float64)}, data=data,
        observed={"comparisons": torch.ones(3, dtype=torch.float64)},
        log_likelihood={"comparisons": torch.full((1, 6, 3), -0.5, dtype=torch.float64)},
        posterior_predictive={"comparisons": replicated}, dims={"utility": ["item"], "lengthscale": ["feature"]},
        constant={"outputscale": torch.tensor(2.0, dtype=torch.float64),
                  "lengthscale": torch.ones(2, dtype=torch.float64)},
    )


def test_binary_outcomes_are_discrete_so_plot_ppc_runs():
    """0/1 answers stored as floats made az.plot_ppc draw KDEs and fail (ValueError) on draws that replicate every
    answer."""
    idata = _hand_made_idata()
    assert idata.observed_data["comparisons"].dtype.kind == "i"
    assert idata.posterior_predictive["comparisons"].dtype.kind == "i"
    az.plot_ppc(idata)
    plt.close("all")


def test_scalar_constants_have_no_invented_dims():
    """A point-estimated scalar (e.g. the GP's outputscale) is 0-d in constant_data, not `outputscale_dim_0`."""
    idata = _hand_made_idata()
    assert idata.constant_data["outputscale"].dims == () and float(idata.constant_data["outputscale"]) == 2.0
    assert idata.constant_data["lengthscale"].dims == ("feature",)
    assert not [d for d in idata.constant_data.dims if str(d).endswith("_dim_0")]


def test_module_converter_accepts_every_posterior(logit_data):
    """diagnostics.to_inference_data is the one hand-off to ArviZ: GP posteriors convert through it too."""
    from papa_bayes.diagnostics import to_inference_data
    from papa_bayes.models import PreferenceGP

    data = PreferenceData(items=logit_data.items[:20],
                          comparisons=logit_data.comparisons[:0].new_tensor([[0, 1], [2, 3], [4, 5], [1, 6]]))
    post = fit(PreferenceGP(num_inducing=8), data, num_samples=8, seed=0)
    idata = to_inference_data(post, seed=1)
    assert idata.attrs["method"] == "elbo" and idata.posterior["utility"].shape == (1, 8, 20)
    again = post.to_inference_data(seed=1).posterior_predictive["comparisons"]
    assert (idata.posterior_predictive["comparisons"] == again).all()
    from papa_bayes import InputDataError
    from papa_bayes.checks import check_int

    for bad in (-1, 1.5, "0"):  # checked by GPPosterior.to_inference_data, which the converter hands over to
        with pytest.raises(InputDataError) as err:
            to_inference_data(post, seed=bad)
        with pytest.raises(InputDataError) as expected:
            check_int("seed", bad, minimum=0, maximum=2**64 - 1)
        assert str(err.value) == str(expected.value)


def test_calibration_reads_lists_in_double_precision_and_names_both_shapes():
    """Python lists went through float32 (ECE 0.1000000127 for an exact 0.1); `s x n` probabilities with
    `n` outcomes were flattened first, so the error named a shape the user never passed."""
    import numpy as np

    from papa_bayes import InputDataError
    from papa_bayes.diagnostics import expected_calibration_error

    assert expected_calibration_error([0.1, 0.9], [0, 1]) == expected_calibration_error(np.array([0.1, 0.9]),
                                                                                        np.array([0, 1]))
    assert expected_calibration_error([0.1, 0.9], [0, 1]) == pytest.approx(0.1, abs=1e-15)
    with pytest.raises(InputDataError, match=r"\(4, 3\)"):
        expected_calibration_error(torch.rand(4, 3), torch.tensor([0, 1, 1]))


@pytest.mark.parametrize("ties", [False, True])
def test_posterior_predictive_check_of_comparisons_does_not_flag_a_model_that_fits(ties):
    """Comparisons went to ArviZ winner first: every observed answer read 'first' (mean 1.000 against a
    replicated 0.655, Bayesian p-value 0) for data simulated from the model itself. By item index, the observed
    and replicated answers are alike, and each row's answer names its winner."""
    from papa_bayes.users import SimulatedUser, simulate_comparisons

    g = torch.Generator().manual_seed(0)
    X = torch.randn(40, 3, generator=g, dtype=torch.float64)
    data = simulate_comparisons(SimulatedUser([1.0, -0.5, 0.2], tie_margin=1.0 if ties else 0.0, seed=0), X, 300,
                                generator=g)
    idata = fit(LinearReward(ties=ties), data, num_samples=400).to_inference_data()
    obs, rep = idata.observed_data["comparisons"].values, idata.posterior_predictive["comparisons"].values
    pairs = idata.constant_data["compared_items"].values
    assert (pairs[:, 0] < pairs[:, 1]).all()
    first = 1 if not ties else 0
    won_first = data.comparisons[:, 0].numpy() == pairs[:, 0]
    strict = ~data.ties.numpy()
    assert ((obs == first) == (won_first & strict)).all()  # the answer names the winner of each row
    for code in ((0, 1) if not ties else (0, 1, 2)):
        assert abs(float((obs == code).mean()) - float((rep == code).mean())) < 0.06
    p_value = float((rep.mean(axis=-1) >= obs.mean()).mean())
    assert 0.05 < p_value < 0.95


def test_seeds_past_torchs_range_raise_our_error(logit_data):
    """seed=2**64 reached torch.manual_seed, which raised a bare ValueError ("Overflow when unpacking long long")."""
    from papa_bayes import InputDataError
    from papa_bayes.diagnostics.arviz import to_inference_data

    post = fit(LinearReward(), logit_data, method="laplace", num_samples=8, seed=0)
    for bad in (2**64, 2**70):
        with pytest.raises(InputDataError, match=r"seed: expected an integer in \[0, 18446744073709551615\]") as err:
            to_inference_data(post, seed=bad)
        assert err.value.field == "seed" and err.value.actual == bad
    first = to_inference_data(post, seed=2**64 - 1)  # the largest seed torch takes still works, reproducibly
    again = post.to_inference_data(seed=2**64 - 1)
    assert (first.posterior_predictive["comparisons"] == again.posterior_predictive["comparisons"]).all()
