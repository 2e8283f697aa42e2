"""The full online loop in Python: ask, update, steer, recommend.

A simulated person who likes digits {1, 4, 7, 9} answers pairwise queries about
samples of the bundled diffusion model, chosen by their information about the
preferred region (strategy "region"); the posterior steers the sampler; the
recommended samples are measured by the independent judge and saved as a grid.
Prints each round's expected information (bits) and exposure coverage, then the
judge's measures of the recommended samples (preferred fraction, judge share,
precision, recall, liked-class entropy); writes OUT/recommended.png and the session's
store OUT/session.db (default OUT: example_output/04).

    python examples/04_full_loop.py --labels 20 --out out/
    python examples/04_full_loop.py --tiny          # seconds, for tests
"""

from __future__ import annotations

import argparse
from pathlib import Path

from papa_bayes.demo import DigitsUser, make_setup
from papa_bayes.diffusion import DiffusionCandidates, evaluate_samples, save_image_grid
from papa_bayes.session import PreferenceSession
from papa_bayes.checks import bounded_arg, parse_with_tiny


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--labels", type=bounded_arg(int, 1), default=20, help="answers (rounds)")
    p.add_argument("--query-type", choices=("pair", "rating"), default="pair", help="pair or like/dislike questions")
    p.add_argument("--pool-size", type=bounded_arg(int, 2), default=16, help="candidate samples per round")
    p.add_argument("--recommend", type=bounded_arg(int, 4), default=64, help="recommended samples measured")
    p.add_argument("--tiny", action="store_true", help="a seconds-long run (tests); sizes given explicitly are kept")
    p.add_argument("--seed", type=bounded_arg(int, 0), default=0)
    p.add_argument("--out", type=Path, default=Path("example_output/04"))
    # --tiny shrinks only the sizes left off the command line (as the benchmarks' --tiny)
    args = parse_with_tiny(p, argv, dict(labels=2, pool_size=4, recommend=4))
    opts: dict = dict(scale=0.5, num_base=16, pool_steps=4, recommend_steps=5, oversample=2.0) if args.tiny else {}
    args.out.mkdir(parents=True, exist_ok=True)

    setup = make_setup()
    source = DiffusionCandidates(setup.model, setup.feature_map, setup.guard, seed=args.seed, **opts)
    store = args.out / "session.db"
    store.unlink(missing_ok=True)
    session = PreferenceSession(store, source, DigitsUser(setup.person), query_type=args.query_type,
                                strategy="region", pool_size=args.pool_size, seed=args.seed)
    session.run(args.labels)
    for h in session.history:
        print(f"round {h['round']:>2}: information {h['information_bits']:.2f} bits, "
              f"exposure coverage {h['exposure_coverage']:.2f}")
    rec = session.recommend(args.recommend)
    metrics = evaluate_samples(rec.images, setup.liked)
    print({k: round(v, 3) for k, v in metrics.items() if isinstance(v, float)})
    save_image_grid(rec.images, args.out / "recommended.png")
    session.close()
    return metrics


if __name__ == "__main__":
    main()
