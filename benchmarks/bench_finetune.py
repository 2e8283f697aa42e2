"""Fine-tuner benchmark (issue 5, part 5): guidance distillation and PAPA's baseline.

On the digits preference task (DESIGN.md section 8) with the shipped base model:

1. *Posterior*: a simulated person who likes {1, 4, 7, 9} rates ``--labels`` base
   samples like/dislike; a linear reward on the shipped PCA features is fitted
   (Laplace). Guidance is the preferred-region objective at the scale chosen by the
   package's own rule (:func:`~papa_bayes.diffusion.select_guidance_scale`: no
   judge, no true reward), or ``--scale``.
2. *Distillation*: ``--distill-samples`` guided samples are drawn and distilled into
   the denoiser (:func:`~papa_bayes.diffusion.finetune_on_samples`); 256 *unguided*
   samples of the result are scored against 256 guided samples of the base model.
   Target (issue 5): preferred fraction >= 85% of the guided one, manifold precision
   >= 0.72.
3. *PAPA* (the baseline, :func:`~papa_bayes.diffusion.papa_finetune`) in its own
   online protocol: each round the person labels ``--papa-round`` samples of the
   current model, which is fine-tuned on them (regularised toward the base model);
   256 samples are scored after each of ``--papa-labels`` labels. Two settings by
   default: a gentle one and an aggressive one, which finds the liked region fast
   by collapsing onto few digits (watch the liked class entropy).

Writes ``finetune.json`` and ``finetune.md`` (``benchmarks/results``; ``--tiny`` runs
default to ``benchmarks/results/tmp``).

    python -m benchmarks.bench_finetune            # about 10 min on 2 shared CPU cores
    python -m benchmarks.bench_finetune --tiny     # seconds, for tests
"""

from __future__ import annotations

import argparse
import hashlib
import math
import time
from pathlib import Path

import torch

from benchmarks.common import (MIN_SCORED_SAMPLES, RESULTS, add_out_option, counts,
                               markdown_table, output_folder, reals, recorded_args, run_main,
                               write_results)
from papa_bayes.data import PreferenceData
from papa_bayes.diffusion import (
    DEFAULT_CHECKPOINT,
    DigitsPerson,
    Guidance,
    ManifoldGuard,
    PosteriorObjective,
    evaluate_samples,
    finetune_on_samples,
    load_base_model,
    load_digits_splits,
    load_feature_map,
    papa_finetune,
    sample,
    select_guidance_scale,
)
from papa_bayes.exceptions import InputDataError
from papa_bayes.inference import fit
from papa_bayes.checks import DefaultsHelpFormatter, parse_with_tiny
from papa_bayes.models import LinearReward

ROOT = Path(__file__).resolve().parents[1]
METRICS = ("preferred_fraction", "judge_share", "precision", "recall", "liked_class_entropy")
COLUMNS = ("method", "labels", *METRICS, "seconds")


