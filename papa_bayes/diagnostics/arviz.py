"""The one module that hands posteriors to ArviZ.

Groups: ``posterior``, ``sample_stats`` (``lp``; ``diverging`` for NUTS only),
``log_likelihood`` (one value per observation, so ``az.loo`` works),
``posterior_predictive``, ``observed_data``, ``constant_data``; with ``prior=True``
also ``prior`` and ``prior_predictive`` (draws of the model's prior by Pyro's
``Predictive``, the same variables, dims and coding as ``posterior`` and
``posterior_predictive``); dims ``feature``, ``comparison``, ``rating``, ``item``,
``rater``, each with coordinates.

Data with both comparisons and ratings give two log-likelihood arrays; ArviZ then
asks which one: ``az.loo(idata, var_name="comparisons")`` (or ``"ratings"``).

Comparisons reach ArviZ oriented by item index: ``constant_data.compared_items``
lists the lower index first, and the observed and replicated answers say which of
the two won (1 first, 0 second; with ties 0 first, 1 second, 2 tie). Stored winner
first, every observed answer would read "first", and ``az.plot_ppc`` /
``az.plot_bpv`` would flag misfit for a model that fits. The log-likelihood of an
answer does not depend on the orientation.

Ratings keep their order: ``constant_data.rated_item`` names the item, and the
observed and replicated answers code a like (+1 in ``PreferenceData.ratings``) as 1
and a dislike (-1) as 0 (the Bernoulli outcome of the likelihood).

How the posterior was fitted: ``idata.attrs`` holds ``method`` and the options that
change the posterior (``seed``; Laplace: ``refine_steps``, ``integrate_scale``; NUTS:
``num_chains``, ``warmup_steps``; SVI: ``num_steps``, ``learning_rate``);
``sample_stats.attrs`` holds the fit's scalar diagnostics (e.g. ``refine_ess``,
``refine_acceptance``, ``scale_ess``, ``newton_steps``; NUTS: ``r_hat_max``,
``ess_min``, ``divergences``).

Laplace and SVI draws are independent draws of an approximate posterior, stored as
one chain: their ESS (``az.ess``) is meaningful, R-hat is not (ArviZ needs two
chains, logs "Shape validation failed" and reports ``r_hat`` NaN;
``az.summary(idata, kind="stats")`` leaves the diagnostics out). They have no
divergences, so ``sample_stats`` has no ``diverging``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import arviz as az
import numpy as np
import torch
import xarray as xr
from torch import Tensor

from papa_bayes.checks import check_bool, check_int
from papa_bayes.data import PreferenceData, check_preference_data
from papa_bayes.exceptions import InputDataError

if TYPE_CHECKING:
    from papa_bayes.inference.posterior import RewardPosterior

__all__ = [
    "to_inference_data", "build_inference_data", "data_coords", "data_groups", "fit_attrs", "diagnostic_attrs",
    "prior_draws", "FIT_OPTIONS",
]


def _np(t: Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def _outcomes(t: Tensor) -> np.ndarray:
    """Observed or replicated answers: whole-number floats (0/1 outcomes) as integers.

    ArviZ treats float variables as continuous: ``az.plot_ppc`` would draw a KDE of
    0/1 answers and fail on a draw that replicates every answer alike.
    """
    a = _np(t)
    if a.dtype.kind == "f" and np.isfinite(a).all() and (a == np.round(a)).all():
        return a.astype(np.int64)
    return a


def data_coords(data: PreferenceData) -> dict[str, Any]:
    """Coordinates of the standard dims for ``data``."""
    check_preference_data(data)
    names = data.feature_names or tuple(f"x{i}" for i in range(data.num_features))
    return {
        "feature": list(names),
        "item": np.arange(data.num_items),
        "comparison": np.arange(data.num_comparisons),
        "rating": np.arange(data.num_ratings),
        "rater": np.arange(data.num_raters),
        "outcome_pair": ["first", "second"],
    }


def _orientation(data: PreferenceData, observed: dict[str, Tensor]) -> tuple[np.ndarray, bool] | None:
    """(rows stored with the higher item index first, whether answers are 0/1 with 1 = first) or None."""
    if not data.num_comparisons or "comparisons" not in observed:
        return None
    flip = _np(data.comparisons[:, 0] > data.comparisons[:, 1])
    # Winner first: strict-only answers are all 1 (a Bernoulli "first won"); with ties, codes 0 (first) or 2.
    binary = bool((_np(observed["comparisons"]) == 1).any())
    return flip, binary


def _oriented(values: np.ndarray, orientation: tuple[np.ndarray, bool] | None) -> np.ndarray:
    """Answers of the stored orientation (`... x comparison`) in the index orientation (see the module doc)."""
    if orientation is None:
        return values
    flip, binary = orientation
    swapped = (1 - values) if binary else np.where(values == 2, 2, 1 - values)  # ties stay ties
    return np.where(flip, swapped, values).astype(values.dtype)


def data_groups(data: PreferenceData, observed: dict[str, Tensor]) -> tuple[dict, dict, dict]:
    """(observed_data, constant_data, dims) for the standard observed sites (comparisons by item index)."""
    check_preference_data(data)
    orientation = _orientation(data, observed)
    obs = {k: _oriented(_outcomes(v), orientation) if k == "comparisons" else _outcomes(v) for k, v in observed.items()}
    const: dict[str, np.ndarray] = {"items": _np(data.items)}
    dims: dict[str, list[str]] = {"items": ["item", "feature"], "comparisons": ["comparison"], "ratings": ["rating"]}
    if data.num_comparisons:
        const["compared_items"] = np.sort(_np(data.comparisons), axis=1)
        const["ties"] = _np(data.ties)
        dims.update(compared_items=["comparison", "outcome_pair"], ties=["comparison"])
        if data.comparison_rater is not None:
            const["comparison_rater"] = _np(data.comparison_rater)
            dims["comparison_rater"] = ["comparison"]
    if data.num_ratings:
        const["rated_item"] = _np(data.ratings[:, 0])
        dims["rated_item"] = ["rating"]
        if data.rating_rater is not None:
            const["rating_rater"] = _np(data.rating_rater)
            dims["rating_rater"] = ["rating"]
    return obs, const, dims


def build_inference_data(
    *,
    posterior: dict[str, Tensor],
    data: PreferenceData,
    observed: dict[str, Tensor],
    log_likelihood: dict[str, Tensor] | None = None,
    posterior_predictive: dict[str, Tensor] | None = None,
    sample_stats: dict[str, Tensor] | None = None,
    dims: dict[str, list[str]] | None = None,
    extra_coords: dict[str, Any] | None = None,
    attrs: dict[str, Any] | None = None,
    constant: dict[str, Tensor] | None = None,
    prior: dict[str, Tensor] | None = None,
    prior_predictive: dict[str, Tensor] | None = None,
) -> az.InferenceData:
    """Assemble InferenceData from `chain x draw x ...` tensors (for any posterior type).

    ``constant``: fixed values (e.g. point-estimated hyperparameters) for the
    ``constant_data`` group, beside the data's own, without chain and draw dims
    (scalars stay 0-d, where ArviZ would invent a ``NAME_dim_0`` of length 1).
    Whole-number observed and replicated answers are stored as integers (discrete
    for ``az.plot_ppc``). ``prior`` / ``prior_predictive``: `chain x draw x ...`
    draws of the prior, with the dims of ``posterior`` / ``posterior_predictive``.
    """
    obs, const, all_dims = data_groups(data, observed)
    orientation = _orientation(data, observed)
    scalars = {k: _np(v) for k, v in (constant or {}).items() if v.dim() == 0}
    const.update({k: _np(v) for k, v in (constant or {}).items() if v.dim() > 0})
    all_dims.update(dims or {})
    coords = data_coords(data)
    coords.update(extra_coords or {})
    conv = lambda d: None if d is None else {k: _np(v) for k, v in d.items()}  # noqa: E731
    used = {dim for v in all_dims.values() for dim in v}
    replicated = lambda d: None if d is None else {  # noqa: E731
        k: _oriented(_outcomes(v), orientation) if k == "comparisons" else _outcomes(v) for k, v in d.items()}
    idata = az.from_dict(
        posterior=conv(posterior),
        sample_stats=conv(sample_stats),
        log_likelihood=conv(log_likelihood),
        posterior_predictive=replicated(posterior_predictive),
        prior=conv(prior),
        prior_predictive=replicated(prior_predictive),
        observed_data=obs,
        constant_data=const,
        coords={k: v for k, v in coords.items() if k in used},
        dims=all_dims,
        attrs=attrs or {},
    )
    for k, v in scalars.items():
        idata.constant_data[k] = xr.DataArray(v)
    return idata


#: Options of ``fit`` that change a posterior, by method (recorded in ``idata.attrs``).
FIT_OPTIONS = {
    "laplace": ("refine_steps", "integrate_scale"),
    "nuts": ("num_chains", "warmup_steps"),
    "svi": ("num_steps", "learning_rate"),
}


def _attr(value: Any) -> Any:
    """A netCDF-storable attribute (int, float or str) or None for what is not a scalar."""
    if isinstance(value, Tensor):
        value = value.item() if value.numel() == 1 else None
    if isinstance(value, (bool, np.bool_)):
        return int(value)  # netCDF has no booleans
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    return value if isinstance(value, str) else None


def fit_attrs(post: Any) -> dict[str, Any]:
    """``method``, ``seed`` and the method's :data:`FIT_OPTIONS` of a :class:`PyroPosterior`, as used.

    Options left at None (a default) are read from ``post.diagnostics`` where the fit
    records the value used (``warmup_steps``, ``num_steps``); ``refine_steps`` 0 and
    ``integrate_scale`` 0 (False) mark a plain Laplace fit.
    """
    attrs: dict[str, Any] = {"method": post.method}
    defaults = {"refine_steps": 0, "integrate_scale": False}
    for name in ("seed", *FIT_OPTIONS.get(post.method, ())):
        value = post.options.get(name)
        if value is None:
            value = post.diagnostics.get(name, defaults.get(name))
        value = _attr(value)
        if value is not None:
            attrs[name] = value
    return attrs


def diagnostic_attrs(post: Any) -> dict[str, Any]:
    """The scalar entries of ``post.diagnostics`` (e.g. ``refine_ess``, ``scale_ess``), for ``sample_stats.attrs``."""
    out = {k: _attr(v) for k, v in post.diagnostics.items()}
    return {k: v for k, v in out.items() if v is not None}


def prior_draws(post: Any, num_samples: int, seed: int) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(prior, prior_predictive) of a :class:`PyroPosterior`'s model on its data, `1 x num_samples x ...`.

    The model's observed sites are unconditioned and its prior drawn with Pyro's
    ``Predictive`` (vectorized over draws, a draw at a time for a model that does
    not vectorize), under the global RNG seeded by ``seed`` and restored after.
    ``prior`` holds the latent sites and the model's derived sites, as ``posterior``
    does; ``prior_predictive`` the observed sites, as ``posterior_predictive``.
    """
    import pyro
    from pyro.infer import Predictive

    model, data = post.model, post.data
    observed = model.observed(data)
    sites = [*post.params, *observed]
    free = pyro.poutine.uncondition(model)
    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(seed)
        try:
            out = Predictive(free, num_samples=num_samples, return_sites=sites, parallel=True)(data)
        except (RuntimeError, ValueError):  # a user's model that does not broadcast over a draw dim
            torch.manual_seed(seed)
            out = Predictive(free, num_samples=num_samples, return_sites=sites)(data)
        # Predictive keeps the singleton dims a site has left of the model's plates: back to the posterior's shapes.
        params = {k: out[k].reshape(num_samples, *v.shape[1:]) for k, v in post.params.items()}
        params.update(model.derived(params, data))
        replicated = {k: out[k].reshape(num_samples, *v.shape) for k, v in observed.items()}
    return {k: v.unsqueeze(0) for k, v in params.items()}, {k: v.unsqueeze(0) for k, v in replicated.items()}


