"""Batches of k queries that do not repeat each other.

- :func:`greedy_joint_information` (BatchBALD, Kirsch et al. 2019): add the query
  that most increases the *joint* information ``I(y_1..y_j; theta)`` of the batch.
  Answers are independent given a draw, so the joint predictive of the chosen
  answers is a per-draw product, kept as an `s x C` table of configurations; exact
  while C stays <= ``max_configurations``, then estimated from configurations sampled
  from the joint predictive (as BatchBALD does).
- :func:`greedy_dpp` (greedy MAP of a determinantal point process; Chen et al. 2018):
  quality = the acquisition value, similarity = the posterior correlation of the
  queries' utility differences across draws, so two pairs that probe the same
  direction of the reward are not both asked. Works for any strategy, and for
  batches larger than the number of directions the draws vary in (k > d for a
  linear reward): a new round of diverse picks starts when they are all taken.

:func:`pick_batch` applies one of them (or plain top-k) to scored candidates.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from papa_bayes.acquisition.base import LN2, DrawsAcquisitionFunction, outcome_log_probs
from papa_bayes.checks import check_finite, check_generator, check_int, shape_of
from papa_bayes.exceptions import InputDataError
from papa_bayes.inference.posterior import RewardPosterior

__all__ = ["greedy_joint_information", "greedy_dpp", "pick_batch"]


def _check_batch_size(k: Any, num_candidates: int) -> int:
    """``k`` as an int in [1, num_candidates] (NumPy integers and 0-d integer tensors too, as check_int)."""
    return check_int("k", k, maximum=num_candidates,
                     expected=f"an integer in [1, {num_candidates}] (the number of candidates)")


def greedy_joint_information(
    probs: Tensor,
    k: int,
    *,
    max_configurations: int = 4096,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Greedy BatchBALD over candidate queries.

    Args:
        probs: `s x M x o` per-draw answer probabilities of the M candidates.
        k: batch size (<= M).
        max_configurations: largest exact table of answer configurations.
        generator: for sampled configurations (default: a generator seeded 0).

    Returns:
        (`k` chosen candidate indices, `k` joint information in bits after each pick).

    Raises:
        InputDataError: k not an integer in [1, M].
    """
    if not isinstance(probs, Tensor) or probs.dim() != 3 or probs.shape[-1] < 2 or not probs.is_floating_point():
        raise InputDataError("probs", "`s x M x o` per-draw answer probabilities (o >= 2)",
                             shape_of(probs))
    s, M, o = probs.shape
    k = _check_batch_size(k, M)
    check_int("max_configurations", max_configurations)
    check_generator("generator", generator, optional=True)
    if not bool(((probs >= 0) & (probs <= 1)).all()):
        raise InputDataError("probs", "probabilities in [0, 1]", "values outside [0, 1] or NaN")
    # In double: a configuration's probability is a product over the chosen queries, which in float32
    # underflowed to 0 after ~130 picks of p ~ 0.5 (importance weights 1/0, inf and NaN bits).
    probs = probs.to(torch.float64)
    cond = -torch.special.xlogy(probs, probs).sum(-1).mean(0)  # M: E_theta H[y_m | theta], nats
    table = probs.new_ones(s, 1)  # per-draw probability of each configuration of chosen answers
    weights = probs.new_ones(1)  # importance weight of each configuration (1 when exact)
    chosen: list[int] = []
    joint_bits: list[float] = []
    cond_sum = probs.new_zeros(())
    mask = torch.zeros(M, dtype=torch.bool)
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    for _ in range(k):
        joint = torch.einsum("sc,smo->cmo", table, probs) / s  # C x M x o
        h_joint = -(weights.reshape(-1, 1, 1) * torch.special.xlogy(joint, joint)).sum((0, 2))  # M
        gain = h_joint - cond_sum - cond
        gain[mask] = -math.inf
        j = int(gain.argmax())
        chosen.append(j)
        joint_bits.append(float(gain[j].clamp(min=0)) / LN2)
        mask[j] = True
        cond_sum = cond_sum + cond[j]
        table = (table.unsqueeze(-1) * probs[:, j, :].unsqueeze(1)).reshape(s, -1)
        weights = weights.repeat_interleave(o)
        if table.shape[1] > max_configurations:
            table, weights = _sample_configurations(probs[:, chosen, :], max_configurations, gen)
    return torch.tensor(chosen, dtype=torch.long), torch.tensor(joint_bits, dtype=torch.float64)


