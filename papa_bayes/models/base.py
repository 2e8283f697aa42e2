"""The contract between a Pyro reward model and papa_bayes' inference.

A model is a callable Pyro model ``model(data)`` (give it to ``NUTS``, ``SVI`` or
``Predictive`` as it is) plus the few pure-torch pieces inference needs to work on
posterior draws without re-tracing: the priors of the latent sites, the observation
distributions given draws, and the utility of new features.

Draws are passed as ``params``: a dict of site name to `s x event_shape` tensors.
"""

from __future__ import annotations

import weakref
from abc import ABC, abstractmethod

import torch
import torch.distributions as tdist
from torch import Tensor

from papa_bayes.data import PreferenceData, check_preference_data

__all__ = ["PyroRewardModel", "check_model_data", "check_model_link", "check_model_sites"]

#: Models whose sites were checked, with the data layouts checked (see :func:`check_model_sites`).
_CHECKED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def check_model_data(data: object) -> PreferenceData:
    """``data`` unless it is not a :class:`PreferenceData` (then InputDataError): a model's own first check."""
    return check_preference_data(data)


def check_model_link(model: object) -> str:
    """``model.link`` if it is ``"logit"`` or ``"probit"``, else ModelError (a custom model must say its link)."""
    from papa_bayes.exceptions import ModelError
    from papa_bayes.models.likelihoods import LINKS

    link = getattr(model, "link", None)
    if not isinstance(link, str) or link not in LINKS:
        raise ModelError(
            f"{type(model).__name__}.link: expected one of {LINKS}, the link of its likelihood (preference "
            f"probabilities and the acquisition functions read it), got {link!r}; set it as a class attribute.")
    return link


def _same_unconstraining(prior: tdist.Distribution, fn: tdist.Distribution, value: Tensor) -> bool:
    """Whether ``prior``'s support frees ``value`` (a draw of the model's site ``fn``) as ``fn``'s does (the map of
    Pyro's NUTS and autoguides, ``biject_to(support)``)."""
    try:
        raw = tdist.biject_to(fn.support).inv(value)
        back = tdist.biject_to(prior.support)(raw)
        return back.shape == value.shape and bool(torch.allclose(back.to(value), value, rtol=1e-6, atol=1e-9))
    except (NotImplementedError, RuntimeError, ValueError, TypeError):
        return False


def check_model_sites(model: PyroRewardModel, data: PreferenceData) -> None:
    """ModelError unless ``model(data)``'s latent sites are those of ``model.priors(data)``, in the same order,
    with the same shapes and the same kind of support; and unless ``model.link`` is a link.

    Laplace works on :meth:`PyroRewardModel.priors`' flat unconstrained vector, NUTS and SVI on the Pyro model's
    trace, and SVI's guide (in the trace's order) is read back through the priors' order: a mismatch would mix
    the sites up silently. One trace of the model (its draws on a forked RNG: the global one is untouched); a
    model is traced once per data layout (features, raters, which kinds of answers).
    """
    import pyro.poutine as poutine
    from pyro.poutine.util import site_is_subsample

    from papa_bayes.exceptions import ModelError

    check_model_link(model)
    key = (data.num_features, data.num_raters, data.num_comparisons > 0, data.num_ratings > 0,
           bool(data.ties.any()))
    try:
        done = _CHECKED.setdefault(model, set())
    except TypeError:  # an unhashable model: check every time
        done = set()
    if key in done:
        return
    name = type(model).__name__
    priors = model.priors(data)
    try:
        with torch.random.fork_rng(), torch.no_grad(), poutine.block():
            trace = poutine.trace(model).get_trace(data)
    except Exception as e:  # noqa: BLE001 - whatever the user's model raises, say where it came from
        from papa_bayes.exceptions import PapaBayesError

        if isinstance(e, PapaBayesError):
            raise
        raise ModelError(f"{name}(data) failed as a Pyro model (pyro.poutine.trace): {type(e).__name__}: {e}") from e
    latent = [site for site in trace.nodes.values() if site["type"] == "sample" and not site["is_observed"]
              and not site_is_subsample(site)]
    names = [site["name"] for site in latent]
    if names != list(priors):
        raise ModelError(f"{name}.priors(data): expected the latent sites of the Pyro model in its sampling order, "
                         f"{names}, got {list(priors)}.")
    for site in latent:
        k, prior = site["name"], priors[site["name"]]
        shape, expected = tuple(prior.batch_shape + prior.event_shape), tuple(site["value"].shape)
        if shape != expected:
            raise ModelError(f"{name}.priors(data)[{k!r}]: expected the shape of the model's site, {expected}, "
                             f"got {shape}.")
        if not _same_unconstraining(prior, site["fn"], site["value"]):
            raise ModelError(f"{name}.priors(data)[{k!r}]: expected the support of the model's site, "
                             f"{site['fn'].support}, got {prior.support}.")
    done.add(key)


