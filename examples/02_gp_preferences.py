"""A nonlinear taste: Gaussian-process preferences against a linear reward.

A simulated person in d=4 likes two separate regions of the feature space (a sum of
two Gaussian bumps), something no linear reward ``w . x`` can express. From the
same random pairwise comparisons we fit

- ``LinearReward`` (Laplace),
- ``PreferenceGP`` (sparse variational GP, ELBO) and
- ``PairwiseGPReward`` (BoTorch's PairwiseGP, Laplace; the reference),

then score P(a preferred to b) on held-out pairs of new items: log-loss against the
person's answers (and against the true probabilities), expected calibration error,
and a reliability plot: OUT/reliability.png and OUT/results.json (default OUT:
example_output/02).

    python examples/02_gp_preferences.py --out example_output/02
    python examples/02_gp_preferences.py --tiny      # seconds
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from papa_bayes.diagnostics.calibration import expected_calibration_error, reliability_curve  # noqa: E402
from papa_bayes.inference import fit  # noqa: E402
from papa_bayes.models import LinearReward, PairwiseGPReward, PreferenceGP  # noqa: E402
from papa_bayes.users import SimulatedUser, simulate_comparisons  # noqa: E402
from papa_bayes.checks import bounded_arg, parse_with_tiny  # noqa: E402


def two_bumps(x: torch.Tensor) -> torch.Tensor:
    """The hidden utility: bumps of height 3 and 2 at +-(0.5, 0.5, 0, 0), width 0.5: `n`."""
    x = torch.as_tensor(x, dtype=torch.float64)
    center = torch.tensor([0.5, 0.5, 0.0, 0.0], dtype=torch.float64)
    bump = lambda c: torch.exp(-(x - c).pow(2).sum(-1) / (2 * 0.5**2))  # noqa: E731
    return 3 * bump(center) + 2 * bump(-center)


def log_loss(p: torch.Tensor, y: torch.Tensor) -> float:
    """Mean negative log-likelihood of outcomes (or true probabilities) ``y`` under ``p``."""
    p = p.clamp(1e-9, 1 - 1e-9)
    return float(-(y * p.log() + (1 - y) * (1 - p).log()).mean())


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-items", type=bounded_arg(int, 2), default=200, help="items the person compares")
    parser.add_argument("--num-comparisons", type=bounded_arg(int, 1), default=300)
    parser.add_argument("--num-test-items", type=bounded_arg(int, 2), default=500)
    parser.add_argument("--num-test-pairs", type=bounded_arg(int, 1), default=4000)
    parser.add_argument("--rationality", type=bounded_arg(float, 0, strict=True), default=1.5,
                        help="answers' inverse noise (probit)")
    parser.add_argument("--num-samples", type=bounded_arg(int, 1), default=512, help="posterior draws")
    parser.add_argument("--no-pairwise-gp", action="store_true", help="skip BoTorch's PairwiseGP")
    parser.add_argument("--threads", type=bounded_arg(int, 1), default=1,
                        help="torch threads (small linear algebra runs best on one)")
    parser.add_argument("--tiny", action="store_true",
                        help="a seconds-long run (tests); sizes given explicitly are kept")
    parser.add_argument("--seed", type=bounded_arg(int, 0), default=0)
    parser.add_argument("--out", type=Path, default=Path("example_output/02"))
    # --tiny shrinks only the sizes left off the command line (as the benchmarks' --tiny)
    args = parse_with_tiny(parser, argv, dict(num_items=40, num_comparisons=60, num_test_items=60, num_test_pairs=300,
                                              num_samples=64))
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)

    g = torch.Generator().manual_seed(args.seed)
    d = 4
    items = 2 * torch.rand(args.num_items, d, generator=g, dtype=torch.float64) - 1
    person = SimulatedUser(two_bumps, link="probit", rationality=args.rationality, seed=args.seed + 1)
    data = simulate_comparisons(person, items, args.num_comparisons, generator=g)

    # Held-out pairs of new items, answered by the same person.
    test_items = 2 * torch.rand(args.num_test_items, d, generator=g, dtype=torch.float64) - 1
    a = torch.randint(0, args.num_test_items, (args.num_test_pairs,), generator=g)
    b = (a + torch.randint(1, args.num_test_items, (args.num_test_pairs,), generator=g)) % args.num_test_items
    p_true = person.outcome_probabilities(test_items[a], test_items[b])[:, 0]
    answers = (torch.rand(args.num_test_pairs, generator=g, dtype=torch.float64) < p_true).double()

    models = {
        "linear (Laplace)": (LinearReward(link="probit"), "laplace"),
        "PreferenceGP (ELBO)": (PreferenceGP(link="probit"), "elbo"),
    }
    if not args.no_pairwise_gp:
        models["PairwiseGP (BoTorch, Laplace)"] = (PairwiseGPReward(link="probit"), "laplace")

    results: dict[str, dict[str, float]] = {}
    curves = {}
    for name, (model, method) in models.items():
        start = time.perf_counter()
        post = fit(model, data, method=method, seed=args.seed, num_samples=args.num_samples)
        seconds = time.perf_counter() - start
        with torch.no_grad():
            p = post.preference_probability(test_items[a], test_items[b])
        results[name] = {
            "held_out_log_loss": log_loss(p, answers),
            "cross_entropy_to_truth": log_loss(p, p_true),
            "ece": expected_calibration_error(p, answers),
            "fit_seconds": seconds,
        }
        curves[name] = reliability_curve(p, answers, num_bins=10)
    results["oracle (true probabilities)"] = {
        "held_out_log_loss": log_loss(p_true, answers), "cross_entropy_to_truth": log_loss(p_true, p_true),
        "ece": expected_calibration_error(p_true, answers), "fit_seconds": 0.0,
    }

    width = max(len(k) for k in results)
    print(f"{'model':<{width}}  log-loss  CE(truth)    ECE   fit s")
    for name, r in results.items():
        print(f"{name:<{width}}  {r['held_out_log_loss']:8.4f}  {r['cross_entropy_to_truth']:9.4f}  {r['ece']:.3f}"
              f"  {r['fit_seconds']:6.2f}")

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--", label="perfect calibration")
    for name, (mean_p, freq, count) in curves.items():
        used = count > 0
        ax.plot(mean_p[used], freq[used], marker="o", label=f"{name}: ECE {results[name]['ece']:.3f}")
    ax.set_xlabel("predicted P(a preferred to b)")
    ax.set_ylabel("observed frequency")
    ax.set_title(f"Held-out pairs, {args.num_comparisons} comparisons, d={d}")
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(args.out / "reliability.png", dpi=120)
    plt.close(fig)
    (args.out / "results.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                       "results": results}, indent=2))
    print("(the first GP fit of a process also pays about 1 s for torch's first optimizer step importing its "
          "compiler stack)")
    print(f"wrote {args.out / 'reliability.png'} and {args.out / 'results.json'}")
    assert all(math.isfinite(r["held_out_log_loss"]) for r in results.values())
    return results


if __name__ == "__main__":
    main()
