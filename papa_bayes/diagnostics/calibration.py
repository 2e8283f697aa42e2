"""Calibration measures of predictive probabilities and credible intervals, simulation-based calibration
ranks, and their plots."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from papa_bayes.checks import check_float, check_generator, check_int, check_real_tensor
from papa_bayes.exceptions import InputDataError

__all__ = ["expected_calibration_error", "interval_coverage", "plot_reliability", "plot_sbc_ranks", "reliability_curve",
           "sbc_ranks", "sbc_uniformity"]


def _real(name: str, value: object) -> Tensor:
    """``value`` as a detached float64 tensor (:func:`check_real_tensor`), bools read as 0/1.

    Outcomes often come as bools (``u_a > u_b``), so bools are numbers here.
    """
    try:
        return check_real_tensor(name, value, "an array-like of numbers").detach()
    except InputDataError as err:
        if err.actual != str(torch.bool):
            raise
    return torch.as_tensor(value).detach().to(torch.float64)


def reliability_curve(probs: Tensor, outcomes: Tensor, *, num_bins: int = 10) -> tuple[Tensor, Tensor, Tensor]:
    """Reliability diagram data over equal-width bins of predicted probability.

    Args:
        probs: `n` predicted probabilities of the event, in [0, 1].
        outcomes: `n` 0/1 outcomes (bools too), in the same order and shape as
            ``probs`` (dims of size 1 aside).
        num_bins: number of equal-width bins on [0, 1].

    Returns:
        (mean prediction, observed frequency, count), each `num_bins`. Empty bins
        hold 0 for the first two: plot only where ``count > 0``.

    Raises:
        InputDataError: empty input, shapes that do not pair each probability
            with one outcome, probabilities outside [0, 1] (NaN too), outcomes
            other than 0/1.
    """
    given = probs
    probs, outcomes = _real("probs", probs), _real("outcomes", outcomes)
    # Equal sizes are not enough: `n x k` probabilities against `k x n` outcomes
    # would pair the wrong rows; only dims of size 1 may differ.
    if probs.squeeze().shape != outcomes.squeeze().shape:
        raise InputDataError("outcomes", f"one per probability (probs of shape {tuple(probs.shape)})",
                             tuple(outcomes.shape))
    probs, outcomes = probs.reshape(-1), outcomes.reshape(-1)
    if probs.numel() == 0:
        raise InputDataError("probs", "at least one prediction", "empty")
    num_bins = check_int("num_bins", num_bins, expected="a positive integer")
    outside = ~((probs >= 0) & (probs <= 1))  # NaN included
    if bool(outside.any()):
        i = int(outside.nonzero()[0])
        raise InputDataError("probs", "probabilities in [0, 1]", f"{float(probs[i])} at index {i}")
    other = ~((outcomes == 0) | (outcomes == 1))
    if bool(other.any()):
        i = int(other.nonzero()[0])
        raise InputDataError("outcomes", "0/1 outcomes", f"{float(outcomes[i])} at index {i}")
    # Bin in the precision the probabilities came in: float32's 0.7 is 0.69999999 in float64
    # and would fall in [0.6, 0.7), where float64's 0.7 falls in [0.7, 0.8). NumPy arrays too, and lists of
    # NumPy float32 scalars (a model's outputs one by one), which check_real_tensor parses as Python floats.
    if not isinstance(given, Tensor):
        try:
            kind = np.asarray(given).dtype
        except (TypeError, ValueError, RuntimeError):  # e.g. a list of tensors that need grad
            kind = None
        if kind in (np.float16, np.float32):
            given = torch.as_tensor(np.asarray(given))
    own = given.detach().reshape(-1) if isinstance(given, Tensor) and given.dtype in (torch.float16, torch.bfloat16,
                                                                                     torch.float32) else probs
    bins = torch.clamp((own * num_bins).long(), max=num_bins - 1)
    count = torch.bincount(bins, minlength=num_bins).to(torch.float64)
    mean_p = torch.bincount(bins, weights=probs, minlength=num_bins) / count.clamp(min=1)
    freq = torch.bincount(bins, weights=outcomes, minlength=num_bins) / count.clamp(min=1)
    return mean_p, freq, count


def expected_calibration_error(probs: Tensor, outcomes: Tensor, *, num_bins: int = 10) -> float:
    """ECE (Naeini et al. 2015): sum over bins of share x |mean prediction - frequency|.

    Args:
        probs: `n` predicted probabilities of the event.
        outcomes: `n` 0/1 outcomes, paired with ``probs`` as in :func:`reliability_curve`.
        num_bins: number of equal-width bins on [0, 1].

    Returns:
        The ECE, in [0, 1].
    """
    return _ece(*reliability_curve(probs, outcomes, num_bins=num_bins))


def _ece(mean_p: Tensor, freq: Tensor, count: Tensor) -> float:
    """The ECE of a :func:`reliability_curve`'s bins."""
    return float(((count / count.sum()) * (mean_p - freq).abs()).sum())


