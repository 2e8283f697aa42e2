"""The ELBO of :class:`~papa_bayes.models.PreferenceGP` and the optimizers that maximize it.

- Full batch (data within ``batch_size``): L-BFGS over the variational parameters
  and the hyperparameters together.
- Minibatches: natural-gradient steps on ``q`` (Salimbeni et al. 2018) with Adam on
  the hyperparameters, after a full-batch L-BFGS start on a one-batch subset.
- Online updates (kernel frozen): projections cached once; full-batch natural
  steps on ``q`` (a few from the warm start), or stratified minibatches that always
  hold the new answers.
"""

from __future__ import annotations

import copy
import time
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from papa_bayes.data import PreferenceData
from papa_bayes.exceptions import InferenceError, InputDataError
from papa_bayes.models.gp import DTYPE, PreferenceLikelihood, VariationalPreferenceGP

__all__ = ["TrainingData", "NegativeElbo", "train_elbo"]


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


class TrainingData:
    """``data`` for the ELBO, indexed by its distinct observed items (standardized `u x d`)."""

    def __init__(self, data: PreferenceData, X: Tensor) -> None:
        m, k = data.num_comparisons, data.num_ratings
        observed, inv = torch.unique(torch.cat([data.comparisons.reshape(-1), data.ratings[:, 0]]), return_inverse=True)
        self.X = X[observed]
        self.first, self.second, self.rated = inv[0 : 2 * m : 2], inv[1 : 2 * m : 2], inv[2 * m :]
        self.ties = data.ties
        self.like = data.ratings[:, 1] > 0
        self.m, self.k = m, k

    def permuted(self, perm_c: Tensor, perm_r: Tensor) -> TrainingData:
        """A copy with the comparisons in order ``perm_c`` and the ratings in order ``perm_r`` (for minibatches)."""
        out = copy.copy(self)
        out.first, out.second, out.ties = self.first[perm_c], self.second[perm_c], self.ties[perm_c]
        out.rated, out.like = self.rated[perm_r], self.like[perm_r]
        return out


