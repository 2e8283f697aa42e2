"""Fitting the GP preference models: ELBO and NUTS (PreferenceGP); PairwiseGP's Laplace fit is in
:mod:`papa_bayes.inference.gp_fit_pairwise`; the updates of all three dispatch here.

Every fit returns a :class:`~papa_bayes.inference.gp_posterior.GPPosterior` whose
draws are pathwise posterior functions (:mod:`papa_bayes.inference.gp_paths`).
Every random number comes from generators seeded by the ``seed`` argument; BoTorch
and Pyro code that reads the global RNGs runs inside :func:`seeded`, which restores
them afterwards.
"""

from __future__ import annotations

import copy
import time
import warnings
from typing import Any

import torch
from torch import Tensor

from papa_bayes.checks import caller_stacklevel, check_bool, check_float, check_int
from papa_bayes.data import PreferenceData
from papa_bayes.exceptions import InferenceError, InputDataError, ModelError, PapaBayesWarning
from papa_bayes.inference.fit import NUTS_NUM_CHAINS, check_fit_options, named_options
from papa_bayes.inference.gp_elbo import TrainingData, train_elbo
from papa_bayes.inference.gp_nuts import fit_nuts_draws, seeded
from papa_bayes.inference.gp_paths import PathwiseDraws, draw_frequencies
from papa_bayes.inference.gp_posterior import GPPosterior
from papa_bayes.models.gp import PreferenceGP, PreferenceLikelihood, VariationalPreferenceGP
from papa_bayes.models.gp_kernels import (
    DTYPE,
    FeatureStandardizer,
    exact_distances,
    kernel_kind,
    select_inducing_points,
)

__all__ = ["fit_preference_gp", "update_gp_posterior", "seeded"]


# PreferenceGP's NUTS defaults, through fit() and PreferenceGP.fit alike: draws and warm-up steps per chain
# (warm-up of an update: half). The chains are fit's (NUTS_NUM_CHAINS).
NUTS_NUM_SAMPLES = 200
NUTS_WARMUP_STEPS = 200


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def _check_method(model: Any, method: str) -> None:
    if method not in model.METHODS:
        raise InputDataError("method", f"one of {model.METHODS} for {type(model).__name__}", repr(method))


def _warn_ignored(model: Any, method: str, options: tuple[tuple[str, Any, Any], ...], uses: str) -> None:
    """Warn about options set away from their defaults that ``method`` does not use (as ``fit`` does for Pyro models).

    Args:
        options: ``(name, value, default)`` of each option ``method`` does not use;
            those whose value is not their default are named (a None default: any value).
    """
    ignored = [name for name, value, default in options
               if (value is not None if default is None else value != default)]
    if ignored:
        warnings.warn(f"{type(model).__name__} (method={method!r}) ignores {', '.join(ignored)}; {uses}.",
                      PapaBayesWarning, stacklevel=caller_stacklevel())


def _random_features(kind: str, d: int, num_draws: int, num_features: int, seed: int) -> dict[str, Tensor]:
    gen = _generator(seed + 2)
    omega, phase = draw_frequencies(num_features, d, kind, generator=gen)
    weights = torch.randn(num_draws, num_features, generator=gen, dtype=DTYPE)
    return {"omega": omega, "phase": phase, "weights": weights}


def _base_noise(old: Tensor | None, num_draws: int, M: int, seed: int, match: Tensor | None = None) -> Tensor:
    """`s x M` standard normals for the anchors, keeping the columns of anchors seen before.

    Common random numbers across updates: a draw changes only as much as the
    posterior does. ``match`` maps each anchor to its column in ``old`` (-1: new);
    without it the old anchors are the leading ones.
    """
    if old is None:
        return torch.randn(num_draws, M, generator=_generator(seed + 1), dtype=DTYPE)
    if match is None:
        match = torch.arange(M)
        match[match >= old.shape[1]] = -1
    out = old[:, match.clamp_min(0)]
    new = match < 0
    if bool(new.any()):
        out[:, new] = torch.randn(num_draws, int(new.sum()), generator=_generator(seed + 1 + 7919 * M), dtype=DTYPE)
    return out


