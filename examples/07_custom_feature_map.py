"""Use your own feature map: any differentiable callable from images to `n x d`.

Here a hand-made map (total ink, its row and column centre, its horizontal spread) replaces
the shipped PCA features; with real weights, a CLIP or DINO encoder plugs in the
same way through ``CallableFeatures``. Guidance differentiates through it. Prints
the posterior mean weight of each feature and the judge's measures of the
recommended samples; writes the saved map OUT/ink_features/ and the session's store
OUT/session.db (default OUT: example_output/07).

    python examples/07_custom_feature_map.py --labels 10
    python examples/07_custom_feature_map.py --tiny          # seconds, for tests
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from papa_bayes.demo import DigitsUser, make_setup
from papa_bayes.diffusion import (
    CallableFeatures,
    DiffusionCandidates,
    evaluate_samples,
    load_feature_map,
    save_feature_map,
)
from papa_bayes.session import PreferenceSession
from papa_bayes.checks import bounded_arg, parse_with_tiny


def ink_features(images: torch.Tensor) -> torch.Tensor:
    """`n x 1 x 8 x 8` in [-1, 1] -> `n x 4`: total ink, its row and column centre, its spread across columns."""
    ink = (images + 1) / 2
    ink = ink[:, 0]
    total = ink.sum((1, 2)) + 1e-6
    rows = torch.arange(8, dtype=ink.dtype, device=ink.device)  # on the images' device (a GPU too)
    cy = (ink.sum(2) * rows).sum(1) / total
    cx = (ink.sum(1) * rows).sum(1) / total
    spread = (ink.sum(1) * (rows - cx.unsqueeze(1)) ** 2).sum(1) / total
    return torch.stack([total / 16 - 1.5, (cy - 3.5) / 2, (cx - 3.5) / 2, spread / 4 - 1], dim=1)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--labels", type=bounded_arg(int, 1), default=10, help="like/dislike answers")
    p.add_argument("--tiny", action="store_true", help="a seconds-long run (tests); sizes given explicitly are kept")
    p.add_argument("--seed", type=bounded_arg(int, 0), default=0)
    p.add_argument("--out", type=Path, default=Path("example_output/07"))
    # --tiny shrinks only the sizes left off the command line (as the benchmarks' --tiny)
    args = parse_with_tiny(p, argv, dict(labels=2))
    opts: dict = dict(scale=0.5, num_base=16, pool_steps=4, recommend_steps=5, oversample=2.0) if args.tiny else {}
    args.out.mkdir(parents=True, exist_ok=True)

    phi = CallableFeatures(ink_features, num_features=4, name="ink")
    save_feature_map(phi, args.out / "ink_features")  # saves its config with the model
    phi = load_feature_map(args.out / "ink_features", fn=ink_features)

    setup = make_setup()
    source = DiffusionCandidates(setup.model, phi, setup.guard, seed=args.seed, **opts)
    store = args.out / "session.db"
    store.unlink(missing_ok=True)
    session = PreferenceSession(store, source, DigitsUser(setup.person), query_type="rating", pool_size=8,
                                seed=args.seed)
    session.run(args.labels, progress_bar=False)
    rec = session.recommend(8 if args.tiny else 64)
    metrics = evaluate_samples(rec.images, setup.liked)
    print("posterior mean weights on (ink, row centre, column centre, spread):", session.posterior.mean("w").tolist())
    print({k: round(v, 3) for k, v in metrics.items() if isinstance(v, float)})
    session.close()
    return metrics


if __name__ == "__main__":
    main()
