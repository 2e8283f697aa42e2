"""``fit(model, data, method=...)``: NUTS (reference), SVI and Laplace for Pyro reward models."""

from __future__ import annotations

import difflib
import functools
import inspect
import time
import warnings
from typing import Any, Callable, Iterable, TypeVar

import pyro
import pyro.infer
import pyro.infer.autoguide
import pyro.optim
import torch
from torch import Tensor

from papa_bayes.inference.mcmc_util import chain_results, check_nuts_samples
from papa_bayes.checks import caller_stacklevel, check_bool, check_float, check_int
from papa_bayes.data import PreferenceData, check_preference_data
from papa_bayes.exceptions import InferenceError, InputDataError, ModelError, PapaBayesError, PapaBayesWarning
from papa_bayes.inference.laplace import integrated_laplace, laplace_draws, laplace_mode, mixture_moments
from papa_bayes.inference.nested_laplace import nested_draws, nested_laplace
from papa_bayes.inference.posterior import RewardPosterior
from papa_bayes.inference.pyro_posterior import PyroPosterior
from papa_bayes.inference import svi
from papa_bayes.inference.refine import importance_log_weights, resample_move
from papa_bayes.inference.unconstrained import UnconstrainedSpace
from papa_bayes.models.base import PyroRewardModel

__all__ = ["fit", "prior_posterior", "METHODS"]

METHODS = ("nuts", "svi", "laplace")

# NUTS chains unless asked otherwise, for Pyro models and PreferenceGP alike: fit(PreferenceGP(), data,
# method="nuts") ran 2 chains and PreferenceGP().fit(data, method="nuts") 1.
NUTS_NUM_CHAINS = 2

_Function = TypeVar("_Function", bound=Callable[..., Any])

#: Laplace draws whose moments give the centredness of SVI's guide and NUTS's coordinates (papa_bayes.inference.svi).
DECENTRING_DRAWS = 1000


