"""GP preference models: fit time, one-update time and held-out log-loss against m.

PreferenceGP (sparse variational GP, ELBO) and BoTorch's PairwiseGP (Laplace) on the
same data in one run, reported side by side and as ratios. The person has a
nonlinear utility (two bumps in d=4, probit answers); ``m`` comparisons are drawn
over ``m * items-per-comparison`` items (default 1/2: 10^4 comparisons over 5,000
items).

    python -m benchmarks.bench_gp            # m in {100, 1000, 10000}; minutes
    python -m benchmarks.bench_gp --tiny     # seconds; what the tests run (writes results/tmp/bench_gp_tiny.*)
    python -m benchmarks.bench_gp --repeats 3  # the whole timing three times: a median and a range of speed-ups

Targets: PreferenceGP >= 5x faster than PairwiseGP at m=1000 with held-out log-loss
no worse by more than 0.02 nats; 10^4 comparisons in < 60 s with peak memory < 4 GB.
PairwiseGP is skipped above ``--pairwise-max-items`` distinct items: its Laplace
step is dense and cubic in the items (5,000 items: a 10^4 x 5,000 dense comparison
matrix and repeated 5,000-dimensional Newton solves per hyperparameter step).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import statistics
import sys
import time
import warnings
from typing import Any

import torch

from benchmarks.common import (RESULTS, add_out_option, counts, markdown_table, output_folder,
                               reals, recorded_args, run_main, write_results)
from papa_bayes.inference import fit
from papa_bayes.models import PairwiseGPReward, PreferenceGP
from papa_bayes.models.gp_pairwise import MAX_PAIRWISE_ITEMS
from papa_bayes.checks import DefaultsHelpFormatter, parse_with_tiny
from papa_bayes.users import SimulatedUser, simulate_comparisons


def two_bumps(x: torch.Tensor) -> torch.Tensor:
    center = torch.tensor([0.5, 0.5, 0.0, 0.0], dtype=torch.float64)
    bump = lambda c: torch.exp(-(x - c).pow(2).sum(-1) / (2 * 0.5**2))  # noqa: E731
    return 3 * bump(center) + 2 * bump(-center)


def _problem(m: int, n: int, num_test: int, seed: int) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    person = SimulatedUser(two_bumps, link="probit", rationality=1.5, seed=seed + 1)
    items = 2 * torch.rand(n, 4, generator=g, dtype=torch.float64) - 1
    data = simulate_comparisons(person, items, m, generator=g)
    test = 2 * torch.rand(max(num_test // 4, 20), 4, generator=g, dtype=torch.float64) - 1
    a = torch.randint(0, test.shape[0], (num_test,), generator=g)
    b = (a + torch.randint(1, test.shape[0], (num_test,), generator=g)) % test.shape[0]
    p_true = person.outcome_probabilities(test[a], test[b])[:, 0]
    # The next answer the person gives (for the update): a fresh pair of known items.
    i, j = torch.randperm(n, generator=g)[:2].tolist()
    won, _ = person.compare(items[i : i + 1], items[j : j + 1])
    new = [[i, j]] if bool(won) else [[j, i]]
    return {"data": data, "first": test[a], "second": test[b], "p_true": p_true, "new": data.append(comparisons=new)}


def _log_loss(p: torch.Tensor, p_true: torch.Tensor) -> float:
    """Expected held-out log-loss of the person's answers (cross-entropy to the true P)."""
    p = p.clamp(1e-9, 1 - 1e-9)
    return float(-(p_true * p.log() + (1 - p_true) * (1 - p).log()).mean())