def _sample_configurations(chosen_probs: Tensor, num: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Answer configurations drawn from the joint predictive: (`s x num` table, `num` weights).

    A configuration is drawn by picking a posterior draw and sampling every chosen
    query's answer from it; the entropy estimate -E log p(y) then weighs each sampled
    configuration by 1 / (num * p(y)).
    """
    s, j, o = chosen_probs.shape
    draw = torch.randint(0, s, (num,), generator=generator)
    answers = torch.multinomial(chosen_probs[draw].reshape(num * j, o), 1, generator=generator).reshape(num, j)
    # table[s, c] = prod_i probs[s, i, answers[c, i]]
    index = answers.reshape(1, num, j, 1).expand(s, num, j, 1)
    picked = chosen_probs.unsqueeze(1).expand(s, num, j, o).gather(-1, index)
    table = picked.squeeze(-1).prod(-1)  # s x num
    marginal = table.mean(0).clamp(min=torch.finfo(table.dtype).tiny)
    return table, 1.0 / (num * marginal)


#: Largest squared distance to the chosen directions' span at which it counts as
#: holding every candidate (the rest is rounding).
_SPAN_FULL = 1e-8


def greedy_dpp(quality: Tensor, vectors: Tensor, k: int) -> Tensor:
    """Greedy MAP of a DPP with kernel ``diag(q) K diag(q)``, K = correlation of ``vectors``.

    Each step adds the candidate of largest ``q^2`` times its squared distance to
    the span of the chosen ones (Chen et al. 2018). The vectors span at most as
    many directions as the draws vary in (the feature dimension d of a linear
    reward): once the chosen ones span them all, every distance is 0 and a plain
    DPP's further picks would be arbitrary. A new round then starts: distances are
    measured to the span of the picks of this round only, so that k > d picks come
    as rounds of up to d diverse ones.

    Args:
        quality: `M` non-negative qualities (acquisition values, shifted if needed).
        vectors: `s x M` per-draw values whose correlation across draws measures
            similarity (utility differences of pairs, utilities of items).
        k: batch size (<= M).

    Raises:
        InputDataError: k not an integer in [1, M].

    Returns:
        `k` chosen candidate indices, in the order chosen.
    """
    if not isinstance(quality, Tensor) or quality.dim() != 1:
        raise InputDataError("quality", "`M` finite qualities", shape_of(quality))
    check_finite("quality", quality, "qualities")
    M = quality.shape[0]
    if not isinstance(vectors, Tensor) or vectors.dim() != 2 or vectors.shape[1] != M:
        raise InputDataError("vectors", f"`s x {M}` finite per-draw values (one column per candidate)",
                             shape_of(vectors))
    check_finite("vectors", vectors, "per-draw values")  # NaN residuals made argmax pick in index order
    k = _check_batch_size(k, M)
    V = vectors - vectors.mean(0)
    norm = V.norm(dim=0)
    V = V / norm.clamp(min=1e-12)
    residual = torch.ones_like(quality)  # squared distance to the span of the chosen vectors
    q2 = quality.clamp(min=0) ** 2
    mask = torch.zeros(quality.shape[0], dtype=torch.bool)
    basis: list[Tensor] = []
    chosen: list[int] = []
    varying = norm > 0  # a constant column has no direction (its residual stays 1)
    for _ in range(k):
        open_ = ~mask & varying
        if basis and bool(open_.any()) and float(residual[open_].max()) <= _SPAN_FULL:
            basis, residual = [], torch.ones_like(quality)  # every direction taken: a new round
        gain = q2 * residual + 1e-30 * q2  # tiny tie-break toward quality
        gain[mask] = -math.inf
        j = int(gain.argmax())
        chosen.append(j)
        mask[j] = True
        if float(residual[j]) > 1e-10 and float(norm[j]) > 0:
            e = V[:, j].clone()
            for b in basis:  # Gram-Schmidt against the chosen directions
                e = e - (b @ e) * b
            e = e / e.norm().clamp(min=1e-12)
            basis.append(e)
            residual = (residual - (e @ V) ** 2).clamp(min=0.0)
    return torch.tensor(chosen, dtype=torch.long)


def pick_batch(
    strategy: str,
    acq: DrawsAcquisitionFunction,
    U: Tensor,
    first: Tensor,
    second: Tensor | None,
    cand: Tensor,
    scores: Tensor,
    k: int,
    batch: str,
    posterior: RewardPosterior,
    generator: torch.Generator | None,
    details: dict[str, Any],
) -> tuple[Tensor, Tensor]:
    """k of the scored candidates, with diversity: (`k` candidate ids, `k` their scores).

    Args:
        strategy, acq: the strategy and its acquisition (for tie / threshold draws).
        U: `s x n` utility draws at the pool; first, second: candidate pair indices
            (``second`` None for like/dislike).
        cand, scores: `M` scored candidates; k: batch size.
        batch: "auto", "joint", "dpp" or "top"; details: receives
            ``batch_information_bits`` for joint batches.
    """
    if k == 1:
        j = scores.argmax()
        return cand[j].reshape(1), scores[j].reshape(1)
    if batch == "auto":
        batch = "joint" if strategy == "eig" else "dpp"
    # Diversity is sought among the best candidates only: it bounds the cost.
    top = scores.topk(min(scores.numel(), max(4 * k, 1024))).indices
    c, sc = cand[top], scores[top]
    if batch == "top":
        pick = torch.arange(k)
    elif batch == "joint":
        if second is None:
            lp = outcome_log_probs(U[:, first[c]], None, link=posterior.link, threshold=acq.threshold)
        else:
            lp = outcome_log_probs(U[:, first[c]], U[:, second[c]], link=posterior.link, tie_strength=acq.tie_strength)
        pick, joint = greedy_joint_information(lp.exp(), k, generator=generator)
        details["batch_information_bits"] = joint
    else:
        vectors = U[:, first[c]] if second is None else U[:, first[c]] - U[:, second[c]]
        quality = sc - sc.min() + 1e-9 if strategy in ("eubo", "thompson") else sc
        pick = greedy_dpp(quality, vectors, k)
    return c[pick], sc[pick]