def fit(
    model: Any,
    data: PreferenceData,
    *,
    method: str | None = None,
    num_samples: int | None = None,
    warmup_steps: int | None = None,
    num_chains: int = NUTS_NUM_CHAINS,
    num_steps: int | None = None,
    learning_rate: float = 0.02,
    seed: int = 0,
    progress_bar: bool | None = None,
    refine_steps: int = 0,
    integrate_scale: bool = False,
    **model_options: Any,
) -> RewardPosterior:
    """Fit a reward model to preference data.

    Args:
        model: a :class:`~papa_bayes.models.PyroRewardModel` (e.g. ``LinearReward()``)
            or a GP model exposing ``fit(data, ...)``.
        data: the comparisons and/or ratings.
        method: ``"nuts"`` (reference; R-hat, ESS and divergences in
            ``posterior.diagnostics``; for ``LinearReward`` with a learned rationality it runs
            on the weights decentred from it where the data are weak, a funnel under a wide
            ``rationality_prior``, and reports the model's sites), ``"svi"`` (full-rank Gaussian guide; for
            ``LinearReward`` with a learned rationality over the log rationality and
            the weights partly decentred from it, see :mod:`papa_bayes.inference.svi`) or
            ``"laplace"`` (Newton; fast, for the online loop). Default (None):
            ``"laplace"`` for Pyro models, the model's own default for GP models
            (``PreferenceGP``: ``"elbo"`` or ``"nuts"``; ``PairwiseGPReward``:
            ``"laplace"``).
        num_samples: draws per chain (NUTS, default 500, at least 4) or in total
            (SVI, Laplace; default 1000). GP models: their own defaults (``PreferenceGP``:
            200 per NUTS chain, 512 ELBO draws; ``PairwiseGPReward``: 512).
        warmup_steps: NUTS warm-up per chain (default 300, 150 for an update; started at the Laplace mode;
            ``PreferenceGP``: 200, 100 for an update).
        num_chains: NUTS chains, run one after another (default 2, for GP models as for Pyro models).
        num_steps: SVI steps (default 1000 from the Laplace start; 200 for an update).
        learning_rate: SVI Adam learning rate.
        seed: an integer in [0, 2**32 - 1]; seeds every random draw of the fit (the
            global RNG is left untouched).
        progress_bar: show Pyro's / tqdm progress bars. None (default): on for NUTS
            (minutes on large data; as Pyro's ``MCMC`` does), off for Laplace and SVI.
            Pyro hides its NUTS bar whenever the ``CI`` environment variable is set.
        refine_steps: Laplace only: move the Gaussian draws toward the exact
            posterior (resample-move: twice ``num_samples`` Laplace draws resampled by
            their importance weights, then this many random-walk Metropolis steps
            each; 20 is a good value). With few answers Laplace's mode-centred
            Gaussian is short of a logistic posterior (12 answers, d=6: its mean 25%
            short, sds up to 19%); refined draws match the exact posterior within a
            few %. Where Laplace is far off (30 answers at d=16; a hierarchical
            model with few raters) the importance weights collapse onto a few
            draws and it warns (``refine_ess`` below
            :data:`~papa_bayes.inference.refine.REFINE_MIN_ESS`, or fewer than
            :data:`~papa_bayes.inference.refine.REFINE_MIN_DRAWS` effective draws):
            use NUTS there.
            Cost: about 5x a plain update (46 ms against 8 median at m=200, d=8,
            256 draws, one thread; ``benchmarks/results/bench_queries.md``).
            Kept by :meth:`~RewardPosterior.update`; ``posterior.diagnostics`` gets
            ``refine_ess`` and ``refine_acceptance``. 0 (default): plain Laplace.
        integrate_scale: Laplace only, for models with a ``population_scale`` site
            (:class:`~papa_bayes.models.HierarchicalLinearReward`): integrate the
            population scale out by a nested Laplace approximation (INLA; see
            :func:`~papa_bayes.inference.nested_laplace.nested_laplace`) instead of
            taking the joint mode, which overstates it with few raters (5 raters at
            d=3: posterior means 0.86/0.81/0.70 against NUTS's 0.43/0.27/0.18; nested
            0.42/0.27/0.20). Cost: a few hundred conditional Newton fits in batches:
            5 raters x 30 answers, one thread, 0.25-0.4 s a fit or update at d=3 and
            0.6-1.3 s at d=8 (plain Laplace 0.03-0.09 s). Kept by
            :meth:`~RewardPosterior.update`; ``posterior.diagnostics`` gets
            ``scale_ess`` (the effective share of the scale's proposals). Not with
            ``refine_steps``. False (default): the joint Laplace fit.
        **model_options: further options of a GP model's own fit (e.g. ``batch_size`` of
            :func:`~papa_bayes.inference.gp_fit.fit_preference_gp`); none for Pyro models.

    Returns:
        A :class:`RewardPosterior`.

    Raises:
        InputDataError: an option out of range, or one neither ``fit`` nor the model's fit takes
            (a misspelt name: the error lists the options there are).

    Example:
        NUTS, the reference (short chains to keep the example fast; the defaults
        are 500 draws after 300 warm-up steps per chain):

        >>> import arviz as az
        >>> import torch
        >>> from papa_bayes import LinearReward, fit
        >>> from papa_bayes.users import SimulatedUser, simulate_comparisons
        >>> gen = torch.Generator().manual_seed(0)
        >>> items = torch.randn(20, 2, generator=gen, dtype=torch.float64)
        >>> data = simulate_comparisons(SimulatedUser([2.0, 0.0]), items, 40, generator=gen)
        >>> post = fit(LinearReward(), data, method="nuts", num_samples=100, warmup_steps=100,
        ...            seed=0, progress_bar=False)
        >>> post.num_chains, post.num_draws  # draws of both chains together
        (2, 200)
        >>> idata = post.to_inference_data()
        >>> sorted(idata.groups())
        ['constant_data', 'log_likelihood', 'observed_data', 'posterior', 'posterior_predictive', 'sample_stats']
        >>> az.summary(idata, var_names=["w"]).index.tolist()
        ['w[x0]', 'w[x1]']
    """
    check_preference_data(data)
    data.require_observations()
    progress_bar = check_bool("progress_bar", progress_bar, optional=True)
    # Python ints from here on: a small NumPy seed wraps in the streams' arithmetic (np.int16(30000) + 7919 * m).
    num_samples, warmup_steps, num_chains, num_steps, learning_rate, seed = check_fit_options(
        num_samples=num_samples, warmup_steps=warmup_steps, num_chains=num_chains, num_steps=num_steps,
        learning_rate=learning_rate, seed=seed)
    if not isinstance(model, PyroRewardModel):
        if refine_steps:
            raise InputDataError("refine_steps", "0 for GP models (refinement is for Pyro models' Laplace draws)",
                                 refine_steps)
        if integrate_scale:
            raise InputDataError("integrate_scale", "False for GP models (it is for HierarchicalLinearReward)",
                                 integrate_scale)
        # GP models (PreferenceGP, PairwiseGPReward) fit themselves and validate their
        # own methods (model.METHODS); method=None picks the model's default.
        if hasattr(model, "fit"):
            gp_options = dict(num_samples=num_samples, warmup_steps=warmup_steps, num_steps=num_steps)
            gp_options = {k: v for k, v in gp_options.items() if v is not None}
            # Set away from fit's defaults (or NUTS's chains): passed on, and the model's fit warns
            # where its method does not use them, as below for Pyro models.
            if method == "nuts" or num_chains != NUTS_NUM_CHAINS:
                gp_options["num_chains"] = num_chains
            if learning_rate != 0.02:
                gp_options["learning_rate"] = learning_rate
            return model.fit(data, method=method, seed=seed, progress_bar=progress_bar, **gp_options, **model_options)
        raise InputDataError("model", "a PyroRewardModel or a model with .fit(data)", type(model).__name__)
    if model_options:
        own = [name for name, p in inspect.signature(fit).parameters.items() if p.kind is p.KEYWORD_ONLY]
        check_option_names(model_options, own, where=f"only fit's own options for {type(model).__name__}",
                           note="further options go to GP models' own fit", model=model)
    method = "laplace" if method is None else method
    if method not in METHODS:
        raise InputDataError("method", f"one of {METHODS}", method)
    refine_steps = _check_refine_steps(refine_steps, method)
    integrate_scale = _check_integrate_scale(integrate_scale, method, refine_steps, model, data)
    if method == "nuts" and num_samples is not None:
        check_nuts_samples(num_samples)
    if progress_bar is None:
        progress_bar = method == "nuts"
    ignored = [name for name, used_by, value, default in (
        ("warmup_steps", "nuts", warmup_steps, None), ("num_chains", "nuts", num_chains, NUTS_NUM_CHAINS),
        ("num_steps", "svi", num_steps, None), ("learning_rate", "svi", learning_rate, 0.02),
    ) if method != used_by and value != default]
    if ignored:  # a Pyro user's num_chains=4 for Laplace would otherwise vanish without a word
        warnings.warn(f"fit(method={method!r}) ignores {', '.join(ignored)} (NUTS: warmup_steps, num_chains;"
                      " SVI: num_steps, learning_rate).", PapaBayesWarning, stacklevel=caller_stacklevel())
    options = dict(
        num_samples=num_samples, warmup_steps=warmup_steps, num_chains=num_chains, num_steps=num_steps,
        learning_rate=learning_rate, seed=seed, progress_bar=progress_bar, refine_steps=refine_steps,
    )
    if integrate_scale:  # only then: the options of every other fit stay as they were
        options["integrate_scale"] = True
    start = time.perf_counter()
    post = {"laplace": _fit_laplace, "nuts": _fit_nuts, "svi": _fit_svi}[method](model, data, options, None)
    post.diagnostics["fit_seconds"] = time.perf_counter() - start
    return post