# =============================================================== PreferenceGP: ELBO
def _hyper_draws(gp: VariationalPreferenceGP, lik: PreferenceLikelihood, s: int) -> dict[str, Tensor]:
    """Point estimates as `1 x s` (chain x draw) "draws"."""
    kern = gp.covar_module
    out = {
        "lengthscale": kern.base_kernel.lengthscale.detach().reshape(1, 1, -1).expand(1, s, -1).clone(),
        "outputscale": kern.outputscale.detach().reshape(1, 1).expand(1, s).clone(),
    }
    if lik.ties:
        out["tie_strength"] = lik.tie_strength.detach().reshape(1, 1).expand(1, s).clone()
    if lik.ratings:
        out["threshold"] = lik.threshold.detach().reshape(1, 1).expand(1, s).clone()
    return out


def _variational_posterior(
    spec: PreferenceGP, data: PreferenceData, gp: VariationalPreferenceGP, lik: PreferenceLikelihood, transform: Any, *,
    seed: int, num_samples: int, num_features: int, rff: dict[str, Tensor] | None, noise: Tensor | None,
    options: dict[str, Any], diagnostics: dict[str, Any], previous: PathwiseDraws | None = None,
) -> GPPosterior:
    gp.eval()
    with torch.no_grad():
        L = gp.inducing_cholesky()
        Z = gp.inducing_points.detach().clone()
        M, d = Z.shape
        eps = _base_noise(noise, num_samples, M, seed)
        v = gp.variational_mean.detach() + eps @ gp.variational_chol.detach().T  # s x M whitened draws
        kern = gp.covar_module
        ls = kern.base_kernel.lengthscale.detach().reshape(1, 1, d)
        os_ = kern.outputscale.detach().reshape(1)
        rff = rff if rff is not None else _random_features(kernel_kind(kern), d, num_samples, num_features, seed)
        draws = PathwiseDraws.from_anchor_draws(
            Z, v @ L.T, L.unsqueeze(0), lengthscale=ls, outputscale=os_, kind=kernel_kind(kern), **rff,
            anchor_mean=(L @ gp.variational_mean.detach()).unsqueeze(0), previous=previous,
        )
        hyper_lp = float(gp.hyper_log_prior() + lik.log_prior())
    state = {"gp": gp, "likelihood": lik, "rff": rff, "noise": eps, "seed": seed, "hyper_log_prior": hyper_lp}
    diagnostics["num_inducing"] = M
    return GPPosterior(
        model=spec, data=data, method="elbo", link=spec.link, transform=transform, draws=draws,
        hyperparameters=_hyper_draws(gp, lik, num_samples), state=state, options=options, diagnostics=diagnostics,
    )


