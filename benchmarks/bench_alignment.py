"""Label efficiency on the digits task (DESIGN.md section 8; issue 6's benchmark).

For each seed and method, the preferred fraction, quality (judge share, manifold
precision) and diversity (class entropy of liked samples) of recommended samples
against the number of labels. Methods (:data:`METHODS`): papa_bayes sessions asking
pairs or like/dislike questions chosen by expected information about the reward
(``eig_*``; ``eig_likes`` is the demo's), by information about the preferred region
(``region_*``) or at random, and PAPA's signed ELBO on like/dislike labels of base
samples. The guidance scale is always chosen by the
package's own rule, never by the judge. Every session uses the reward features
``--features`` (``demo.make_setup``; default pixel PCA and mid-block together),
``run_session``'s exploration share and DiffusionCandidates' recommendation filter
unless ``--exploration`` / ``--filter-quantile`` are given.

    python -m benchmarks.bench_alignment --seeds 0 1 2 3 4 --labels 0 5 10 20 30 60
    python -m benchmarks.bench_alignment --merge a/bench_alignment.json b/bench_alignment.json
    python -m benchmarks.bench_alignment --tiny
"""

from __future__ import annotations

import argparse
import warnings
from operator import itemgetter
from pathlib import Path

from benchmarks.common import (MIN_SCORED_SAMPLES, RESULTS, add_out_option, counts, file_stem,
                               markdown_table, output_folder, reals, recorded_args, result_files,
                               run_main, write_results)
from papa_bayes.demo import FEATURES, METRICS, discard_session, make_setup, run_papa, run_session
from papa_bayes.checks import DefaultsHelpFormatter, parse_with_tiny
from papa_bayes.exceptions import InputDataError

METHODS = {
    "region_pairs": dict(query_type="pair", strategy="region"),
    "region_likes": dict(query_type="rating", strategy="region"),
    "eig_pairs": dict(query_type="pair", strategy="eig"),
    "random_pairs": dict(query_type="pair", strategy="random"),
    "eig_likes": dict(query_type="rating", strategy="eig"),
    "random_likes": dict(query_type="rating", strategy="random"),
    "papa": None,
}
# What a run's rows depend on besides their (method, seed, labels): the options every run merged into one table
# must share, with the methods that read them (None: all). --tiny sets the pools and the sampling runs of every
# method; the sessions read the reward features, the exploration share and the recommendation filter; PAPA its
# fine-tuning steps. A key a run does not record (files older than the option) reads None.
PROTOCOL = (("eval_samples", None), ("tiny", None), ("features", "sessions"), ("exploration", "sessions"),
            ("filter_quantile", "sessions"), ("papa_steps", "papa"))


def labels_to(curve: list[dict], key: str, level: float) -> float | None:
    for c in curve:
        if c[key] >= level:
            return c["labels"]
    return None


