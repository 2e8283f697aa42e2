"""Exposure diversity: how much of the space of possible items a person was shown.

Active queries and steering can shrink what a person sees to one corner of the
space (an echo chamber): their answers then say nothing about the rest. The metric
partitions a reference set (e.g. unsteered base samples) into cells around
``num_cells`` centres chosen by farthest-point traversal (deterministic), assigns
every shown item to its nearest centre (features standardized by the reference;
features constant over the reference left out, see :func:`exposure_diversity`),
and reports:

- ``coverage``: share of cells shown at least once;
- ``entropy_bits``: entropy of the shown items' cells, and ``normalized_entropy``
  = entropy / log2(num_cells) (1 = evenly spread over all cells);
- ``reference_entropy_bits``: the same entropy for the reference itself, what
  showing items in proportion to the unsteered distribution would give.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from papa_bayes.checks import check_int, check_real_tensor, shape_of
from papa_bayes.exceptions import InputDataError

__all__ = ["ExposureDiversity", "exposure_diversity", "farthest_point_centres"]


@dataclass(frozen=True)
class ExposureDiversity:
    """Exposure-diversity figures (see the module docstring)."""

    coverage: float
    entropy_bits: float
    normalized_entropy: float
    reference_entropy_bits: float
    num_shown: int
    num_cells: int

    def as_dict(self) -> dict[str, float | int]:
        """The fields as a JSON-serializable dict."""
        return dict(vars(self))


def farthest_point_centres(reference: Tensor, num_cells: int) -> Tensor:
    """Indices of ``num_cells`` reference items by farthest-point traversal: `num_cells`.

    Starts at the item nearest the reference mean, then repeatedly adds the item
    farthest from every centre chosen so far; fewer than ``num_cells`` when the
    reference has fewer distinct items.
    """
    if not isinstance(reference, Tensor) or reference.dim() != 2 or reference.shape[0] == 0:
        raise InputDataError("reference", "a non-empty `n x d` tensor",
                             shape_of(reference))
    check_int("num_cells", num_cells)
    n = reference.shape[0]
    first = int((reference - reference.mean(0)).norm(dim=-1).argmin())
    chosen = [first]
    dist = (reference - reference[first]).norm(dim=-1)
    for _ in range(min(num_cells, n) - 1):
        j = int(dist.argmax())
        if float(dist[j]) == 0.0:  # every item repeats a centre: no further distinct cell
            break
        chosen.append(j)
        dist = torch.minimum(dist, (reference - reference[j]).norm(dim=-1))
    return torch.tensor(chosen, dtype=torch.long)


def _entropy_bits(counts: Tensor) -> float:
    p = counts.double() / counts.sum().clamp(min=1)
    # + 0.0: one occupied cell gives -(0) = -0.0, which reports (and JSON) would show as "-0.0".
    return float(-(torch.special.xlogy(p, p)).sum() / math.log(2.0)) + 0.0


def exposure_diversity(shown: Tensor, reference: Tensor, *, num_cells: int = 16) -> ExposureDiversity:
    """Coverage and entropy of what was shown, over cells of a reference set.

    Features are centred on the reference mean and divided by the reference standard
    deviation. A feature with no spread in the reference (a standard deviation below
    1e-12 of its largest magnitude: rounding) is left out. Every centre has the same
    value in it, so it adds the same amount to a shown item's distance to each centre
    and cannot change which is nearest; kept, and divided by its rounding-level
    spread, it turned a tiny offset into a distance of ~1e9 that swamped the other
    features in floating point and sent every shown item to one cell.

    Args:
        shown: `m x d` features of the items shown (every item of every query), or
            the queries' `k x q x d` features as ``QuerySelection.features(pool)``
            gives them (`k x 2 x d` pairs, `k x 1 x d` items): each item of each
            query counts as shown, the same as their `kq x d` rows.
        reference: `n x d` features of reference items (e.g. unsteered samples).
        num_cells: number of cells (at most the number of distinct reference items).

    Returns:
        An :class:`ExposureDiversity`.
    """
    shown = check_real_tensor("shown", shown, "`m x d` features")
    reference = check_real_tensor("reference", reference, "`n x d` features")
    if reference.dim() != 2 or reference.shape[0] == 0:
        raise InputDataError("reference", "a non-empty `n x d` tensor", tuple(reference.shape))
    d = reference.shape[1]
    if shown.dim() == 3 and shown.shape[-1] == d:  # queries' features (QuerySelection.features): every item shown
        shown = shown.reshape(-1, d)
    if shown.dim() != 2 or shown.shape[1] != d:
        raise InputDataError("shown", f"shape `m x {d}` (items) or `k x q x {d}` (queries' items)", tuple(shown.shape))
    check_int("num_cells", num_cells)
    for name, value in (("shown", shown), ("reference", reference)):
        if not bool(torch.isfinite(value).all()):
            bad = tuple(torch.nonzero(~torch.isfinite(value))[0].tolist())
            raise InputDataError(name, "finite values", f"non-finite at index {bad}")
    if reference.shape[0] > 1:
        scale = reference.std(0)
        # Relative: a constant column's computed std is rounding (~1e-16 x its value), not 0.
        varies = scale > 1e-12 * reference.abs().amax(0)
    else:  # one reference item: one cell whatever the features, nothing to standardize by
        scale, varies = torch.ones(d, dtype=reference.dtype), torch.ones(d, dtype=torch.bool)
    loc, scale = reference.mean(0)[varies], scale[varies]
    reference, shown = reference[:, varies], shown[:, varies]
    ref = (reference - loc) / scale
    centres = ref[farthest_point_centres(ref, num_cells)]
    c = centres.shape[0]
    ref_counts = torch.bincount(torch.cdist(ref, centres).argmin(-1), minlength=c)
    if shown.shape[0] == 0:
        return ExposureDiversity(0.0, 0.0, 0.0, _entropy_bits(ref_counts), 0, c)
    counts = torch.bincount(torch.cdist((shown - loc) / scale, centres).argmin(-1), minlength=c)
    h = _entropy_bits(counts)
    return ExposureDiversity(
        coverage=float((counts > 0).double().mean()),
        entropy_bits=h,
        normalized_entropy=h / math.log2(c) if c > 1 else 1.0,
        reference_entropy_bits=_entropy_bits(ref_counts),
        num_shown=int(shown.shape[0]),
        num_cells=c,
    )
