"""Diffusion benchmark (issue 5): guidance cost and steering quality against the scale.

1. *Cost*: wall time of guided / unguided sampling of 64 samples x 50 DDIM steps, for
   both gradient modes (x0 and DPS), measured in the same run (best of ``--repeats``).
2. *Steering*: the digits preference task (DESIGN.md section 8). A simulated person
   who likes {1, 4, 7, 9} rates ``--labels`` base samples like/dislike; a linear
   reward on the shipped PCA features is fitted (Laplace); samples steered by each
   objective (posterior mean, UCB, Thompson, preferred region) at each normalized
   scale are scored by the judge: preferred fraction, judge share, manifold
   precision / recall against the judge split, class entropy among liked samples.
   Guidance acts on the first half of the trajectory. References: the base model and
   guidance by the person's true utility (also over the whole trajectory, to show
   why the window matters). The last rows are the package's recommended pipeline,
   for both shipped feature maps (pixel PCA, UNet mid-block): region guidance at the
   scale chosen by :func:`~papa_bayes.diffusion.select_guidance_scale` (no judge, no
   true reward), then :func:`~papa_bayes.diffusion.sample_preferred` (manifold guard
   against the generator split + preference filter).

Writes ``diffusion.json`` and ``diffusion.md`` to ``--out`` (``benchmarks/results``;
``--tiny`` runs default to ``benchmarks/results/tmp``).

    python -m benchmarks.bench_diffusion            # full, ~15 min on 2 CPU cores
    python -m benchmarks.bench_diffusion --tiny     # seconds, for tests
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from benchmarks.common import (MIN_SCORED_SAMPLES, add_out_option, counts, machine, one_of,
                               output_folder, reals, recorded_args, run_main, write_text)
from papa_bayes.data import PreferenceData
from papa_bayes.diffusion import (
    DEFAULT_CHECKPOINT,
    OBJECTIVES,
    DEFAULT_SCALES,
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
    select_guidance_scale,
)
from papa_bayes.inference import fit
from papa_bayes.checks import DefaultsHelpFormatter, parse_with_tiny
from papa_bayes.models import LinearReward

RESULTS = Path(__file__).resolve().parent / "results"
METRICS = ("preferred_fraction", "judge_share", "precision", "recall", "liked_class_entropy")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def fit_person_posterior(person, features, shown, *, seed: int):
    """A linear reward (Laplace) on ``features`` of the person's like/dislike of ``shown`` images."""
    ratings = person.rate(shown)
    with torch.no_grad():
        items = features(shown).double()
    data = PreferenceData(items=items, ratings=torch.stack([torch.arange(shown.shape[0]), ratings], 1))
    return fit(LinearReward(), data, method="laplace", seed=seed), int((ratings > 0).sum())


def timing(model, objective, *, num_samples: int, steps: int, repeats: int, seed: int) -> dict:
    """Best-of-``repeats`` wall times of unguided and guided sampling, interleaved."""
    runs = {"unguided": None, "x0": Guidance(objective, scale=0.5, mode="x0"),
            "dps": Guidance(objective, scale=0.5, mode="dps")}
    best = {name: float("inf") for name in runs}
    sample(model, 4, num_inference_steps=2, progress_bar=False)  # warm-up
    for _ in range(repeats):
        for name, guidance in runs.items():
            start = time.perf_counter()
            sample(model, num_samples, num_inference_steps=steps, guidance=guidance, generator=_gen(seed),
                   batch_size=num_samples, progress_bar=False)
            best[name] = min(best[name], time.perf_counter() - start)
    return {
        "num_samples": num_samples,
        "steps": steps,
        "seconds": best,
        "ratio_x0": best["x0"] / best["unguided"],
        "ratio_dps": best["dps"] / best["unguided"],
    }


def _row(method: str, objective: str, scale: float, metrics: dict, seconds: float, **extra) -> dict:
    return {"method": method, "objective": objective, "scale": scale,
            **{k: metrics[k] for k in METRICS}, "seconds": round(seconds, 2), **extra}


