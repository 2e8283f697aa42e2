"""Kernels and their priors, and the input side of the GP preference models.

ARD ``ScaleKernel(RBF | Matern-5/2)`` with lengthscale and outputscale priors (the
same for :class:`~papa_bayes.models.PreferenceGP` and
:class:`~papa_bayes.models.PairwiseGPReward`), the same kernels in plain torch for
hot loops, feature standardization, and the choice of inducing points.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import gpytorch
import torch
from gpytorch.constraints import GreaterThan, Interval
from gpytorch.kernels import MaternKernel, RBFKernel, ScaleKernel
from gpytorch.priors import GammaPrior, LogNormalPrior
from torch import Tensor

from papa_bayes.checks import check_float, check_int, shape_of
from papa_bayes.data import PreferenceData
from papa_bayes.exceptions import InputDataError, ModelError

__all__ = [
    "DTYPE",
    "KERNELS",
    "FeatureStandardizer",
    "check_kernel",
    "check_prior",
    "check_single_rater",
    "default_lengthscale_prior",
    "default_outputscale_prior",
    "exact_distances",
    "kernel_kind",
    "make_kernel",
    "select_inducing_points",
    "stationary_kernel",
    "stationary_kernel_pairs",
]

KERNELS = ("rbf", "matern52")
DTYPE = torch.float64


# ---------------------------------------------------------------- kernel and priors
def check_kernel(kernel: object, name: str = "kernel") -> str:
    """``kernel`` if it is one of :data:`KERNELS`, else InputDataError (a bad option, not a model limitation)."""
    if not isinstance(kernel, str) or kernel not in KERNELS:
        raise InputDataError(name, f"one of {KERNELS}", repr(kernel))
    return kernel


def check_prior(name: str, prior: object) -> gpytorch.priors.Prior | None:
    """A GPyTorch prior or None (the default prior), or InputDataError."""
    if prior is not None and not isinstance(prior, gpytorch.priors.Prior):
        raise InputDataError(name, "a gpytorch.priors.Prior or None (the default)", type(prior).__name__)
    return prior


def default_lengthscale_prior(d: int) -> LogNormalPrior:
    """LogNormal with median ``sqrt(d)`` (standardized features), log-sd 1.

    Scaling the median with ``sqrt(d)`` keeps the prior correlation of two random
    items the same in any dimension (as in Hvarfner et al. 2024's dimension-scaled
    prior for BoTorch).
    """
    return LogNormalPrior(torch.tensor(0.5 * math.log(d), dtype=DTYPE), torch.tensor(1.0, dtype=DTYPE))


def default_outputscale_prior(variance_scale: float = 1.0) -> GammaPrior:
    """Gamma(2, 0.5) on the utility variance in noise units (mode 2, mean 4).

    A prior standard deviation of about 1.4-2 noise units: the best and worst item of
    a pool differ by several noise units, so answers about them are nearly certain.
    ``variance_scale``: the kernel's variance per noise-unit variance (2 for BoTorch's
    probit PairwiseGP, whose likelihood divides by sqrt(2)); the same prior in those
    units is Gamma(2, 0.5 / variance_scale).
    """
    return GammaPrior(torch.tensor(2.0, dtype=DTYPE), torch.tensor(0.5 / variance_scale, dtype=DTYPE))


def make_kernel(
    d: int,
    kind: str = "rbf",
    *,
    lengthscale_prior: gpytorch.priors.Prior | None = None,
    outputscale_prior: gpytorch.priors.Prior | None = None,
    variance_scale: float = 1.0,
) -> ScaleKernel:
    """ARD ``ScaleKernel(RBF | Matern-5/2)`` with priors, in float64.

    The lengthscale is bounded below (0.025 standardized units) because line searches
    that probe lengthscales near zero are what broke BoTorch's PairwiseGP fits
    (botorch PR #1425); the outputscale lies in ``[1e-3, 1e3]``. ``variance_scale``
    puts the default outputscale prior and start in the kernel's units (see
    :func:`default_outputscale_prior`). Priors you pass are copied (yours stay as they
    are) and must fit the `1 x d` lengthscales and the scalar outputscale, else
    :class:`InputDataError` names them.
    """
    check_kernel(kind, "kind")
    d = check_int("d", d)
    check_prior("lengthscale_prior", lengthscale_prior)
    check_prior("outputscale_prior", outputscale_prior)
    # Copies: the kernel's ``.to(float64)`` below would otherwise convert the caller's prior in place.
    ls_prior = copy.deepcopy(lengthscale_prior) if lengthscale_prior is not None else default_lengthscale_prior(d)
    os_prior = copy.deepcopy(outputscale_prior) if outputscale_prior is not None else default_outputscale_prior(variance_scale)
    _check_prior_shape("lengthscale_prior", ls_prior.to(DTYPE), (1, d), f"a prior over the `1 x d` lengthscales (d = {d})")
    _check_prior_shape("outputscale_prior", os_prior.to(DTYPE), (), "a prior over the scalar outputscale")
    ls_init = float(min(max(math.sqrt(d), 0.1), 50.0))
    ls_constraint = GreaterThan(0.025, initial_value=ls_init)
    if kind == "rbf":
        base = RBFKernel(ard_num_dims=d, lengthscale_prior=ls_prior, lengthscale_constraint=ls_constraint)
    else:
        base = MaternKernel(nu=2.5, ard_num_dims=d, lengthscale_prior=ls_prior, lengthscale_constraint=ls_constraint)
    start = 2.0 * variance_scale  # the prior's mode
    kernel = ScaleKernel(base, outputscale_prior=os_prior, outputscale_constraint=Interval(1e-3, 1e3, initial_value=start))
    kernel = kernel.to(DTYPE)
    kernel.base_kernel.lengthscale = torch.full((1, d), ls_init, dtype=DTYPE)
    kernel.outputscale = torch.tensor(start, dtype=DTYPE)
    return kernel


def _check_prior_shape(name: str, prior: gpytorch.priors.Prior, shape: tuple[int, ...], expected: str) -> None:
    """InputDataError unless ``prior``'s log density at a value of ``shape`` has ``shape`` (or fewer) elements.

    A prior of another batch shape would fail deep inside GPyTorch, or worse, broadcast
    (a `5 x 1` prior on `1 x d` lengthscales counts the log prior five times).
    """
    value = torch.ones(shape, dtype=DTYPE)
    try:
        log_prob = prior.log_prob(value)
        ok = torch.broadcast_shapes(log_prob.shape, shape) == torch.Size(shape)
    except (RuntimeError, ValueError):
        ok = False
    if not ok:
        actual = f"a {type(prior).__name__} of batch shape {tuple(prior.batch_shape)}" \
                 f" and event shape {tuple(prior.event_shape)}"
        raise InputDataError(name, f"{expected}: batch shape broadcastable to {shape}", actual)


def kernel_kind(kernel: ScaleKernel) -> str:
    """``"rbf"`` or ``"matern52"``: the base kernel of ``kernel``."""
    return "rbf" if isinstance(kernel.base_kernel, RBFKernel) else "matern52"


def _correlation(r2: Tensor, kind: str) -> Tensor:
    if kind == "rbf":
        return torch.exp(-0.5 * r2)
    r = torch.sqrt(r2.clamp_min(1e-36)) * math.sqrt(5.0)  # clamp: finite gradient at r = 0
    return (1 + r + r.pow(2) / 3) * torch.exp(-r)


def stationary_kernel(x1: Tensor, x2: Tensor, lengthscale: Tensor, outputscale: Tensor, kind: str) -> Tensor:
    """``outputscale * rho(|x1 - x2| / lengthscale)``: GPyTorch's ``ScaleKernel(RBF | Matern-5/2)`` in plain torch.

    Plain tensor code (no lazy kernel objects) for the hot loops: ELBO steps,
    pathwise draws, NUTS potentials.

    Args:
        x1: `... x n x d`.
        x2: `... x M x d`.
        lengthscale: `... x 1 x d` (broadcast over the leading dims).
        outputscale: `...` (or scalar).

    Returns:
        `... x n x M`.

    Both inputs are shifted by one common point first (the kernel is stationary, so
    the value is the same), as GPyTorch's distance does: the expansion below cancels
    catastrophically for inputs far from the origin (unstandardized features near 1e6).
    """
    shift = (x2 if x2.shape[-2] else x1).detach().mean(-2, keepdim=True)
    a, b = (x1 - shift) / lengthscale, (x2 - shift) / lengthscale
    r2 = (a.pow(2).sum(-1, keepdim=True) + b.pow(2).sum(-1).unsqueeze(-2) - 2 * a @ b.transpose(-1, -2)).clamp_min(0)
    rho = _correlation(r2, kind)
    return outputscale[..., None, None] * rho if outputscale.dim() else outputscale * rho


def stationary_kernel_pairs(x1: Tensor, x2: Tensor, lengthscale: Tensor, outputscale: Tensor, kind: str) -> Tensor:
    """Elementwise ``k(x1[i], x2[i])`` for `n x d` inputs and a `1 x d` lengthscale: `n`."""
    r2 = ((x1 - x2) / lengthscale).pow(2).sum(-1)
    return outputscale * _correlation(r2, kind)


# ------------------------------------------------------------------ features
@dataclass(frozen=True)
class FeatureStandardizer:
    """Affine map of features to zero mean and unit sd, fixed at the first fit.

    Kept across online updates, so the kernel hyperparameters keep their meaning.

    Attributes:
        center: `d`.
        scale: `d` (1 for a constant feature).
    """

    center: Tensor
    scale: Tensor

    @classmethod
    def fit(cls, items: Tensor, *, standardize: bool = True) -> FeatureStandardizer:
        """The standardizer of ``items`` (`n x d`): their mean and sd per feature (0 and 1 with ``standardize=False`` or one item; a constant feature keeps sd 1)."""
        items = items.to(DTYPE)
        d = items.shape[-1]
        if not standardize or items.shape[0] < 2:
            return cls(torch.zeros(d, dtype=DTYPE), torch.ones(d, dtype=DTYPE))
        center = items.mean(0)
        scale = items.std(0)
        scale = torch.where(scale > 1e-8 * (1 + center.abs()), scale, torch.ones_like(scale))
        return cls(center, scale)

    def __call__(self, x: Tensor) -> Tensor:
        return (x.to(DTYPE) - self.center) / self.scale


def exact_distances(a: Tensor, b: Tensor) -> Tensor:
    """Euclidean distances `n x m` between the rows of ``a`` (`n x d`) and ``b`` (`m x d`), row by row.

    ``torch.cdist``'s default turns to ``|a|^2 + |b|^2 - 2 a.b`` above 25 rows, which cancels for features far from
    the origin (unstandardized, near 1e8: distances of order 1 came out as several units) and gives no exact zeros.
    """
    return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist")


def select_inducing_points(x: Tensor, num: int, *, generator: torch.Generator, min_distance: float = 1e-3) -> Tensor:
    """Farthest-point selection of up to ``num`` rows of ``x`` (`n x d`), no near-duplicates.

    Starts from a row drawn with ``generator`` and repeatedly adds the row farthest
    from those chosen; stops early when every remaining row lies within
    ``min_distance`` of a chosen one, so duplicated or near-duplicated items never
    make ``K_ZZ`` singular.

    Returns:
        `M x d` with ``M <= num``.
    """
    check_int("num", num)
    check_float("min_distance", min_distance)
    if not isinstance(generator, torch.Generator):
        raise InputDataError("generator", "a torch.Generator", type(generator).__name__)
    if not isinstance(x, Tensor) or x.dim() != 2 or x.shape[0] == 0:
        raise InputDataError("x", "a non-empty `n x d` tensor", shape_of(x))
    n = x.shape[0]
    first = int(torch.randint(0, n, (1,), generator=generator))
    chosen = [first]
    dist = (x - x[first]).pow(2).sum(-1)
    for _ in range(min(num, n) - 1):
        nxt = int(dist.argmax())
        if float(dist[nxt]) <= min_distance**2:
            break
        chosen.append(nxt)
        dist = torch.minimum(dist, (x - x[nxt]).pow(2).sum(-1))
    return x[torch.tensor(chosen)].clone()


def check_single_rater(data: PreferenceData, model: str) -> None:
    """ModelError naming ``model`` when ``data`` holds more than one rater."""
    if data.raters.numel() > 1:
        raise ModelError(
            f"{model} models one person's utility; the data holds raters {data.raters.tolist()}."
            " Fit one model per rater (data.for_rater(r)) or use HierarchicalLinearReward."
        )
