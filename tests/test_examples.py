"""Every example runs at tiny size; an example missing from this list fails the suite.

The README is checked the same way: its Python snippets run (at seconds-long sizes),
every command line it quotes names options that exist, every example is listed, and
each example's docstring commands use the example's own flags.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import io
import re
import sys
import warnings
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
README = ROOT / "README.md"

TINY_ARGS = {
    "01_bradley_terry_recovery.py": ["--num-comparisons", "40", "--num-samples", "30", "--warmup-steps", "30",
                                     "--num-features", "3"],
    "02_gp_preferences.py": ["--tiny"],
    "03_active_learning.py": ["--tiny"],
    "04_full_loop.py": ["--tiny"],
    "05_guided_sampling.py": ["--num-samples", "8", "--steps", "5", "--labels", "6", "--pool-scale-samples", "8",
                              "--oversample", "2"],
    "06_resume_session.py": ["--tiny"],
    "07_custom_feature_map.py": ["--tiny"],
    "08_session_in_arviz.py": ["--tiny"],
}


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem.replace("-", "_"), path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_every_example_is_listed():
    present = {p.name for p in EXAMPLES.glob("[0-9]*.py")}
    missing = present - set(TINY_ARGS)
    assert not missing, f"examples without tiny arguments in tests/test_examples.py: {sorted(missing)}"


@pytest.mark.parametrize("name", sorted(TINY_ARGS))
def test_example_runs_tiny(name, tmp_path):
    path = EXAMPLES / name
    if not path.exists():
        pytest.fail(f"{name} is listed but does not exist")
    module = _load(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module.main([*TINY_ARGS[name], "--seed", "0", "--out", str(tmp_path)])
    assert any(tmp_path.iterdir()), "the example wrote no output"


class _Started(Exception):
    """Raised where an example makes its output folder: its options are read by then."""


def _options_read(module, argv: list[str], monkeypatch) -> argparse.Namespace:
    """The options ``module.main(argv)`` runs with, as they stand when it makes its output folder (and stops)."""
    parsed = []
    parse_args = argparse.ArgumentParser.parse_args

    def record(self, args=None, namespace=None):
        parsed.append(parse_args(self, args, namespace))
        return parsed[-1]

    def stop(self, *args, **kwargs):
        raise _Started

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", record)
    monkeypatch.setattr(Path, "mkdir", stop)
    with pytest.raises(_Started):
        module.main(argv)
    return parsed[-1]


TINY_KEEPS = [  # (example, a size given with --tiny, what the run reads: that size and the other sizes' tiny ones)
    ("02_gp_preferences.py", ["--num-items", "30"], {"num_items": 30, "num_comparisons": 60}),
    ("03_active_learning.py", ["--queries", "3"], {"queries": 3, "dim": 3}),
    ("04_full_loop.py", ["--labels", "3"], {"labels": 3, "pool_size": 4}),
    ("06_resume_session.py", ["--first", "3"], {"first": 3, "then": 2}),
    ("07_custom_feature_map.py", ["--labels", "3"], {"labels": 3}),
    ("08_session_in_arviz.py", ["--labels", "4"], {"labels": 4, "num_samples": 30}),
]


@pytest.mark.parametrize("name, argv, expected", TINY_KEEPS, ids=[name[:2] for name, _, _ in TINY_KEEPS])
def test_tiny_keeps_the_sizes_given_explicitly(name, argv, expected, monkeypatch, tmp_path):
    # was: --tiny overwrote them (06 --tiny --first 3 stopped after 2 answers), unlike the benchmarks' --tiny
    args = _options_read(_load(EXAMPLES / name), ["--tiny", *argv, "--out", str(tmp_path / "out")], monkeypatch)
    assert {key: getattr(args, key) for key in expected} == expected


BAD_SIZES = {  # a size of each example, given a negative value
    "01_bradley_terry_recovery.py": "--num-comparisons", "02_gp_preferences.py": "--num-items",
    "03_active_learning.py": "--pool-size", "04_full_loop.py": "--labels", "05_guided_sampling.py": "--steps",
    "06_resume_session.py": "--first", "07_custom_feature_map.py": "--labels",
    "08_session_in_arviz.py": "--num-samples",
}


@pytest.mark.parametrize("name", sorted(BAD_SIZES))
def test_a_negative_size_is_argparse_one_line_error(name, monkeypatch, capsys, tmp_path):
    # was: accepted, then a traceback from the library (or a run of the tiny size with --tiny)
    option = BAD_SIZES[name]
    tiny_too = name in {n for n, _, _ in TINY_KEEPS}
    for argv in ([option, "-5"], ["--tiny", option, "-5"]) if tiny_too else ([option, "-5"],):
        with pytest.raises(SystemExit) as exit:
            _options_read(_load(EXAMPLES / name), [*argv, "--out", str(tmp_path / "out")], monkeypatch)
        assert exit.value.code == 2
        line = capsys.readouterr().err.strip().splitlines()[-1]
        assert re.search(rf"error: argument {option}: expected an integer >= \d, got '-5'$", line), line


def _help(main, argv: list[str]) -> str:
    """What ``main(argv + ["--help"])`` prints (argparse exits after printing it)."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer), pytest.raises(SystemExit):
        main([*argv, "--help"])
    return buffer.getvalue()