def checkpoint_identity(path: Path | str | None) -> str:
    """What tells a reader which base model was tuned, the same on every machine.

    A checkpoint inside the repository (the shipped one when ``path`` is None) is named by its
    repository-relative path; any other by its folder name and the first 12 hex digits of the
    sha256 of its UNet weight file(s) (concatenated in name order; for the usual single
    ``diffusion_pytorch_model.safetensors`` what ``sha256sum`` prints), e.g.
    ``"ft_ckpt (UNet weights sha256 0123456789ab)"``.
    """
    root = Path(DEFAULT_CHECKPOINT if path is None else path).resolve()
    if root.is_relative_to(ROOT):
        return root.relative_to(ROOT).as_posix()
    weights = sorted(f for pattern in ("*.safetensors", "*.bin") for f in (root / "unet").glob(pattern))
    if not weights:
        return f"{root.name} (no UNet weight files found)"
    digest = hashlib.sha256()
    for file in weights:
        with file.open("rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
    return f"{root.name} (UNet weights sha256 {digest.hexdigest()[:12]})"


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _row(method: str, labels: int, images: torch.Tensor, seconds: float) -> dict:
    metrics = evaluate_samples(images)
    return {"method": method, "labels": labels, **{k: metrics[k] for k in METRICS}, "seconds": round(seconds, 1)}


def fit_posterior(model, features, person, *, num_labels: int, steps: int, seed: int):
    """The person rates ``num_labels`` base samples; a linear reward is fitted (Laplace)."""
    shown = sample(model, num_labels, num_inference_steps=steps, generator=_gen(10_000 + seed),
                   progress_bar=False).images
    ratings = person.rate(shown)
    with torch.no_grad():
        items = features(shown).double()
    data = PreferenceData(items=items, ratings=torch.stack([torch.arange(num_labels), ratings], 1))
    return fit(LinearReward(), data, method="laplace", seed=seed)


def distillation(model, features, person, args) -> tuple[list[dict], dict]:
    """Guided reference, distilled model's unguided samples, base reference."""
    n, steps = args.num_samples, args.steps
    start = time.perf_counter()
    posterior = fit_posterior(model, features, person, num_labels=args.labels, steps=steps, seed=args.seed)
    base = sample(model, max(n, args.calibration_samples), num_inference_steps=steps, generator=_gen(args.seed),
                  progress_bar=False)
    objective = PosteriorObjective(posterior, features, kind="region").calibrate(base.images)
    guidance = Guidance(objective, window=(0.0, args.window_stop))
    if args.scale is None:
        guard = ManifoldGuard(load_digits_splits().generator.images)
        chosen = select_guidance_scale(model, guidance, guard, num_samples=args.rule_samples,
                                       num_inference_steps=args.rule_steps, generator=_gen(args.seed + 2))
        scale = chosen.scale
    else:
        scale = args.scale
    guidance = guidance.with_scale(scale)
    setup_seconds = time.perf_counter() - start
    rows = [_row("base model", 0, base.images[:n], 0.0)]

    start = time.perf_counter()
    guided = sample(model, n, num_inference_steps=steps, guidance=guidance, generator=_gen(args.seed + 1),
                    progress_bar=False)
    guided_seconds = time.perf_counter() - start
    rows.append(_row(f"guided (region, scale {scale:g})", args.labels, guided.images, guided_seconds))

    start = time.perf_counter()
    targets = sample(model, args.distill_samples, num_inference_steps=steps, guidance=guidance,
                     generator=_gen(args.seed + 3), progress_bar=False).samples
    target_seconds = time.perf_counter() - start
    start = time.perf_counter()
    distilled = finetune_on_samples(model, targets, steps=args.distill_steps, lr=args.distill_lr,
                                    anchor_weight=args.anchor_weight, batch_size=args.batch_size,
                                    generator=_gen(args.seed + 4), progress_bar=not args.no_progress)
    train_seconds = time.perf_counter() - start
    start = time.perf_counter()
    unguided = sample(distilled, n, num_inference_steps=steps, generator=_gen(args.seed + 1), progress_bar=False)
    unguided_seconds = time.perf_counter() - start
    rows.append(_row("distilled, unguided", args.labels, unguided.images, unguided_seconds))
    g, d = rows[1], rows[2]
    summary = {
        "scale": scale,
        "setup_seconds": round(setup_seconds, 1),
        "target_sampling_seconds": round(target_seconds, 1),
        "distillation_seconds": round(train_seconds, 1),
        "sampling_seconds": {"guided": round(guided_seconds, 2), "distilled_unguided": round(unguided_seconds, 2)},
        "preferred_ratio": d["preferred_fraction"] / max(g["preferred_fraction"], 1e-12),
        "precision": d["precision"],
        "target": {"preferred_ratio": 0.85, "precision": 0.72},
    }
    summary["meets_target"] = summary["preferred_ratio"] >= 0.85 and summary["precision"] >= 0.72
    return rows, summary


def papa_online(model, person, args, *, lr: float, regularizer: float) -> list[dict]:
    """PAPA's online loop: label ``--papa-round`` samples of the current model, fine-tune, repeat."""
    rows, current, labels, seconds = [], model, 0, 0.0
    checkpoints = sorted(set(args.papa_labels))
    round_index = 0
    while labels < checkpoints[-1]:
        start = time.perf_counter()
        k = min(args.papa_round, next(c for c in checkpoints if c > labels) - labels)  # stop at every checkpoint
        shown = sample(current, k, num_inference_steps=args.steps, generator=_gen(20_000 + args.seed + round_index),
                       progress_bar=False).images
        current = papa_finetune(current, shown, person.rate(shown), reference=model, steps=args.papa_steps, lr=lr,
                                regularizer_weight=regularizer, timestep_cutoff=args.papa_cutoff,
                                batch_size=args.papa_batch, generator=_gen(30_000 + args.seed + round_index),
                                progress_bar=False)
        labels += k
        round_index += 1
        seconds += time.perf_counter() - start
        if labels in checkpoints:
            out = sample(current, args.num_samples, num_inference_steps=args.steps, generator=_gen(args.seed + 1),
                         progress_bar=False)
            rows.append(_row(f"PAPA online (lr {lr:g}, regulariser {regularizer:g})", labels, out.images, seconds))
    return rows


def papa_setting(pair: str) -> tuple[float, float]:
    """``"LR:REGULARIZER"`` as ``(lr, regularizer)``, a positive learning rate and a regulariser >= 0."""
    expected = "LR:REGULARIZER pairs such as 1e-4:1.0 (LR > 0, REGULARIZER >= 0)"
    lr, colon, regularizer = pair.partition(":")
    try:
        values = float(lr), float(regularizer)
    except ValueError:
        values = None
    if not colon or values is None or not (values[0] > 0 and values[1] >= 0) or not all(map(math.isfinite, values)):
        raise InputDataError("--papa-settings", expected, repr(pair))
    return values


def markdown(result: dict) -> str:
    s = result["distillation"]
    lines = [
        f"Seed {result['seed']}; base model {result['checkpoint']}; "
        f"{result['num_samples']} samples x {result['steps']} DDIM steps per row; "
        f"posterior from {result['labels']} like/dislike labels of base samples.",
        "",
        markdown_table(result["rows"], COLUMNS),
        f"Distillation: {s['distillation_seconds']} s of training ({result['distill_steps']} steps) on "
        f"{result['distill_samples']} guided targets drawn in {s['target_sampling_seconds']} s; "
        f"unguided preferred fraction / guided = **{s['preferred_ratio']:.3f}** (target >= 0.85), "
        f"precision **{s['precision']:.3f}** (target >= 0.72); "
        f"sampling {result['num_samples']}: guided {s['sampling_seconds']['guided']} s, distilled unguided "
        f"{s['sampling_seconds']['distilled_unguided']} s.",
        "",
        f"PAPA: rounds of {result['papa']['round']} labels of the current model's samples, "
        f"{result['papa']['steps']} steps of batch {result['papa']['batch_size']} each, "
        f"preference term on t >= {result['papa']['cutoff']:g} T, regulariser toward the base model on all t; "
        "seconds are cumulative (labelling rounds and fine-tuning, not the scoring).",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=DefaultsHelpFormatter)
    parser.add_argument("--tiny", action="store_true",
                        help="tiny sizes and the first PAPA setting (seconds), for tests; options given "
                        "explicitly are kept")
    parser.add_argument("--seed", type=int, default=0, help="seeds the shown samples, the fits and every sampler")
    add_out_option(parser)
    parser.add_argument("--checkpoint", type=Path, default=None, help="base checkpoint (default: the shipped one)")
    parser.add_argument("--labels", type=int, default=20, help="labels of the posterior the guidance uses")
    parser.add_argument("--num-samples", type=int, default=256, help="samples scored per row")
    parser.add_argument("--steps", type=int, default=25, help="DDIM steps of every sampling run")
    parser.add_argument("--scale", type=float, default=None, help="guidance scale (default: the package's rule)")
    parser.add_argument("--window-stop", type=float, default=0.8,
                        help="guidance acts on the first this share of the trajectory (0-1]")
    parser.add_argument("--calibration-samples", type=int, default=512,
                        help="base samples that calibrate the objective")
    parser.add_argument("--rule-samples", type=int, default=64, help="samples per scale of the scale rule")
    parser.add_argument("--rule-steps", type=int, default=20, help="DDIM steps of the scale rule's samples")
    parser.add_argument("--distill-samples", type=int, default=512, help="guided samples the distillation trains on")
    parser.add_argument("--distill-steps", type=int, default=300, help="optimizer steps of the distillation")
    parser.add_argument("--distill-lr", type=float, default=3e-4, help="learning rate of the distillation")
    parser.add_argument("--anchor-weight", type=float, default=0.1,
                        help="weight of the distillation's pull toward the base model")
    parser.add_argument("--batch-size", type=int, default=64, help="batch size of the distillation")
    parser.add_argument("--papa-labels", type=int, nargs="+", default=[20, 60, 150],
                        help="label counts at which the PAPA models are scored")
    parser.add_argument("--papa-round", type=int, default=10, help="labels per PAPA round")
    parser.add_argument("--papa-steps", type=int, default=30, help="fine-tuning steps per PAPA round")
    parser.add_argument("--papa-settings", nargs="+", default=["1e-4:1.0", "1e-3:0.3"], metavar="LR:REGULARIZER",
                        help="PAPA runs as LR:REGULARIZER pairs")
    parser.add_argument("--papa-cutoff", type=float, default=0.4,
                        help="PAPA's preference term acts on t >= this share of T (0-1)")
    parser.add_argument("--papa-batch", type=int, default=32, help="batch size of PAPA's fine-tuning")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar during the distillation")
    args = parse_with_tiny(parser, argv, dict(
        num_samples=16, steps=3, labels=8, calibration_samples=16,
        rule_samples=8, rule_steps=2, distill_samples=16, distill_steps=3,
        papa_labels=[4, 8], papa_round=4, papa_steps=2, no_progress=True,
        papa_settings=parser.get_default("papa_settings")[:1],
    ))
    for option in ("labels", "num_samples", "steps", "calibration_samples", "rule_samples", "rule_steps",
                   "distill_samples", "distill_steps", "batch_size", "papa_labels", "papa_round", "papa_steps",
                   "papa_batch"):
        counts(f"--{option.replace('_', '-')}", getattr(args, option))
    counts("--num-samples", args.num_samples, minimum=MIN_SCORED_SAMPLES)
    counts("--seed", args.seed, minimum=0)
    if args.scale is not None:
        reals("--scale", args.scale)
    reals("--window-stop", args.window_stop, strict=True, maximum=1.0, inclusive_maximum=True)
    reals("--distill-lr", args.distill_lr, strict=True)
    reals("--anchor-weight", args.anchor_weight)
    reals("--papa-cutoff", args.papa_cutoff, maximum=1.0)
    settings = [papa_setting(pair) for pair in args.papa_settings]
    out_dir = output_folder(args.out, RESULTS / "tmp" if args.tiny else RESULTS)
    try:
        model = load_base_model(args.checkpoint)
        features = load_feature_map(None if args.checkpoint is None else Path(args.checkpoint) / "pca_features")
    except InputDataError as err:  # a checkpoint that is not one, under the option's name
        if args.checkpoint is None or err.expected is None:
            raise
        raise InputDataError("--checkpoint", err.expected, err.actual) from None
    person = DigitsPerson()
    rows, summary = distillation(model, features, person, args)
    for lr, regularizer in settings:
        rows += papa_online(model, person, args, lr=lr, regularizer=regularizer)
    result = {
        # The checkpoint as the result names it below: a path given on the command line is this machine's.
        "args": {**recorded_args(args, out_dir),
                 "checkpoint": None if args.checkpoint is None else checkpoint_identity(args.checkpoint)},
        "seed": args.seed,
        "checkpoint": checkpoint_identity(args.checkpoint),
        "labels": args.labels,
        "num_samples": args.num_samples,
        "steps": args.steps,
        "distill_samples": args.distill_samples,
        "distill_steps": args.distill_steps,
        "distill_lr": args.distill_lr,
        "anchor_weight": args.anchor_weight,
        "distillation": summary,
        "papa": {"round": args.papa_round, "steps": args.papa_steps, "batch_size": args.papa_batch,
                 "settings": [{"lr": lr, "regularizer": reg} for lr, reg in settings], "cutoff": args.papa_cutoff},
        "rows": rows,
    }
    text = markdown(result)
    write_results("finetune", result, text, out_dir, title="Fine-tuners: guidance distillation and PAPA")
    print(text)
    return result


if __name__ == "__main__":
    run_main(main)
