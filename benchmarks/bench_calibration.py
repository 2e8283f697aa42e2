"""Calibration of each inference method against NUTS: interval coverage, held-out ECE, SBC ranks.

The protocol of DESIGN.md section 8 ("Calibration") for ``LinearReward`` (logit,
rationality learned, the default): every data set draws the rationality and the
weights from the model's prior, answers ``m`` random pairs of a fixed pool of
``n`` standard-normal items with the model's own likelihood, and is fitted by each
method. Reported per method: the coverage of the 50% and 90% central credible
intervals of every element of each site (should be 0.5 and 0.9), the expected
calibration error of P(a preferred to b) on fresh pairs (pooled), and the
simulation-based calibration (Talts et al. 2018) chi-square p-value of the rank
histogram of each site against uniform (pooled over a site's elements, and the
smallest over its elements), with the ranks' histograms as PNG.

    python -m benchmarks.bench_calibration            # d=4, m=50; 100 data sets (NUTS: 30)
    python -m benchmarks.bench_calibration --tiny     # seconds; what the tests run (results/tmp/..._tiny.*)

Methods: ``laplace`` (integrated over the rationality), ``laplace_refined``
(``refine_steps``, resample-move), ``svi`` (full-rank Gaussian), ``nuts`` (the reference).
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import (RESULTS, add_out_option, counts, markdown_table, one_of,
                               output_folder, recorded_args, run_main, write_results)
from papa_bayes import LinearReward
from papa_bayes.diagnostics import plot_reliability, plot_sbc_ranks, simulation_based_calibration
from papa_bayes.diagnostics.sbc import LEVELS, SBCResult
from papa_bayes.checks import DefaultsHelpFormatter, parse_with_tiny
from papa_bayes.inference.mcmc_util import check_nuts_samples
from papa_bayes.exceptions import InputDataError

METHODS = ("laplace", "laplace_refined", "svi", "nuts")
SITES = ("w", "rationality", "scaled_w")
# fit()'s draws when --num-samples is left out: 1000 in total (Laplace, SVI), 500 per chain for NUTS's 2 chains.
DEFAULT_DRAWS, NUTS_DEFAULT_DRAWS, NUTS_CHAINS = 1000, 500, 2


def draws_kept(method: str, num_samples: int | None) -> int:
    """The posterior draws a fit of ``method`` keeps (what each rank is taken among, thinned)."""
    if method == "nuts":
        return NUTS_CHAINS * (num_samples or NUTS_DEFAULT_DRAWS)
    return num_samples or DEFAULT_DRAWS


def fit_options(method: str, args: argparse.Namespace) -> dict[str, Any]:
    """fit()'s options of an arm (the method aside)."""
    options: dict[str, Any] = {}
    if args.num_samples is not None:
        options["num_samples"] = args.num_samples
    if method == "laplace_refined":
        options["refine_steps"] = args.refine_steps
    if method == "svi" and args.svi_steps is not None:
        options["num_steps"] = args.svi_steps
    if method == "nuts" and args.warmup_steps is not None:
        options["warmup_steps"] = args.warmup_steps
    return options


def summarize(method: str, result: SBCResult, num_bins: int | None) -> dict[str, Any]:
    """One row of the table (floats), plus the raw ranks and per-element p-values for the JSON."""
    seconds = result.seconds
    row: dict[str, Any] = {"method": method, "datasets": int(seconds.numel())}
    for site in result.ranks:
        for level in LEVELS:
            row[f"cov{round(100 * level)}_{site}"] = result.coverage[site][level]
    row["ece"] = result.ece
    per_element: dict[str, list[float]] = {}
    for site in result.ranks:
        _, pooled = result.uniformity(site, num_bins=num_bins, pooled=True)
        _, each = result.uniformity(site, num_bins=num_bins)
        row[f"sbc_p_{site}"] = float(pooled)
        row[f"sbc_min_p_{site}"] = float(each.min())
        per_element[site] = each.reshape(-1).tolist()
    row["s_per_fit"] = float(seconds.mean())
    row["s_median"] = float(seconds.median())
    divergences = [d["divergences"] for d in result.diagnostics if "divergences" in d]
    r_hat = [d["r_hat_max"] for d in result.diagnostics if "r_hat_max" in d]
    if divergences:
        row["divergences"] = int(sum(divergences))
        row["worst_r_hat"] = float(max(r_hat))
    raw = {"ranks": {s: r.tolist() for s, r in result.ranks.items()}, "sbc_p_per_element": per_element,
           "seconds": seconds.tolist(), "num_rank_draws": result.num_rank_draws}
    return {"row": row, "raw": raw}


