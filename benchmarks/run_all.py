"""Run the benchmarks one after another (``make bench``).

At full size this takes hours on a 2-core machine (``bench_alignment`` alone about
five): every benchmark writes its JSON and Markdown into ``benchmarks/results`` as it
goes, so an interrupted run keeps what finished.

    python -m benchmarks.run_all                          # all, full size
    python -m benchmarks.run_all bench_queries bench_gp   # some of them
    python -m benchmarks.run_all --tiny                   # each at its tiny size (seconds; results/tmp)
    python -m benchmarks.run_all --tiny --out /tmp/b      # into another folder (each benchmark's --out)
"""

from __future__ import annotations

import argparse
import importlib
import time
from pathlib import Path

BENCHMARKS = ("bench_inference", "bench_calibration", "bench_gp", "bench_queries", "bench_diffusion", "bench_finetune",
              "bench_alignment")


def main(argv: list[str] | None = None) -> list[str]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("names", nargs="*", metavar="NAME", help=f"benchmarks to run (default all: {', '.join(BENCHMARKS)})")
    p.add_argument("--tiny", action="store_true", help="each benchmark at its tiny size")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder of every benchmark (default theirs: benchmarks/results; --tiny: its tmp)")
    args = p.parse_args(argv)
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        p.error(f"unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}")
    names = args.names or list(BENCHMARKS)
    for name in names:
        start = time.perf_counter()
        print(f"== {name}{' (tiny)' if args.tiny else ''}", flush=True)
        options = (["--tiny"] if args.tiny else []) + ([] if args.out is None else ["--out", str(args.out)])
        importlib.import_module(f"benchmarks.{name}").main(options)
        print(f"== {name}: {time.perf_counter() - start:.0f} s", flush=True)
    return names


if __name__ == "__main__":
    from benchmarks.common import run_main

    run_main(main)  # a benchmark's refused option (--out a file) as one line, exit 2