def prior_posterior(
    model: PyroRewardModel, data: PreferenceData, *, num_samples: int = 256, seed: int = 0, refine_steps: int = 0
) -> PyroPosterior:
    """The prior as a Laplace posterior over ``data``'s items, before any answer.

    What an online loop starts from: its :meth:`~RewardPosterior.update` fits the
    first answers. Exact for Gaussian priors (e.g. ``LinearReward(rationality=1.0)``);
    the Laplace approximation of the prior otherwise. ``refine_steps`` as in
    :func:`fit` (kept by the updates).

    Raises:
        InputDataError: ``data`` holds answers (fit them with :func:`fit`).
    """
    if not isinstance(model, PyroRewardModel):
        raise InputDataError("model", "a PyroRewardModel", type(model).__name__)
    check_preference_data(data)
    refine_steps = _check_refine_steps(refine_steps, "laplace")
    num_samples, seed = check_fit_options(num_samples=num_samples, seed=seed)
    if data.num_observations:  # conditioning on them would return a posterior under the prior's name
        raise InputDataError("data", "items without answers (the prior is before any answer; fit() uses them)",
                             f"{data.num_comparisons} comparisons and {data.num_ratings} ratings")
    # fit's defaults; not fit itself, which refuses data without answers.
    opts = dict(num_samples=num_samples, warmup_steps=None, num_chains=NUTS_NUM_CHAINS, num_steps=None,
                learning_rate=0.02, seed=seed, progress_bar=False, refine_steps=refine_steps)
    return _fit_laplace(model, data, opts, None)


