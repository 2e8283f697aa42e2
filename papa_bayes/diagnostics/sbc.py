"""Simulation-based calibration (Talts et al. 2018) of a Pyro reward model and an inference method.

Each simulated data set draws the parameters from the model's prior (a trace of the
model itself, so conditional priors such as ``LinearReward``'s ``scaled_w`` given
the rationality are drawn as the model draws them), answers random pairs of the
given items with the model's own likelihood, fits the answers with
:func:`~papa_bayes.fit` and records where the true parameters fall among the
posterior draws. When the inference is exact the ranks are uniform, the central
credible intervals cover the truth at their level, and the predictions of fresh
pairs are calibrated.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pyro.poutine as poutine
import torch
from torch import Tensor

from papa_bayes.checks import check_bool, check_finite, check_int, check_real_tensor
from papa_bayes.data import PreferenceData
from papa_bayes.diagnostics.calibration import expected_calibration_error, interval_coverage, sbc_ranks, sbc_uniformity
from papa_bayes.exceptions import InputDataError
from papa_bayes.inference.fit import METHODS, fit
from papa_bayes.models.base import PyroRewardModel
from papa_bayes.users import random_pairs, winner_first

__all__ = ["SBCResult", "simulation_based_calibration"]

LEVELS = (0.5, 0.9)
_RESERVED = ("method", "seed", "progress_bar")  # set by the driver itself


@dataclass
class SBCResult:
    """What :func:`simulation_based_calibration` measured.

    Attributes:
        method: the inference method.
        ranks: site -> `N x shape` long ranks of the true values among
            ``num_rank_draws`` thinned posterior draws (`N` data sets).
        num_rank_draws: `L`, the draws each rank was taken among (ranks in [0, L]).
        coverage: site -> {level: share of the site's true values (all data sets,
            all elements) inside the central credible interval of that level}.
        probs: `N x h` posterior predictive P(a preferred to b) of `h` fresh pairs per data set.
        outcomes: `N x h` 1.0 where a was preferred (0.0 where b was, or a tie).
        ece: expected calibration error of ``probs`` against ``outcomes``, pooled.
        seconds: `N` fit times.
        diagnostics: per data set, the fit's scalar diagnostics (NUTS: ``r_hat_max``,
            ``divergences``, ...).
    """

    method: str
    ranks: dict[str, Tensor]
    num_rank_draws: int
    coverage: dict[str, dict[float, float]]
    probs: Tensor
    outcomes: Tensor
    ece: float
    seconds: Tensor
    diagnostics: list[dict[str, Any]] = field(default_factory=list)

    def uniformity(self, site: str, *, num_bins: int | None = None, pooled: bool = False) -> tuple[Tensor, Tensor]:
        """Chi-square statistic and p-value of ``site``'s ranks against uniform (:func:`sbc_uniformity`).

        Per element (`shape`), or, with ``pooled``, of all its elements' ranks
        together (one histogram; scalars).
        """
        if site not in self.ranks:
            raise InputDataError("site", f"one of {sorted(self.ranks)}", repr(site))
        ranks = self.ranks[site].reshape(-1) if pooled else self.ranks[site]
        return sbc_uniformity(ranks, self.num_rank_draws, num_bins=num_bins)


def simulation_based_calibration(
    model: PyroRewardModel,
    items: Tensor,
    num_comparisons: int,
    num_datasets: int,
    *,
    method: str = "laplace",
    seed: int = 0,
    sites: Sequence[str] = ("w",),
    fit_options: dict[str, Any] | None = None,
    num_rank_draws: int = 99,
    num_heldout: int = 100,
    progress_bar: bool = False,
) -> SBCResult:
    """Simulation-based calibration of ``fit(model, ..., method=method)`` on ``items``.

    Talts et al. (2018), "Validating Bayesian inference algorithms with
    simulation-based calibration". For each of ``num_datasets`` data sets: the
    latent sites are drawn from the prior by tracing the unconditioned model;
    ``num_comparisons`` random pairs of distinct items (and ``num_heldout`` fresh
    ones) are answered by the model's likelihood given that draw
    (``model.observation_distributions``: ties too for a model with ties); the
    answers are fitted; and for each of ``sites`` (latent or derived, such as
    ``"w"``) the rank of the truth among ``num_rank_draws`` evenly thinned
    posterior draws, the coverage of the 50% and 90% central intervals (all draws)
    and the predictions of the fresh pairs are kept.

    Everything is reproducible from ``seed``: data set ``i`` draws from streams
    derived from ``(seed, i)`` alone (so the first data sets do not change with
    ``num_datasets``) and is fitted with its own seed; the global RNG is left as it was.

    Args:
        model: a :class:`~papa_bayes.models.PyroRewardModel` (e.g. ``LinearReward()``).
        items: `n x d` features (n >= 2) the pairs are drawn from.
        num_comparisons: `m` answers per data set.
        num_datasets: `N` simulated data sets.
        method: ``"laplace"``, ``"svi"`` or ``"nuts"``.
        seed: an integer in [0, 2**32 - 1].
        sites: the sites to rank (each must be a latent or derived site of the model).
        fit_options: further keyword arguments of :func:`~papa_bayes.fit`
            (``num_samples``, ``refine_steps``, ``warmup_steps``, ``num_steps``, ...);
            not ``method``, ``seed`` or ``progress_bar``.
        num_rank_draws: `L`; every fit must keep at least this many draws. 99 (default)
            gives 100 possible ranks, which 20, 10, 5 or 4 bins divide evenly.
        num_heldout: `h` fresh pairs per data set for the ECE.
        progress_bar: a progress bar over the data sets (the fits show none).

    Returns:
        An :class:`SBCResult`.

    Raises:
        InputDataError: naming the argument at fault (a model that is no
            ``PyroRewardModel``, items that are not `n x d` with n >= 2, an unknown
            method or site, ``fit_options`` holding a reserved key, too few draws).

    Example:
        Laplace on 30 data sets of 50 comparisons each (use 100 or more in earnest):

        >>> import torch
        >>> from papa_bayes import LinearReward
        >>> from papa_bayes.diagnostics import simulation_based_calibration
        >>> items = torch.randn(200, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        >>> result = simulation_based_calibration(LinearReward(), items, 50, 30)
        >>> bool(0.8 < result.coverage["w"][0.9] < 1.0)  # share of true w in the 90% intervals
        True
        >>> statistic, p_value = result.uniformity("w", pooled=True)  # chi-square test of the ranks
        >>> bool(p_value > 0.01)
        True
    """
    if not isinstance(model, PyroRewardModel):
        raise InputDataError("model", "a PyroRewardModel (e.g. LinearReward())", type(model).__name__)
    items = check_real_tensor("items", items, "`n x d` features").detach()
    if items.dim() != 2 or items.shape[0] < 2 or items.shape[1] < 1:
        raise InputDataError("items", "`n x d` features with n >= 2 items", tuple(items.shape))
    check_finite("items", items, "features")
    num_comparisons = check_int("num_comparisons", num_comparisons)
    num_datasets = check_int("num_datasets", num_datasets)
    seed = check_int("seed", seed, minimum=0, maximum=2**32 - 1)
    num_rank_draws = check_int("num_rank_draws", num_rank_draws)
    num_heldout = check_int("num_heldout", num_heldout)
    progress_bar = check_bool("progress_bar", progress_bar)
    if method not in METHODS:
        raise InputDataError("method", f"one of {METHODS}", repr(method))
    if isinstance(sites, str) or not all(isinstance(s, str) for s in sites) or not len(sites):
        raise InputDataError("sites", "a non-empty sequence of site names (e.g. ('w',))", repr(sites))
    if len(set(sites)) != len(sites):  # a repeated site would stack its ranks twice per data set
        raise InputDataError("sites", "distinct site names", repr(sites))
    if fit_options is not None and not isinstance(fit_options, dict):
        raise InputDataError("fit_options", "None or a dict of fit()'s keyword arguments", type(fit_options).__name__)
    fit_options = dict(fit_options or {})
    reserved = [k for k in fit_options if k in _RESERVED]
    if reserved:
        raise InputDataError("fit_options", f"fit()'s options other than {', '.join(_RESERVED)} (set by the driver)",
                             repr(reserved))

    from tqdm.auto import trange

    ranks: dict[str, list[Tensor]] = {s: [] for s in sites}
    covered: dict[str, dict[float, list[Tensor]]] = {s: {lv: [] for lv in LEVELS} for s in sites}
    probs, outcomes, seconds, diagnostics = [], [], [], []
    for i in trange(num_datasets, disable=not progress_bar, desc=f"SBC ({method})"):
        simulate_seed, fit_seed, rank_seed = np.random.SeedSequence([seed, i]).generate_state(3)
        truth, data, heldout = _simulate(model, items, num_comparisons, num_heldout, int(simulate_seed))
        if i == 0:
            _check_sites(sites, truth)
        post = fit(model, data, method=method, seed=int(fit_seed), progress_bar=False, **fit_options)
        s = post.num_draws
        if s < num_rank_draws:
            raise InputDataError("num_rank_draws", f"at most the {s} draws each fit keeps (raise fit_options"
                                 " num_samples)", num_rank_draws)
        keep = torch.linspace(0, s - 1, num_rank_draws).round().long()  # evenly thinned: MCMC draws are correlated
        gen = torch.Generator().manual_seed(int(rank_seed))
        for site in sites:
            draws = post.draws(site).detach()
            ranks[site].append(sbc_ranks(draws[keep], truth[site], generator=gen))
            for level in LEVELS:
                covered[site][level].append(interval_coverage(draws, truth[site], level=level))
        a, b, a_won = heldout
        # The held-out answers are rater 0's (the simulated data carry no rater ids); a hierarchical
        # posterior's default is the population's utility, which would score them against another person.
        probs.append(post.preference_probability(items[a], items[b], rater=0).detach())
        outcomes.append(a_won)
        seconds.append(float(post.diagnostics.get("fit_seconds", float("nan"))))
        diagnostics.append({k: v for k, v in post.diagnostics.items() if isinstance(v, (int, float))})
    probs_t, outcomes_t = torch.stack(probs), torch.stack(outcomes)
    return SBCResult(
        method=method,
        ranks={s: torch.stack(r) for s, r in ranks.items()},
        num_rank_draws=num_rank_draws,
        coverage={s: {lv: float(torch.stack(c).double().mean()) for lv, c in by.items()} for s, by in covered.items()},
        probs=probs_t,
        outcomes=outcomes_t,
        ece=expected_calibration_error(probs_t.reshape(-1), outcomes_t.reshape(-1)),
        seconds=torch.tensor(seconds, dtype=torch.float64),
        diagnostics=diagnostics,
    )


def _check_sites(sites: Sequence[str], truth: dict[str, Tensor]) -> None:
    unknown = [s for s in sites if s not in truth]
    if unknown:
        raise InputDataError("sites", f"latent or derived sites of the model, among {sorted(truth)}", repr(unknown))


def _simulate(model: PyroRewardModel, items: Tensor, m: int, h: int,
              seed: int) -> tuple[dict[str, Tensor], PreferenceData, tuple[Tensor, Tensor, Tensor]]:
    """A prior draw (latent and derived sites), `m` answers to fit and `h` fresh answered pairs.

    Returns:
        (truth: site -> `shape`, the winner-first data, (a, b, a won) of the fresh pairs: `h` each).
    """
    g = torch.Generator().manual_seed(seed)
    pairs = random_pairs(items.shape[0], m, generator=g)
    fresh = random_pairs(items.shape[0], h, generator=g)
    shown = PreferenceData(items=items, comparisons=pairs)  # the order as shown; answers come below
    with torch.random.fork_rng():  # Pyro samples from the global RNG: seed it here, restore it after
        torch.manual_seed(seed)
        trace = poutine.trace(poutine.uncondition(model)).get_trace(shown)
        params = {k: trace.nodes[k]["value"].detach().unsqueeze(0) for k in model.priors(shown)}
        first_won, tie = _answers(model, params, shown)
        fresh_won, fresh_tie = _answers(model, params, PreferenceData(items=items, comparisons=fresh))
    data = PreferenceData(items=items, comparisons=winner_first(pairs, first_won | tie), ties=tie)
    truth = {k: v[0] for k, v in {**params, **model.derived(params, shown)}.items()}
    return truth, data, (fresh[:, 0], fresh[:, 1], (fresh_won & ~fresh_tie).to(torch.float64))


def _answers(model: PyroRewardModel, params: dict[str, Tensor], shown: PreferenceData) -> tuple[Tensor, Tensor]:
    """(first preferred, tie): `m` bools, drawn from the model's likelihood of the shown pairs."""
    outcome = model.observation_distributions(params, shown)["comparisons"].sample()[0]
    if getattr(model, "ties", False):  # Categorical over (first wins, second wins, tie)
        return outcome == 0, outcome == 2
    return outcome > 0.5, torch.zeros(outcome.shape, dtype=torch.bool)  # Bernoulli: 1 = first preferred
