"""What the benchmarks record about a run: the output folder as the repository names it, and a BoTorch
setting that runs nothing said aloud."""

from __future__ import annotations

import argparse
import json
import warnings

import pytest

from benchmarks.common import RESULTS
from papa_bayes.exceptions import PapaBayesWarning


def test_the_output_folder_is_recorded_relative_to_the_repository_or_not_at_all(tmp_path, monkeypatch):
    # bench_calibration.json recorded "out": "/tmp/cal": the folder of the machine that ran it, then copied.
    from benchmarks.common import recorded_args, recorded_folder

    assert recorded_folder(RESULTS) == "benchmarks/results"
    assert recorded_folder(RESULTS / "tmp" / ".." / "tmp") == "benchmarks/results/tmp"
    assert recorded_folder(tmp_path / "cal") is None
    monkeypatch.chdir(RESULTS.parent)
    assert recorded_folder("results") == "benchmarks/results"  # a relative --out, from inside the repository
    args = argparse.Namespace(out=tmp_path, seed=0, checkpoint=tmp_path / "ckpt")
    recorded = recorded_args(args, tmp_path)
    assert recorded == {"out": None, "seed": 0, "checkpoint": str(tmp_path / "ckpt")}
    assert recorded_args(argparse.Namespace(out=None), RESULTS) == {"out": "benchmarks/results"}
    json.dumps(recorded)  # every value is JSON
    committed = json.loads((RESULTS / "bench_calibration.json").read_text())
    assert committed["args"]["out"] == "benchmarks/results"  # what a run with the default --out writes


def test_queries_result_and_merge_record_no_machine_path(tmp_path):
    from benchmarks.bench_queries import main, merge, parse_args, summarize

    result = main(["--tiny", "--skip-speed", "--botorch", "", "--liked-set-seeds", "0", "--out", str(tmp_path)])
    assert result["config"]["out"] is None and str(tmp_path) not in (tmp_path / "bench_queries_tiny.json").read_text()
    run = {"alignment": [0.5, 0.9], "log_loss": [0.6, 0.5], "regret": [0.2, 0.1],
           "information_bits": [float("nan"), 0.4], "seconds_per_query": [0.01], "select_seconds": [0.01]}
    cfg = {**vars(parse_args(["--seeds", "2", "--queries", "2"])), "out": "benchmarks/results"}
    part = {"config": cfg, "protocol": {"d8_r1": {"eig": summarize([run, run], 2)}}}
    (tmp_path / "part.json").write_text(json.dumps(part))
    args = parse_args(["--merge", str(tmp_path / "part.json"), "--name", "merged", "--out", str(tmp_path)])
    assert merge(args.merge, args)["config"]["out"] is None  # where the merge went, not where the part did


def test_botorch_settings_that_match_no_setting_are_said_not_refused():
    from benchmarks.bench_queries import parse_args

    # --dims 4 with the default --botorch-settings 8:1: our arms run, the BoTorch arms nowhere (was silent).
    with pytest.warns(PapaBayesWarning, match=r"--botorch-settings: 8:1 match\(es\) no setting .*botorch_bald"):
        args = parse_args(["--dims", "4"])
    assert args.botorch_settings == "8:1"
    with pytest.warns(PapaBayesWarning, match=r": 5:1 match"):  # one of two settings matching nothing
        parse_args(["--botorch-settings", "8:1,5:1"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        parse_args([])  # the default run: 8:1 is one of its settings
        parse_args(["--dims", "4", "--botorch", ""])  # no BoTorch arm
        parse_args(["--dims", "4", "--skip-protocol"])  # no protocol
        parse_args(["--dims", "4", "--botorch-settings", "all"])
        parse_args(["--tiny"])


def test_calibration_measures_a_repeated_site_once(tmp_path):
    # `--sites w w` was refused by the SBC driver under its own argument's name: "sites: expected distinct site names".
    from benchmarks.bench_calibration import main

    (row,) = main(["--tiny", "--methods", "laplace", "--sites", "w", "w", "--datasets", "2", "--out", str(tmp_path)])
    assert "cov90_w" in row
    assert json.loads((tmp_path / "bench_calibration_tiny.json").read_text())["args"]["sites"] == ["w"]