def check_fit_options(**options: Any) -> tuple[Any, ...]:
    """Numeric fitting options, any of them: counts are integers in range (None: the
    default, except for ``num_chains`` and ``seed``; NumPy integers and 0-d integer
    tensors count, as in :func:`~papa_bayes.checks.check_int`), ``learning_rate`` positive.

    Example:
        >>> import numpy as np
        >>> from papa_bayes.inference.fit import check_fit_options
        >>> check_fit_options(num_samples=np.int16(200), seed=3)
        (200, 3)

    Returns:
        The options in the order they were passed, as Python numbers (counts ``int``,
        ``learning_rate`` ``float``; None kept): NumPy integers would wrap in the
        arithmetic that derives seeds and sizes from them.
    """
    checked: dict[str, Any] = {}
    lowest = {"num_samples": 1, "warmup_steps": 0, "num_chains": 1, "num_steps": 1, "seed": 0, "num_features": 1}
    # Fits derive their streams' seeds from ``seed`` (e.g. seed * 1000 + chain); 32 bits keeps them within torch's.
    highest = {"seed": 2**32 - 1}
    for name, value in options.items():
        if name == "learning_rate":
            checked[name] = check_float(name, value, strict=True)
            continue
        required = name in ("num_chains", "seed")
        if value is None and not required:
            checked[name] = None
            continue
        low, high = lowest[name], highest.get(name)
        bound = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"
        # as check_int reads integers: NumPy's and 0-d integer tensors count, bools do not
        checked[name] = check_int(name, value, minimum=low, maximum=high,
                                  expected=bound + ("" if required else " or None (the default)"))
    return tuple(checked.values())


