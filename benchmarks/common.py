"""Shared helpers: every benchmark writes ``<name>.json`` and ``<name>.md``, checks its
options before it starts (a mistake reads as one line naming the option, not as a
traceback hours later), and records the machine and versions it ran on."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch

import papa_bayes
from papa_bayes.checks import check_float, check_int, read_json_object
from papa_bayes.exceptions import InputDataError

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = RESULTS.parents[1]  # the repository
# Samples a scored row needs: evaluate_samples' recall counts the reference digits inside the k-NN balls
# of the samples (k = 3), so fewer than 4 fail, after the sampling, with "samples: expected more than k=3 points".
MIN_SCORED_SAMPLES = 4


def commit() -> str | None:
    """The checkout's commit (``git rev-parse HEAD``; the code may hold changes not in it), None outside one."""
    try:
        done = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


def machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "papa_bayes": papa_bayes.__version__,
        "commit": commit(),  # papa_bayes.__version__ has read 0.1.0 through every change
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }


def output_folder(out: Path | str | None, default: Path = RESULTS) -> Path:
    """``out`` (``default`` when None) as a folder that exists, made now rather than after the run.

    Raises:
        InputDataError: naming ``--out`` when the path is a file or the folder cannot be made.
    """
    folder = Path(default if out is None else out)
    if folder.exists() and not folder.is_dir():
        raise InputDataError("--out", "a folder (or a path where one can be made)", f"{folder} (a file)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputDataError("--out", "a folder (or a path where one can be made)",
                             f"{folder} ({type(err).__name__}: {err.strerror or err})") from None
    return folder


def recorded_folder(folder: Path | str) -> str | None:
    """``folder`` as a result file records it: relative to the repository when inside it (``benchmarks/results``).

    A folder outside the repository is recorded as None: its machine path (``/tmp/cal``) says nothing on another
    machine, and results are often run there and copied into ``benchmarks/results`` afterwards.
    """
    resolved = Path(folder).resolve()
    return resolved.relative_to(ROOT).as_posix() if resolved.is_relative_to(ROOT) else None


def recorded_args(args: argparse.Namespace, folder: Path | str) -> dict[str, Any]:
    """The options as a result file records them: ``out`` the folder written to (:func:`recorded_folder`, the
    default resolved too), other paths as text."""
    options = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    return {**options, "out": recorded_folder(folder)}


def counts(option: str, values: int | Iterable[int], *, minimum: int = 1) -> None:
    """InputDataError naming ``option`` unless every value is an integer >= ``minimum``."""
    for value in [values] if isinstance(values, int) else values:
        check_int(option, value, minimum=minimum)


def reals(option: str, values: float | Iterable[float], **bounds: Any) -> None:
    """InputDataError naming ``option`` unless every value is a finite number within ``bounds`` (as check_float)."""
    for value in [values] if isinstance(values, (int, float)) else values:
        check_float(option, value, **bounds)


def one_of(option: str, values: Iterable[str], known: Iterable[str]) -> None:
    """InputDataError naming ``option`` unless every value is one of ``known``."""
    known = tuple(known)
    for value in values:
        if value not in known:
            raise InputDataError(option, f"one of {', '.join(known)}", repr(value))


def file_stem(option: str, value: str) -> str:
    """``value`` if it can name files inside ``--out`` (no folder in it), else InputDataError naming ``option``:
    ``--name a/b`` would fail only when the results are written, after the run."""
    separators = {"/", os.sep, os.altsep} - {None}
    if not value or value in (".", "..") or any(sep in value for sep in separators):
        raise InputDataError(option, "a file stem without a path separator (the files go into --out)", repr(value))
    return value


def result_files(option: str, paths: Sequence[str], *, key: str) -> list[dict[str, Any]]:
    """The JSON objects in ``paths`` (result files holding ``key``), or InputDataError naming ``option``."""
    parts = []
    for path in paths:
        part = read_json_object(option, Path(path), f"a benchmark result file (JSON with {key!r})")
        if key not in part:
            raise InputDataError(option, f"a benchmark result file (JSON with {key!r})", f"{path} (no {key!r})")
        parts.append(part)
    return parts


def add_out_option(parser: argparse.ArgumentParser) -> None:
    """``--out``, the output folder (resolved by :func:`output_folder`), as every benchmark has it."""
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default benchmarks/results; --tiny: benchmarks/results/tmp)")


def run_main(main: Callable[[], Any]) -> None:
    """Run a benchmark's ``main`` as a script: a bad option reads as one line (exit 2), as argparse's own errors."""
    try:
        main()
    except InputDataError as err:
        print(f"{Path(sys.argv[0]).name}: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    if not rows:
        return "(no rows)\n"
    columns = list(columns or rows[0].keys())
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_text(path: Path, text: str) -> None:
    """``text`` into ``path`` whole or not at all: written beside it, then renamed over it.

    A run interrupted while writing (Ctrl-C) left a truncated JSON, or a new JSON beside the Markdown of the
    run before, in place of its results.
    """
    path = Path(path)
    part = path.with_name(f".{path.name}.part")
    try:
        part.write_text(text)
        os.replace(part, path)
    finally:
        part.unlink(missing_ok=True)


def write_results(name: str, payload: dict[str, Any], table: str, out_dir: Path | None = None, *,
                  title: str = "") -> Path:
    out = output_folder(out_dir)
    payload = {"benchmark": name, "machine": machine(), **payload}
    markdown = f"# {title or name}\n\n{table}\nMachine: {payload['machine']}\n"
    text = json.dumps(payload, indent=2, default=str)  # both made before either file is replaced
    write_text(out / f"{name}.json", text)
    write_text(out / f"{name}.md", markdown)
    return out / f"{name}.md"