class NegativeElbo:
    """-(ELBO + log hyperprior) / (m + k) from projections of the distinct items in a batch.

    The expensive part, ``P = K_{items,Z} L^{-T}`` (`u x M`, rows gathered per
    comparison), is computed once per distinct item rather than per comparison end;
    with the kernel frozen (online updates) it is computed once and cached, leaving
    only ``P C`` per step.
    """

    def __init__(self, gp: VariationalPreferenceGP, lik: PreferenceLikelihood, td: TrainingData, *, cache_projection: bool) -> None:
        self.gp, self.lik, self.td = gp, lik, td
        self.cache: Tensor | None = None
        self.prior_diff_var: Tensor | None = None
        self.kernel_log_prior: Tensor | None = None
        if cache_projection:
            with torch.no_grad():
                P = gp.projection(td.X).T.contiguous()
                self.cache = P
                # Var[u(a) - u(b) | u(Z)] of every comparison and Var[u(x) | u(Z)] of every rating: fixed with the kernel.
                k_ab = gp.kernel_pairs(td.X[td.first], td.X[td.second])
                prior = gp.prior_variance(td.X)
                self.prior_diff_var = prior[td.first] + prior[td.second] - 2 * k_ab - (P[td.first] - P[td.second]).pow(2).sum(-1)
                self.prior_rating_var = prior[td.rated] - P[td.rated].pow(2).sum(-1)
                self.kernel_log_prior = gp.hyper_log_prior()

    def __call__(
        self, comp_idx: Tensor | None, comp_weight: Tensor | float, rate_idx: Tensor | None, rate_weight: Tensor | float,
        q: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        """The loss on a batch; with ``q = (m, S)`` (natural-gradient steps) the KL term is left out."""
        gp, lik, td = self.gp, self.lik, self.td
        comp_idx = comp_idx if comp_idx is not None else torch.zeros(0, dtype=torch.long)
        rate_idx = rate_idx if rate_idx is not None else torch.zeros(0, dtype=torch.long)
        ia, ib, ir = td.first[comp_idx], td.second[comp_idx], td.rated[rate_idx]
        if self.cache is not None:
            X, P = td.X, self.cache
        else:
            items, inv = torch.unique(torch.cat([ia, ib, ir]), return_inverse=True)
            nc = ia.numel()
            ia, ib, ir = inv[:nc], inv[nc : 2 * nc], inv[2 * nc :]
            X = td.X[items]
            P = gp.projection(X).T
        C = gp.variational_chol
        if q is None:
            vmean, CP = gp.variational_mean, P @ C
            quad_pair = lambda: (CP[ia] - CP[ib]).pow(2).sum(-1)  # noqa: E731
            quad_item = lambda: CP[ir].pow(2).sum(-1)  # noqa: E731
        else:
            vmean, SP = q[0], P @ q[1]
            quad_pair = lambda: ((P[ia] - P[ib]) * (SP[ia] - SP[ib])).sum(-1)  # noqa: E731
            quad_item = lambda: (P[ir] * SP[ir]).sum(-1)  # noqa: E731
        mean = P @ vmean
        total = torch.zeros((), dtype=DTYPE)
        if ia.numel():
            if self.prior_diff_var is not None:
                cond_var = self.prior_diff_var[comp_idx]
            else:
                prior = gp.prior_variance(X)
                k_ab = gp.kernel_pairs(X[ia], X[ib])
                cond_var = prior[ia] + prior[ib] - 2 * k_ab - (P[ia] - P[ib]).pow(2).sum(-1)
            var = cond_var + quad_pair()
            ell = lik.expected_comparison_log_prob(mean[ia] - mean[ib], var.clamp_min(1e-12), td.ties[comp_idx])
            total = total + (comp_weight * ell).sum()
        if ir.numel():
            if self.cache is not None:
                cond_var = self.prior_rating_var[rate_idx]
            else:
                cond_var = gp.prior_variance(X)[ir] - P[ir].pow(2).sum(-1)
            var = cond_var + quad_item()
            ell = lik.expected_rating_log_prob(mean[ir], var.clamp_min(1e-12), td.like[rate_idx])
            total = total + (rate_weight * ell).sum()
        kernel_log_prior = self.kernel_log_prior if self.kernel_log_prior is not None else gp.hyper_log_prior()
        elbo = total + kernel_log_prior + lik.log_prior()
        if q is None:
            elbo = elbo - gp.kl_divergence(C)
        return -elbo / max(td.m + td.k, 1)


def _trainable(*modules: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for mod in modules for p in mod.parameters() if p.requires_grad]


def _lbfgs(params: list[torch.nn.Parameter], objective, max_iter: int, bar: Any = None) -> list[float]:
    losses: list[float] = []
    opt = torch.optim.LBFGS(
        params, lr=1.0, max_iter=max_iter, max_eval=int(max_iter * 1.25) + 5, history_size=20,
        line_search_fn="strong_wolfe", tolerance_grad=1e-7, tolerance_change=1e-6,
    )

    def closure() -> Tensor:
        opt.zero_grad()
        loss = objective()
        if not torch.isfinite(loss):
            raise InferenceError("The ELBO became non-finite during L-BFGS.")
        loss.backward()
        losses.append(float(loss.detach()))
        if bar is not None:
            bar.update(1)
        return loss

    opt.step(closure)
    return losses


def _natural_step(gp: VariationalPreferenceGP, m: Tensor, S: Tensor, grad_m: Tensor, grad_S: Tensor, scale: float, lr: float) -> bool:
    """One natural-gradient step on the whitened ``q(v) = N(m, S)`` (Salimbeni et al. 2018).

    ``grad_m``, ``grad_S``: gradients of the *loss* (``-ELBO / scale`` without KL).
    In natural parameters ``theta = (S^-1 m, -S^-1 / 2)`` the natural gradient is the
    gradient in expectation parameters ``(m, S + m m^T)``; for log-concave
    likelihoods the new precision is a convex combination of positive definite
    matrices, so the step keeps ``S`` positive definite for ``lr <= 1``.
    Returns False (and changes nothing) when the step fails.
    """
    M = m.shape[0]
    eye = torch.eye(M, dtype=DTYPE)
    gS = -scale * 0.5 * (grad_S + grad_S.T)  # d ELBO / dS, expected log-likelihood part
    gm = -scale * grad_m
    prec = torch.cholesky_inverse(torch.linalg.cholesky(S))
    gS = gS - 0.5 * (eye - prec)  # minus d KL / dS
    gm = gm - m  # minus d KL / dm
    theta1 = prec @ m + lr * (gm - 2 * gS @ m)
    theta2 = -0.5 * prec + lr * gS
    R, info = torch.linalg.cholesky_ex(-2 * theta2)
    if int(info) != 0:
        return False
    S_new = torch.cholesky_inverse(R)
    C_new, info = torch.linalg.cholesky_ex(0.5 * (S_new + S_new.T))
    if int(info) != 0 or not bool(torch.isfinite(C_new).all()):
        return False
    q = gp.variational_strategy._variational_distribution
    q.variational_mean.copy_(S_new @ theta1)
    q.chol_variational_covar.copy_(C_new)
    return True


def _natural_refine(objective: NegativeElbo, *, max_steps: int, tol: float = 1e-6) -> list[float]:
    """Full-batch natural-gradient steps on ``q`` with the hyperparameters fixed (online updates).

    A step of size 1 is the fixed point of the variational Gaussian (for a Gaussian
    likelihood it lands on the optimum); from a warm start a few steps converge.
    A step that lowers the ELBO is retried at half size.
    """
    gp, td = objective.gp, objective.td
    all_c = torch.arange(td.m) if td.m else None
    all_r = torch.arange(td.k) if td.k else None
    scale = float(max(td.m + td.k, 1))
    q = gp.variational_strategy._variational_distribution

    def loss_of(m: Tensor, S: Tensor, C: Tensor) -> Tensor:
        kl = 0.5 * (S.diagonal().sum() + m.pow(2).sum() - m.shape[0] - 2 * C.diagonal().abs().log().sum())
        return objective(all_c, 1.0, all_r, 1.0, q=(m, S)) + kl / scale

    losses: list[float] = []
    for _ in range(max_steps):
        m0, C0 = gp.variational_mean.detach().clone(), gp.variational_chol.detach().clone()
        mean, S = m0.clone().requires_grad_(True), (C0 @ C0.T).requires_grad_(True)
        loss = objective(all_c, 1.0, all_r, 1.0, q=(mean, S))
        loss.backward()
        with torch.no_grad():
            before = float(loss_of(m0, C0 @ C0.T, C0))
            if not losses:
                losses.append(before)
            lr, after = 1.0, float("inf")
            while lr > 1e-3:
                if _natural_step(gp, m0, C0 @ C0.T, mean.grad, S.grad, scale, lr):
                    C1 = gp.variational_chol
                    after = float(loss_of(gp.variational_mean, C1 @ C1.T, C1))
                    if after <= before:
                        break
                q.variational_mean.copy_(m0)
                q.chol_variational_covar.copy_(C0)
                lr /= 2
            if after > before:
                break
            losses.append(after)
            if before - after < tol:
                break
    return losses


class _Batches:
    """Minibatch indices and weights, drawn with replacement.

    The first ``num_always`` rows (``update`` puts the new answers there) join every
    batch with weight 1; the others are sampled with weight ``rest / batch``: an
    unbiased, stratified estimate of the full ELBO that never misses the newest
    answers.
    """

    def __init__(self, td: TrainingData, batch_size: int, num_always: tuple[int, int], generator: torch.Generator) -> None:
        self.m, self.k, self.always, self.generator = td.m, td.k, num_always, generator
        rest_c, rest_r = td.m - num_always[0], td.k - num_always[1]
        self.b_c = max(1, round(batch_size * rest_c / max(rest_c + rest_r, 1))) if rest_c else 0
        self.b_r = max(1, batch_size - self.b_c) if rest_r else 0
        ones = lambda n: torch.ones(n, dtype=DTYPE)  # noqa: E731
        self.w_c = torch.cat([ones(num_always[0]), torch.full((self.b_c,), rest_c / max(self.b_c, 1), dtype=DTYPE)])
        self.w_r = torch.cat([ones(num_always[1]), torch.full((self.b_r,), rest_r / max(self.b_r, 1), dtype=DTYPE)])

    def draw(self) -> tuple[Tensor | None, Tensor, Tensor | None, Tensor]:
        (a_c, a_r), g = self.always, self.generator

        def rows(always: int, n: int, drawn: int) -> Tensor | None:
            if not n:
                return None
            if not drawn:  # every row is new (an update's first answers of this kind): nothing to sample from
                return torch.arange(always)
            return torch.cat([torch.arange(always), torch.randint(always, n, (drawn,), generator=g)])

        return rows(a_c, self.m, self.b_c), self.w_c, rows(a_r, self.k, self.b_r), self.w_r


def _natural_start(gp: VariationalPreferenceGP, lik: PreferenceLikelihood, td: TrainingData, steps: int = 8) -> None:
    """Move ``q`` near its optimum for the initial hyperparameters before the joint L-BFGS.

    A few cheap natural-gradient steps (projections cached) replace the first
    L-BFGS iterations, which mostly fit ``q``: about 40% fewer ELBO evaluations.
    """
    frozen = [p for p in (*gp.covar_module.parameters(), *lik.parameters()) if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        _natural_refine(NegativeElbo(gp, lik, td, cache_projection=True), max_steps=steps, tol=1e-4)
    finally:
        for p in frozen:
            p.requires_grad_(True)


def _ngd_adam(
    objective: NegativeElbo, *, num_steps: int, batch_size: int, learning_rate: float, natural_lr: float,
    generator: torch.Generator, num_always: tuple[int, int] = (0, 0), bar: Any = None,
) -> list[float]:
    """Minibatch training: natural-gradient steps on ``q``, Adam on the hyperparameters (see :class:`_Batches`)."""
    gp, lik, td = objective.gp, objective.lik, objective.td
    batches = _Batches(td, batch_size, num_always, generator)
    q = gp.variational_strategy._variational_distribution
    q.variational_mean.requires_grad_(False)
    q.chol_variational_covar.requires_grad_(False)
    hypers = _trainable(gp, lik)
    opt = torch.optim.Adam(hypers, lr=learning_rate) if hypers else None
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.1 ** (i / max(num_steps, 1))) if opt else None
    scale = float(max(td.m + td.k, 1))
    losses: list[float] = []
    try:
        for step in range(num_steps):
            ci, weights_c, ri, weights_r = batches.draw()
            mean = gp.variational_mean.detach().clone().requires_grad_(True)
            C = gp.variational_chol.detach()
            S = (C @ C.T).requires_grad_(True)
            if opt is not None:
                opt.zero_grad()
            loss = objective(ci, weights_c, ri, weights_r, q=(mean, S))
            if not torch.isfinite(loss):
                raise InferenceError("The ELBO became non-finite during minibatch training; try a smaller learning_rate.")
            loss.backward()
            with torch.no_grad():
                kl = gp.kl_divergence()  # of the q the loss was computed at
                # short ramp up (the first batches move q the most), then decay tenfold to average out batch noise
                lr = natural_lr * min(1.0, (step + 1) / 10) * 0.1 ** (step / max(num_steps, 1))
                while not _natural_step(gp, mean.detach(), S.detach(), mean.grad, S.grad, scale, lr) and lr > 1e-4:
                    lr /= 4
            if opt is not None:
                opt.step()
                sched.step()
            losses.append(float(loss.detach() + kl / scale))
            if bar is not None:
                bar.update(1)
    finally:
        q.variational_mean.requires_grad_(True)
        q.chol_variational_covar.requires_grad_(True)
    return losses


def _adam(
    params: list[torch.nn.Parameter], objective: NegativeElbo, *, num_steps: int, batch_size: int, learning_rate: float,
    generator: torch.Generator, num_always: tuple[int, int] = (0, 0), bar: Any = None,
) -> list[float]:
    """Adam on everything over minibatches (see :class:`_Batches`)."""
    batches = _Batches(objective.td, batch_size, num_always, generator)
    opt = torch.optim.Adam(params, lr=learning_rate)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.1 ** (i / max(num_steps, 1)))
    losses: list[float] = []
    for _ in range(num_steps):
        ci, weights_c, ri, weights_r = batches.draw()
        opt.zero_grad()
        loss = objective(ci, weights_c, ri, weights_r)
        if not torch.isfinite(loss):
            raise InferenceError("The ELBO became non-finite during Adam; try a smaller learning_rate.")
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if bar is not None:
            bar.update(1)
    return losses


