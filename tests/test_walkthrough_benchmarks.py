"""A practitioner's walk through the benchmarks: options explained, mistakes refused
early and in one line, settings recorded, figures reproducible."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.run_all import BENCHMARKS
from papa_bayes.exceptions import InputDataError

ROOT = Path(__file__).resolve().parents[1]

# What each benchmark does first once its options are read: made to fail, so that a
# refusal that comes only after the work started (or never) fails the test.
HEAVY = {
    "bench_inference": ("_problem", "fit"),
    "bench_gp": ("_problem", "fit"),
    "bench_queries": ("speed", "run_ours", "run_botorch", "liked_set_run"),
    "bench_diffusion": ("load_base_model",),
    "bench_finetune": ("load_base_model",),
    "bench_alignment": ("make_setup",),
    "bench_calibration": ("simulation_based_calibration",),
}


def _no_work(monkeypatch, name: str):
    module = importlib.import_module(f"benchmarks.{name}")

    def started(*args, **kwargs):
        raise AssertionError(f"{name} started its work before refusing the option")

    for attr in HEAVY[name]:
        monkeypatch.setattr(module, attr, started)
    return module


def _refusal(main, argv: list[str], capsys) -> str:
    """The one-line message a benchmark refuses ``argv`` with (our error or argparse's)."""
    try:
        main(argv)
    except InputDataError as err:
        return str(err)
    except SystemExit as exit:
        assert exit.code == 2
        return capsys.readouterr().err.strip().splitlines()[-1]
    pytest.fail(f"{argv} was accepted")


def _parser(monkeypatch, name: str) -> argparse.ArgumentParser:
    class Parsed(Exception):
        pass

    def grab(self, args=None, namespace=None):
        raise Parsed(self)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", grab)
    module = importlib.import_module(f"benchmarks.{name}")
    with pytest.raises(Parsed) as parsed:
        (getattr(module, "parse_args", None) or module.main)([])
    return parsed.value.args[0]


@pytest.mark.parametrize("name", [*BENCHMARKS, "run_all"])
def test_every_option_is_explained_by_help(name, monkeypatch):
    parser = _parser(monkeypatch, name)
    bare = [a.option_strings[0] if a.option_strings else a.dest for a in parser._actions if not a.help]
    assert not bare, f"{name} --help says nothing about {bare}"


@pytest.mark.parametrize("name", BENCHMARKS)
def test_help_shows_each_default(name, monkeypatch, capsys):
    # was: no default in any benchmark's --help (e.g. bench_inference --update-repeats 21 only in the source)
    module = importlib.import_module(f"benchmarks.{name}")
    with pytest.raises(SystemExit) as exit:
        (getattr(module, "parse_args", None) or module.main)(["--help"])
    assert exit.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps at spaces
    shown = [a for a in _parser(monkeypatch, name)._actions
             if a.default not in (None, False, argparse.SUPPRESS) and "(default " not in a.help]
    assert shown, f"{name} has no option with a default to show"
    for action in shown:
        value = " ".join(map(str, action.default)) if isinstance(action.default, list) else str(action.default)
        assert f"(default: {value})" in text, f"{name} --help does not say {action.option_strings[0]}'s default"


BAD = [
    ("bench_calibration", ["--datasets", "0"], "--datasets"),
    ("bench_calibration", ["--methods", "bogus"], "--methods"),
    ("bench_inference", ["--sizes", "-5"], "--sizes"),
    ("bench_inference", ["--update-repeats", "0"], "--update-repeats"),  # was: no median for empty data
    ("bench_inference", ["--methods", "bogus"], "--methods"),
    ("bench_gp", ["--fit-repeats", "0"], "--fit-repeats"),  # was: KeyError 'gp'
    ("bench_gp", ["--num-test-pairs", "0"], "--num-test-pairs"),  # was: accepted, log-loss NaN
    ("bench_queries", ["--botorch", "bogus", "--botorch-seeds", "1"], "--botorch"),  # was: EUBO run as 'bogus'
    ("bench_queries", ["--strategies", "eig:bogus"], "--strategies"),  # was: ValueError traceback
    ("bench_queries", ["--dims", "abc"], "--dims"),
    ("bench_queries", ["--speed-repeats", "0"], "--speed-repeats"),
    ("bench_diffusion", ["--repeats", "0"], "--repeats"),  # was: accepted, ratios inf / inf
    ("bench_diffusion", ["--objectives", "bogus"], "--objectives"),
    ("bench_diffusion", ["--min-probability", "2"], "--min-probability"),
    ("bench_finetune", ["--papa-settings", "bogus"], "--papa-settings"),
    ("bench_finetune", ["--papa-labels", "-2"], "--papa-labels"),  # was: accepted, no PAPA rows
    ("bench_alignment", ["--eval-samples", "0"], "--eval-samples"),
    ("bench_alignment", ["--seeds", "-1"], "--seeds"),
    # were: "samples: expected more than k=3 points" once the first samples were scored
    ("bench_diffusion", ["--num-samples", "3"], "--num-samples: expected an integer >= 4"),
    ("bench_finetune", ["--num-samples", "3"], "--num-samples: expected an integer >= 4"),
    ("bench_alignment", ["--eval-samples", "3"], "--eval-samples: expected an integer >= 4"),
    ("bench_alignment", ["--methods", "papa", "--labels", "0"], "--labels"),  # was: num_samples 0 from the sampler
    ("bench_queries", ["--rationalities", "inf", "--strategies", "eig:known"], "--rationalities"),  # LinearReward's
    ("bench_queries", ["--name", "a/b"], "--name"),  # was: FileNotFoundError when the results were written
    ("bench_alignment", ["--name", "a/b"], "--name"),
    ("bench_calibration", ["--rank-draws", "9", "--num-bins", "11"], "--num-bins"),  # were: after the first method
    ("bench_calibration", ["--num-samples", "40", "--rank-draws", "50"], "--rank-draws"),
    # were: accepted, ran no setting (or nothing) and wrote an empty table over <out>/<name>.*
    ("bench_queries", ["--rationalities", ""], "--rationalities"),
    ("bench_queries", ["--strategies", "", "--botorch", ""], "--strategies"),
    ("bench_queries", ["--skip-protocol", "--skip-speed", "--liked-set-seeds", "0"], "--skip-protocol"),
    # BoTorch arms alone on no setting of --dims x --rationalities (5 is no d of the defaults' or --tiny's)
    ("bench_queries", ["--strategies", "", "--botorch-settings", "5:1"], "--botorch-settings: expected 'all' or a"),
    ("bench_queries", ["--strategies", "", "--botorch-settings", ""], "--botorch-settings"),
    ("bench_inference", ["--num-samples", "3"], "--num-samples"),  # was: fit()'s own "num_samples" error
]


@pytest.mark.parametrize("name, argv, option", BAD, ids=[f"{n}{' '.join(a)}" for n, a, _ in BAD])
def test_a_bad_option_is_refused_by_name_before_any_work(name, argv, option, monkeypatch, capsys, tmp_path):
    module = _no_work(monkeypatch, name)
    message = _refusal(module.main, [*argv, "--out", str(tmp_path)], capsys)
    assert option in message


@pytest.mark.parametrize("name, argv, option", BAD, ids=[f"{n}{' '.join(a)}" for n, a, _ in BAD])
def test_tiny_checks_the_options_given_explicitly(name, argv, option, monkeypatch, capsys, tmp_path):
    # --tiny overwrote sizes and arms given on the command line, unchecked: `--tiny --sizes -5` ran m=30.
    module = _no_work(monkeypatch, name)
    message = _refusal(module.main, ["--tiny", *argv, "--out", str(tmp_path)], capsys)
    assert option in message


TINY_KEEPS = [  # (benchmark, explicit options, what the written JSON must record)
    ("bench_inference", ["--sizes", "12", "--methods", "laplace"],
     lambda result: {r["m"] for r in result["rows"]} == {12} and result["args"]["dims"] == [3]),  # was m=30
    ("bench_gp", ["--sizes", "24"],
     lambda result: [r["m"] for r in result["rows"]] == [24] and result["args"]["num_samples"] == 32),  # was m=40
    ("bench_queries", ["--queries", "6", "--strategies", "random:known", "--botorch", "", "--skip-speed",
                       "--liked-set-seeds", "0"],
     lambda result: list(result["protocol"]["d3_r1"]) == ["random:known"]  # was eig, eig:refined, random:known
     and len(result["protocol"]["d3_r1"]["random:known"]["alignment"]) == 6  # was 4 queries
     and result["config"]["pool_size"] == 20 and "liked_set" not in result),
]


@pytest.mark.parametrize("name, argv, recorded", TINY_KEEPS, ids=[n for n, _, _ in TINY_KEEPS])
def test_tiny_keeps_the_options_given_explicitly(name, argv, recorded, tmp_path):
    # As `papa-bayes demo --tiny`: only the options left out take their tiny values.
    importlib.import_module(f"benchmarks.{name}").main(["--tiny", *argv, "--out", str(tmp_path)])
    (path,) = tmp_path.glob("*.json")
    result = json.loads(path.read_text())
    assert result["args" if "args" in result else "config"]["tiny"] is True
    assert recorded(result), result


def test_tiny_alignment_keeps_an_explicit_filter_quantile(monkeypatch, tmp_path):
    # --tiny replaced the recommendation options wholesale, dropping --filter-quantile.
    import benchmarks.bench_alignment as ba

    class Started(Exception):
        pass

    def run_session(setup, **kwargs):
        raise Started(kwargs)

    monkeypatch.setattr(ba, "make_setup", lambda **kwargs: None)
    monkeypatch.setattr(ba, "run_session", run_session)
    with pytest.raises(Started) as started:
        ba.main(["--tiny", "--methods", "region_pairs", "--filter-quantile", "0.3", "--eval-samples", "5",
                 "--out", str(tmp_path)])
    kwargs = started.value.args[0]
    assert kwargs["candidate_options"]["filter_quantile"] == 0.3
    assert kwargs["candidate_options"]["pool_steps"] == 8  # the tiny sampling runs all the same
    assert kwargs["eval_samples"] == 5 and kwargs["checkpoints"] == [0, 2] and kwargs["seed"] == 0


@pytest.mark.parametrize("name", BENCHMARKS)
def test_an_output_folder_that_is_a_file_is_refused_before_the_run(name, monkeypatch, capsys, tmp_path):
    # It used to be found when the results were written: after hours at full size.
    module = _no_work(monkeypatch, name)
    (tmp_path / "file").write_text("not a folder\n")
    message = _refusal(module.main, ["--tiny", "--out", str(tmp_path / "file")], capsys)
    assert message.startswith("--out: expected a folder") and "(a file)" in message


@pytest.mark.parametrize("name", ["bench_queries", "bench_alignment"])
def test_merge_of_a_missing_or_non_result_file_is_refused_by_name(name, capsys, tmp_path):
    module = importlib.import_module(f"benchmarks.{name}")
    (tmp_path / "notes.json").write_text("[1, 2]")
    for path in (tmp_path / "missing.json", tmp_path / "notes.json"):
        message = _refusal(module.main, ["--merge", str(path), "--out", str(tmp_path)], capsys)
        assert message.startswith("--merge: expected a benchmark result file") and str(path) in message


def test_finetune_names_a_checkpoint_that_is_not_one(capsys, tmp_path):
    from benchmarks.bench_finetune import main

    message = _refusal(main, ["--tiny", "--checkpoint", str(tmp_path / "nowhere"), "--out", str(tmp_path)], capsys)
    assert message.startswith("--checkpoint: expected a checkpoint folder")


@pytest.mark.parametrize("name, argv, option", [
    ("bench_inference", ["--sizes", "-5"], "--sizes"),
    ("bench_queries", ["--strategies", "eig:bogus"], "--strategies"),
])
def test_python_m_prints_one_line_not_a_traceback(name, argv, option, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    run = subprocess.run([sys.executable, "-m", f"benchmarks.{name}", *argv, "--out", str(tmp_path)], cwd=ROOT,
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 2
    assert "Traceback" not in run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{name}.py: error: {option}")


def test_results_record_the_package_version_with_the_machine():
    from benchmarks.common import machine

    info = machine()
    import papa_bayes

    assert info["papa_bayes"] == papa_bayes.__version__
    assert {"python", "torch", "threads", "cpu", "date"} <= set(info)


@pytest.mark.parametrize("name, stem, options", [
    ("bench_diffusion", "diffusion", ("scales", "objectives", "quantile", "window_stop", "oversample",
                                      "min_probability", "rule_scales", "calibration_samples")),
    ("bench_finetune", "finetune", ("window_stop", "calibration_samples", "rule_samples", "papa_labels",
                                    "papa_settings", "scale")),
])
def test_diffusion_benchmarks_record_every_setting_and_the_machine(name, stem, options, tmp_path):
    # Their JSON held some sizes but not, e.g., the scales or the guidance window the figures came from.
    importlib.import_module(f"benchmarks.{name}").main(["--tiny", "--out", str(tmp_path)])
    payload = json.loads((tmp_path / f"{stem}.json").read_text())
    assert set(options) <= set(payload["args"])
    assert payload["args"]["seed"] == 0 and payload["args"]["tiny"] is True
    assert {"python", "torch", "papa_bayes", "date"} <= set(payload["machine"])
    assert (tmp_path / f"{stem}.md").read_text().strip()


TIMING = ("fit_s", "update_ms", "gp_fit_s", "pairwise_fit_s", "fit_speedup", "gp_update_s", "pairwise_update_s",
          "update_speedup", "gp_peak_rss_gb")


@pytest.mark.parametrize("name", ["bench_inference", "bench_gp"])
def test_same_seed_gives_the_same_figures(name, tmp_path):
    main = importlib.import_module(f"benchmarks.{name}").main
    rows = []
    for run in ("a", "b"):
        main(["--tiny", "--out", str(tmp_path / run)])
        payload = json.loads(next((tmp_path / run).glob("*.json")).read_text())
        assert payload["args"]["seed"] == 0
        rows.append([{k: v for k, v in r.items() if k not in TIMING} for r in payload["rows"]])
    assert rows[0] == rows[1] and rows[0]