class PyroRewardModel(ABC):
    """Base class of the Pyro reward models.

    Subclasses write ``__call__(data)`` as a plain Pyro model whose latent site
    names are the keys of :meth:`priors` and whose observed sites are
    ``"comparisons"`` (`m`, in ``pyro.plate("comparison")``) and ``"ratings"``
    (`k`, in ``pyro.plate("rating")``). The observed sites always condition on
    ``data``; for prior or posterior predictive checks, uncondition them (the
    posterior's ``params`` are Pyro's flat `s x shape` samples)::

        free = pyro.poutine.uncondition(model)
        prior = Predictive(free, num_samples=200)(data)            # "comparisons": `200 x m`
        replicated = Predictive(free, posterior_samples=post.params)(data)

    With the linear models ``parallel=True`` works too, and ``az.from_pyro(mcmc)`` finds the
    pointwise log-likelihood of a user's own ``MCMC(NUTS(model))`` run.

    A model of one's own (a sketch: ``u = w . x``, ``w ~ N(0, s^2 I)``, ``s ~ LogNormal(0, 1)``; a prior
    with mass at ``s = 0``, such as ``HalfNormal``, makes a funnel whose joint mode is ``s = 0``: with few answers
    Laplace, and so the start of NUTS and SVI, then fails; sample ``w = s * z``, ``z ~ N(0, I)`` instead, as
    :class:`~papa_bayes.models.HierarchicalLinearReward` does)::

        class MyReward(PyroRewardModel):
            dims = {"w": ["feature"]}
            link = "logit"                      # required: what preference_probability and the acquisition use

            def priors(self, data):            # every latent site, in the order __call__ samples them
                return {"s": dist.LogNormal(torch.tensor(0.0, dtype=torch.float64), 1.0),
                        "w": dist.Normal(torch.zeros(data.num_features, dtype=torch.float64), 1.0).to_event(1)}

            def log_prior(self, params, data):  # w's prior depends on s: the placeholder above is not it
                s = params["s"]
                return (dist.LogNormal(torch.tensor(0.0, dtype=torch.float64), 1.0).log_prob(s)
                        + dist.Normal(0.0, s.unsqueeze(-1)).log_prob(params["w"]).sum(-1))

            def __call__(self, data):
                s = pyro.sample("s", dist.LogNormal(torch.tensor(0.0, dtype=torch.float64), 1.0))
                w = pyro.sample("w", dist.Normal(torch.zeros(data.num_features, dtype=torch.float64),
                                                 s.unsqueeze(-1)).to_event(1))
                c = data.comparisons
                diff = ((data.items[c[:, 0]] - data.items[c[:, 1]]) * w).sum(-1)
                with pyro.plate("comparison", data.num_comparisons):
                    pyro.sample("comparisons", comparison_distribution(diff, "logit"),
                                obs=self.observed(data)["comparisons"])

            def observation_distributions(self, params, data):
                c = data.comparisons
                diff = params["w"] @ (data.items[c[:, 0]] - data.items[c[:, 1]]).T   # s x m
                return {"comparisons": comparison_distribution(diff, "logit")}

            def utility(self, params, features, *, rater=None):
                return params["w"] @ features.T                                      # s x n

    What :func:`~papa_bayes.fit` needs of ``__call__``: ``method="nuts"`` runs it as it
    is; ``method="svi"`` runs it under vectorized particles (``Trace_ELBO(num_particles=8,
    vectorize_particles=True, max_plate_nesting=1)``), where a global site's draw carries
    a particle dim left of the ``comparison`` / ``rating`` plate: a scalar site is `P x 1`
    and a `d` vector `P x 1 x d`, so broadcast as above (``s.unsqueeze(-1)``; `... x m`
    utilities from ``(x * w).sum(-1)``). A site named ``rationality`` (a positive scalar)
    is integrated on a grid by Laplace (and so by the Laplace start of NUTS and SVI).
    Fits check that :meth:`priors` lists the model's latent sites in its sampling order,
    with their shapes and supports, and that ``link`` is set (:func:`check_model_sites`).

    Attributes:
        dims: ArviZ dims of each latent or derived site's event shape (site name -> dim
            names; ``"feature"``, ``"rater"``, ``"item"`` get coordinates).
        link: ``"logit"`` or ``"probit"``: the link of the model's likelihood. Required.
        ties: whether the comparisons' outcome is three-way (``Categorical`` over first,
            second, tie: :func:`~papa_bayes.models.likelihoods.comparison_outcome`); default
            False (a ``Bernoulli`` "first won", observed 1).
    """

    #: ArviZ dims of each latent site's event shape (site name -> dim names).
    dims: dict[str, list[str]] = {}
    #: Whether comparisons have a tie outcome (see :meth:`observed`).
    ties: bool = False

    @abstractmethod
    def __call__(self, data: PreferenceData) -> None:
        """The Pyro model."""

    @abstractmethod
    def priors(self, data: PreferenceData) -> dict[str, tdist.Distribution]:
        """Every latent site (in sampling order) with a distribution fixing its shape and support.

        A site's ``batch_shape + event_shape`` is the shape of its value in an unbatched
        trace of ``__call__`` (e.g. `d`, or `R x d` for a site in a `R` plate); its
        support decides its unconstrained coordinates (as in Pyro's NUTS).
        For sites whose prior is conditional on another site, this is a placeholder
        and :meth:`log_prior` holds the true joint prior.
        """

    def log_prior(self, params: dict[str, Tensor], data: PreferenceData) -> Tensor:
        """Joint log prior of `s`-batched params (site -> `s x shape`): `s` (default: independent sites)."""
        return sum(p.log_prob(params[k]) for k, p in self.priors(data).items())

    @abstractmethod
    def observation_distributions(self, params: dict[str, Tensor], data: PreferenceData) -> dict[str, tdist.Distribution]:
        """Distributions of the observed sites given `s`-batched draws (batch `s x m` / `s x k`).

        Keyed as :meth:`observed` (``"comparisons"``, ``"ratings"``), one batch element per
        draw and answer; ``log_prob`` of :meth:`observed`'s values gives `s x m` / `s x k`.
        """

    @abstractmethod
    def utility(self, params: dict[str, Tensor], features: Tensor, *, rater: int | None = None) -> Tensor:
        """Utility in noise units of `n x d` features under `s` draws: `s x n`."""

    def derived(self, params: dict[str, Tensor], data: PreferenceData) -> dict[str, Tensor]:
        """Deterministic sites worth reporting (e.g. per-rater weights): site -> `s x shape`; default none."""
        return {}

    def like_threshold(self, params: dict[str, Tensor]) -> Tensor:
        """Threshold of like/dislike answers in noise units: `s`."""
        from papa_bayes.exceptions import ModelError

        if "threshold" not in params:
            raise ModelError("This posterior has no like/dislike threshold: fit it on data with ratings.")
        return params["threshold"]

    def observed(self, data: PreferenceData) -> dict[str, Tensor]:
        """Observed values of the observed sites (what ``obs=`` receives): ``"comparisons"`` `m`
        (1.0 for "first won" as stored winner first; with ``ties`` the codes 0 first, 2 tie), ``"ratings"`` `k`
        (1.0 like, 0.0 dislike); only the sites the data has answers for."""
        from papa_bayes.models.likelihoods import comparison_outcome, rating_outcome

        out: dict[str, Tensor] = {}
        if data.num_comparisons:
            out["comparisons"] = comparison_outcome(data.ties, getattr(self, "ties", False))
        if data.num_ratings:
            out["ratings"] = rating_outcome(data.ratings)
        return out

    def log_likelihood(self, params: dict[str, Tensor], data: PreferenceData) -> dict[str, Tensor]:
        """Pointwise log-likelihood: site -> `s x (m or k)`."""
        obs = self.observed(data)
        return {k: d.log_prob(obs[k]) for k, d in self.observation_distributions(params, data).items()}

    def log_joint(self, params: dict[str, Tensor], data: PreferenceData) -> Tensor:
        """log p(params, data) for `s`-batched params: `s`."""
        total = self.log_prior(params, data)
        for ll in self.log_likelihood(params, data).values():
            total = total + ll.sum(-1)
        return total

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"