def _peak_rss_gb() -> float:
    scale = 1e-9 if sys.platform == "darwin" else 1e-6  # bytes on macOS, KiB elsewhere
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def _timed(fn: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def _run(models: dict[str, Any], prob: dict[str, Any], *, seed: int, num_samples: int, fit_repeats: int,
         update_repeats: int) -> dict[str, dict[str, float]]:
    """Fit and update each model, interleaved so that the models share the machine's load; best times."""
    fits: dict[str, list[float]] = {k: [] for k in models}
    updates: dict[str, list[float]] = {k: [] for k in models}
    posts: dict[str, Any] = {}
    peak: dict[str, float] = {}
    for _ in range(fit_repeats):
        for name, model in models.items():
            posts[name], seconds = _timed(lambda: fit(model, prob["data"], seed=seed, num_samples=num_samples))
            fits[name].append(seconds)
            peak[name] = _peak_rss_gb()
    for _ in range(update_repeats):
        for name, post in posts.items():
            updates[name].append(_timed(lambda: post.update(prob["new"]))[1])
    out = {}
    for name, post in posts.items():
        with torch.no_grad():
            p = post.preference_probability(prob["first"], prob["second"])
        out[name] = {"fit_s": min(fits[name]), "update_s": min(updates[name]), "log_loss": _log_loss(p, prob["p_true"]),
                     "peak_rss_gb": peak[name], "fit_times_s": fits[name]}
    return out


def _repeated(models: dict[str, Any], prob: dict[str, Any], *, repeats: int, **options: Any) -> dict[str, Any]:
    """``_run`` ``repeats`` times: each repeat's best times, their medians and, per repeat, PairwiseGP / PreferenceGP.

    The two models alternate within every repeat, so a slow phase of a shared machine slows both. Log-loss and
    peak memory are the last repeat's (the fits are seeded: every repeat gives the same posterior).
    """
    runs = [_run(models, prob, **options) for _ in range(repeats)]
    out: dict[str, Any] = {}
    for name in models:
        last = runs[-1][name]
        out[name] = {"fit_s": statistics.median(r[name]["fit_s"] for r in runs),
                     "update_s": statistics.median(r[name]["update_s"] for r in runs),
                     "log_loss": last["log_loss"], "peak_rss_gb": last["peak_rss_gb"],
                     "fit_s_repeats": [r[name]["fit_s"] for r in runs],
                     "fit_times_s": [r[name]["fit_times_s"] for r in runs]}
    if "pairwise" in models:
        out["fit_speedups"] = [r["pairwise"]["fit_s"] / r["gp"]["fit_s"] for r in runs]
        out["update_speedups"] = [r["pairwise"]["update_s"] / r["gp"]["update_s"] for r in runs]
    return out


def _repeat_table(rows: list[dict[str, Any]], repeats: int) -> str:
    """One line per size and repeat: that repeat's best fit time of each model and their ratio."""
    lines = []
    for row in rows:
        pairwise = row.get("pairwise_fit_s_repeats", [""] * repeats)
        speedups = row.get("fit_speedup_repeats", [""] * repeats)
        lines += [{"m": row["m"], "repeat": i + 1, "gp_fit_s": gp, "pairwise_fit_s": pgp, "fit_speedup": ratio}
                  for i, (gp, pgp, ratio) in enumerate(zip(row["gp_fit_s_repeats"], pairwise, speedups))]
    return markdown_table(lines)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=DefaultsHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 10000], metavar="M",
                   help="numbers of comparisons m")
    p.add_argument("--items-per-comparison", type=float, default=0.5,
                   help="distinct items per comparison (n = max(10, m * this))")
    p.add_argument("--num-test-pairs", type=int, default=4000, help="held-out pairs of fresh items for the log-loss")
    p.add_argument("--num-samples", type=int, default=256, help="posterior draws kept")
    p.add_argument("--fit-repeats", type=int, default=3, help="fits per model for m <= 1000 (best time reported)")
    p.add_argument("--update-repeats", type=int, default=5, help="timed updates per model (best time reported)")
    p.add_argument("--repeats", type=int, default=1,
                   help="times the whole timing (fits and updates, models alternating) is repeated; above 1, times "
                   "and speed-ups are medians over repeats and every repeat's times and speed-up are recorded")
    p.add_argument("--pairwise-max-items", type=int, default=1000, help="skip PairwiseGP above this many items")
    p.add_argument("--threads", type=int, default=1, help="torch / BLAS threads for both models")
    p.add_argument("--tiny", action="store_true",
                   help="seconds-long run (m=40, 200 test pairs, 32 draws, one fit and one update) into "
                   "benchmarks/results/tmp; options given explicitly are kept")
    p.add_argument("--seed", type=int, default=0, help="seeds the person, the data and the fits")
    add_out_option(p)
    args = parse_with_tiny(p, argv, dict(sizes=[40], num_test_pairs=200, num_samples=32, fit_repeats=1,
                                         update_repeats=1))
    args.sizes = list(dict.fromkeys(args.sizes))  # a repeated size was run again: a second row of the same m
    counts("--sizes", args.sizes)
    reals("--items-per-comparison", args.items_per_comparison, minimum=0.0, strict=True)
    counts("--num-test-pairs", args.num_test_pairs)
    counts("--num-samples", args.num_samples)
    counts("--fit-repeats", args.fit_repeats)
    counts("--update-repeats", args.update_repeats)
    counts("--repeats", args.repeats)
    counts("--pairwise-max-items", args.pairwise_max_items, minimum=0)
    counts("--threads", args.threads)
    counts("--seed", args.seed, minimum=0)
    # A tiny run (what the tests do) never replaces the committed results.
    name, out = (("bench_gp_tiny", output_folder(args.out, RESULTS / "tmp")) if args.tiny
                 else ("bench_gp", output_folder(args.out)))
    torch.set_num_threads(args.threads)
    try:  # NumPy's BLAS (PairwiseGP's Newton solver) gets the same threads
        from threadpoolctl import threadpool_limits

        limits = threadpool_limits(args.threads)
    except ImportError:  # pragma: no cover
        limits = contextlib.nullcontext()

    rows: list[dict[str, Any]] = []
    with limits, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # Warm-up: the first optimizer step of a process imports torch's compiler stack (seconds).
        warm = _problem(20, 10, 20, args.seed)
        fit(PreferenceGP(), warm["data"], num_samples=8)
        fit(PairwiseGPReward(), warm["data"], num_samples=8)
        for m in args.sizes:
            n = max(10, round(m * args.items_per_comparison))
            prob = _problem(m, n, args.num_test_pairs, args.seed)
            row: dict[str, Any] = {"m": m, "n": n, "oracle_log_loss": _log_loss(prob["p_true"], prob["p_true"])}
            repeats = dict(fit_repeats=args.fit_repeats if m <= 1000 else 1, update_repeats=args.update_repeats)
            models = {"gp": PreferenceGP()}
            if n <= args.pairwise_max_items:
                models["pairwise"] = PairwiseGPReward(max_items=max(args.pairwise_max_items, MAX_PAIRWISE_ITEMS))
            res = _repeated(models, prob, repeats=args.repeats, seed=args.seed, num_samples=args.num_samples, **repeats)
            hidden = () if args.repeats > 1 else ("fit_s_repeats", "fit_times_s")  # one repeat: the row as it was
            row.update({f"gp_{k}": v for k, v in res["gp"].items() if k not in hidden})
            if "pairwise" in res:
                pgp, gp = res["pairwise"], res["gp"]
                row.update({f"pairwise_{k}": v for k, v in pgp.items() if k not in ("peak_rss_gb", *hidden)})
                row["fit_speedup"] = statistics.median(res["fit_speedups"])
                row["update_speedup"] = statistics.median(res["update_speedups"])
                if args.repeats > 1:
                    row.update(fit_speedup_min=min(res["fit_speedups"]), fit_speedup_max=max(res["fit_speedups"]),
                               fit_speedup_repeats=res["fit_speedups"], update_speedup_repeats=res["update_speedups"])
                row["log_loss_gp_minus_pairwise"] = gp["log_loss"] - pgp["log_loss"]
            else:
                row["pairwise_fit_s"] = f"skipped (n={n} > {args.pairwise_max_items})"
            rows.append(row)
            print(row, flush=True)

    columns = ["m", "n", "oracle_log_loss", "gp_fit_s", "pairwise_fit_s", "fit_speedup", "gp_update_s",
               "pairwise_update_s", "update_speedup", "gp_log_loss", "pairwise_log_loss", "log_loss_gp_minus_pairwise",
               "gp_peak_rss_gb"]
    if args.repeats > 1:
        columns[6:6] = ["fit_speedup_min", "fit_speedup_max"]
    notes = (
        "\nTimes in seconds, the best of several runs, the two models interleaved"
        f" (fits: {args.fit_repeats} for m <= 1000;"
        f" updates: {args.update_repeats};"
        " the machine is shared),"
        f" {'one thread' if args.threads == 1 else f'{args.threads} threads'} for both models; log-loss is the expected"
        " held-out log-loss of the person's answers (cross-entropy to the true probabilities; the oracle is not 0)."
        " `fit_speedup` = PairwiseGP fit time / PreferenceGP fit time. `gp_peak_rss_gb` is the process's peak"
        " resident memory after its fits (an upper bound on a fit's own peak).\n"
    )
    if args.repeats > 1:
        notes += (
            f"All of this was repeated {args.repeats} times in one process: the times and speed-ups above are the"
            " medians over the repeats of each repeat's best times and of each repeat's speed-up, `fit_speedup_min` /"
            " `_max` the range of the per-repeat fit speed-ups; every repeat's best fit times follow (all fit times"
            " in the JSON, `*_fit_times_s`).\n\n" + _repeat_table(rows, args.repeats) + "\n"
        )
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    notes += f"Load average (1, 5, 15 min) at the end: {load}.\n"
    write_results(name, {"args": recorded_args(args, out), "rows": rows, "load_average": load},
                  markdown_table(rows, columns) + notes, out,
                  title="GP preference models: PreferenceGP (ELBO) vs BoTorch PairwiseGP (Laplace)")
    return rows


if __name__ == "__main__":
    run_main(main)
