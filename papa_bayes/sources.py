"""Where a session's candidates come from: the :class:`CandidateSource` protocol and a fixed pool.

A source hands the session `n` candidates per round (:class:`Candidates`: features,
optional images, which ones were steered by the posterior) and recommends samples
from the preferred region. :class:`FeaturePool` draws from a fixed set of feature
vectors; :class:`~papa_bayes.diffusion.DiffusionCandidates` samples a diffusion model.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from papa_bayes.checks import check_float, check_generator, check_int, plain_array
from papa_bayes.exceptions import InputDataError
from papa_bayes.inference import RewardPosterior

__all__ = ["Candidates", "CandidateSource", "FeaturePool", "check_pool_request", "num_unsteered"]

#: A share of n below this distance from an integer is that integer (0.1 * 30 is 3.0000000000000004).
_WHOLE = 1e-9


@dataclass
class Candidates:
    """A pool of candidates: `n x d` features, optional `n x ...` images, `n` steered flags.

    ``indices``: `n` rows of the source's own items where it has them (a
    :class:`FeaturePool`: the rows of ``items``, to map back to your catalogue),
    else None (a diffusion model's samples are new).
    """

    features: Tensor
    images: Tensor | None
    steered: Tensor
    indices: Tensor | None = None

    def __len__(self) -> int:
        return self.features.shape[0]


class CandidateSource(Protocol):
    """Where candidates come from: a steerable sampler, or a fixed pool of items."""

    num_features: int

    def candidates(self, posterior: RewardPosterior | None, n: int, *, exploration: float, generator: torch.Generator) -> Candidates:
        """`n` candidates, on average a share ``exploration`` of them unsteered."""
        raise NotImplementedError

    def recommend(self, posterior: RewardPosterior, n: int, *, generator: torch.Generator) -> Candidates:
        """`n` samples steered into the preferred region."""
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        """JSON-serializable description, stored with the session."""
        raise NotImplementedError

    # Optional: a source that can hand out only so many candidates per call (a pool of items)
    # has ``max_candidates`` (an int); without it, any number.
    # Optional: a source whose choices depend on its own history (e.g. a guidance
    # scale re-chosen every few pools) also has ``state() -> dict`` (JSON-serializable)
    # and ``load_state(dict)``; the session stores the state with each query and
    # finished round and restores it on resume.


def check_pool_request(n: Any, exploration: Any) -> tuple[int, float]:
    """The arguments of :meth:`CandidateSource.candidates`, checked: (``n``, ``exploration``).

    Shared by the sources (:class:`FeaturePool`, :class:`~papa_bayes.diffusion.DiffusionCandidates`):
    a negative ``n`` or a share outside [0, 1] returned more candidates than asked for.

    Raises:
        InputDataError: ``n`` not an integer >= 1, ``exploration`` not a number in [0, 1].
    """
    n = check_int("n", n, expected="at least 1 candidate")
    exploration = check_float("exploration", exploration, maximum=1.0, inclusive_maximum=True)
    return n, exploration


def num_unsteered(posterior: RewardPosterior | None, n: int, exploration: float, *,
                  generator: torch.Generator) -> int:
    """How many of ``n`` candidates to draw unsteered: on average ``exploration * n``, all of them without a posterior.

    ``exploration * n`` is rounded at random (up with probability its fractional part), so that the
    share over rounds is ``exploration``: ``round`` never explored at 0.05 of 8 (0.4), and at 0.75 of 2
    (1.5, rounded half to even) left no candidate steered. A whole ``exploration * n`` (0.25 of 32)
    draws nothing from ``generator``.

    Args:
        posterior: the posterior steering draws from; None before the first answer.
        n, exploration: as checked by :func:`check_pool_request`.
        generator: the source's generator (CPU or not).

    Returns:
        An integer in [0, n].
    """
    if posterior is None:
        return n
    share = exploration * n
    whole = math.floor(share + _WHOLE)
    if share - whole > _WHOLE:
        up = torch.rand((), generator=generator, dtype=torch.float64, device=generator.device)
        whole += int(float(up) < share - whole)
    return min(whole, n)


class FeaturePool(CandidateSource):
    """Candidates drawn from a fixed set of feature vectors (no images).

    Steered candidates are the items a posterior draw ranks highest (one Thompson
    draw per candidate, so the steered share stays diverse); exploration draws
    uniformly.

    Args:
        items: `N x d` features (copied: editing them later does not change the pool).

    A pool hands out at most its `N` items per call (``max_candidates``): a request for
    more (a session's ``pool_size``) is refused rather than cut to `N`, so that a
    session's stored ``pool_size`` is the number of candidates its rounds drew.
    """

    def __init__(self, items: Tensor) -> None:
        try:
            # A copy on the CPU, as PreferenceData copies its inputs: the pool, and the digest a
            # resume is checked against, must not change when the caller edits their array.
            self.items = torch.as_tensor(plain_array(items), dtype=torch.float64).detach().to("cpu", copy=True)
        except (TypeError, ValueError, RuntimeError):
            raise InputDataError("items", "an `N x d` array of real numbers", type(items).__name__) from None
        if self.items.dim() != 2 or self.items.shape[0] < 2:
            raise InputDataError("items", "shape `N x d` with N >= 2", tuple(self.items.shape))
        if not bool(torch.isfinite(self.items).all()):
            bad = int((~torch.isfinite(self.items)).any(1).nonzero()[0])
            raise InputDataError("items", "finite features", f"a NaN or infinite value in row {bad}")
        self.num_features = self.items.shape[1]
        self.max_candidates = self.items.shape[0]

    def candidates(self, posterior: RewardPosterior | None, n: int, *, exploration: float,
                   generator: torch.Generator) -> Candidates:
        n, exploration = check_pool_request(n, exploration)
        generator = check_generator("generator", generator, cpu=True)  # None drew from the global RNG
        N = self.items.shape[0]
        if n > N:  # cut to N, a round drew fewer candidates than the session's stored pool_size said
            raise InputDataError("n", f"at most the pool's {N} items (a session's pool_size: one candidate per item)",
                                 n)
        n_explore = num_unsteered(posterior, n, exploration, generator=generator)
        chosen = torch.randperm(N, generator=generator)[:n_explore].tolist()
        steered = []
        if n - n_explore > 0:
            u = posterior.utility(self.items)  # s x N
            draws = torch.randint(0, u.shape[0], (4 * n,), generator=generator)
            for s in draws.tolist():
                for i in torch.argsort(u[s], descending=True).tolist():
                    if i not in chosen and i not in steered:
                        steered.append(i)
                        break
                if len(steered) == n - n_explore:
                    break
        idx = torch.tensor(chosen + steered, dtype=torch.long)
        flags = torch.tensor([False] * len(chosen) + [True] * len(steered))
        return Candidates(self.items[idx], None, flags, idx)

    def recommend(self, posterior: RewardPosterior, n: int, *, generator: torch.Generator) -> Candidates:
        N = self.items.shape[0]
        n = check_int("n", n, maximum=N, expected=f"an integer in [1, {N}] (the pool's items)")
        mean = posterior.utility(self.items).mean(0)
        idx = torch.argsort(mean, descending=True)[:n]
        return Candidates(self.items[idx], None, torch.ones(len(idx), dtype=torch.bool), idx)

    def config(self) -> dict[str, Any]:
        # The items' digest: a resumed session with another pool of the same size is another experiment.
        digest = hashlib.sha256(self.items.numpy().tobytes()).hexdigest()[:16]
        return {"kind": "FeaturePool", "num_items": int(self.items.shape[0]), "num_features": self.num_features,
                "items_sha256": digest}