@named_options
def fit_preference_gp(
    spec: PreferenceGP,
    data: PreferenceData,
    *,
    method: str = "elbo",
    seed: int = 0,
    num_samples: int | None = None,
    num_features: int = 1024,
    num_steps: int | None = None,
    batch_size: int | None = 1024,
    learning_rate: float = 0.02,
    natural_lr: float = 0.3,
    optimizer: str = "auto",
    warmup_steps: int | None = None,
    num_chains: int = NUTS_NUM_CHAINS,
    progress_bar: bool | None = None,
) -> GPPosterior:
    """Fit a :class:`PreferenceGP`.

    Args:
        spec: the model.
        data: comparisons (ties need ``spec.ties``) and/or ratings of one person.
        method: ``"elbo"`` (default) or ``"nuts"``.
        seed: seeds inducing-point choice, minibatches, posterior draws, NUTS.
        num_samples: posterior draws (ELBO: default 512; NUTS: per chain, default 200, at least 4).
        num_features: random Fourier features of the prior part of each draw.
        num_steps: optimizer steps (full-batch L-BFGS iterations, default 500;
            minibatch steps, default 300 with natural gradients, 1000 with
            ``optimizer="adam"``).
        batch_size: comparisons + ratings per minibatch; data that fit in one batch
            (or ``batch_size=None``) train full-batch with L-BFGS.
        learning_rate: Adam's, for the hyperparameters (decayed tenfold over the run).
        natural_lr: step size of the natural-gradient steps on ``q`` (minibatches).
        optimizer: minibatch optimizer: ``"auto"``/``"ngd"`` (natural gradients on
            ``q``, Adam on hyperparameters) or ``"adam"`` (Adam on everything; an
            online ``update`` still takes natural-gradient steps on ``q``, as Adam's
            few steps would barely move it).
        warmup_steps: NUTS warm-up per chain (default 200; 100 for an update).
        num_chains: NUTS chains, run one after another (default 2, as :func:`~papa_bayes.inference.fit`'s).
        progress_bar: NUTS progress bar (None, the default: on, as in Pyro's ``MCMC``); ELBO:
            True shows a tqdm bar over the optimizer's steps (a minute or more with 10^4
            answers and ``num_inducing`` in the hundreds); None (default) and False show none,
            as ``fit``'s SVI.

    Returns:
        A :class:`GPPosterior`.
    """
    _check_method(spec, method)
    # Python numbers from here on, as fit's: a small NumPy seed wraps in the streams' arithmetic (seed + 1).
    seed, num_samples, num_features, num_steps, learning_rate, warmup_steps, num_chains = check_fit_options(
        seed=seed, num_samples=num_samples, num_features=num_features, num_steps=num_steps,
        learning_rate=learning_rate, warmup_steps=warmup_steps, num_chains=num_chains)
    if batch_size is not None:
        batch_size = check_int("batch_size", batch_size)
    natural_lr = check_float("natural_lr", natural_lr, strict=True)
    check_bool("progress_bar", progress_bar, optional=True)
    if optimizer not in ("auto", "ngd", "adam"):
        raise InputDataError("optimizer", "'auto', 'ngd' or 'adam'", optimizer)
    spec.check_data(data)
    if method == "nuts":
        _warn_ignored(spec, method, (
            ("num_steps", num_steps, None), ("batch_size", batch_size, 1024), ("learning_rate", learning_rate, 0.02),
            ("natural_lr", natural_lr, 0.3), ("optimizer", optimizer, "auto"),
        ), "they are ELBO options")
    else:
        _warn_ignored(spec, method, (
            ("warmup_steps", warmup_steps, None), ("num_chains", num_chains, NUTS_NUM_CHAINS),
        ), "they are NUTS options")
    start = time.perf_counter()
    if method == "nuts":
        return _fit_nuts(
            spec, data, seed=seed, num_samples=num_samples or NUTS_NUM_SAMPLES, warmup_steps=warmup_steps,
            num_chains=num_chains, num_features=num_features, progress_bar=progress_bar is not False, warm=None,
            start=start,
        )
    num_samples = num_samples or 512
    gp, lik, transform = spec.build(data, seed=seed)
    td = TrainingData(data, transform(data.items))
    info = train_elbo(gp, lik, td, num_steps=num_steps, batch_size=batch_size, learning_rate=learning_rate, seed=seed,
                  natural_lr=natural_lr, optimizer=optimizer, progress_bar=bool(progress_bar))
    options = dict(num_samples=num_samples, num_features=num_features, batch_size=batch_size, learning_rate=learning_rate,
                   natural_lr=natural_lr, optimizer=optimizer)
    post = _variational_posterior(
        spec, data, gp, lik, transform, seed=seed, num_samples=num_samples, num_features=num_features,
        rff=None, noise=None, options=options, diagnostics=info,
    )
    post.diagnostics["fit_seconds"] = time.perf_counter() - start
    return post


