"""``papa-bayes``: the command line.

    papa-bayes demo [--labels 30 --liked 1 4 7 9 --query-type pair --out demo_output]
    papa-bayes label --store session.db          # a person answers queries
    papa-bayes train-base --out DIR              # retrain the bundled digits model
    papa-bayes benchmark NAME [args...]          # run benchmarks/NAME.py (from a checkout)
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from papa_bayes.exceptions import InputDataError, PapaBayesError, StoreError

__all__ = ["main"]


def _demo(argv: list[str]) -> int:
    from papa_bayes.demo import main as demo_main

    demo_main(argv)
    return 0


def _label(argv: list[str]) -> int:
    from papa_bayes.labeling import main as label_main

    return label_main(argv)


def _train(argv: list[str]) -> int:
    from papa_bayes.diffusion.train import main as train_main

    train_main(argv)
    return 0


def _benchmark(argv: list[str]) -> int:
    if not argv or argv[0].startswith("-"):
        asked = bool(argv) and argv[0] in ("-h", "--help")
        print("usage: papa-bayes benchmark NAME [args...]   (NAME: inference, gp, queries, calibration, diffusion,"
              " finetune, alignment; run_all runs them in turn)",
              file=sys.stdout if asked else sys.stderr)
        return 0 if asked else 2
    name = argv[0] if argv[0].startswith("bench_") or argv[0] == "run_all" else f"bench_{argv[0]}"
    here = str(Path.cwd())
    if here not in sys.path:  # once: a program calling main() for each benchmark would grow sys.path each time
        sys.path.insert(0, here)
    try:
        module = importlib.import_module(f"benchmarks.{name}")
    except ModuleNotFoundError as err:
        if err.name not in ("benchmarks", f"benchmarks.{name}"):
            raise  # the benchmark exists; something it imports is missing
        if err.name == "benchmarks":
            print(f"No benchmarks/ folder in {Path.cwd()}: run from a papa_bayes checkout.", file=sys.stderr)
        else:
            folders = [Path(f) for f in importlib.import_module("benchmarks").__path__]
            here = sorted(f.stem.removeprefix("bench_") for folder in folders for f in folder.glob("bench_*.py"))
            print(f"benchmarks/{name}.py not found; the benchmarks are: {', '.join(here)} (and run_all).", file=sys.stderr)
        return 2
    program = sys.argv[0]
    sys.argv[0] = f"papa-bayes benchmark {argv[0]}"  # the benchmark's own --help and errors name the command
    try:
        module.main(argv[1:])
    finally:
        sys.argv[0] = program
    return 0


COMMANDS = {
    "demo": (_demo, "the digits demo: steer the bundled diffusion model toward a simulated person's taste"),
    "label": (_label, "answer queries yourself; the session is stored and resumable"),
    "train-base": (_train, "retrain the bundled digits diffusion model"),
    "benchmark": (_benchmark, "run a benchmark from benchmarks/"),
}


def main(argv: list[str] | None = None) -> int:
    """The ``papa-bayes`` command: dispatch ``argv`` (default ``sys.argv[1:]``) to a subcommand; its exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="papa-bayes",
        description="Bayesian reward inference from preferences, active queries, steered diffusion.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(f"  {k:<11} {v[1]}" for k, v in COMMANDS.items()),
    )
    parser.add_argument("command", choices=sorted(COMMANDS), help="what to run (options: papa-bayes COMMAND --help)")
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0 if argv else 2
    args = parser.parse_args(argv[:1])
    # A person's mistake (a bad option, a store that is not one, a missing file) or
    # Ctrl-C reads as one line, not a traceback; bugs still raise.
    try:
        return COMMANDS[args.command][0](argv[1:])
    except KeyboardInterrupt:
        print(f"papa-bayes {args.command}: interrupted", file=sys.stderr)
        return 130
    except (InputDataError, StoreError) as err:
        print(f"papa-bayes {args.command}: error: {err}", file=sys.stderr)
        return 2
    except (PapaBayesError, OSError) as err:
        print(f"papa-bayes {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
