"""Steer the shipped digits model toward what a (simulated) person likes.

A simulated person who likes the digits {1, 4, 7, 9} rates a few base samples
like/dislike; a Bayesian linear reward on the shipped PCA features is fitted; the
sampler is steered by the posterior probability of the preferred region, at the
guidance scale chosen by the package's own rule (no judge, no true reward), and a
guarded selection from an oversampled pool keeps preferred, on-manifold samples.
The judge then measures the result: prints the number of labels (and liked), the
scale the rule chose, and preferred fraction, judge share, precision and liked-class
entropy of the base and the steered samples. With ``--out DIR`` it also writes
DIR/before.png and DIR/after.png (without it, nothing is written).

    python examples/05_guided_sampling.py --out out/05                    # about a minute on 2 CPU cores
    python examples/05_guided_sampling.py --num-samples 8 --steps 5 --labels 8 --pool-scale-samples 8
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from papa_bayes.data import PreferenceData
from papa_bayes.diffusion import (
    DigitsPerson,
    Guidance,
    ManifoldGuard,
    PosteriorObjective,
    evaluate_samples,
    load_base_model,
    load_digits_splits,
    load_feature_map,
    sample,
    sample_preferred,
    save_image_grid,
    select_guidance_scale,
)
from papa_bayes.inference import fit
from papa_bayes.models import LinearReward
from papa_bayes.checks import bounded_arg


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-samples", type=bounded_arg(int, 4), default=128, help="steered samples to draw")
    parser.add_argument("--steps", type=bounded_arg(int, 1), default=25, help="DDIM steps")
    parser.add_argument("--labels", type=bounded_arg(int, 1), default=20, help="base samples the person rates")
    parser.add_argument("--pool-scale-samples", type=bounded_arg(int, 1), default=64,
                        help="pool size of the scale rule")
    parser.add_argument("--oversample", type=bounded_arg(float, 1), default=4.0,
                        help="steered pool size / --num-samples, before the guarded selection")
    parser.add_argument("--seed", type=bounded_arg(int, 0), default=0)
    parser.add_argument("--out", type=Path, default=None, help="folder for before/after PNG grids")
    args = parser.parse_args(argv)
    gen = lambda offset: torch.Generator().manual_seed(args.seed + offset)  # noqa: E731

    model, features = load_base_model(), load_feature_map()
    person = DigitsPerson(liked=(1, 4, 7, 9))

    # 1. The person rates a few base samples.
    base = sample(model, max(args.num_samples, args.labels), num_inference_steps=args.steps, generator=gen(0))
    shown = base.images[: args.labels]
    ratings = person.rate(shown)
    with torch.no_grad():
        data = PreferenceData(items=features(shown).double(),
                              ratings=torch.stack([torch.arange(args.labels), ratings], 1))
    posterior = fit(LinearReward(), data, method="laplace", seed=args.seed)

    # 2. Steer by the posterior probability of the preferred region.
    objective = PosteriorObjective(posterior, features, kind="region").calibrate(base.images, quantile=0.6)
    guidance = Guidance(objective, mode="x0")  # guides the first half of the trajectory
    guard = ManifoldGuard(load_digits_splits().generator.images)  # the base model's own training data
    rule = select_guidance_scale(model, guidance, guard, num_samples=args.pool_scale_samples,
                                 num_inference_steps=args.steps, generator=gen(1))
    steered = sample_preferred(model, args.num_samples, guidance=guidance.with_scale(rule.scale), guard=guard,
                               oversample=args.oversample, min_probability=0.75,
                               num_inference_steps=args.steps, generator=gen(2))

    # 3. Measure with the judge (which the steering never saw).
    before = evaluate_samples(base.images[: args.num_samples])
    after = evaluate_samples(steered.images)
    print(f"{args.labels} labels ({int((ratings > 0).sum())} liked); scale chosen by the rule: {rule.scale:g}")
    for name, m in (("base", before), ("steered", after)):
        print(f"{name:>8}: preferred {m['preferred_fraction']:.2f}  judge share {m['judge_share']:.2f}  "
              f"precision {m['precision']:.2f}  liked entropy {m['liked_class_entropy']:.2f} bits")
    if args.out is not None:
        save_image_grid(base.images[:64], args.out / "before.png")
        save_image_grid(steered.images[:64], args.out / "after.png")
    return {"scale": rule.scale, "before": before, "after": after}


if __name__ == "__main__":
    main()