def _update_variational(post: GPPosterior, data: PreferenceData, *, refit_hyperparameters: bool, num_steps: int | None) -> GPPosterior:
    start = time.perf_counter()
    spec: PreferenceGP = post.model
    spec.check_data(data)
    old, opts = post.data, post.options
    gp: VariationalPreferenceGP = copy.deepcopy(post.state["gp"])
    X = post.transform(data.items)
    # New distinct items become inducing points while there is room (q is preserved exactly).
    room = spec.num_inducing - gp.inducing_points.shape[0]
    new_idx = torch.unique(torch.cat([data.comparisons[old.num_comparisons:].reshape(-1), data.ratings[old.num_ratings:, 0]]))
    if room > 0 and new_idx.numel():
        cand = X[new_idx]
        dist = exact_distances(cand, gp.inducing_points.detach()).min(-1).values
        cand = cand[dist > 1e-3]
        if cand.shape[0]:
            extra = select_inducing_points(cand, room, generator=_generator(post.state["seed"] + data.num_observations))
            extra = extra[exact_distances(extra, gp.inducing_points.detach()).min(-1).values > 1e-3]
            if extra.shape[0]:
                gp = gp.extended(extra)
    lik_new = spec.make_likelihood(data)
    lik_old: PreferenceLikelihood = post.state["likelihood"]
    lik_new.load_state_dict(lik_old.state_dict(), strict=False)
    new_params = {n for n, _ in lik_new.named_parameters()} - {n for n, _ in lik_old.named_parameters()}
    if lik_new.ties and data.num_comparisons and not old.num_comparisons:  # at its prior until the first comparisons
        new_params.add("raw_tie_strength")
    learn_inducing = gp.variational_strategy.inducing_points.requires_grad
    if not refit_hyperparameters:  # hyperparameters stay fixed between full fits; new likelihood parameters are fitted
        gp.covar_module.requires_grad_(False)
        gp.variational_strategy.inducing_points.requires_grad_(False)
        for name, p in lik_new.named_parameters():
            p.requires_grad_(name in new_params)
    td = TrainingData(data, X)
    info = train_elbo(
        gp, lik_new, td, num_steps=num_steps, batch_size=opts["batch_size"], learning_rate=opts["learning_rate"] / 4,
        seed=post.state["seed"], new_rows=(old.num_comparisons, old.num_ratings), natural_lr=opts["natural_lr"],
        optimizer=opts["optimizer"],
    )
    gp.covar_module.requires_grad_(True)
    gp.variational_strategy.inducing_points.requires_grad_(learn_inducing)
    lik_new.requires_grad_(True)
    new = _variational_posterior(
        spec, data, gp, lik_new, post.transform, seed=post.state["seed"], num_samples=opts["num_samples"],
        num_features=opts["num_features"], rff=post.state["rff"], noise=post.state["noise"], options=opts, diagnostics=info,
        previous=post.draws,
    )
    new.diagnostics["update_seconds"] = time.perf_counter() - start
    return new


