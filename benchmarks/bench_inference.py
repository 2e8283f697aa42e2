"""Fit time and one online update (after one new comparison) for NUTS, SVI and Laplace.

    python -m benchmarks.bench_inference            # full grid: m in {50, 200, 1000, 10000}, d in {8, 32}
    python -m benchmarks.bench_inference --tiny     # seconds; what `make test` runs

Target: one online Laplace update at m=200, d=8 in <= 20 ms (median).
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch

from benchmarks.common import (RESULTS, add_out_option, counts, markdown_table, output_folder,
                               recorded_args, run_main, write_results)
from papa_bayes import LinearReward, fit
from papa_bayes.checks import DefaultsHelpFormatter, parse_with_tiny
from papa_bayes.inference.mcmc_util import check_nuts_samples
from papa_bayes.users import SimulatedUser, random_unit_vector, simulate_comparisons


METHODS = ("laplace", "svi", "nuts")


def _problem(m: int, d: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    w = random_unit_vector(d, generator=g)
    X = torch.randn(max(500, m // 4), d, generator=g, dtype=torch.float64)
    data = simulate_comparisons(SimulatedUser(w, seed=seed), X, m, generator=g)
    return data, w


def _time(fn, repeats: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), times


def _fit_options(method: str, args: argparse.Namespace) -> dict:
    """fit()'s options of a timed fit of ``method`` (no progress bars: NUTS shows one by default)."""
    kw = dict(method=method, seed=args.seed, num_samples=args.num_samples, progress_bar=False)
    if method == "nuts":
        kw.update(warmup_steps=20 if args.tiny else 300, num_chains=2)
    if method == "svi" and args.tiny:
        kw.update(num_steps=20)
    return kw


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=DefaultsHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[50, 200, 1000, 10000], metavar="M",
                   help="numbers of comparisons m to fit")
    p.add_argument("--dims", type=int, nargs="+", default=[8, 32], metavar="D", help="feature dimensions d")
    p.add_argument("--methods", nargs="+", default=["laplace", "svi", "nuts"], choices=METHODS,
                   help="inference methods to time")
    p.add_argument("--update-repeats", type=int, default=21,
                   help="timed Laplace updates per setting (median reported; SVI and NUTS: 3)")
    p.add_argument("--num-samples", type=int, default=256, help="posterior draws kept (Laplace/SVI) / per chain (NUTS)")
    p.add_argument("--nuts-max-m", type=int, default=1000, help="skip NUTS above this m (minutes per fit on CPU)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: an online loop's small ops)")
    p.add_argument("--tiny", action="store_true",
                   help="seconds-long run (m=30, d=3, 3 repeats, 20 draws) into benchmarks/results/tmp; "
                   "options given explicitly are kept")
    p.add_argument("--seed", type=int, default=0, help="seeds the simulated person, the data and every fit")
    add_out_option(p)
    args = parse_with_tiny(p, argv, dict(sizes=[30], dims=[3], update_repeats=3, num_samples=20))
    # A repeated value was timed again and written as a second row of the same setting.
    args.sizes, args.dims, args.methods = (list(dict.fromkeys(v)) for v in (args.sizes, args.dims, args.methods))
    counts("--sizes", args.sizes)
    counts("--dims", args.dims)
    counts("--update-repeats", args.update_repeats)
    counts("--num-samples", args.num_samples)
    if "nuts" in args.methods:  # before any work, under the option's name (fit() would name its num_samples)
        check_nuts_samples(args.num_samples, "--num-samples")
    counts("--nuts-max-m", args.nuts_max_m, minimum=0)
    counts("--threads", args.threads)
    counts("--seed", args.seed, minimum=0)
    out = output_folder(args.out, RESULTS / "tmp" if args.tiny else RESULTS)
    torch.set_num_threads(args.threads)

    # An untimed first fit (and update) of every method, on a small problem: one-time costs (lazy imports;
    # torch's vmap machinery, which Laplace's Hessian uses, takes about 0.5 s on first use; SVI's first fit
    # about 1 s) would otherwise land in each method's first row. The fits' times are recorded as first_fit_s.
    warm = _problem(5, 2, args.seed)[0]
    first_fit_s = {}
    for method in dict.fromkeys(args.methods):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t = time.perf_counter()
            post = fit(LinearReward(), warm, **_fit_options(method, args))
            first_fit_s[method] = time.perf_counter() - t
            post.update(warm.append(comparisons=[[0, 1]]))
    rows = []
    for d in args.dims:
        for m in args.sizes:
            data, w = _problem(m, d, args.seed)
            new = data.append(comparisons=[[0, 1]])
            for method in args.methods:
                if method == "nuts" and m > args.nuts_max_m:
                    continue
                kw = _fit_options(method, args)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    t = time.perf_counter()
                    post = fit(LinearReward(), data, **kw)
                    fit_s = time.perf_counter() - t
                    repeats = args.update_repeats if method == "laplace" else (1 if args.tiny else 3)
                    upd_s, _ = _time(lambda: post.update(new), repeats)
                cos = float(torch.nn.functional.cosine_similarity(post.mean("w"), w, dim=0))
                rows.append(dict(method=method, m=m, d=d, fit_s=fit_s, update_ms=1000 * upd_s, update_repeats=repeats,
                                 cosine=cos))
                print(rows[-1], flush=True)
    table = markdown_table(rows, ["method", "m", "d", "fit_s", "update_ms", "update_repeats", "cosine"])
    path = write_results("bench_inference" + ("_tiny" if args.tiny else ""),
                         {"rows": rows, "args": recorded_args(args, out), "first_fit_s": first_fit_s}, table,
                         out, title="Fit and online-update time (median update over repeats)")
    print(table)
    print(f"written to {path}")
    return rows


if __name__ == "__main__":
    run_main(main)