def interval_coverage(draws: Tensor, truth: Tensor, *, level: float = 0.9) -> Tensor:
    """Whether each central ``level`` credible interval covers the truth.

    Args:
        draws: `s x ...` posterior draws (finite).
        truth: `...` true values (finite).
        level: in (0, 1).

    Returns:
        `...` bool.
    """
    level = check_float("level", level, strict=True, maximum=1.0)  # a float: a 0-d tensor would reach torch.quantile
    draws, truth = _draws_and_truth(draws, truth)
    lo = torch.quantile(draws, (1 - level) / 2, dim=0)
    hi = torch.quantile(draws, 1 - (1 - level) / 2, dim=0)
    return (truth >= lo) & (truth <= hi)


def _draws_and_truth(draws: Tensor, truth: Tensor) -> tuple[Tensor, Tensor]:
    """`s x ...` draws and `...` truth as float64, or InputDataError (empty draws, shapes, non-finite values)."""
    draws = _real("draws", draws)
    truth = _real("truth", truth)
    if draws.dim() < 1 or draws.shape[0] == 0:
        raise InputDataError("draws", "`s x ...` with at least one draw", tuple(draws.shape))
    if truth.shape != draws.shape[1:]:
        raise InputDataError("truth", f"shape {tuple(draws.shape[1:])} (the draws' shape without `s`)",
                             tuple(truth.shape))
    for name, value in (("draws", draws), ("truth", truth)):
        if not bool(torch.isfinite(value).all()):
            bad = tuple(torch.nonzero(~torch.isfinite(value))[0].tolist())
            raise InputDataError(name, "finite values", f"{float(value[bad])} at index {bad}")
    return draws, truth


