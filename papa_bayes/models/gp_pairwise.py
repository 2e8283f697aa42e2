"""BoTorch's ``PairwiseGP`` (Laplace; Chu & Ghahramani 2005) as a papa_bayes reward model.

The reference implementation the variational :class:`~papa_bayes.models.gp.PreferenceGP`
is checked against. It shares PreferenceGP's kernel, priors and feature
standardization, so the two differ only in inference (Laplace approximation at the
MAP utilities vs. a sparse variational posterior).

What it cannot do: **ties** and **like/dislike ratings** (BoTorch's pairwise
likelihoods only know strict comparisons) and **several raters**. Data holding any
of these raise :class:`~papa_bayes.exceptions.ModelError`; use ``PreferenceGP``.
It is also cubic in the number of distinct items (dense `n x n` Laplace algebra and
a dense `m x n` comparison matrix), so it is for hundreds of items, not thousands: data
comparing more than ``max_items`` (default :data:`MAX_PAIRWISE_ITEMS`) distinct items
raise :class:`~papa_bayes.exceptions.InputDataError` with the memory they would need.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Callable

import gpytorch
import numpy as np
import torch
from botorch.models.likelihoods.pairwise import PairwiseLogitLikelihood, PairwiseProbitLikelihood
from botorch.models.pairwise_gp import PairwiseGP
from botorch.models.utils.assorted import consolidate_duplicates
from linear_operator.utils.errors import NotPSDError
from torch import Tensor

from papa_bayes.data import PreferenceData, check_preference_data
from papa_bayes.exceptions import InputDataError, ModelError
from papa_bayes.checks import check_bool, check_float, check_int
from papa_bayes.models.gp_kernels import FeatureStandardizer, check_kernel, check_prior, check_single_rater, make_kernel
from papa_bayes.models.likelihoods import check_link

if TYPE_CHECKING:
    from papa_bayes.inference.gp_posterior import GPPosterior

__all__ = ["MAX_PAIRWISE_ITEMS", "PairwiseGPReward", "pairwise_gp_initial_utility", "pairwise_gp_memory"]

#: Most distinct compared items ``PairwiseGPReward`` accepts by default (its ``max_items``). Peak memory above
#: the imports and time measured on one CPU thread (two cores shared with other jobs), d=8, comparisons twice the
#: items: without hyperparameter fitting 0.34 GB and 3 s among 1,000 items, 1.0 GB and 26 s among 2,000 (an
#: update: 12 s), 2.0 GB and 92 s among 3,000; with it (the default) 0.54 GB and 220 s among 1,000.
MAX_PAIRWISE_ITEMS = 2000


def pairwise_gp_memory(num_items: int, num_comparisons: int) -> float:
    """Rough peak memory in GB of a PairwiseGP fit with hyperparameter fitting: ``8 (32 n^2 + 8 m n)`` bytes, the
    `n x n` float64 matrices (kernel, its factor and inverse, Hessians, their gradients) and the `m x n` ones
    (BoTorch's dense comparison matrix and its weighted copies) of `n` items and `m` comparisons."""
    n, m = int(num_items), int(num_comparisons)
    return 8.0 * (32 * n * n + 8 * m * n) / 1e9


def pairwise_gp_initial_utility(comparisons: Tensor, n: int, outputscale: float) -> np.ndarray:
    """BoTorch's start for the MAP search (standardized win counts), without its random jitter.

    PairwiseGP draws that jitter from NumPy's global RNG; we start it ourselves so a
    fit depends on its seed only.
    """
    wins = torch.zeros(n, dtype=torch.float64)
    wins.index_add_(0, comparisons[:, 0], torch.ones(comparisons.shape[0], dtype=torch.float64))
    wins.index_add_(0, comparisons[:, 1], -torch.ones(comparisons.shape[0], dtype=torch.float64))
    x0 = (wins - wins.mean()) / wins.std(unbiased=False).clamp_min(1e-6)
    return (x0 * outputscale**0.5).numpy()


class PairwiseGPReward:
    """BoTorch ``PairwiseGP`` with ``PairwiseLaplaceMarginalLogLikelihood`` behind ``fit``.

    Kernel hyperparameters by type-II maximum likelihood (MAP under the kernel
    priors) of the Laplace-approximated evidence (Chu & Ghahramani 2005, eq. 12),
    with BoTorch's ``fit_gpytorch_mll``. ``update`` keeps the hyperparameters and
    re-solves for the MAP utilities from the previous ones (warm start).

    Cost: nearly all of a fit is one call to ``fit_gpytorch_mll`` (SciPy's L-BFGS-B
    over the kernel hyperparameters, 15-20 iterations, each re-solving the MAP
    utilities with dense `n x n` algebra); ``fit(..., progress_bar=True)`` shows a bar
    over those iterations (by default, above 200 items). Measured with
    1,000 comparisons, d=4, one CPU thread: 0.7 s among 100 items, 5-6 s among 500,
    24 s among 1,000 (849 distinct after consolidation); with 500 items
    ``optimize_hyperparameters=False`` takes 0.4 s and an ``update`` by one comparison
    0.2 s.

    Args:
        link: ``"probit"`` (BoTorch's default) or ``"logit"``.
        kernel: ``"rbf"`` or ``"matern52"``.
        lengthscale_prior / outputscale_prior: as in :class:`PreferenceGP`; the
            default outputscale prior is PreferenceGP's in noise units (in BoTorch's
            units, twice the variance for probit: see ``utility_scale``). A prior you
            pass is on BoTorch's outputscale.
        standardize: standardize features with the training items' mean and sd.
        consolidate_atol: items within this of each other in every coordinate
            (max-norm distance, standardized units) are merged by BoTorch into one
            point (its fix for near-duplicate items, botorch PR #1754); an item that
            is another's duplicate and kept for a third (a chain) stays unmerged.
        jitter: PairwiseGP's Cholesky jitter (BoTorch adds it only where a Cholesky
            fails: with 0 a singular kernel matrix is an InputDataError naming it).
        max_items: most distinct compared items a fit or update accepts (default
            :data:`MAX_PAIRWISE_ITEMS` = 2,000); BoTorch's dense Laplace algebra needs about
            :func:`pairwise_gp_memory` GB (``8 (32 n^2 + 8 m n)`` bytes: 3.6 GB for 2,000 items
            and 20,000 comparisons, 38 GB for 10,000) and time cubic in the items (minutes
            from 1,000 items with hyperparameter fitting).

    Raises:
        ModelError: at fit, on data with ties, ratings or several raters.
        InputDataError: at fit or update, on comparisons among more than ``max_items``
            distinct items (the message gives the memory they would need; use
            :class:`~papa_bayes.models.PreferenceGP`, sparse and minibatched).
    """

    METHODS = ("laplace",)
    default_method = "laplace"
    link: str

    def __init__(
        self,
        *,
        link: str = "probit",
        kernel: str = "rbf",
        lengthscale_prior: gpytorch.priors.Prior | None = None,
        outputscale_prior: gpytorch.priors.Prior | None = None,
        standardize: bool = True,
        consolidate_atol: float = 1e-4,
        jitter: float = 1e-6,
        max_items: int = MAX_PAIRWISE_ITEMS,
    ) -> None:
        self.link = check_link(link)
        self.kernel = check_kernel(kernel)
        self.lengthscale_prior = check_prior("lengthscale_prior", lengthscale_prior)
        self.outputscale_prior = check_prior("outputscale_prior", outputscale_prior)
        self.standardize = check_bool("standardize", standardize)
        self.consolidate_atol = check_float("consolidate_atol", consolidate_atol)
        self.jitter = check_float("jitter", jitter)
        self.max_items = check_int("max_items", max_items)

    @property
    def utility_scale(self) -> float:
        """BoTorch's utility per noise unit: ``sqrt(2)`` for probit, 1 for logit.

        BoTorch's probit likelihood is ``Phi((f(a) - f(b)) / sqrt(2))`` (unit noise on
        each utility), its logit one ``sigmoid(f(a) - f(b))``; papa_bayes posteriors
        read ``P = link(u(a) - u(b))``, so the fitted ``f`` is divided by this scale.
        """
        return math.sqrt(2.0) if self.link == "probit" else 1.0

    def check_data(self, data: PreferenceData) -> None:
        """ModelError unless ``data`` are one rater's strict comparisons (what BoTorch's PairwiseGP models);
        InputDataError on comparisons among more than ``max_items`` distinct items."""
        check_preference_data(data)
        data.require_observations()
        check_single_rater(data, type(self).__name__)
        if data.num_ratings:
            raise ModelError("PairwiseGPReward cannot use like/dislike ratings (BoTorch's PairwiseGP); use PreferenceGP.")
        if data.has_ties:
            raise ModelError("PairwiseGPReward cannot model ties (BoTorch's PairwiseGP); use PreferenceGP(ties=True).")
        if data.num_comparisons == 0:
            raise InputDataError("comparisons", "at least one comparison", "none")
        n, m = int(torch.unique(data.comparisons).numel()), data.num_comparisons
        if n > self.max_items:
            raise InputDataError(
                "comparisons", f"comparisons among at most max_items={self.max_items} distinct items for"
                " PairwiseGPReward (BoTorch's dense Laplace algebra: memory quadratic and time cubic in the items);"
                " use PreferenceGP (sparse variational, minibatched) or raise PairwiseGPReward(max_items=...)",
                f"{n} distinct items in {m} comparisons (about {pairwise_gp_memory(n, m):.1f} GB)",
            )

    def build(self, data: PreferenceData) -> tuple[PairwiseGP, FeatureStandardizer, Tensor]:
        """An unfitted PairwiseGP on the compared items (standardized), deterministically started.

        Returns:
            (model, feature standardizer, `n_c` indices of the compared items in ``data.items``).
        """
        self.check_data(data)
        transform = FeatureStandardizer.fit(data.items, standardize=self.standardize)
        used, comps = torch.unique(data.comparisons, return_inverse=True)
        likelihood = PairwiseProbitLikelihood() if self.link == "probit" else PairwiseLogitLikelihood()
        gp = PairwiseGP(
            None, None, likelihood=likelihood, covar_module=make_kernel(
                data.num_features, self.kernel,
                lengthscale_prior=self.lengthscale_prior, outputscale_prior=self.outputscale_prior,
                variance_scale=self.utility_scale**2,
            ),
            jitter=self.jitter, consolidate_atol=self.consolidate_atol,
        ).to(torch.float64)
        X = transform(data.items[used])
        set_train_data(gp, X, self.informative_comparisons(X, comps.reshape(-1, 2)), x0=None)
        return gp, transform, used

    def informative_comparisons(self, X: Tensor, comparisons: Tensor) -> Tensor:
        """Drop comparisons of an item with its near-duplicate (max-norm distance < ``consolidate_atol``).

        BoTorch merges near-duplicates into one point and would keep such a pair as a
        self-comparison, which its comparison matrix encodes as a one-sided loss
        (pushing that utility down). Under the model such an answer has probability
        1/2 whatever the utility, so dropping it leaves the posterior unchanged.
        """
        _, merged, _ = consolidate_duplicates(X, comparisons, rtol=0.0, atol=self.consolidate_atol)
        keep = merged[:, 0] != merged[:, 1]
        if not bool(keep.any()):
            raise ModelError(
                "PairwiseGPReward: every comparison is between near-duplicate items (no information about the"
                " utility); use PreferenceGP, which treats them exactly."
            )
        return comparisons[keep]

    def fit(self, data: PreferenceData, *, method: str | None = None, seed: int = 0, **options: Any) -> GPPosterior:
        """Fit to ``data``; see :func:`papa_bayes.inference.gp_fit_pairwise.fit_pairwise_gp` for ``options``."""
        from papa_bayes.inference.gp_fit_pairwise import fit_pairwise_gp  # the one hop up: models -> inference

        return fit_pairwise_gp(self, data, method=method or self.default_method, seed=seed, **options)

    def __repr__(self) -> str:
        return f"PairwiseGPReward(link={self.link!r}, kernel={self.kernel!r}, standardize={self.standardize})"


def set_train_data(gp: PairwiseGP, X: Tensor, comparisons: Tensor, *, x0: Callable[[Tensor], Tensor] | None) -> None:
    """Set data and solve for the MAP utilities, started from ``x0(consolidated points)`` or the win counts.

    BoTorch would start its solver from NumPy's global RNG when the start has the
    wrong size; setting ``_x0`` (the attribute PairwiseGP keeps for warm starts)
    first avoids that.

    Args:
        gp: the model.
        X: `n x d` standardized features; comparisons: `m x 2` indices into ``X``.
        x0: maps the `n' x d` consolidated points to `n'` starting utilities.
    """
    gp.set_train_data(X, comparisons, update_model=False)
    if x0 is None:
        scale = float(gp.covar_module.outputscale.detach())
        gp._x0 = pairwise_gp_initial_utility(gp.comparisons, gp.n, scale)
    else:
        with torch.no_grad():
            gp._x0 = x0(gp.datapoints).detach().to(torch.float64).reshape(-1).numpy().copy()
    try:
        gp.set_train_data(X, comparisons, update_model=True)
    except NotPSDError as err:  # BoTorch retries with `jitter` only: 0 (or a tiny one) leaves it no retry
        raise InputDataError(
            "jitter", f"a jitter (PairwiseGPReward(jitter=...), default 1e-6) that makes the kernel matrix of these"
            f" {gp.datapoints.shape[-2]} items positive definite", f"{gp._jitter!r} ({err})",
        ) from None
