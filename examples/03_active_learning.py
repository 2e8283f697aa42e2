"""Active learning of a linear reward: expected information gain against random pairs.

A simulated person with a hidden linear reward ``u(x) = w* . x`` (w* uniform on the
sphere, logit answers with rationality 1) compares pairs drawn from a pool of 500
items. After every answer the Laplace posterior of ``LinearReward()`` (rationality
learned) is updated online; the next pair is
either the one with the largest expected information gain among all 124,750 pairs
of the pool ("eig") or a random pair ("random"). The plot shows the alignment
cos(E[w], w*) against the number of answers, mean and standard error over seeds.
Prints, per strategy, the mean alignment after the last answer, the answers each
seed needed to reach 0.9 (None: never) and the time per round; writes OUT/alignment.png
and OUT/result.json (default OUT: example_output/03).

Run:
    python examples/03_active_learning.py --out out/03
    python examples/03_active_learning.py --tiny          # seconds, for tests
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from papa_bayes.acquisition import STRATEGIES, queries_to_reach, run_active_learning
from papa_bayes.acquisition.selection import check_strategy
from papa_bayes.exceptions import InputDataError
from papa_bayes.users import SimulatedUser, random_unit_vector
from papa_bayes.checks import bounded_arg, parse_with_tiny


def strategy_list(text: str) -> list[str]:
    """An argparse ``type=``: comma-separated strategies, each named once (aliases resolved), at least one.

    Checked before any run: an unknown name stopped the script with a traceback after the runs before it, and an
    empty list (or a strategy twice, e.g. "eig,bald") ran nothing (or counted each seed twice) without a word.
    """
    names = [s.strip() for s in text.split(",") if s.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected at least one of {STRATEGIES}, got {text!r}")
    strategies: list[str] = []
    for name in names:
        try:
            strategy = check_strategy(name, "pair")
        except InputDataError:
            raise argparse.ArgumentTypeError(f"expected strategies among {STRATEGIES}, got {name!r}") from None
        if strategy in strategies:
            raise argparse.ArgumentTypeError(f"expected each strategy once, got {strategy!r} twice in {text!r}")
        strategies.append(strategy)
    return strategies


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dim", type=bounded_arg(int, 1), default=8, help="feature dimension d")
    p.add_argument("--pool-size", type=bounded_arg(int, 2), default=500, help="candidate items (all pairs are scored)")
    p.add_argument("--queries", type=bounded_arg(int, 1), default=30, help="answers per run")
    p.add_argument("--seeds", type=bounded_arg(int, 1), default=5, help="independent runs (paired across strategies)")
    p.add_argument("--rationality", type=bounded_arg(float, 0, strict=True), default=1.0,
                   help="the simulated user's rationality")
    p.add_argument("--num-samples", type=bounded_arg(int, 1), default=256, help="posterior draws")
    p.add_argument("--strategies", type=strategy_list, default="eig,random",
                   help="comma-separated strategies to compare, each once (papa_bayes.acquisition.STRATEGIES)")
    p.add_argument("--seed", type=bounded_arg(int, 0), default=0, help="base seed")
    p.add_argument("--out", default="example_output/03", help="output folder")
    p.add_argument("--tiny", action="store_true",
                   help="tiny sizes (d=3, pool 40, 6 queries, 2 seeds, 64 draws); sizes given explicitly are kept")
    # --tiny shrinks only the sizes left off the command line (as the benchmarks' --tiny)
    args = parse_with_tiny(p, argv, dict(dim=3, pool_size=40, queries=6, seeds=2, num_samples=64))
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small tensors: one thread is fastest and keeps timings honest
    try:
        return _run(args)
    finally:
        torch.set_num_threads(threads)


def _run(args: argparse.Namespace) -> dict:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    strategies = args.strategies
    curves: dict[str, list[list[float]]] = {s: [] for s in strategies}
    seconds: dict[str, list[float]] = {s: [] for s in strategies}
    for r in range(args.seeds):
        seed = args.seed + r
        gen = torch.Generator().manual_seed(10_000 + seed)
        w_true = random_unit_vector(args.dim, generator=gen)
        pool = torch.randn(args.pool_size, args.dim, generator=gen, dtype=torch.float64)
        for strategy in strategies:
            user = SimulatedUser(w_true, rationality=args.rationality, seed=seed)
            run = run_active_learning(
                user, pool, strategy=strategy, num_queries=args.queries, num_samples=args.num_samples, seed=seed
            )
            curves[strategy].append(run.alignment)
            seconds[strategy].extend(a + b for a, b in zip(run.select_seconds, run.update_seconds[1:]))

    summary = {}
    for s in strategies:
        A = torch.tensor(curves[s])
        reach = [queries_to_reach(c, 0.9) for c in curves[s]]
        summary[s] = {
            "mean_alignment": A.mean(0).tolist(),
            "se_alignment": (A.std(0) / max(A.shape[0], 1) ** 0.5).nan_to_num(0.0).tolist(),
            "final_alignment": float(A[:, -1].mean()),
            "queries_to_0.9": reach,
            "seconds_per_round": sum(seconds[s]) / max(len(seconds[s]), 1),
        }
        print(
            f"{s:>12}: alignment after {args.queries} answers {summary[s]['final_alignment']:.3f}; "
            f"answers to 0.9: {reach}; {1000 * summary[s]['seconds_per_round']:.0f} ms per round"
        )
    _plot(summary, args, out / "alignment.png")
    result = {"config": vars(args), "summary": summary}
    (out / "result.json").write_text(json.dumps(result, indent=2))
    print(f"wrote {out / 'alignment.png'} and {out / 'result.json'}")
    return result


def _plot(summary: dict, args: argparse.Namespace, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    x = torch.arange(1, args.queries + 1)
    for s, v in summary.items():
        m, se = torch.tensor(v["mean_alignment"]), torch.tensor(v["se_alignment"])
        ax.plot(x, m, label=s)
        ax.fill_between(x, m - se, m + se, alpha=0.2)
    ax.axhline(0.9, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("answers")
    ax.set_ylabel("alignment cos(E[w], w*)")
    ax.set_title(f"d={args.dim}, pool {args.pool_size}, rationality {args.rationality}, {args.seeds} seeds")
    ax.set_ylim(min(0.0, ax.get_ylim()[0]), 1.0)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    start = time.perf_counter()
    main()
    print(f"done in {time.perf_counter() - start:.1f} s")
