"""Gaussian-process preference models: a GPyTorch variational GP over the utility.

A GP prior on the utility, ``u ~ GP(0, k)`` with an ARD kernel (lengthscale and
outputscale priors), observed through the shared observation models of
:mod:`papa_bayes.models.likelihoods`: pairwise comparisons (probit or logit, ties
allowed) and like/dislike ratings, all on utilities in noise units.

:class:`PreferenceGP` is the model specification (what ``fit`` receives, like
``LinearReward``); :class:`VariationalPreferenceGP` is the GPyTorch
``ApproximateGP`` it builds: inducing points ``Z``, a whitened Cholesky variational
distribution ``q(v) = N(m, C C^T)`` with ``u(Z) = L v`` (``L L^T = K_ZZ``), trained
by the ELBO of Hensman et al. (2015) with a pairwise likelihood.

The pairwise likelihood needs the joint marginal of ``u(a) - u(b)``, which
GPyTorch's ``VariationalStrategy`` (built for one-point likelihoods) does not
expose cheaply, so :meth:`VariationalPreferenceGP.pairwise_marginals` computes it
from the same parameters: with ``A = L^{-1} K_{Z,[a, b]}`` and ``a_d = A_a - A_b``,
``mean = a_d^T m`` and ``var = k(a,a) + k(b,b) - 2 k(a,b) - |a_d|^2 + |C^T a_d|^2``.
Calling the module on ``n x d`` inputs gives GPyTorch's usual joint ``q(u(X))``
(the tests check both agree).
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING, Any

import gpytorch
import numpy as np
import torch
from gpytorch.distributions import MultivariateNormal
from gpytorch.kernels import ScaleKernel
from gpytorch.priors import LogNormalPrior, NormalPrior
from gpytorch.variational import CholeskyVariationalDistribution, VariationalStrategy
from linear_operator.utils.cholesky import psd_safe_cholesky
from torch import Tensor

from papa_bayes.data import PreferenceData, check_preference_data
from papa_bayes.exceptions import ModelError
from papa_bayes.models.gp_kernels import (  # noqa: F401  (re-exported: the GP's building blocks)
    DTYPE,
    KERNELS,
    FeatureStandardizer,
    check_kernel,
    check_prior,
    check_single_rater,
    default_lengthscale_prior,
    default_outputscale_prior,
    exact_distances,
    kernel_kind,
    make_kernel,
    select_inducing_points,
    stationary_kernel,
    stationary_kernel_pairs,
)
from papa_bayes.checks import check_bool, check_float, check_int
from papa_bayes.models.likelihoods import check_link, check_prior_pair, comparison_log_probs, log_cdf

if TYPE_CHECKING:
    from papa_bayes.inference.gp_posterior import GPPosterior

__all__ = ["PreferenceGP", "PreferenceLikelihood", "VariationalPreferenceGP"]


# ------------------------------------------------------------------ likelihood
@functools.lru_cache(maxsize=8)
def _gauss_hermite(num: int) -> tuple[Tensor, Tensor]:
    """Nodes and weights of ``E f(Z)``, ``Z ~ N(0, 1)``: `num` each."""
    nodes, weights = np.polynomial.hermite.hermgauss(num)
    return torch.tensor(nodes * math.sqrt(2.0), dtype=DTYPE), torch.tensor(weights / math.sqrt(math.pi), dtype=DTYPE)


class PreferenceLikelihood(gpytorch.Module):
    """Pairwise (and like/dislike) likelihood on utilities in noise units.

    Comparisons: :func:`~papa_bayes.models.likelihoods.comparison_log_probs`
    (Bradley-Terry/Thurstone; Davidson/Glenn-David ties). Ratings: ``P(like) =
    link(u - threshold)``. The tie strength (LogNormal prior) and the threshold
    (Normal prior) are hyperparameters, fitted with the kernel's.

    Expectations under a Gaussian ``u(a) - u(b) ~ N(mean, var)`` use
    Gauss-Hermite quadrature (the integrand is one-dimensional).

    Args:
        link: ``"probit"`` or ``"logit"``.
        ties: model ties.
        ratings: model like/dislike ratings (adds the threshold).
        tie_prior: (loc, scale) of the LogNormal prior of the tie strength.
        threshold_prior_scale: sd of the Normal prior of the threshold.
        num_quadrature: Gauss-Hermite nodes.
    """

    def __init__(
        self,
        *,
        link: str = "probit",
        ties: bool = False,
        ratings: bool = False,
        tie_prior: tuple[float, float] = (math.log(0.5), 1.0),
        threshold_prior_scale: float = 1.0,
        num_quadrature: int = 16,
    ) -> None:
        super().__init__()
        self.link = check_link(link)
        self.ties = check_bool("ties", ties)
        self.ratings = check_bool("ratings", ratings)
        tie_prior = check_prior_pair("tie_prior", tie_prior)
        threshold_prior_scale = check_float("threshold_prior_scale", threshold_prior_scale, strict=True)
        nodes, weights = _gauss_hermite(check_int("num_quadrature", num_quadrature))
        self.register_buffer("gh_nodes", nodes.clone())
        self.register_buffer("gh_weights", weights.clone())
        if self.ties:
            self.register_parameter("raw_tie_strength", torch.nn.Parameter(torch.tensor(math.exp(tie_prior[0]), dtype=DTYPE).log()))
            self.register_prior(
                "tie_strength_prior",
                LogNormalPrior(torch.tensor(tie_prior[0], dtype=DTYPE), torch.tensor(tie_prior[1], dtype=DTYPE)),
                lambda m: m.tie_strength,
            )
        if self.ratings:
            self.register_parameter("threshold", torch.nn.Parameter(torch.tensor(0.0, dtype=DTYPE)))
            self.register_prior(
                "threshold_prior",
                NormalPrior(torch.tensor(0.0, dtype=DTYPE), torch.tensor(threshold_prior_scale, dtype=DTYPE)),
                lambda m: m.threshold,
            )

    @property
    def tie_strength(self) -> Tensor | None:
        """The tie parameter (Davidson's nu or Glenn-David's tau), or None without ties."""
        return self.raw_tie_strength.exp() if self.ties else None

    def comparison_log_prob(self, diff: Tensor, ties: Tensor) -> Tensor:
        """log p(observed outcome | u(first) - u(second) = ``diff``): broadcast `... x m`."""
        if not self.ties:
            return log_cdf(diff, self.link)  # P(first wins) = F(diff)
        lp = comparison_log_probs(diff, self.link, self.tie_strength)
        return torch.where(ties, lp[..., 2], lp[..., 0])

    def rating_log_prob(self, utility: Tensor, like: Tensor) -> Tensor:
        """log p(like / dislike | u): broadcast `... x k`; ``like`` is `k` bool."""
        margin = utility - self.threshold
        return log_cdf(torch.where(like, margin, -margin), self.link)

    def _quadrature(self, mean: Tensor, var: Tensor) -> Tensor:
        """Gauss-Hermite abscissae of N(mean, var): `K x ...`."""
        return mean + var.clamp_min(1e-12).sqrt() * self.gh_nodes.reshape(-1, *([1] * mean.dim()))

    def _expect(self, log_p: Tensor) -> Tensor:
        return (log_p * self.gh_weights.reshape(-1, *([1] * (log_p.dim() - 1)))).sum(0)

    def expected_comparison_log_prob(self, mean: Tensor, var: Tensor, ties: Tensor) -> Tensor:
        """E log p(outcome | d) for ``d ~ N(mean, var)``: `m`."""
        return self._expect(self.comparison_log_prob(self._quadrature(mean, var), ties))

    def expected_rating_log_prob(self, mean: Tensor, var: Tensor, like: Tensor) -> Tensor:
        """E over N(mean, var) of each rating's log-likelihood, by Gauss-Hermite quadrature: `k`."""
        return self._expect(self.rating_log_prob(self._quadrature(mean, var), like))

    def log_prior(self) -> Tensor:
        """Log prior density of the likelihood's parameters (tie strength, like threshold): a scalar."""
        total = torch.zeros((), dtype=DTYPE)
        for _, module, prior, closure, _ in self.named_priors():
            total = total + prior.log_prob(closure(module)).sum()
        return total