def _calibrate(method: str, args: argparse.Namespace, items: torch.Tensor, num_datasets: int) -> SBCResult:
    """Simulation-based calibration of one arm on the first ``num_datasets`` data sets."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # NUTS's R-hat warnings on small data: counted in the table instead
        return simulation_based_calibration(
            LinearReward(link="logit"), items, args.comparisons, num_datasets,
            method="laplace" if method == "laplace_refined" else method, seed=args.seed, sites=tuple(args.sites),
            fit_options=fit_options(method, args), num_rank_draws=args.rank_draws, num_heldout=args.heldout,
        )


def _plot(results: dict[str, SBCResult], num_bins: int | None, out: Path, name: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sites = list(next(iter(results.values())).ranks)
    fig, axes = plt.subplots(len(results), len(sites), figsize=(4.2 * len(sites), 3.0 * len(results)), squeeze=False)
    for row, (method, result) in enumerate(results.items()):
        for col, site in enumerate(sites):
            plot_sbc_ranks(result.ranks[site], result.num_rank_draws, axes[row, col], num_bins=num_bins,
                           title=f"{method}: {site} ({result.ranks[site].shape[0]} data sets)")
    fig.tight_layout()
    ranks_png = out / f"{name}_ranks.png"
    fig.savefig(ranks_png, dpi=100)
    plt.close(fig)
    fig, axes = plt.subplots(1, len(results), figsize=(4 * len(results), 4), squeeze=False)
    for col, (method, result) in enumerate(results.items()):
        plot_reliability(result.probs.reshape(-1), result.outcomes.reshape(-1), axes[0, col])
        axes[0, col].set_title(f"{method}: held-out P(a preferred to b)")
    fig.tight_layout()
    reliability_png = out / f"{name}_reliability.png"
    fig.savefig(reliability_png, dpi=100)
    plt.close(fig)
    return [ranks_png, reliability_png]


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=DefaultsHelpFormatter)
    p.add_argument("--dim", type=int, default=4, help="feature dimension d")
    p.add_argument("--comparisons", type=int, default=50, help="answers per simulated data set (m)")
    p.add_argument("--items", type=int, default=200, help="size of the item pool the pairs are drawn from")
    p.add_argument("--methods", nargs="+", default=list(METHODS), metavar="METHOD",
                   help=f"arms to run, among {', '.join(METHODS)}")
    p.add_argument("--datasets", type=int, default=100, help="simulated data sets per method (NUTS: --nuts-datasets)")
    p.add_argument("--nuts-datasets", type=int, default=30, help="simulated data sets for NUTS (the first ones)")
    p.add_argument("--sites", nargs="+", default=["w", "rationality"], metavar="SITE",
                   help=f"sites whose ranks and coverage are measured, among {', '.join(SITES)}")
    p.add_argument("--heldout", type=int, default=100, help="fresh pairs per data set for the ECE")
    p.add_argument("--rank-draws", type=int, default=99, help="posterior draws (evenly thinned) each rank is among")
    p.add_argument("--num-bins", type=int, default=None,
                   help="bins of the rank histograms and chi-square tests (default: data sets / 5, at most 20)")
    p.add_argument("--num-samples", type=int, default=None,
                   help="draws kept per fit (Laplace/SVI; NUTS: per chain); default fit()'s (1000; NUTS 2 x 500)")
    p.add_argument("--refine-steps", type=int, default=20, help="resample-move steps of laplace_refined")
    p.add_argument("--svi-steps", type=int, default=None, help="SVI steps (default fit()'s, 1000)")
    p.add_argument("--warmup-steps", type=int, default=None, help="NUTS warm-up per chain (default fit()'s, 300)")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--tiny", action="store_true",
                   help="seconds-long run (d=2, m=15, 4 data sets, NUTS 2, 19 rank draws) into benchmarks/results/tmp; "
                   "options given explicitly are kept")
    p.add_argument("--seed", type=int, default=0, help="seeds every data set and fit (data set i: (seed, i))")
    add_out_option(p)
    args = parse_with_tiny(p, argv, dict(dim=2, comparisons=15, items=20, datasets=4, nuts_datasets=2, heldout=20,
                                         rank_draws=19, num_samples=40, refine_steps=2, svi_steps=20, warmup_steps=20))
    counts("--dim", args.dim)
    counts("--comparisons", args.comparisons)
    counts("--items", args.items, minimum=2)
    one_of("--methods", args.methods, METHODS)
    counts("--datasets", args.datasets)
    counts("--nuts-datasets", args.nuts_datasets)
    one_of("--sites", args.sites, SITES)
    # A repeated site is measured once, as a repeated method runs once (the SBC driver refused it as "sites").
    args.sites = list(dict.fromkeys(args.sites))
    counts("--heldout", args.heldout)
    counts("--rank-draws", args.rank_draws)
    if args.num_bins is not None:
        counts("--num-bins", args.num_bins, minimum=2)
    if args.num_samples is not None:
        counts("--num-samples", args.num_samples)
    counts("--refine-steps", args.refine_steps)
    if args.svi_steps is not None:
        counts("--svi-steps", args.svi_steps)
    if args.warmup_steps is not None:
        counts("--warmup-steps", args.warmup_steps, minimum=0)
    counts("--threads", args.threads)
    counts("--seed", args.seed, minimum=0)
    # Checked now, not when the fits of the first method have run: ranks are taken among --rank-draws thinned
    # draws of each fit, and the histograms bin the rank-draws + 1 possible ranks.
    if args.num_bins is not None and args.num_bins > args.rank_draws + 1:
        raise InputDataError("--num-bins", f"at most --rank-draws + 1 = {args.rank_draws + 1} (the possible ranks)",
                             args.num_bins)
    if "nuts" in args.methods and args.num_samples is not None:
        check_nuts_samples(args.num_samples, "--num-samples")
    for method in args.methods:
        if args.rank_draws > draws_kept(method, args.num_samples):
            per = f"{NUTS_CHAINS} chains x --num-samples" if method == "nuts" else "--num-samples"
            raise InputDataError("--rank-draws", f"at most the {draws_kept(method, args.num_samples)} draws a {method} "
                                 f"fit keeps ({per}; raise --num-samples)", args.rank_draws)
    name, out = (("bench_calibration_tiny", output_folder(args.out, RESULTS / "tmp")) if args.tiny
                 else ("bench_calibration", output_folder(args.out)))
    torch.set_num_threads(args.threads)
    # The item pool is fixed across data sets and methods: only the person and the answers vary.
    items = torch.randn(args.items, args.dim, generator=torch.Generator().manual_seed(args.seed), dtype=torch.float64)

    results: dict[str, SBCResult] = {}
    rows, raw = [], {}
    for method in dict.fromkeys(args.methods):
        # One untimed fit first (the first data set's, thrown away): a method's first fit in a process pays
        # one-time costs (lazy imports, first use of its code paths; Laplace's ~0.6 s against 0.03 s) that
        # s_per_fit would otherwise spread over the data sets. Its time is recorded as first_fit_s.
        first_fit_s = float(_calibrate(method, args, items, 1).seconds[0])
        start = time.perf_counter()
        result = _calibrate(method, args, items, args.nuts_datasets if method == "nuts" else args.datasets)
        results[method] = result
        summary = summarize(method, result, args.num_bins)
        summary["row"]["wall_s"] = time.perf_counter() - start
        summary["row"]["first_fit_s"] = first_fit_s
        rows.append(summary["row"])
        raw[method] = summary["raw"]
        print(summary["row"], flush=True)

    columns = ["method", "datasets"]
    columns += [f"cov{round(100 * lv)}_{s}" for s in args.sites for lv in LEVELS]
    columns += ["ece"] + [f"sbc_{kind}_{s}" for s in args.sites for kind in ("p", "min_p")]
    columns += ["s_per_fit", "divergences", "worst_r_hat"]
    pngs = _plot(results, args.num_bins, out, name)
    notes = (
        f"\nLinearReward(link='logit'), rationality learned; d={args.dim}, m={args.comparisons} answers per data set"
        f" over {args.items} standard-normal items; truth drawn from the prior. `covNN_site`: share of the site's true"
        " values (all data sets and elements) inside the central NN% credible interval. `ece`: expected calibration"
        f" error of P(a preferred to b) on {args.heldout} fresh pairs per data set, pooled (10 bins)."
        f" `sbc_p_site`: chi-square p-value of the site's ranks among {args.rank_draws} thinned draws against"
        " uniform, its elements pooled; `sbc_min_p_site`: the smallest over its elements (uncorrected)."
        " `s_per_fit`: mean fit time, after one untimed warm-up fit per method (its time: `first_fit_s` in the"
        " JSON). NUTS: its first data sets only, `divergences` summed, `worst_r_hat` the"
        f" largest split R-hat over its fits. Rank histograms: {pngs[0].name}; reliability: {pngs[1].name}.\n"
    )
    write_results(name, {"args": recorded_args(args, out), "rows": rows, "raw": raw},
                  markdown_table(rows, columns) + notes, out,
                  title="Calibration of Laplace, refined Laplace and SVI against NUTS (simulation-based calibration)")
    print(markdown_table(rows, columns))
    return rows


if __name__ == "__main__":
    run_main(main)
