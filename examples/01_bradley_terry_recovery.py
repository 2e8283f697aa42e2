"""Fit a Bradley-Terry reward to synthetic comparisons with NUTS and read it in ArviZ.

A simulated person with hidden weights w* answers random pairwise queries; NUTS
recovers w*'s direction. Prints the ArviZ summary of w and the rationality, then
cos(E[w], w*), the largest R-hat and the divergences, and saves a forest plot of w
against the truth as OUT/forest_w.png (default OUT: example_output/01).

    python examples/01_bradley_terry_recovery.py --num-comparisons 200 --out out/
    python examples/01_bradley_terry_recovery.py --num-comparisons 40 --num-samples 30 --warmup-steps 30 \\
        --num-features 3
"""

from __future__ import annotations

import argparse
from pathlib import Path

import arviz as az
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from papa_bayes import LinearReward, fit  # noqa: E402
from papa_bayes.users import SimulatedUser, random_unit_vector, simulate_comparisons  # noqa: E402
from papa_bayes.checks import bounded_arg  # noqa: E402


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-features", type=bounded_arg(int, 1), default=8)
    parser.add_argument("--num-items", type=bounded_arg(int, 2), default=500, help="items the pairs are drawn from")
    parser.add_argument("--num-comparisons", type=bounded_arg(int, 1), default=200)
    parser.add_argument("--rationality", type=bounded_arg(float, 0, strict=True), default=1.0,
                        help="the simulated person's (logit answers); the model learns its own")
    parser.add_argument("--num-samples", type=bounded_arg(int, 4), default=500, help="NUTS draws per chain")
    parser.add_argument("--warmup-steps", type=bounded_arg(int, 0), default=300)
    parser.add_argument("--num-chains", type=bounded_arg(int, 1), default=2)
    parser.add_argument("--seed", type=bounded_arg(int, 0), default=0)
    parser.add_argument("--out", type=Path, default=Path("example_output/01"))
    args = parser.parse_args(argv)

    g = torch.Generator().manual_seed(args.seed)
    w_true = random_unit_vector(args.num_features, generator=g)
    items = torch.randn(args.num_items, args.num_features, generator=g, dtype=torch.float64)
    person = SimulatedUser(w_true, rationality=args.rationality, seed=args.seed + 1)
    data = simulate_comparisons(person, items, args.num_comparisons, generator=g)

    post = fit(
        LinearReward(link="logit"), data, method="nuts", num_samples=args.num_samples,
        warmup_steps=args.warmup_steps, num_chains=args.num_chains, seed=args.seed, progress_bar=True,
    )
    idata = post.to_inference_data()
    print(az.summary(idata, var_names=["w", "rationality"]))
    cosine = float(torch.nn.functional.cosine_similarity(post.mean("w"), w_true, dim=0))
    print(f"cos(E[w], w*) = {cosine:.3f}; max R-hat = {post.diagnostics['r_hat_max']:.4f}; "
          f"divergences = {post.diagnostics['divergences']}")

    args.out.mkdir(parents=True, exist_ok=True)
    axes = az.plot_forest(idata, var_names=["w"], combined=True, hdi_prob=0.9)
    # w is identified up to the rationality's scale: show w* rescaled to E[w]'s norm.
    scale = float(post.mean("w").norm())
    ax = axes[0]
    ticks = ax.get_yticks()
    for y, v in zip(sorted(ticks, reverse=True), (w_true * scale).tolist()):
        ax.plot(v, y, "rx")
    ax.set_title("w: 90% intervals (x: true direction, rescaled)")
    plt.savefig(args.out / "forest_w.png", dpi=100, bbox_inches="tight")
    plt.close("all")
    return {"cosine": cosine, "r_hat_max": post.diagnostics["r_hat_max"],
            "divergences": post.diagnostics["divergences"]}


if __name__ == "__main__":
    main()