# -------------------------------------------------------------- the GPyTorch model
class VariationalPreferenceGP(gpytorch.models.ApproximateGP):
    """Sparse variational GP over the utility (Hensman et al. 2015), whitened.

    ``forward`` is the prior; calling the module gives ``q(u(X))`` through GPyTorch's
    ``VariationalStrategy``. :meth:`pairwise_marginals` and :meth:`marginals` give the
    marginals the preference ELBO needs, in one triangular solve per minibatch.

    Args:
        inducing_points: `M x d` in standardized feature space.
        kernel: from :func:`make_kernel`.
        learn_inducing_locations: optimize ``Z`` with the ELBO.
        jitter: relative diagonal jitter of ``K_ZZ`` (times the outputscale).
    """

    def __init__(
        self,
        inducing_points: Tensor,
        kernel: ScaleKernel,
        *,
        learn_inducing_locations: bool = False,
        jitter: float = 1e-6,
    ) -> None:
        M = inducing_points.shape[0]
        q = CholeskyVariationalDistribution(M)
        strategy = VariationalStrategy(
            self, inducing_points.to(DTYPE), q, learn_inducing_locations=learn_inducing_locations, jitter_val=jitter
        )
        super().__init__(strategy)
        self.mean_module = gpytorch.means.ZeroMean()
        self.covar_module = kernel
        self.jitter = float(jitter)
        self.to(DTYPE)
        with torch.no_grad():  # q(v) = prior, set here so GPyTorch never draws from the global RNG
            q.variational_mean.zero_()
            q.chol_variational_covar.copy_(torch.eye(M, dtype=DTYPE))
        strategy.variational_params_initialized.fill_(1)

    def forward(self, x: Tensor) -> MultivariateNormal:
        return MultivariateNormal(self.mean_module(x), self.covar_module(x))

    # --------------------------------------------------------- variational pieces
    @property
    def inducing_points(self) -> Tensor:
        """`M x d` inducing points (standardized features)."""
        return self.variational_strategy.inducing_points

    @property
    def variational_mean(self) -> Tensor:
        """Whitened mean `m`: `M`."""
        return self.variational_strategy._variational_distribution.variational_mean

    @property
    def variational_chol(self) -> Tensor:
        """Whitened covariance factor `C` (lower triangular): `M x M`."""
        return self.variational_strategy._variational_distribution.chol_variational_covar.tril()

    @property
    def kind(self) -> str:
        """``"rbf"`` or ``"matern52"``: the kernel's kind."""
        return kernel_kind(self.covar_module)

    def kernel(self, x1: Tensor, x2: Tensor) -> Tensor:
        """``covar_module(x1, x2)`` as a dense `n x M` tensor, without GPyTorch's lazy machinery."""
        kern = self.covar_module
        return stationary_kernel(x1, x2, kern.base_kernel.lengthscale, kern.outputscale, self.kind)

    def kernel_pairs(self, x1: Tensor, x2: Tensor) -> Tensor:
        """``k(x1[i], x2[i])``: `n`."""
        kern = self.covar_module
        return stationary_kernel_pairs(x1, x2, kern.base_kernel.lengthscale, kern.outputscale, self.kind)

    def prior_variance(self, x: Tensor) -> Tensor:
        """``k(x, x)`` (the outputscale, the kernel being stationary): `n`."""
        return self.covar_module.outputscale.expand(x.shape[0])

    def inducing_cholesky(self) -> Tensor:
        """`L` with ``L L^T = K_ZZ + jitter * outputscale * I``: `M x M`."""
        Z = self.inducing_points
        K = self.kernel(Z, Z)
        jitter = self.jitter * self.covar_module.outputscale.detach()
        K = K + jitter * torch.eye(K.shape[-1], dtype=K.dtype)
        return psd_safe_cholesky(K)

    def projection(self, x: Tensor, L: Tensor | None = None) -> Tensor:
        """``A = L^{-1} K_{Z x}``: `M x n`."""
        L = self.inducing_cholesky() if L is None else L
        return torch.linalg.solve_triangular(L, self.kernel(self.inducing_points, x), upper=False)

    def marginals(self, x: Tensor, L: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Mean and variance of ``q(u(x))`` at `n x d` inputs: two `n` tensors."""
        A = self.projection(x, L)
        C = self.variational_chol
        var = self.prior_variance(x) - A.pow(2).sum(0) + (C.T @ A).pow(2).sum(0)
        return A.T @ self.variational_mean, var.clamp_min(1e-12)

    def pairwise_marginals(self, first: Tensor, second: Tensor, L: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Mean and variance of ``u(first) - u(second)`` under ``q``: two `m` tensors.

        Args:
            first, second: `m x d` standardized features.
        """
        m = first.shape[0]
        A = self.projection(torch.cat([first, second]), L)
        Ad = A[:, :m] - A[:, m:]
        C = self.variational_chol
        prior = self.prior_variance(first) + self.prior_variance(second) - 2 * self.kernel_pairs(first, second)
        var = prior - Ad.pow(2).sum(0) + (C.T @ Ad).pow(2).sum(0)
        return Ad.T @ self.variational_mean, var.clamp_min(1e-12)

    def kl_divergence(self, C: Tensor | None = None) -> Tensor:
        """KL(q(v) || N(0, I)) in closed form (``C``: the factor, if already at hand)."""
        m, C = self.variational_mean, self.variational_chol if C is None else C
        M = m.shape[0]
        logdet = 2 * C.diagonal().abs().clamp_min(1e-30).log().sum()
        return 0.5 * (C.pow(2).sum() + m.pow(2).sum() - M - logdet)

    def hyper_log_prior(self) -> Tensor:
        """Log prior density of the kernel's hyperparameters: a scalar."""
        total = torch.zeros((), dtype=DTYPE)
        for _, module, prior, closure, _ in self.covar_module.named_priors():
            total = total + prior.log_prob(closure(module)).sum()
        return total

    def extended(self, new_points: Tensor) -> VariationalPreferenceGP:
        """A copy with more inducing points and the same ``q(u)`` at every input.

        In the whitened parameterization the new coordinates of ``v`` get the prior
        N(0, 1), independent of the old ones: ``u(Z_new) | u(Z)`` is then the prior
        conditional, so the process ``q(u(.))`` is unchanged.
        """
        import copy

        M, k = self.inducing_points.shape[0], new_points.shape[0]
        out = VariationalPreferenceGP(
            torch.cat([self.inducing_points.detach(), new_points.to(DTYPE)]),
            copy.deepcopy(self.covar_module),
            learn_inducing_locations=self.variational_strategy.inducing_points.requires_grad,
            jitter=self.jitter,
        )
        with torch.no_grad():
            out.variational_mean[:M] = self.variational_mean.detach()
            chol = torch.eye(M + k, dtype=DTYPE)
            chol[:M, :M] = self.variational_chol.detach()
            out.variational_strategy._variational_distribution.chol_variational_covar.copy_(chol)
        return out


# ------------------------------------------------------------------ the specification
class PreferenceGP:
    """GP preference model trained by the ELBO (or sampled with NUTS for small data).

    The utility (noise units) has a GP prior with an ARD kernel; comparisons follow
    the probit (Thurstone; Chu & Ghahramani 2005) or logit (Bradley-Terry) link,
    with Davidson / Glenn-David ties; like/dislike ratings follow ``link(u - c)``
    with a learned threshold ``c``. Features are standardized with the first fit's
    items.

    Methods (``fit(PreferenceGP(), data, method=...)``):

    - ``"elbo"`` (default): sparse variational GP with ``num_inducing`` inducing
      points, kernel and likelihood hyperparameters by type-II maximum likelihood
      (MAP under their priors) on the ELBO. Full-batch L-BFGS when the data fit in
      one batch; beyond, minibatches of comparisons: natural-gradient steps on the
      variational distribution with Adam on the hyperparameters (10^4 comparisons
      over 5,000 items in about half a minute on one CPU thread).
      Online ``update``: a few natural-gradient steps from the previous posterior.
    - ``"nuts"``: fully Bayesian: NUTS over the kernel (and tie/threshold)
      hyperparameters jointly with the (whitened) utilities of the observed items,
      exact likelihood. Cubic in the number of items: for small data (<= 300 items).

    Args:
        link: ``"probit"`` or ``"logit"``.
        ties: model ties (else data with ties raise :class:`ModelError`).
        kernel: ``"rbf"`` or ``"matern52"``.
        num_inducing: most inducing points (ELBO); fewer when the data have fewer
            distinct items.
        learn_inducing_locations: also optimize the inducing points (off by default:
            the farthest-point choice among the observed items covers them well, and
            fixed points let full-batch L-BFGS converge in tens of iterations).
        lengthscale_prior / outputscale_prior: GPyTorch priors (defaults:
            :func:`default_lengthscale_prior`, :func:`default_outputscale_prior`).
        tie_prior: (loc, scale) of the LogNormal prior of the tie strength.
        threshold_prior_scale: sd of the Normal prior of the like threshold.
        standardize: standardize features with the training items' mean and sd.
        jitter: relative jitter on ``K_ZZ`` (NUTS uses at least 1e-8: its sampler's
            Cholesky has no retry, where the ELBO's adds jitter when one fails).

    Example:
        A person who likes items near the origin (a utility no linear model has):

        >>> import torch
        >>> from papa_bayes import fit
        >>> from papa_bayes.models import PreferenceGP
        >>> from papa_bayes.users import SimulatedUser, simulate_comparisons
        >>> gen = torch.Generator().manual_seed(0)
        >>> items = torch.randn(40, 2, generator=gen, dtype=torch.float64)
        >>> person = SimulatedUser(lambda x: -(x ** 2).sum(-1), link="probit", rationality=3.0)
        >>> data = simulate_comparisons(person, items, 100, generator=gen)
        >>> post = fit(PreferenceGP(link="probit"), data, method="elbo", seed=0)
        >>> candidates = torch.tensor([[0.0, 0.0], [2.0, 2.0]], dtype=torch.float64)
        >>> u = post.utility(candidates)  # `s x n` joint draws
        >>> u.shape[1], bool(u.mean(0)[0] > u.mean(0)[1])
        (2, True)
    """

    METHODS = ("elbo", "nuts")
    default_method = "elbo"

    def __init__(
        self,
        *,
        link: str = "probit",
        ties: bool = False,
        kernel: str = "rbf",
        num_inducing: int = 128,
        learn_inducing_locations: bool = False,
        lengthscale_prior: gpytorch.priors.Prior | None = None,
        outputscale_prior: gpytorch.priors.Prior | None = None,
        tie_prior: tuple[float, float] = (math.log(0.5), 1.0),
        threshold_prior_scale: float = 1.0,
        standardize: bool = True,
        jitter: float = 1e-6,
    ) -> None:
        self.link = check_link(link)
        self.ties = check_bool("ties", ties)
        self.kernel = check_kernel(kernel)
        self.num_inducing = check_int("num_inducing", num_inducing)
        self.learn_inducing_locations = check_bool("learn_inducing_locations", learn_inducing_locations)
        self.lengthscale_prior = check_prior("lengthscale_prior", lengthscale_prior)
        self.outputscale_prior = check_prior("outputscale_prior", outputscale_prior)
        self.tie_prior = check_prior_pair("tie_prior", tie_prior)
        self.threshold_prior_scale = check_float("threshold_prior_scale", threshold_prior_scale, strict=True)
        self.standardize = check_bool("standardize", standardize)
        self.jitter = check_float("jitter", jitter)

    # ------------------------------------------------------------- building
    def check_data(self, data: PreferenceData) -> None:
        """Raise on data this model cannot use."""
        check_preference_data(data)
        data.require_observations()
        check_single_rater(data, type(self).__name__)
        if data.has_ties and not self.ties:
            raise ModelError("The data holds ties but the model was built with ties=False; pass ties=True.")

    def make_kernel(self, d: int) -> ScaleKernel:
        """A fresh ARD kernel on `d` features, with this specification's priors."""
        return make_kernel(d, self.kernel, lengthscale_prior=self.lengthscale_prior, outputscale_prior=self.outputscale_prior)

    def make_likelihood(self, data: PreferenceData) -> PreferenceLikelihood:
        """The likelihood for ``data``'s kinds of answers: a threshold only with ratings; a tie strength whenever
        the model has ties, even before any comparison (then at its prior), so that the posterior predicts the
        three outcomes of a comparison and scores tied answers."""
        return PreferenceLikelihood(
            link=self.link, ties=self.ties, ratings=data.num_ratings > 0,
            tie_prior=self.tie_prior, threshold_prior_scale=self.threshold_prior_scale,
        )

    def build(
        self, data: PreferenceData, *, seed: int = 0
    ) -> tuple[VariationalPreferenceGP, PreferenceLikelihood, FeatureStandardizer]:
        """The untrained GPyTorch modules for ``data`` (inducing points from the observed items)."""
        self.check_data(data)
        transform = FeatureStandardizer.fit(data.items, standardize=self.standardize)
        X = transform(data.items)
        observed = torch.unique(torch.cat([data.comparisons.reshape(-1), data.ratings[:, 0]]))
        gen = torch.Generator().manual_seed(int(seed))
        Z = select_inducing_points(X[observed], self.num_inducing, generator=gen)
        gp = VariationalPreferenceGP(
            Z, self.make_kernel(data.num_features), learn_inducing_locations=self.learn_inducing_locations, jitter=self.jitter
        )
        return gp, self.make_likelihood(data), transform

    def fit(self, data: PreferenceData, *, method: str | None = None, seed: int = 0, **options: Any) -> GPPosterior:
        """Fit to ``data``; see :func:`papa_bayes.inference.gp_fit.fit_preference_gp` for ``options``."""
        from papa_bayes.inference.gp_fit import fit_preference_gp  # the one hop up: models -> inference

        return fit_preference_gp(self, data, method=method or self.default_method, seed=seed, **options)

    def __repr__(self) -> str:
        return (
            f"PreferenceGP(link={self.link!r}, ties={self.ties}, kernel={self.kernel!r}, num_inducing={self.num_inducing},"
            f" standardize={self.standardize})"
        )