# ============================================================== PreferenceGP: NUTS
def _fit_nuts(
    spec: PreferenceGP, data: PreferenceData, *, seed: int, num_samples: int, warmup_steps: int | None, num_chains: int,
    num_features: int, progress_bar: bool, warm: GPPosterior | None, start: float,
) -> GPPosterior:
    transform = warm.transform if warm is not None else FeatureStandardizer.fit(data.items, standardize=spec.standardize)
    result = fit_nuts_draws(
        spec, data, transform, seed=seed, num_samples=num_samples,
        warmup_steps=warmup_steps if warmup_steps is not None else NUTS_WARMUP_STEPS // (2 if warm is not None else 1),
        num_chains=num_chains, progress_bar=progress_bar, init=None if warm is None else warm.state.get("nuts_last"),
    )
    s = num_chains * num_samples
    d = data.num_features
    kind = spec.kernel
    rff = warm.state["rff"] if warm is not None else _random_features(kind, d, s, num_features, seed)
    with torch.no_grad():
        hp = result["hyper"]
        ls = hp["lengthscale"].reshape(s, 1, d)
        os_ = hp["outputscale"].reshape(s)
        draws = PathwiseDraws.from_anchor_draws(
            result["anchors"], result["anchor_draws"], result["anchor_chol"], lengthscale=ls, outputscale=os_, kind=kind, **rff,
        )
        draws.chunk_size = max(1, int(2**24 // (s * max(num_features, result["anchors"].shape[0]))))
    state = {"rff": rff, "seed": seed, "nuts_last": result["last"], "hyper_log_prior": 0.0}
    options = dict(num_samples=num_samples, num_features=num_features, num_chains=num_chains, warmup_steps=warmup_steps)
    diagnostics = dict(result["diagnostics"])
    diagnostics["fit_seconds"] = time.perf_counter() - start
    post = GPPosterior(
        model=spec, data=data, method="nuts", link=spec.link, transform=transform, draws=draws,
        hyperparameters=hp, state=state, options=options, diagnostics=diagnostics,
        sample_stats={"lp": result["lp"], "diverging": result["diverging"]},
    )
    if diagnostics.get("r_hat_max", 1.0) > 1.05 or diagnostics.get("divergences", 0):
        warnings.warn(
            f"NUTS (GP hyperparameters): max split R-hat {diagnostics.get('r_hat_max', float('nan')):.4f},"
            f" {diagnostics.get('divergences', 0)} divergences; consider more warm-up or samples.",
            PapaBayesWarning, stacklevel=caller_stacklevel(),
        )
    return post


def _check_finite(post: GPPosterior) -> None:
    if not bool(torch.isfinite(post.draws.alpha).all()):
        raise InferenceError(f"{type(post.model).__name__}: non-finite posterior draws.")


# ================================================================= dispatch
def update_gp_posterior(
    post: GPPosterior, data: PreferenceData, *, refit_hyperparameters: bool = False, num_steps: int | None = None
) -> GPPosterior:
    """Warm-started posterior on the extended ``data`` (see :meth:`GPPosterior.update`).

    Args:
        refit_hyperparameters: ELBO only: also refine the kernel hyperparameters and
            inducing points (slower; by default they stay fixed between full fits).
        num_steps: ELBO optimizer steps (default: up to 20 full-batch natural-gradient
            steps, 60 L-BFGS iterations when new likelihood parameters appear or
            hyperparameters are refitted, or 30 minibatch steps).
    """
    if not isinstance(post, GPPosterior):
        raise InputDataError("post", "a GPPosterior", type(post).__name__)
    if not isinstance(data, PreferenceData):
        raise InputDataError("data", "the fitted data with rows appended (PreferenceData.append)", type(data).__name__)
    mismatch = data.extension_mismatch(post.data)
    if mismatch is not None:
        raise InputDataError("data", "the fitted data with rows appended (PreferenceData.append)", f"{data!r}: {mismatch}")
    refit_hyperparameters = check_bool("refit_hyperparameters", refit_hyperparameters)
    if num_steps is not None:
        check_int("num_steps", num_steps)
    if post.method != "elbo":
        _warn_ignored(post.model, post.method, (
            ("refit_hyperparameters", refit_hyperparameters, False), ("num_steps", num_steps, None),
        ), "they are options of ELBO updates")
    if post.method == "elbo":
        return _update_variational(post, data, refit_hyperparameters=refit_hyperparameters, num_steps=num_steps)
    if post.method == "laplace":
        from papa_bayes.inference.gp_fit_pairwise import update_pairwise  # it imports this module's helpers

        return update_pairwise(post, data)
    if post.method == "nuts":
        start = time.perf_counter()
        opts = post.options
        post.model.check_data(data)
        new = _fit_nuts(
            post.model, data, seed=post.state["seed"] + data.num_observations, num_samples=opts["num_samples"],
            warmup_steps=None, num_chains=opts["num_chains"], num_features=opts["num_features"], progress_bar=False,
            warm=post, start=start,
        )
        new.diagnostics["update_seconds"] = time.perf_counter() - start
        return new
    raise ModelError(f"Unknown GP posterior method {post.method!r}.")  # pragma: no cover