def steering(model, posteriors: dict, person, *, args) -> list[dict]:
    """Metrics of steered samples for every objective and scale, plus references.

    ``posteriors`` maps a feature-map name to ``(feature_map, posterior)``; the first
    one is used for the per-objective rows.
    """
    n, steps, window = args.num_samples, args.steps, (0.0, args.window_stop)
    rows = []
    start = time.perf_counter()
    base = sample(model, max(n, args.calibration_samples), num_inference_steps=steps, generator=_gen(args.seed),
                  progress_bar=False)
    rows.append(_row("base model", "-", 0.0, evaluate_samples(base.images[:n]), time.perf_counter() - start))
    features, posterior = next(iter(posteriors.values()))
    for kind in args.objectives:
        objective = PosteriorObjective(posterior, features, kind=kind).calibrate(base.images, quantile=args.quantile)
        for scale in args.scales:
            start = time.perf_counter()
            out = sample(model, n, num_inference_steps=steps, guidance=Guidance(objective, scale=scale, window=window),
                         generator=_gen(args.seed + 1), progress_bar=False)
            rows.append(_row(f"guided, x0, {next(iter(posteriors))}", kind, scale, evaluate_samples(out.images),
                             time.perf_counter() - start))
    for scale, stop in [(s, args.window_stop) for s in args.scales] + [(args.scales[len(args.scales) // 2], 1.0)]:
        start = time.perf_counter()
        out = sample(model, n, num_inference_steps=steps, generator=_gen(args.seed + 1), progress_bar=False,
                     guidance=Guidance(person.utility, scale=scale, window=(0.0, stop)))
        rows.append(_row(f"true utility, window (0, {stop:g})", "true", scale, evaluate_samples(out.images),
                         time.perf_counter() - start))
    # Pipelines with the scale chosen by the package's own rule: region guidance with the
    # preference filter (oversampled pool), and mean guidance with the manifold guard only.
    guard = ManifoldGuard(load_digits_splits().generator.images)
    pipelines = [("region", args.oversample, args.min_probability), ("mean", args.guard_oversample, 0.0)]
    for name, (features, posterior) in posteriors.items():
        for kind, oversample, min_probability in pipelines:
            start = time.perf_counter()
            objective = PosteriorObjective(posterior, features, kind=kind).calibrate(
                base.images, quantile=args.quantile)
            guidance = Guidance(objective, window=window)
            chosen = select_guidance_scale(model, guidance, guard, scales=args.rule_scales,
                                           num_samples=args.rule_samples, num_inference_steps=args.rule_steps,
                                           generator=_gen(args.seed + 2))
            kept = sample_preferred(model, n, guidance=guidance.with_scale(chosen.scale), guard=guard,
                                    probability=objective.region_probability, oversample=oversample,
                                    min_probability=min_probability, num_inference_steps=steps,
                                    generator=_gen(args.seed + 3), progress_bar=False)
            what = f"filter P >= {min_probability:g}" if min_probability > 0 else "guard only"
            rows.append(_row(f"{kind} + {what} x{oversample:g}, {name} (rule scale)", kind, chosen.scale,
                             evaluate_samples(kept.images), time.perf_counter() - start, eligible=kept.eligible,
                             pool=kept.pool_size,
                             rule={"threshold": chosen.threshold, "base_precision": chosen.base_precision,
                                   "precision": {str(k): v for k, v in chosen.precision.items()}}))
    return rows


def _machine(info: dict | str) -> str:
    """'x86_64 CPU, 1 threads' (and Python, papa_bayes, date) from :func:`benchmarks.common.machine`."""
    if isinstance(info, str):  # files written before the machine was a record
        return info
    return (f"{info['cpu']} CPU, {info['threads']} threads, Python {info['python']}, papa_bayes {info['papa_bayes']}, "
            f"{info['date']}")


def markdown(result: dict) -> str:
    t = result["timing"]
    lines = [
        "# Diffusion benchmark",
        "",
        f"Machine: {_machine(result['machine'])}; torch {result['torch']}; seed {result['seed']}; "
        f"{result['labels']} labels ({result['liked_labels']} liked).",
        "",
    ]
    if t is not None:
        lines += [
            f"## Guidance cost ({t['num_samples']} samples x {t['steps']} steps, best of {result['repeats']})",
            "",
            "| sampling | seconds | ratio to unguided | target |",
            "|---|---|---|---|",
            f"| unguided | {t['seconds']['unguided']:.2f} | 1.00 | |",
            f"| guided, x0 | {t['seconds']['x0']:.2f} | {t['ratio_x0']:.2f} | <= 1.3 |",
            f"| guided, DPS | {t['seconds']['dps']:.2f} | {t['ratio_dps']:.2f} | <= 2.5 |",
            "",
        ]
    lines += [
        f"## Steering ({result['num_samples']} samples x {result['steps']} steps)",
        "",
        "| method | objective | scale | preferred | judge share | precision | recall | liked entropy (bits) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["steering"]:
        lines.append(f"| {r['method']} | {r['objective']} | {r['scale']:g} | {r['preferred_fraction']:.3f} | "
                     f"{r['judge_share']:.3f} | {r['precision']:.3f} | {r['recall']:.3f} | "
                     f"{r['liked_class_entropy']:.2f} |")
    lines += ["", "Targets (issue 6): preferred >= 0.90, judge share >= 0.75, precision >= 0.72, "
              "liked entropy >= 1.8 bits.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=DefaultsHelpFormatter)
    parser.add_argument("--tiny", action="store_true",
                        help="tiny sizes, scales and objectives (seconds), for tests; options given explicitly "
                        "are kept")
    parser.add_argument("--seed", type=int, default=0, help="seeds the shown samples, the fit and every sampler")
    add_out_option(parser)
    parser.add_argument("--labels", type=int, default=20, help="base samples the person rates like/dislike")
    parser.add_argument("--num-samples", type=int, default=256, help="samples scored per steering row")
    parser.add_argument("--steps", type=int, default=25, help="DDIM steps of the steering runs")
    parser.add_argument("--timing-samples", type=int, default=64, help="samples per timed sampling run")
    parser.add_argument("--timing-steps", type=int, default=50, help="DDIM steps of the timed runs")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs of each kind (best reported)")
    parser.add_argument("--skip-timing", action="store_true", help="skip the guidance-cost timing")
    parser.add_argument("--scales", type=float, nargs="+", default=[0.3, 1.0, 3.0],
                        help="normalized guidance scales of the per-objective rows")
    parser.add_argument("--objectives", nargs="+", default=["mean", "ucb", "thompson", "region"], choices=OBJECTIVES,
                        help="posterior objectives to steer by")
    parser.add_argument("--quantile", type=float, default=0.6,
                        help="quantile of the base samples' objective values that calibrates each objective (0-1)")
    parser.add_argument("--window-stop", type=float, default=0.5,
                        help="guidance acts on the first this share of the trajectory (0-1]")
    parser.add_argument("--oversample", type=float, default=4.0,
                        help="pool size / kept samples of the region pipeline (>= 1)")
    parser.add_argument("--min-probability", type=float, default=0.75,
                        help="preferred-region probability a kept sample of the region pipeline needs (0-1)")
    parser.add_argument("--guard-oversample", type=float, default=1.25,
                        help="pool size / kept samples of the mean pipeline (manifold guard only, >= 1)")
    parser.add_argument("--calibration-samples", type=int, default=512,
                        help="base samples that calibrate the objectives")
    parser.add_argument("--rule-samples", type=int, default=64, help="samples per scale of the scale rule")
    parser.add_argument("--rule-steps", type=int, default=20, help="DDIM steps of the scale rule's samples")
    parser.add_argument("--rule-scales", type=float, nargs="+", default=list(DEFAULT_SCALES),
                        help="the scales the scale rule chooses among")
    args = parse_with_tiny(parser, argv, dict(
        num_samples=8, steps=3, timing_samples=4, timing_steps=3,
        repeats=1, scales=[1.0], objectives=["mean", "region"], labels=6,
        calibration_samples=16, rule_samples=8, rule_steps=2, oversample=2.0,
        guard_oversample=1.0, rule_scales=[1.0],
    ))
    for option in ("labels", "num_samples", "steps", "timing_samples", "timing_steps", "repeats", "calibration_samples",
                   "rule_samples", "rule_steps"):
        counts(f"--{option.replace('_', '-')}", getattr(args, option))
    counts("--num-samples", args.num_samples, minimum=MIN_SCORED_SAMPLES)
    counts("--seed", args.seed, minimum=0)
    one_of("--objectives", args.objectives, OBJECTIVES)
    reals("--scales", args.scales)
    reals("--rule-scales", args.rule_scales)
    reals("--quantile", args.quantile, strict=True, maximum=1.0)
    reals("--window-stop", args.window_stop, strict=True, maximum=1.0, inclusive_maximum=True)
    reals("--oversample", args.oversample, minimum=1.0)
    reals("--guard-oversample", args.guard_oversample, minimum=1.0)
    reals("--min-probability", args.min_probability, maximum=1.0, inclusive_maximum=True)
    out_dir = output_folder(args.out, RESULTS / "tmp" if args.tiny else RESULTS)
    model = load_base_model()
    shown = sample(model, args.labels, num_inference_steps=args.steps, generator=_gen(10_000 + args.seed),
                   progress_bar=False).images
    person = DigitsPerson()
    posteriors, liked = {}, 0
    for name in ("pca", "midblock"):
        features = load_feature_map(DEFAULT_CHECKPOINT / f"{name}_features", model=model)
        posterior, liked = fit_person_posterior(person, features, shown, seed=args.seed)
        posteriors[name] = (features, posterior)
    features, posterior = posteriors["pca"]
    objective = PosteriorObjective(posterior, features, kind="region", threshold=0.0)
    result = {
        "benchmark": "bench_diffusion",
        "machine": machine(),
        "torch": torch.__version__,
        "args": recorded_args(args, out_dir),
        "seed": args.seed,
        "labels": args.labels,
        "liked_labels": liked,
        "num_samples": args.num_samples,
        "steps": args.steps,
        "repeats": args.repeats,
        "timing": None if args.skip_timing else timing(
            model, objective, num_samples=args.timing_samples, steps=args.timing_steps, repeats=args.repeats,
            seed=args.seed),
        "steering": steering(model, posteriors, person, args=args),
    }
    write_text(out_dir / "diffusion.json", json.dumps(result, indent=2) + "\n")  # whole or not at all
    write_text(out_dir / "diffusion.md", markdown(result))
    print(markdown(result))
    return result


if __name__ == "__main__":
    run_main(main)