def target_met(c: dict) -> bool:
    return (c["preferred_fraction"] >= 0.9 and c["judge_share"] >= 0.75 and c["precision"] >= 0.72
            and c["liked_class_entropy"] >= 1.8)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=DefaultsHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4],
                   help="seeds, one run of every method each (the person, the sessions and the sampler)")
    p.add_argument("--labels", type=int, nargs="+", default=[0, 5, 10, 20, 30, 60],
                   help="label counts at which the recommendations are measured")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS),
                   help="methods to run (default all seven)")
    p.add_argument("--eval-samples", type=int, default=256, help="recommended samples measured per checkpoint")
    p.add_argument("--papa-steps", type=int, default=60, help="PAPA fine-tuning steps per checkpoint")
    p.add_argument("--features", choices=FEATURES, default="both", help="reward features (demo.make_setup)")
    p.add_argument("--exploration", type=float, default=None, help="share of each pool from the unsteered model "
                   "(default: run_session's)")
    p.add_argument("--filter-quantile", type=float, default=None, help="DiffusionCandidates' filter_quantile "
                   "(default: its own)")
    p.add_argument("--tiny", action="store_true",
                   help="seconds-long run (seed 0, labels 0 and 2, 8 samples, 2 PAPA steps, region_pairs and papa, "
                   "short sampling runs) into benchmarks/results/tmp; options given explicitly are kept")
    add_out_option(p)
    p.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                   help="merge result files of runs split by method, seed or labels into <out>/<name>.* and exit")
    p.add_argument("--name", default="bench_alignment",
                   help="stem of the merged output files (--tiny: bench_alignment_tiny)")
    args = parse_with_tiny(p, argv, dict(seeds=[0], labels=[0, 2], eval_samples=8, papa_steps=2,
                                         methods=["region_pairs", "papa"], name="bench_alignment_tiny"))
    file_stem("--name", args.name)
    if args.merge:  # a tiny merge, as a tiny run, never replaces the committed results
        return merge(args.merge, RESULTS / "tmp" if args.out is None and args.tiny else args.out, args.name)
    args.labels = sorted(set(args.labels))  # checkpoints in order: labels_to reads the first one that reaches
    # A repeated seed or method ran again and wrote its rows twice, which the summary (one curve per method and
    # seed) did not count, and a later merge did ("2/2" seeds for one).
    args.seeds, args.methods = list(dict.fromkeys(args.seeds)), list(dict.fromkeys(args.methods))
    if args.labels[0] < 0:
        raise InputDataError("--labels", "label counts >= 0", args.labels[0])
    if "papa" in args.methods and args.labels[-1] < 1:  # PAPA fine-tunes on the largest count's base samples
        raise InputDataError("--labels", "a label count >= 1 with --methods papa (PAPA is tuned on that many labels)",
                             args.labels)
    counts("--seeds", args.seeds, minimum=0)
    counts("--eval-samples", args.eval_samples, minimum=MIN_SCORED_SAMPLES)
    counts("--papa-steps", args.papa_steps)
    if args.exploration is not None:
        reals("--exploration", args.exploration, maximum=1.0, inclusive_maximum=True)
    if args.filter_quantile is not None:
        reals("--filter-quantile", args.filter_quantile, strict=True, maximum=1.0)
    quantile = {} if args.filter_quantile is None else {"filter_quantile": args.filter_quantile}
    if args.tiny:  # short sampling runs (not options)
        opts = {"pool_steps": 8, "recommend_steps": 10, "oversample": 2.0, "scale": 0.5, "num_base": 32, **quantile}
    else:
        opts = {"rescale_every": 10, **quantile}
    session_kw = {} if args.exploration is None else {"exploration": args.exploration}
    out = output_folder(args.out, RESULTS / "tmp" if args.tiny else RESULTS)
    warnings.filterwarnings("ignore", category=UserWarning)
    setup = make_setup(features=args.features)
    curves: dict[str, dict[int, list[dict]]] = {m: {} for m in args.methods}
    rows = []
    for seed in args.seeds:
        for method in args.methods:
            if method == "papa":
                curve = run_papa(setup, label_counts=args.labels, eval_samples=args.eval_samples, seed=seed,
                                 steps=args.papa_steps, eval_steps=opts.get("recommend_steps", 50), progress_bar=False)
            else:
                curve, session, _ = run_session(setup, num_labels=max(args.labels), checkpoints=args.labels,
                                                eval_samples=args.eval_samples, seed=seed, candidate_options=opts,
                                                progress_bar=False, pool_size=8 if args.tiny else 16,
                                                **session_kw, **METHODS[method])
                discard_session(session)
            curves[method][seed] = [{k: c[k] for k in ("labels", *METRICS)} | ({"scale": c.get("scale")})
                                    for c in curve]
            for c in curves[method][seed]:
                rows.append({"method": method, "seed": seed, **{k: c[k] for k in ("labels", *METRICS)},
                             "target_met": target_met(c)})
                print(rows[-1], flush=True)

    return report(curves, rows, args.labels, recorded_args(args, out), out,
                  "bench_alignment" + ("_tiny" if args.tiny else ""))


def report(curves: dict[str, dict[int, list[dict]]], rows: list[dict], labels: list[int], args: dict,
           out: Path | None, name: str) -> dict:
    """Summarize per-seed curves (means, seeds meeting the target, labels to 75%) and write JSON + Markdown."""
    summary = []
    for method, by_seed in curves.items():
        for n in labels:
            cs = [c for curve in by_seed.values() for c in curve if c["labels"] == n]
            if not cs:
                continue
            mean = {k: sum(c[k] for c in cs) / len(cs) for k in METRICS}
            summary.append({"method": method, "labels": n, **mean,
                            "seeds_meeting_target": f"{sum(target_met(c) for c in cs)}/{len(cs)}"})
    l75 = {m: [labels_to(c, "preferred_fraction", 0.75) for c in by_seed.values()] for m, by_seed in curves.items()}
    within20 = {m: sum(any(target_met(c) and c["labels"] <= 20 for c in curve) for curve in by_seed.values())
                for m, by_seed in curves.items()}
    table = markdown_table(summary, ["method", "labels", *METRICS, "seeds_meeting_target"])
    table += "\nLabels to 75% preferred, per seed: " + "; ".join(f"{m}: {v}" for m, v in l75.items()) + "\n"
    table += ("Seeds meeting the full target (>= 90% preferred, judge >= 0.75, precision >= 0.72, entropy >= 1.8) "
              "within 20 labels: ") + \
        "; ".join(f"{m}: {v}/{len(curves[m])}" for m, v in within20.items()) + "\n"
    # "benchmark" names the benchmark, not the file stem (--name), so that a merge can tell its own files.
    path = write_results(name, {"benchmark": "bench_alignment", "rows": rows, "summary": summary, "labels_to_75": l75,
                                "within20": within20, "args": args}, table, out,
                         title="Label efficiency on the digits task")
    plot = _plot(curves, summary, path.with_suffix(".png"))
    print(table)
    print(f"written to {path} and {plot}")
    return {"summary": summary, "labels_to_75": l75, "within20": within20}


