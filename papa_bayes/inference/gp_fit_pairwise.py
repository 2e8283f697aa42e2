"""Fitting BoTorch's PairwiseGP (:class:`~papa_bayes.models.PairwiseGPReward`): Laplace.

Hyperparameters by type-II maximum likelihood with BoTorch's ``fit_gpytorch_mll``;
the posterior draws are pathwise functions around the MAP utilities, in noise units
(BoTorch's probit utilities divided by ``sqrt(2)``). Shared helpers (seeding, option
warnings, random features) live in :mod:`papa_bayes.inference.gp_fit`.
"""

from __future__ import annotations

import copy
import time
import warnings
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from papa_bayes.checks import caller_stacklevel, check_bool
from papa_bayes.data import PreferenceData
from papa_bayes.exceptions import PapaBayesWarning
from papa_bayes.inference.fit import check_fit_options, named_options
from papa_bayes.inference.gp_fit import _base_noise, _check_finite, _check_method, _random_features, _warn_ignored
from papa_bayes.inference.gp_nuts import seeded
from papa_bayes.inference.gp_paths import PathwiseDraws, match_rows
from papa_bayes.inference.gp_posterior import GPPosterior
from papa_bayes.models.gp_kernels import DTYPE, kernel_kind
from papa_bayes.models.gp_pairwise import PairwiseGPReward, set_train_data

__all__ = ["fit_pairwise_gp", "update_pairwise"]


def _laplace_posterior(
    spec: PairwiseGPReward, data: PreferenceData, gp: Any, transform: Any, *, seed: int, num_samples: int,
    num_features: int, rff: dict[str, Tensor] | None, options: dict[str, Any], diagnostics: dict[str, Any],
    previous: GPPosterior | None = None,
) -> GPPosterior:
    with torch.no_grad():
        Z = gp.datapoints.detach().clone()  # consolidated, standardized
        M, d = Z.shape
        f_map = gp.utility.detach()
        W = gp.likelihood_hess.detach()
        L = gp.covar_chol.detach()
        # Laplace: Cov = (K^-1 + W)^-1 = L (I + L^T W L)^-1 L^T; draw u = f_map + L R^-T eps with R R^T = I + L^T W L.
        B = torch.eye(M, dtype=DTYPE) + L.T @ W @ L
        R = torch.linalg.cholesky(0.5 * (B + B.T))
        if previous is None:
            eps = _base_noise(None, num_samples, M, seed)
        else:
            eps = _base_noise(previous.state["noise"], num_samples, M, seed, match=match_rows(Z, previous.draws.anchors))
        u = f_map + (L @ torch.linalg.solve_triangular(R.T, eps.T, upper=True)).T
        # BoTorch's f in noise units (probit: f / sqrt(2)): the whole process, prior and conditional, scales.
        unit = 1.0 / spec.utility_scale
        u, f_map, L = unit * u, unit * f_map, unit * L
        kern = gp.covar_module
        ls = kern.base_kernel.lengthscale.detach().reshape(1, 1, d)
        os_ = kern.outputscale.detach().reshape(1) * unit**2
        kind = kernel_kind(kern)
        rff = rff if rff is not None else _random_features(kind, d, num_samples, num_features, seed)
        draws = PathwiseDraws.from_anchor_draws(
            Z, u, L.unsqueeze(0), lengthscale=ls, outputscale=os_, kind=kind, **rff, anchor_mean=f_map.unsqueeze(0),
            previous=None if previous is None else previous.draws,
        )
        hyper = {
            "lengthscale": ls.reshape(1, 1, d).expand(1, num_samples, d).clone(),
            "outputscale": os_.reshape(1, 1).expand(1, num_samples).clone(),
        }
        hyper_lp = sum(float(p.log_prob(c(m)).sum()) for _, m, p, c, _ in kern.named_priors())
    state = {"gp": gp, "rff": rff, "noise": eps, "seed": seed, "hyper_log_prior": hyper_lp}
    diagnostics["num_anchors"] = M
    return GPPosterior(
        model=spec, data=data, method="laplace", link=spec.link, transform=transform, draws=draws,
        hyperparameters=hyper, state=state, options=options, diagnostics=diagnostics,
    )


#: More items than this (BoTorch's consolidated datapoints) and a fit shows its bar by default:
#: measured 0.7 s among 100 items, 5-6 s among 500 (1,000 comparisons, d=4, one thread).
BAR_MIN_ITEMS = 200


def _advance(bar: Any, result: Any) -> None:
    """One L-BFGS-B iteration done (BoTorch's optimizer callback): the bar shows the negative evidence."""
    bar.update(1)
    if getattr(result, "fval", None) is not None:
        bar.set_postfix(loss=f"{float(result.fval):.4g}", refresh=False)