def check_option_names(options: dict[str, Any], accepted: Iterable[str], *, where: str, note: str = "",
                       model: Any = None) -> None:
    """InputDataError naming the ``options`` that are none of ``accepted`` (and the options that are).

    Args:
        options: the keyword arguments given.
        accepted: the names taken.
        where: whose options they are (``"PreferenceGP's fit options"``).
        note: added to the expectation, in parentheses.
        model: a model whose constructor's arguments, given to a fit, are named as such.

    Raises:
        InputDataError: field the unknown names, expected the accepted ones (and the nearest name of
            each unknown one), actual the value (a dict of them where several are unknown).
    """
    accepted = list(accepted)
    unknown = [name for name in options if name not in accepted]
    if not unknown:
        return
    # A model's own argument given to its fit (num_inducing=...), or a misspelt one, is named as the model's.
    init = [] if model is None else [
        name for name, p in inspect.signature(type(model).__init__).parameters.items()
        if name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    hints = []
    for name in unknown:
        if name in init:
            hints.append(f"{name} is an argument of {type(model).__name__}({name}=...)")
            continue
        for close in difflib.get_close_matches(name, accepted + init, n=1):
            hints.append(f"{name}: did you mean {close}?" if close in accepted
                         else f"{name}: did you mean {type(model).__name__}({close}=...)?")
    extra = "; ".join(([note] if note else []) + hints)
    expected = f"{where}, one of {accepted}" + (f" ({extra})" if extra else "")
    actual = options[unknown[0]] if len(unknown) == 1 else {name: options[name] for name in unknown}
    raise InputDataError(", ".join(unknown), expected, actual)


def named_options(func: _Function) -> _Function:
    """Decorator: a call of ``func(model, data, **options)`` with an option ``func`` does not take raises
    InputDataError listing those it takes (not Python's bare TypeError, which names an internal function).

    For the GP models' fits, which :func:`fit` hands its further options to.
    """
    parameters = inspect.signature(func).parameters
    accepted = [name for name, p in parameters.items() if p.kind is p.KEYWORD_ONLY]

    @functools.wraps(func)
    def checked(*args: Any, **options: Any) -> Any:
        model = args[0] if args else None
        where = f"an option of {type(model).__name__}'s fit" if model is not None else f"an option of {func.__name__}"
        check_option_names({k: v for k, v in options.items() if k not in parameters}, accepted, where=where,
                           model=model)
        return func(*args, **options)

    return checked  # type: ignore[return-value]


def _check_refine_steps(refine_steps: Any, method: str) -> int:
    refine_steps = check_int("refine_steps", refine_steps, minimum=0, expected="a non-negative integer")
    if refine_steps and method != "laplace":
        raise InputDataError("refine_steps", "0 unless method='laplace' (NUTS and SVI are not Gaussian draws)",
                             refine_steps)
    return refine_steps


def _check_integrate_scale(integrate_scale: Any, method: str, refine_steps: int, model: PyroRewardModel,
                           data: PreferenceData) -> bool:
    integrate_scale = check_bool("integrate_scale", integrate_scale)
    if not integrate_scale:
        return False
    if method != "laplace":
        raise InputDataError("integrate_scale", "False unless method='laplace' (NUTS and SVI sample the scale)",
                             integrate_scale)
    if refine_steps:
        raise InputDataError("refine_steps", "0 with integrate_scale=True (the nested fit weights its own draws)",
                             refine_steps)
    if "population_scale" not in model.priors(data):
        raise InputDataError("integrate_scale", "False for a model without a population_scale site "
                             "(e.g. HierarchicalLinearReward has one)", integrate_scale)
    return True


def update_posterior(post: PyroPosterior, data: PreferenceData) -> PyroPosterior:
    """Warm-started refit on extended data (used by ``PyroPosterior.update``)."""
    start = time.perf_counter()
    fitter = {"laplace": _fit_laplace, "nuts": _fit_nuts, "svi": _fit_svi}[post.method]
    new = fitter(post.model, data, dict(post.options), post)
    new.diagnostics["fit_seconds"] = time.perf_counter() - start
    return new


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def _mode_values(post: PyroPosterior | None) -> dict[str, Tensor] | None:
    if post is None:
        return None
    if "mode" in post.state:
        return post.state["mode"]
    return {k: v.median(0).values if v.dim() else v for k, v in post.params.items()}


def _fit_laplace(model: PyroRewardModel, data: PreferenceData, opts: dict[str, Any],
                 warm: PyroPosterior | None) -> PyroPosterior:
    if opts.get("integrate_scale"):
        return _fit_nested_laplace(model, data, opts, warm)
    if "rationality" in model.priors(data):
        return _fit_integrated_laplace(model, data, opts, warm)
    space = UnconstrainedSpace(model.priors(data))
    init = space.initial(_mode_values(warm)) if warm is not None else None
    mode, H, space, info = laplace_mode(model, data, init=init)
    s = opts["num_samples"] or 1000
    refine = opts.get("refine_steps") or 0
    # Each update draws with a different stream, so repeated updates don't share noise.
    gen = _generator(opts["seed"] + 7919 * data.num_observations)
    params, raw = laplace_draws(mode, H, space, 2 * s if refine else s, generator=gen)
    if refine:
        logw = importance_log_weights(model, data, space, raw, mode.expand_as(raw), H)
        cov = torch.cholesky_inverse(torch.linalg.cholesky(H))
        raw, more = resample_move(model, data, space, raw, logw, s, cov, steps=refine, generator=gen)
        params, _ = space.unpack(raw)
        info = {**info, **more}
    mode_params, _ = space.unpack(mode.unsqueeze(0))
    state = {"mode": {k: v[0] for k, v in mode_params.items()}, "theta": mode, "hessian": H}
    return _draws_posterior(model, data, params, opts, state, info)


def _fit_integrated_laplace(model: PyroRewardModel, data: PreferenceData, opts: dict[str, Any],
                            warm: PyroPosterior | None) -> PyroPosterior:
    """Laplace with a learned rationality integrated on a grid (see :class:`IntegratedLaplace`).

    ``state`` keeps the grid fit (warm start of the next update) and, for NUTS/SVI
    initialisation, the mixture's mean and covariance in the joint unconstrained space.
    """
    grid_warm = warm.state.get("integrated") if warm is not None else None
    fitted = integrated_laplace(model, data, "rationality", warm=grid_warm,
                                init=None if warm is None or grid_warm is not None else _mode_values(warm))
    s = opts["num_samples"] or 1000
    refine = opts.get("refine_steps") or 0
    gen = _generator(opts["seed"] + 7919 * data.num_observations)
    k, raw, eta = fitted.component_draws(2 * s if refine else s, generator=gen)
    params = fitted.params(k, raw, eta)
    space = UnconstrainedSpace(model.priors(data))
    mean, cov = mixture_moments(fitted, space)
    cov = cov + 1e-9 * torch.eye(space.dim, dtype=torch.float64)
    diagnostics = dict(fitted.info)
    if refine:
        logw = fitted.importance_log_weights(model, data, k, raw, eta)
        theta, more = resample_move(model, data, space, space.pack(params), logw, s, cov, steps=refine, generator=gen)
        params, _ = space.unpack(theta)
        diagnostics.update(more)
    mean_params, _ = space.unpack(mean.unsqueeze(0))
    state = {"mode": {k: v[0] for k, v in mean_params.items()}, "theta": mean,
             "hessian": torch.cholesky_inverse(torch.linalg.cholesky(cov)), "integrated": fitted}
    return _draws_posterior(model, data, params, opts, state, diagnostics)


def _fit_nested_laplace(model: PyroRewardModel, data: PreferenceData, opts: dict[str, Any],
                        warm: PyroPosterior | None) -> PyroPosterior:
    """Laplace with ``population_scale`` integrated out (see :func:`nested_laplace`).

    A first fit starts from the joint Laplace mode; ``state["nested"]`` keeps the
    fit (the warm start of the next update). A learned rationality stays among the
    conditional sites.
    """
    previous = warm.state.get("nested") if warm is not None else None
    init = None
    if previous is None:
        joint = UnconstrainedSpace(model.priors(data))
        mode, _, joint, _ = laplace_mode(model, data, init=None if warm is None else joint.initial(_mode_values(warm)))
        init = {k: v[0] for k, v in joint.unpack(mode.unsqueeze(0))[0].items()}
    fitted = nested_laplace(model, data, "population_scale", warm=previous, init=init)
    gen = _generator(opts["seed"] + 7919 * data.num_observations)
    params, diagnostics = nested_draws(model, data, fitted, opts["num_samples"] or 1000, generator=gen)
    mode, _ = fitted.space.unpack(fitted.conditional_mode.unsqueeze(0))
    mode = {k: v[0] for k, v in mode.items()}
    mode[fitted.site] = fitted.center.exp()
    diagnostics["outer_steps"] = fitted.info["outer_steps"]
    return _draws_posterior(model, data, params, opts, {"mode": mode, "nested": fitted}, diagnostics)


def _draws_posterior(model: PyroRewardModel, data: PreferenceData, params: dict[str, Tensor], opts: dict[str, Any],
                     state: dict[str, Any], diagnostics: dict[str, Any]) -> PyroPosterior:
    """Laplace (or refined) draws, `S` per site, as a one-chain posterior with their log joint (no sampler:
    no ``diverging``)."""
    try:
        lp = model.log_joint(params, data)
    except (ValueError, RuntimeError) as err:  # e.g. a user's Normal(0, s) at a draw s = 0
        if isinstance(err, PapaBayesError):
            raise
        raise InferenceError(
            f"{type(model).__name__}.log_joint failed at the Laplace draws ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}). The Gaussian "
            "around the mode put draws where the model is undefined, as when the mode sits at the edge of a site's "
            "support (a scale at 0: a funnel; see PyroRewardModel's docstring); reparameterise the model or use "
            "method='nuts'.") from err
    return PyroPosterior(model, data, {k: v.unsqueeze(0) for k, v in params.items()}, method="laplace",
                         sample_stats={"lp": lp.unsqueeze(0)}, state=state, options=opts, diagnostics=diagnostics)


def _fit_nuts(model: PyroRewardModel, data: PreferenceData, opts: dict[str, Any],
              warm: PyroPosterior | None) -> PyroPosterior:
    from pyro.infer import MCMC, NUTS
    from pyro.infer.autoguide.initialization import init_to_value

    # LinearReward with a learned rationality: NUTS runs on scaled_w partly decentred from the rationality, as SVI's
    # guide (papa_bayes.inference.svi): centred, a wide rationality prior and weak data make a funnel whose neck
    # NUTS misses. The draws are mapped back to the model's sites.
    priors = model.priors(data)
    site = svi.decentred_site(model, priors)
    # Start every chain at the posterior mode (Laplace), jittered, so warm-up is short.
    laplace = _fit_laplace(model, data, {**opts, "num_samples": max(opts["num_chains"], 2) if site is None
                                         else max(opts["num_chains"], DECENTRING_DRAWS)}, warm)
    num_samples = opts["num_samples"] or 500
    warmup = opts["warmup_steps"] if opts["warmup_steps"] is not None else (150 if warm is not None else 300)
    starts, nuts_model, lam = laplace.params, model, None
    if site is not None:
        lam = _nuts_centredness(model, data, laplace.params)
        nuts_model = svi.decentred_model(model, site, lam)
        starts = svi.to_guide_values(model, data, laplace.params, lam)
    chains: list[dict[str, Tensor]] = []
    diverging, accept = [], []
    for c in range(opts["num_chains"]):
        init = {k: v[c] for k, v in starts.items()}
        kernel = NUTS(nuts_model, init_strategy=init_to_value(values=init), target_accept_prob=0.85)
        mcmc = MCMC(kernel, num_samples=num_samples, warmup_steps=warmup, disable_progbar=not opts["progress_bar"])
        with torch.random.fork_rng():
            torch.manual_seed(opts["seed"] * 1000 + c + 13 * data.num_observations)
            mcmc.run(data)
        draws, div, rate = chain_results(mcmc, num_samples)
        if site is not None:
            draws = svi.from_guide_values(model, data, draws, lam)
            draws = {k: draws[k] for k in priors}  # the model's sites in their order
        chains.append(draws)
        diverging.append(div)
        accept.append(rate)
    samples = {k: torch.stack([ch[k] for ch in chains]) for k in chains[0]}
    flat = {k: v.reshape(-1, *v.shape[2:]) for k, v in samples.items()}
    lp = model.log_joint(flat, data).reshape(opts["num_chains"], num_samples)
    stats = {"lp": lp, "diverging": torch.stack(diverging)}
    post = PyroPosterior(
        model, data, samples, method="nuts", sample_stats=stats, options=opts,
        diagnostics={"acceptance_rate": accept, "warmup_steps": warmup,
                     **({} if lam is None else {"centredness": lam.tolist()})},
    )
    _nuts_diagnostics(post)
    return post


#: Weights whose centredness (:func:`papa_bayes.inference.svi.centredness`) is below this run fully decentred under
#: NUTS (see :func:`_nuts_centredness`).
NUTS_DECENTRE_BELOW = 0.5


def _nuts_centredness(model: PyroRewardModel, data: PreferenceData, params: dict[str, Tensor]) -> Tensor:
    """`d` centredness of NUTS's ``scaled_w`` from Laplace's draws `s x ...`: SVI's (the share of ``z``'s prior
    variance the data removed), 0 where that is below :data:`NUTS_DECENTRE_BELOW`.

    Measured (2 chains of 300 + 300, d=2-3, 30-40 answers; reference 2 x 2000 draws): where the data are weak
    under a wide prior, SVI's partial centring (0.29 and 0) left NUTS 22 divergences against 0 fully decentred,
    the depth of the funnel being what matters there; where they are informative (0.54-0.94) it matches the
    centred run and the reference at the default prior with equal or higher ESS.
    """
    lam = svi.centredness(model, data, params)
    return torch.where(lam < NUTS_DECENTRE_BELOW, torch.zeros_like(lam), lam)


def _nuts_diagnostics(post: PyroPosterior) -> None:
    from pyro.ops.stats import effective_sample_size, split_gelman_rubin

    rhat, ess = {}, {}
    for k, v in post.samples.items():
        rhat[k] = float(split_gelman_rubin(v).max())
        ess[k] = float(effective_sample_size(v).min())
    post.diagnostics.update(
        r_hat_max=max(rhat.values()), ess_min=min(ess.values()), r_hat=rhat, ess=ess,
        divergences=int(post.sample_stats["diverging"].sum()),
    )
    if post.diagnostics["r_hat_max"] > 1.01 or post.diagnostics["divergences"]:
        warnings.warn(
            f"NUTS: max split R-hat {post.diagnostics['r_hat_max']:.4f} (Pyro's; az.summary shows the"
            f" rank-normalized one, often larger), {post.diagnostics['divergences']} divergences;"
            " consider more warm-up or samples.",
            PapaBayesWarning, stacklevel=caller_stacklevel(),
        )


def _guide_order(guide: Any, space: UnconstrainedSpace) -> Tensor:
    """`D` indices: coordinate ``i`` of the autoguide's latent vector is coordinate ``order[i]`` of ``space``.

    The guide packs the sites in the order its prototype trace samples them; ``space`` in ``priors()``'s.
    """
    start, offsets = 0, {}
    for name in space.names:
        offsets[name] = start
        start += space.sizes[name]
    parts = []
    for name, site in guide.prototype_trace.iter_stochastic_nodes():
        size = int(guide._unconstrained_shapes[name].numel())
        if name not in offsets or size != space.sizes[name]:
            raise ModelError(f"SVI's guide has a site {name!r} of {size} unconstrained values; "
                             f"priors(data) has {space.sizes.get(name, 'no such site')}.")
        parts.append(torch.arange(offsets[name], offsets[name] + size))
    order = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)
    if order.numel() != space.dim:
        raise ModelError(f"SVI's guide has {order.numel()} latent values, priors(data) {space.dim}.")
    return order


