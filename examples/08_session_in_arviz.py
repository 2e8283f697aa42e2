"""Read a session's posterior in ArviZ: summary, trace and forest plots, LOO.

The online loop uses the fast Laplace posterior; for reporting, refit the stored
answers with NUTS (the reference) and compare the two in ArviZ. Prints the NUTS
summary of w and its PSIS-LOO; writes OUT/trace.png (NUTS) and OUT/forest.png (NUTS
beside the online Laplace posterior) and the session's store OUT/session.db (default
OUT: example_output/08).

    python examples/08_session_in_arviz.py --labels 30
    python examples/08_session_in_arviz.py --tiny          # seconds, for tests
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import arviz as az
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from papa_bayes import LinearReward, fit  # noqa: E402
from papa_bayes.session import FeaturePool, PreferenceSession  # noqa: E402
from papa_bayes.users import SimulatedUser, random_unit_vector  # noqa: E402
from papa_bayes.checks import bounded_arg, parse_with_tiny  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--labels", type=bounded_arg(int, 1), default=30, help="answers of the session (pairs, EIG)")
    p.add_argument("--num-samples", type=bounded_arg(int, 4), default=300,
                   help="NUTS draws per chain (2 chains), and as many warm-up steps")
    p.add_argument("--tiny", action="store_true", help="a seconds-long run (tests); sizes given explicitly are kept")
    p.add_argument("--seed", type=bounded_arg(int, 0), default=0)
    p.add_argument("--out", type=Path, default=Path("example_output/08"))
    # --tiny shrinks only the sizes left off the command line (as the benchmarks' --tiny)
    args = parse_with_tiny(p, argv, dict(labels=6, num_samples=30))
    args.out.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(args.seed)
    items = torch.randn(200, 4, generator=g, dtype=torch.float64)
    user = SimulatedUser(random_unit_vector(4, generator=g), rationality=2.0, seed=args.seed)
    path = args.out / "session.db"
    path.unlink(missing_ok=True)
    session = PreferenceSession(path, FeaturePool(items), user, pool_size=16, seed=args.seed, strategy="eig")
    session.run(args.labels, progress_bar=False)

    laplace = session.posterior.to_inference_data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nuts = fit(LinearReward(rationality=1.0), session.data, method="nuts", num_samples=args.num_samples,
                   warmup_steps=args.num_samples, seed=args.seed)
    idata = nuts.to_inference_data()
    print(az.summary(idata, var_names=["w"]))
    print(az.loo(idata, var_name="comparisons"))
    az.plot_trace(idata, var_names=["w"], compact=True)
    plt.savefig(args.out / "trace.png", dpi=90, bbox_inches="tight")
    az.plot_forest([idata, laplace], model_names=["NUTS", "Laplace (online)"], var_names=["w"], combined=True)
    plt.savefig(args.out / "forest.png", dpi=90, bbox_inches="tight")
    plt.close("all")
    session.close()
    return {"r_hat_max": nuts.diagnostics["r_hat_max"]}


if __name__ == "__main__":
    main()