def _flags(text: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])--[a-z][\w-]*", text))


@pytest.mark.parametrize("name", sorted(TINY_ARGS))
def test_example_docstring_commands_use_real_flags(name):
    module = _load(EXAMPLES / name)
    commands = [line for line in module.__doc__.splitlines() if line.strip().startswith("python ")]
    assert commands, f"{name}'s docstring shows no command to run it"
    for command in commands:
        assert f"examples/{name}" in command, f"{name}'s docstring runs another file: {command.strip()}"
    missing = _flags("\n".join(commands)) - _flags(_help(module.main, []))
    assert not missing, f"{name}'s docstring uses flags the example does not have: {sorted(missing)}"


def test_readme_lists_every_example():
    text = README.read_text()
    listed = text[text.index("Examples (`examples/`"):text.index("## The digits demo")]
    missing = [p.name for p in EXAMPLES.glob("[0-9]*.py") if not re.search(rf"\b{p.name[:2]} ", listed)]
    assert not missing, f"examples missing from the README's list: {missing}"


def test_readme_commands_name_real_options():
    from papa_bayes import cli

    text = README.read_text()
    fenced = re.findall(r"```\w*\n(.*?)```", text, re.S)
    quoted = re.findall(r"`([^`]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
    for span in quoted:  # a benchmark command ends where the span's prose begins
        for module_name, rest in re.findall(r"python -m benchmarks\.(\w+)((?: +(?:--?[\w-]+|[\w.'/:,]+))*)", span):
            if module_name == "NAME":
                continue
            module = importlib.import_module(f"benchmarks.{module_name}")
            missing = _flags(rest) - _flags(_help(module.main, []))
            assert not missing, f"README: benchmarks.{module_name} has no {sorted(missing)} ({span})"
        cli_command = re.findall(r"papa-bayes ([a-z][\w-]*)(.*)", span) or re.findall(r"^(label|train-base)( .*)", span)
        for command, rest in cli_command:
            if command == "benchmark":
                continue
            missing = _flags(rest) - _flags(_help(cli.main, [command]))
            assert not missing, f"README: papa-bayes {command} has no {sorted(missing)} ({span})"
    demo_options = text[text.index("Options: `--"):text.index("(`papa-bayes demo --help`)")]
    missing = _flags(demo_options) - _flags(_help(cli.main, ["demo"]))
    assert not missing, f"README: papa-bayes demo has no {sorted(missing)}"
    makefile = (ROOT / "Makefile").read_text()
    code_lines = [*quoted, *"\n".join(fenced).splitlines()]
    for target in {m.group(1) for line in code_lines if (m := re.match(r"make (\w+)", line))}:
        assert re.search(rf"^{target}:", makefile, re.M), f"README: the Makefile has no target {target!r}"


# The README's sizes -> seconds-long ones; each must still be in the README.
README_SNIPPET_SIZES = {
    'method="nuts")': 'method="nuts", num_samples=20, warmup_steps=20, progress_bar=False)',
}


def test_readme_snippets_run():
    fit_snippet, steering_snippet = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    for readme_size, tiny_size in README_SNIPPET_SIZES.items():
        assert readme_size in fit_snippet, f"README no longer contains {readme_size!r}: update README_SNIPPET_SIZES"
        fit_snippet = fit_snippet.replace(readme_size, tiny_size)
    # The data the first snippet assumes: `n x d` features and winner-first pairs.
    g = torch.Generator().manual_seed(0)
    X = torch.randn(12, 3, generator=g, dtype=torch.float64)
    a, b = torch.randint(0, 12, (20,), generator=g), torch.randint(0, 11, (20,), generator=g)
    b = b + (b >= a).long()
    a_wins = X[a].sum(1) > X[b].sum(1)
    pairs = torch.stack([torch.where(a_wins, a, b), torch.where(a_wins, b, a)], 1)
    namespace = {"X": X, "winner_loser_pairs": pairs}
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        exec(compile(fit_snippet, str(README), "exec"), namespace)
        assert namespace["post"].data.num_comparisons == pairs.shape[0] + 1  # updated with one more answer
        exec(compile(steering_snippet, str(README), "exec"), namespace)
    assert namespace["post"].data.num_ratings == 3
    assert namespace["base"].shape == (32, 1, 8, 8)
    assert namespace["phi"](namespace["base"]).shape == (32, 8)
    assert namespace["out"].images.shape == (16, 1, 8, 8)