def _fit_svi(model: PyroRewardModel, data: PreferenceData, opts: dict[str, Any],
             warm: PyroPosterior | None) -> PyroPosterior:
    from pyro.infer import SVI, Trace_ELBO
    from pyro.infer.autoguide import AutoMultivariateNormal
    from pyro.infer.autoguide.initialization import init_to_value

    priors = model.priors(data)
    # LinearReward with a learned rationality: the guide is Gaussian in (log rationality, scaled_w standardized by
    # its prior given the rationality), not in (log rationality, scaled_w), a funnel under a wide rationality prior
    # (see papa_bayes.inference.svi). It starts at the moments of Laplace's draws there.
    site = svi.decentred_site(model, priors)
    laplace = _fit_laplace(model, data, {**opts, "num_samples": 2 if site is None else DECENTRING_DRAWS}, warm)
    space = UnconstrainedSpace(priors if site is None else svi.guide_priors(priors, site))
    if site is None:
        guide_model, init, mean = model, laplace.state["mode"], None
        cov = torch.cholesky_inverse(torch.linalg.cholesky(laplace.state["hessian"]))
    else:
        lam = svi.centredness(model, data, laplace.params)
        guide_model = svi.decentred_model(model, site, lam)
        theta = space.pack(svi.to_guide_values(model, data, laplace.params, lam))
        mean, cov = theta.mean(0), torch.cov(theta.T).reshape(space.dim, space.dim)
        cov = cov + 1e-9 * torch.eye(space.dim, dtype=torch.float64)
        init = {k: v[0] for k, v in space.unpack(mean.unsqueeze(0))[0].items()}
    steps = opts["num_steps"] or (1000 if warm is None else 200)
    # A private param store: fits never see each other's guide parameters.
    with torch.random.fork_rng(), pyro.get_param_store().scope():
        torch.manual_seed(opts["seed"] + 31 * data.num_observations)
        guide = AutoMultivariateNormal(guide_model, init_loc_fn=init_to_value(values=init), init_scale=0.05)
        guide(data)  # build parameters
        # The guide's latent vector lays its sites out in the model's sampling order: map it to the Laplace
        # space's coordinates by site name, whatever order priors() lists them in.
        order = _guide_order(guide, space)
        # Start the covariance at the Laplace one (the decentred guide: at its draws' moments there): the ELBO then
        # only refines it.
        with torch.no_grad():
            if mean is not None:
                guide.loc.copy_(mean[order])
            L = torch.linalg.cholesky(cov[order][:, order])
            scale = L.diagonal()
            guide.scale = scale
            guide.scale_tril = L / scale.unsqueeze(-1)
        optim = pyro.optim.ClippedAdam({"lr": opts["learning_rate"] / 4, "lrd": 0.1 ** (1 / steps)})
        # max_plate_nesting as Pyro would guess it (and log at INFO on every fit); particles go left of it.
        elbo = SVI(guide_model, guide, optim, Trace_ELBO(num_particles=8, vectorize_particles=True,
                                                        max_plate_nesting=1))
        losses = []
        from tqdm.auto import trange

        for _ in trange(steps, disable=not opts["progress_bar"], desc="SVI"):
            try:
                losses.append(elbo.step(data))
            except ValueError as err:  # Pyro's words for a model that does not broadcast over the particles
                if isinstance(err, PapaBayesError) or losses:
                    raise
                if "to satisfy the constraint" in str(err):  # a value out of support, not a shape: say so
                    raise InferenceError(
                        f"{type(model).__name__}(data) failed at SVI's first step: a draw of its guide left a "
                        f"site's support (Pyro said: {str(err).splitlines()[0]}). The guide starts at the Laplace "
                        "fit; a mode at the edge of a site's support (a scale at 0: a funnel; see PyroRewardModel's "
                        "docstring) gives it a degenerate start: reparameterise the model or use method='nuts'."
                    ) from err
                raise ModelError(
                    f"{type(model).__name__}(data) failed under SVI's vectorized particles (Trace_ELBO(num_particles=8, "
                    "vectorize_particles=True, max_plate_nesting=1)): a global site's draw carries a particle dim "
                    "left of the plates (a scalar `P x 1`, a `d` vector `P x 1 x d`), so broadcast over it (e.g. "
                    f"utilities as `(x * w).sum(-1)`; see PyroRewardModel's docstring). Pyro said: {err}") from err
        s = opts["num_samples"] or 1000
        with torch.no_grad():
            q = guide.get_posterior()
            # A stream per data size, as Laplace draws: successive updates do not share their noise.
            gen = _generator(opts["seed"] + 1 + 7919 * data.num_observations)
            eps = torch.randn(s, q.loc.shape[-1], generator=gen, dtype=torch.float64)
            raw = (q.loc + eps @ q.scale_tril.T)[:, torch.argsort(order)]  # back to the space's coordinates
    params, _ = space.unpack(raw.detach())
    if site is not None:
        params = svi.from_guide_values(model, data, params, lam)
    lp = model.log_joint(params, data)
    samples = {k: v.unsqueeze(0) for k, v in params.items()}
    return PyroPosterior(
        model, data, samples, method="svi",
        sample_stats={"lp": lp.unsqueeze(0)},  # no sampler, no divergences
        state={"mode": laplace.state["mode"]}, options=opts,
        diagnostics={"elbo": [-v for v in losses], "num_steps": steps,
                     **({} if site is None else {"centredness": lam.tolist()})},
    )