@named_options
def fit_pairwise_gp(
    spec: PairwiseGPReward,
    data: PreferenceData,
    *,
    method: str = "laplace",
    seed: int = 0,
    num_samples: int | None = None,
    num_features: int = 1024,
    optimize_hyperparameters: bool = True,
    progress_bar: bool | None = None,
    num_steps: int | None = None,
    warmup_steps: int | None = None,
    num_chains: int | None = None,
    learning_rate: float | None = None,
) -> GPPosterior:
    """Fit BoTorch's PairwiseGP: Laplace posterior, hyperparameters by type-II ML (``fit_gpytorch_mll``).

    Args:
        spec: the model.
        data: strict comparisons of one person (no ties, no ratings).
        method: ``"laplace"``.
        seed: seeds BoTorch's fitting retries and the posterior draws.
        num_samples: posterior draws (default 512).
        num_features: random Fourier features per draw.
        optimize_hyperparameters: False keeps the kernel's initial values.
        progress_bar: a tqdm bar over the optimizer's iterations (the evidence after each).
            None (default): shown when the data hold more than :data:`BAR_MIN_ITEMS` items
            (a fit of seconds).
        num_steps, warmup_steps, num_chains, learning_rate: accepted from
            :func:`~papa_bayes.inference.fit` and unused (BoTorch's optimizer runs to
            convergence; no sampling): a value other than None warns.
    """
    from botorch.exceptions.errors import ModelFittingError
    from botorch.fit import fit_gpytorch_mll
    from botorch.models.pairwise_gp import PairwiseLaplaceMarginalLogLikelihood

    _check_method(spec, method)
    # Python ints from here on, as fit's: a small NumPy seed wraps in the streams' arithmetic (seed + 1).
    seed, num_samples, num_features = check_fit_options(seed=seed, num_samples=num_samples, num_features=num_features)
    optimize_hyperparameters = check_bool("optimize_hyperparameters", optimize_hyperparameters)
    progress_bar = check_bool("progress_bar", progress_bar, optional=True)
    _warn_ignored(spec, method, (
        ("num_steps", num_steps, None), ("warmup_steps", warmup_steps, None), ("num_chains", num_chains, None),
        ("learning_rate", learning_rate, None),
    ), "the Laplace fit has neither optimizer steps nor chains")
    start = time.perf_counter()
    num_samples = num_samples or 512
    gp, transform, used = spec.build(data)
    if progress_bar is None:
        progress_bar = gp.datapoints.shape[-2] > BAR_MIN_ITEMS
    info: dict[str, Any] = {"fit_failed": False}
    if optimize_hyperparameters:
        mll = PairwiseLaplaceMarginalLogLikelihood(gp.likelihood, gp)
        before = copy.deepcopy(gp.covar_module.state_dict())
        with seeded(seed), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                with tqdm(desc="PairwiseGP hyperparameters", unit="it", disable=not progress_bar, leave=False) as bar:
                    fit_gpytorch_mll(mll, optimizer_kwargs={"callback": lambda _, result: _advance(bar, result)})
            except (ModelFittingError, RuntimeError, ValueError) as err:
                gp.covar_module.load_state_dict(before)
                info["fit_failed"] = True
                info["fit_error"] = str(err)
        info["fit_warnings"] = sorted({f"{w.category.__name__}: {w.message}" for w in caught})
        if info["fit_failed"]:
            warnings.warn(
                f"PairwiseGP hyperparameter fit failed ({info['fit_error']}); kept the initial values.",
                PapaBayesWarning, stacklevel=caller_stacklevel(),
            )
    gp.eval()
    # Re-solve for the MAP at the final hyperparameters (the optimizer's last evaluation may differ); without
    # gradients, so that the model's MAP buffers stay graph leaves (see update_pairwise).
    with torch.no_grad():
        x0 = gp.utility.detach() if gp.utility is not None else None
        set_train_data(gp, gp.unconsolidated_datapoints, gp.unconsolidated_comparisons,
                       x0=(lambda _: x0) if x0 is not None else None)
    options = dict(num_samples=num_samples, num_features=num_features)
    post = _laplace_posterior(spec, data, gp, transform, seed=seed, num_samples=num_samples, num_features=num_features,
                              rff=None, options=options, diagnostics=info)
    post.state["used"] = used
    post.diagnostics["fit_seconds"] = time.perf_counter() - start
    _check_finite(post)
    return post


def update_pairwise(post: GPPosterior, data: PreferenceData) -> GPPosterior:
    """The Laplace posterior on the extended ``data``: MAP utilities re-solved from the old mean."""
    start = time.perf_counter()
    spec: PairwiseGPReward = post.model
    spec.check_data(data)
    gp = copy.deepcopy(post.state["gp"])
    used, comps = torch.unique(data.comparisons, return_inverse=True)
    X = post.transform(data.items[used])
    comps = spec.informative_comparisons(X, comps.reshape(-1, 2))
    # Warm start at the old posterior mean, in BoTorch's units. Without gradients: BoTorch's PairwiseGP.__deepcopy__
    # leaves `__deepcopy__ = None` on the copy, so the next update copies this model with the default protocol,
    # which refuses buffers with autograd history (RuntimeError: only graph leaves support deepcopy).
    with torch.no_grad():
        set_train_data(gp, X, comps, x0=lambda Z: post.draws.mean(Z) * spec.utility_scale)
    gp.eval()
    opts = post.options
    new = _laplace_posterior(spec, data, gp, post.transform, seed=post.state["seed"], num_samples=opts["num_samples"],
                             num_features=opts["num_features"], rff=post.state["rff"], options=opts, diagnostics={},
                             previous=post)
    new.state["used"] = used
    new.diagnostics["update_seconds"] = time.perf_counter() - start
    _check_finite(new)
    return new