def sbc_ranks(draws: Tensor, truth: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
    """Rank of each true value among its posterior draws (simulation-based calibration).

    Talts et al. (2018), "Validating Bayesian inference algorithms with
    simulation-based calibration": when the truth is drawn from the prior, the data
    from the model given the truth, and the draws from the exact posterior of those
    data, the rank ``#{draws < truth}`` is uniform on {0, ..., s}. Too narrow a
    posterior piles ranks at both ends, too wide a one in the middle, a biased one
    at one end. The draws should be (close to) independent: thin MCMC draws first.

    Ties (a draw equal to the truth, e.g. repeated draws of a resample-move
    posterior or discrete sites) are broken at random: the rank is the number of
    draws strictly below the truth plus a uniform share ``{0, ..., e}`` of the
    ``e`` draws equal to it, so that it stays uniform.

    Args:
        draws: `s x ...` posterior draws (finite).
        truth: `...` true values (finite).
        generator: breaks ties; needed only when a draw equals the truth. None with
            ties raises: a fixed default seed would break the ties of every data set of
            an SBC loop alike (correlated ranks), and the global RNG is hidden state.
            Pass one generator for the whole loop (as
            :func:`~papa_bayes.diagnostics.simulation_based_calibration` does).

    Returns:
        `...` long ranks in [0, s].

    Raises:
        InputDataError: empty draws, a ``truth`` not of the draws' shape without
            `s`, non-finite values, a ``generator`` that is no CPU ``torch.Generator``,
            or None while some draw equals the truth.
    """
    draws, truth = _draws_and_truth(draws, truth)
    generator = check_generator("generator", generator, optional=True, cpu=True)
    below = (draws < truth).sum(0)
    equal = (draws == truth).sum(0)
    if generator is None:
        if bool((equal > 0).any()):
            bad = tuple(torch.nonzero(equal > 0)[0].tolist())
            raise InputDataError("generator", "a CPU torch.Generator to break the ties of draws equal to the truth",
                                 f"None with {int(equal[bad])} draw(s) equal to the truth at index {bad}")
        return below  # no ties: nothing to draw (a given generator draws either way: its stream stays as it was)
    share = torch.rand(truth.shape, generator=generator, dtype=torch.float64)
    return below + torch.floor(share * (equal + 1).to(torch.float64)).long()  # share < 1: at most `equal`


def _ranks_and_bins(ranks: Tensor, num_draws: int, num_bins: int | None, *,
                    pooled: bool = False) -> tuple[Tensor, int, int]:
    """Checked `N x ...` long ranks, ``num_draws`` and ``num_bins`` (the default filled in for `N`
    ranks, or for all of them when ``pooled``)."""
    num_draws = check_int("num_draws", num_draws)
    ranks = _real("ranks", ranks)
    if ranks.dim() < 1 or ranks.shape[0] == 0:
        raise InputDataError("ranks", "`N x ...` with at least one rank", tuple(ranks.shape))
    wrong = ~((ranks >= 0) & (ranks <= num_draws) & (ranks == ranks.round()))  # NaN included
    if bool(wrong.any()):
        bad = tuple(torch.nonzero(wrong)[0].tolist())
        raise InputDataError("ranks", f"integers in [0, {num_draws}] (num_draws)",
                             f"{float(ranks[bad])} at index {bad}")
    if num_bins is None:
        # About 5 ranks expected per bin at the least (chi-square's rule of thumb), at most 20 bins.
        num_bins = max(2, min(20, (ranks.numel() if pooled else ranks.shape[0]) // 5, num_draws + 1))
    num_bins = check_int("num_bins", num_bins, minimum=2, maximum=num_draws + 1,
                         expected=f"an integer in [2, {num_draws + 1}] (num_draws + 1 possible ranks)")
    return ranks.long(), num_draws, num_bins


def _rank_bins(num_draws: int, num_bins: int) -> tuple[Tensor, Tensor]:
    """Bin of each rank value 0..num_draws (`num_draws + 1`) and how many rank values each bin holds (`num_bins`).

    Bins are as equal as the ``num_draws + 1`` possible ranks allow; a uniform rank
    falls in a bin with probability its size over ``num_draws + 1``.
    """
    bin_of = torch.arange(num_draws + 1) * num_bins // (num_draws + 1)
    return bin_of, torch.bincount(bin_of, minlength=num_bins)


def sbc_uniformity(ranks: Tensor, num_draws: int, *, num_bins: int | None = None) -> tuple[Tensor, Tensor]:
    """Chi-square test of SBC ranks against the uniform distribution, per parameter.

    The ``num_draws + 1`` possible ranks are grouped into ``num_bins`` bins (as
    equal as they divide; Talts et al. 2018 bin the ranks the same way) and the
    histogram of each parameter's ranks is compared with its expectation under
    uniform ranks (Pearson's chi-square, ``num_bins - 1`` degrees of freedom, via
    ``scipy.stats.chi2``). A small p-value says the posterior is miscalibrated;
    the approximation wants about 5 or more ranks expected per bin.

    Args:
        ranks: `N x ...` ranks from :func:`sbc_ranks`, one row per simulated data
            set, integers in [0, ``num_draws``].
        num_draws: `s`, the number of posterior draws each rank was taken among.
        num_bins: default None: ``N // 5`` clipped to [2, 20] (and to ``num_draws + 1``).

    Returns:
        (chi-square statistic, p-value), each `...` float64.

    Raises:
        InputDataError: ranks that are not integers in [0, ``num_draws``], no rank,
            ``num_bins`` outside [2, ``num_draws + 1``].
    """
    from scipy import stats

    ranks, num_draws, num_bins = _ranks_and_bins(ranks, num_draws, num_bins)
    bin_of, size = _rank_bins(num_draws, num_bins)
    share = size.to(torch.float64) / (num_draws + 1)
    binned = bin_of[ranks]  # N x ...
    counts = (binned.unsqueeze(-1) == torch.arange(num_bins)).sum(0).to(torch.float64)  # ... x num_bins
    expected = ranks.shape[0] * share
    statistic = ((counts - expected) ** 2 / expected).sum(-1)
    p_value = torch.as_tensor(stats.chi2.sf(statistic.numpy(), num_bins - 1), dtype=torch.float64)
    return statistic, p_value


def _axes(ax: Any, *, figsize: tuple[float, float]) -> Any:
    """``ax`` unless None (then a new figure's Axes), or InputDataError unless a matplotlib Axes."""
    if ax is None:
        import matplotlib.pyplot as plt

        return plt.subplots(figsize=figsize)[1]
    from matplotlib.axes import Axes

    if not isinstance(ax, Axes):
        raise InputDataError("ax", "None or a matplotlib Axes", type(ax).__name__)
    return ax


def plot_sbc_ranks(ranks: Tensor, num_draws: int, ax: Any = None, *, num_bins: int | None = None,
                   band: float = 0.99, title: str | None = None) -> Any:
    """Histogram of SBC ranks with the band a uniform histogram stays in (Talts et al. 2018, Fig. 1).

    Every element of ``ranks`` is pooled (pass ``ranks[:, j]`` for one parameter).
    The grey band holds each bin's count with probability ``band`` under uniform
    ranks (binomial quantiles), the line is its expected count. Bars leaving the
    band in a U shape: posterior too narrow; in a hump: too wide; sloped: biased.

    Args:
        ranks: `N x ...` ranks from :func:`sbc_ranks`, integers in [0, ``num_draws``].
        num_draws: `s`, the number of posterior draws each rank was taken among.
        ax: a matplotlib Axes to draw on; None: a new figure's.
        num_bins: as in :func:`sbc_uniformity`, with ``N`` the number of pooled ranks.
        band: probability of the band, in (0, 1).
        title: the axes' title; None: none.

    Returns:
        The Axes: ``num_bins`` bars (``ax.patches``), the band (``ax.collections``)
        and the expected count (``ax.lines``).
    """
    from scipy import stats

    band = check_float("band", band, strict=True, maximum=1.0)
    ranks, num_draws, num_bins = _ranks_and_bins(ranks, num_draws, num_bins, pooled=True)
    pooled = ranks.reshape(-1)
    bin_of, size = _rank_bins(num_draws, num_bins)
    share = (size.to(torch.float64) / (num_draws + 1)).numpy()
    counts = torch.bincount(bin_of[pooled], minlength=num_bins).numpy()
    n = pooled.numel()
    edges = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(size, 0)]).numpy()  # in rank units
    low = stats.binom.ppf((1 - band) / 2, n, share)
    high = stats.binom.ppf(1 - (1 - band) / 2, n, share)
    mid = n * share
    ax = _axes(ax, figsize=(5, 3.5))
    step = lambda v: list(v) + [v[-1]]  # noqa: E731  (a value per bin, drawn as steps over the edges)
    ax.fill_between(edges, step(low), step(high), step="post", color="0.85", label=f"{band:.0%} band of uniform ranks")
    ax.step(edges, step(mid), where="post", color="0.4", linewidth=1)
    ax.bar(edges[:-1], counts, width=edges[1:] - edges[:-1], align="edge", color="C0", alpha=0.8, edgecolor="white",
           label=f"{n} ranks")
    ax.set_xlim(0, num_draws + 1)
    ax.set_xlabel(f"rank among {num_draws} draws")
    ax.set_ylabel("count")
    if title is not None:
        ax.set_title(title)
    ax.legend(loc="upper right", fontsize="small")
    return ax


def plot_reliability(probs: Tensor, outcomes: Tensor, ax: Any = None, *, num_bins: int = 10,
                     label: str | None = None) -> Any:
    """Reliability diagram: observed frequency against mean prediction per bin, with the diagonal.

    Bars show the share of predictions in each bin (on the same 0-1 scale) and each
    point is labelled with its bin's count. Points under the diagonal at high
    predictions (and above it at low ones) mean overconfidence.

    Args:
        probs: `n` predicted probabilities, in [0, 1].
        outcomes: `n` 0/1 outcomes, paired with ``probs`` as in :func:`reliability_curve`.
        ax: a matplotlib Axes to draw on; None: a new figure's.
        num_bins: number of equal-width bins on [0, 1].
        label: legend label of the curve; None: "observed (ECE ...)".

    Returns:
        The Axes: the diagonal and the curve (``ax.lines``), ``num_bins`` bars
        (``ax.patches``) and one count per non-empty bin (``ax.texts``).
    """
    mean_p, freq, count = reliability_curve(probs, outcomes, num_bins=num_bins)
    num_bins = count.shape[0]
    filled = count > 0
    ece = _ece(mean_p, freq, count)
    ax = _axes(ax, figsize=(4, 4))
    ax.bar((torch.arange(num_bins) / num_bins).numpy(), (count / count.sum()).numpy(), width=1 / num_bins,
           align="edge", color="0.85", edgecolor="white", label="share of predictions")
    ax.plot([0, 1], [0, 1], "--", color="0.4", linewidth=1, label="calibrated")
    x, y = mean_p[filled].numpy(), freq[filled].numpy()
    ax.plot(x, y, "o-", color="C0", label=label if label is not None else f"observed (ECE {ece:.3f})")
    for xi, yi, c in zip(x, y, count[filled].tolist()):
        ax.annotate(f"{int(c)}", (xi, yi), textcoords="offset points", xytext=(4, -10), fontsize="x-small")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("predicted probability")
    ax.set_ylabel("observed frequency")
    ax.legend(loc="upper left", fontsize="small")
    return ax