def train_elbo(
    gp: VariationalPreferenceGP, lik: PreferenceLikelihood, td: TrainingData, *, num_steps: int | None,
    batch_size: int | None, learning_rate: float, seed: int, new_rows: tuple[int, int] | None = None,
    natural_lr: float = 0.3, optimizer: str = "auto", progress_bar: bool = False,
) -> dict[str, Any]:
    """Maximize the ELBO.

    Data that fit in one batch: full-batch L-BFGS over everything. Larger data:
    minibatches, natural-gradient steps on ``q`` with Adam on the hyperparameters
    (``optimizer="ngd"``, the default) or Adam on everything (``"adam"``; not on
    updates, ``new_rows``, which always take natural-gradient steps on ``q``).
    ``progress_bar``: a tqdm bar counting ELBO evaluations (L-BFGS) and minibatch steps.
    """
    with tqdm(desc="PreferenceGP ELBO", unit="step", disable=not progress_bar, leave=False) as bar:
        return _train_elbo(gp, lik, td, num_steps=num_steps, batch_size=batch_size, learning_rate=learning_rate,
                           seed=seed, new_rows=new_rows, natural_lr=natural_lr, optimizer=optimizer,
                           bar=bar if progress_bar else None)


def _train_elbo(
    gp: VariationalPreferenceGP, lik: PreferenceLikelihood, td: TrainingData, *, num_steps: int | None,
    batch_size: int | None, learning_rate: float, seed: int, new_rows: tuple[int, int] | None,
    natural_lr: float, optimizer: str, bar: Any,
) -> dict[str, Any]:
    if optimizer not in ("auto", "ngd", "adam"):
        raise InputDataError("optimizer", "'auto', 'ngd' or 'adam'", optimizer)
    full_batch = batch_size is None or td.m + td.k <= batch_size
    frozen = not gp.covar_module.raw_outputscale.requires_grad
    if new_rows is not None and not full_batch:  # new rows first, so they join every batch
        perm_c = torch.cat([torch.arange(new_rows[0], td.m), torch.arange(new_rows[0])])
        perm_r = torch.cat([torch.arange(new_rows[1], td.k), torch.arange(new_rows[1])])
        td = td.permuted(perm_c, perm_r)
    objective = NegativeElbo(gp, lik, td, cache_projection=frozen)
    start = time.perf_counter()
    if full_batch and frozen and not _trainable(lik):
        losses = _natural_refine(objective, max_steps=num_steps if num_steps is not None else 20)
        optimizer = "natural"
    elif full_batch:
        if not frozen:
            _natural_start(gp, lik, td)
        all_c = torch.arange(td.m) if td.m else None
        all_r = torch.arange(td.k) if td.k else None
        steps = num_steps if num_steps is not None else (60 if new_rows is not None else 500)
        losses = _lbfgs(_trainable(gp, lik), lambda: objective(all_c, 1.0, all_r, 1.0), steps, bar)
        optimizer = "lbfgs"
    else:
        # An update fits q by natural gradients whatever ``optimizer`` says: Adam moves each coordinate by
        # about its learning rate per step, too little in an update's 100 steps to take in new answers
        # (measured: P(a > b) 0.0003 -> 0.0005 after 50 new answers for a, against 0.95 refitted).
        optimizer = "ngd" if optimizer == "auto" or new_rows is not None else optimizer
        gen = _generator(seed + 3 + 104729 * (td.m + td.k))
        num_always = (0, 0) if new_rows is None else (td.m - new_rows[0], td.k - new_rows[1])
        pre: list[float] = []
        if new_rows is None:
            # Start from a full-batch L-BFGS fit on a random subset of one batch: the
            # hyperparameters then start near their optimum, where noisy minibatch
            # steps only have to refine them (they converge slowly from the prior).
            sub_c = torch.randperm(td.m, generator=gen)[: round(batch_size * td.m / (td.m + td.k))]
            sub_r = torch.randperm(td.k, generator=gen)[: batch_size - sub_c.numel()]
            sub = td.permuted(sub_c, sub_r)
            sub.m, sub.k = sub_c.numel(), sub_r.numel()
            _natural_start(gp, lik, sub)
            sub_objective = NegativeElbo(gp, lik, sub, cache_projection=False)
            pre = _lbfgs(_trainable(gp, lik), lambda: sub_objective(
                torch.arange(sub.m) if sub.m else None, 1.0, torch.arange(sub.k) if sub.k else None, 1.0), 150, bar)
        if optimizer == "ngd":
            steps = num_steps if num_steps is not None else (30 if new_rows is not None else 300)
            losses = _ngd_adam(objective, num_steps=steps, batch_size=batch_size, learning_rate=learning_rate,
                               natural_lr=natural_lr, generator=gen, num_always=num_always, bar=bar)
        else:
            steps = num_steps if num_steps is not None else (100 if new_rows is not None else 1000)
            losses = _adam(_trainable(gp, lik), objective, num_steps=steps, batch_size=batch_size,
                           learning_rate=learning_rate, generator=gen, num_always=num_always, bar=bar)
        if pre:
            return {"loss": losses, "num_steps": len(losses), "optimizer": optimizer, "subset_loss": pre,
                    "subset_steps": len(pre), "train_seconds": time.perf_counter() - start}
    return {"loss": losses, "num_steps": len(losses), "optimizer": optimizer, "train_seconds": time.perf_counter() - start}