def to_inference_data(post: RewardPosterior, *, seed: int = 0, prior: bool = False,
                      num_prior_samples: int = 500) -> az.InferenceData:
    """Convert a posterior to ArviZ (the same as ``post.to_inference_data(seed=seed)``).

    A :class:`PyroPosterior` (NUTS, SVI or Laplace): derived sites (e.g. per-rater
    ``w``) join the posterior group; the ``posterior_predictive`` group holds
    replicated outcomes drawn per draw with ``seed`` (an integer in [0, 2**64 - 1],
    torch's range of seeds). A GP posterior converts
    itself (:meth:`~papa_bayes.inference.GPPosterior.to_inference_data`).

    Args:
        post: the posterior (what ``fit`` returns).
        seed: seeds the replicated answers (and with ``prior=True`` the prior's draws).
        prior: also fill ``prior`` and ``prior_predictive`` (`1 x num_prior_samples x ...`,
            the dims of ``posterior`` and ``posterior_predictive``) with draws of the
            model's prior on the fitted data (:func:`prior_draws`), for prior/posterior
            overlays (``az.plot_dist_comparison``) and prior predictive checks
            (``az.plot_ppc(idata, group="prior")``). Off by default: the draws cost time.
            Pyro models only: a GP posterior has no Pyro model to draw its prior from
            (its prior is over utilities at the items, with point-estimated or separately
            sampled hyperparameters), so ``prior=True`` raises there.
        num_prior_samples: draws of the prior (with ``prior=True``).

    Raises:
        InputDataError: ``prior=True`` for a GP posterior; a seed or ``num_prior_samples`` out of range.

    Example:
        >>> import arviz as az
        >>> import torch
        >>> from papa_bayes import LinearReward, PreferenceData, fit
        >>> data = PreferenceData(items=torch.randn(6, 2, dtype=torch.float64), comparisons=[[0, 1], [3, 2]])
        >>> idata = fit(LinearReward(), data, seed=0).to_inference_data(prior=True, num_prior_samples=100)
        >>> idata.prior["w"].dims, idata.prior_predictive["comparisons"].shape
        (('chain', 'draw', 'feature'), (1, 100, 2))
    """
    from papa_bayes.inference.posterior import RewardPosterior
    from papa_bayes.inference.pyro_posterior import PyroPosterior

    if not isinstance(post, RewardPosterior):
        raise InputDataError("post", "a RewardPosterior (what fit returns)", type(post).__name__)
    seed = check_int("seed", seed, minimum=0, maximum=2**64 - 1)  # torch.manual_seed's range
    prior = check_bool("prior", prior)
    num_prior_samples = check_int("num_prior_samples", num_prior_samples, minimum=1)
    if not isinstance(post, PyroPosterior):  # a GP posterior converts itself (and refuses prior=True)
        return post.to_inference_data(seed=seed, prior=prior)
    model, data = post.model, post.data
    C, S = post.num_chains, post.num_draws // post.num_chains
    shape = lambda t: t.reshape(C, S, *t.shape[1:])  # noqa: E731
    posterior = dict(post.samples)
    posterior.update({k: shape(v) for k, v in model.derived(post.params, data).items()})
    dists = model.observation_distributions(post.params, data)
    observed = model.observed(data)
    loglik = {k: shape(d.log_prob(observed[k])) for k, d in dists.items()}
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        predictive = {k: shape(d.sample()) for k, d in dists.items()}
    dims = {k: v for k, v in model.dims.items() if k in posterior}
    prior_groups = prior_draws(post, num_prior_samples, seed) if prior else (None, None)
    idata = build_inference_data(
        posterior=posterior,
        data=data,
        observed=observed,
        log_likelihood=loglik,
        posterior_predictive=predictive,
        sample_stats=post.sample_stats,
        dims=dims,
        attrs={"inference_library": "pyro", **fit_attrs(post), "model": repr(model)},
        prior=prior_groups[0],
        prior_predictive=prior_groups[1],
    )
    if "sample_stats" in idata.groups():
        idata.sample_stats.attrs.update(diagnostic_attrs(post))
    return idata