def _plot(curves: dict[str, dict[int, list[dict]]], summary: list[dict], path: Path) -> Path:
    """Preferred fraction and liked-class entropy against labels: each seed thin, the mean thick."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for (key, label, target), ax in zip((("preferred_fraction", "preferred fraction", 0.9),
                                         ("liked_class_entropy", "liked-class entropy (bits)", 1.8)), axes):
        for i, (method, by_seed) in enumerate(curves.items()):
            colour = f"C{i}"
            for curve in by_seed.values():
                ax.plot([c["labels"] for c in curve], [c[key] for c in curve], color=colour, alpha=0.25, lw=0.8)
            means = [row for row in summary if row["method"] == method]
            ax.plot([row["labels"] for row in means], [row[key] for row in means], color=colour, lw=2.2, marker="o",
                    label=f"{method} ({len(by_seed)} seeds)")
        ax.axhline(target, color="k", ls="--", lw=0.8)
        ax.axvline(20, color="grey", ls=":", lw=0.8)
        ax.set_xlabel("labels")
        ax.set_ylabel(label)
    axes[0].legend(fontsize=8)
    fig.suptitle("Recommended samples against labels (dashed: target; dotted: 20 labels)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def merge(paths: list[str], out: Path | None, name: str) -> dict:
    """Merge result files of runs split by method, seed or labels into ``<out>/<name>.*``.

    A (method, seed, labels) found in several files is taken from the last of them.
    Checkpoints do not change a session (each is measured with its own generator,
    after the session has chosen its pools' scale), so a rerun of the same sessions
    that measures only further labels extends the earlier curves.

    Raises:
        InputDataError: naming ``--merge``, for a file that is no bench_alignment result or
            whose runs differ from the first's in an option of :data:`PROTOCOL`.
    """
    output_folder(out)
    parts = result_files("--merge", paths, key="rows")
    for path, part in zip(paths, parts):
        if not str(part.get("benchmark", "")).startswith("bench_alignment"):  # older files: their stem
            raise InputDataError("--merge", "a bench_alignment result file",
                                 f"{path} (benchmark {part.get('benchmark')!r})")
    _check_same_protocol(parts, paths)
    key = itemgetter("method", "seed", "labels")
    owner = {key(r): i for i, part in enumerate(parts) for r in part["rows"]}  # the last file wins
    rows = sorted((r for i, part in enumerate(parts) for r in part["rows"] if owner[key(r)] == i),
                  key=itemgetter("seed", "labels"))
    curves: dict[str, dict[int, list[dict]]] = {m: {} for m, _, _ in owner}
    for r in rows:
        curves[r["method"]].setdefault(r["seed"], []).append({k: r[k] for k in ("labels", *METRICS)})
    labels = sorted({r["labels"] for r in rows})
    return report(curves, rows, labels, {"merged_from": list(paths), "runs": [p.get("args") for p in parts]}, out, name)


def _runs(args: dict | None) -> list[dict]:
    """The options of every run a result file holds (a merged file lists its parts' under ``"runs"``)."""
    if not isinstance(args, dict):
        return [{}]
    if "runs" in args:
        return [run for part in args["runs"] for run in _runs(part)]
    return [args]


def _reads(readers: str | None, methods: list[str]) -> bool:
    """Whether a run of ``methods`` reads an option read by ``readers`` (None: every method)."""
    if readers == "papa":
        return "papa" in methods
    if readers == "sessions":
        return any(m != "papa" for m in methods)
    return True


def _check_same_protocol(parts: list[dict], paths: list[str]) -> None:
    """Rows merged into one table must come from runs that share the options of :data:`PROTOCOL`."""
    runs = [(path, run) for path, part in zip(paths, parts) for run in _runs(part.get("args"))]
    for key, readers in PROTOCOL:
        holders = [(path, run) for path, run in runs if _reads(readers, run.get("methods") or list(METHODS))]
        for path, run in holders[1:]:
            ref_path, ref = holders[0]
            if run.get(key) != ref.get(key):
                raise InputDataError(f"--merge ({path})", f"{key} = {ref.get(key)!r} as in {ref_path} (one protocol "
                                     "per table)", run.get(key))


if __name__ == "__main__":
    run_main(main)
