"""A contributor's rerun of the benchmarks: runs split by seed merged as one run, interrupted runs that say so,
files written whole, and run_all's output folder."""

from __future__ import annotations

import json

import pytest

from papa_bayes.exceptions import InputDataError

# The set-valued-taste task only, tiny (no speed test, no protocol): a second or so a run.
LIKED = ["--tiny", "--skip-speed", "--skip-protocol", "--liked-set-strategies", "eig", "--liked-set-queries", "3"]


def test_queries_merge_pools_liked_set_runs_split_by_seed_as_one_run(tmp_path):
    # Two liked-set runs on seeds 0 and 1 merged kept the second file's summary alone (1 run) under
    # liked_set_seeds 1, where one run on both seeds reports their means over 2 runs.
    from benchmarks.bench_queries import main, merge, parse_args

    whole = main([*LIKED, "--liked-set-seeds", "2", "--out", str(tmp_path), "--name", "whole"])["liked_set"]["eig"]
    for seed in (0, 1):
        main([*LIKED, "--liked-set-seeds", "1", "--seed", str(seed), "--out", str(tmp_path), "--name", f"s{seed}"])
    parts = [str(tmp_path / f"s{seed}.json") for seed in (0, 1)]
    one = {seed: json.loads((tmp_path / f"s{seed}.json").read_text())["liked_set"]["eig"] for seed in (0, 1)}
    assert one[0] != one[1]  # the seeds differ, so keeping one of them would show
    merged = merge(parts, parse_args(["--merge", *parts, "--name", "merged", "--out", str(tmp_path)]))
    pooled = merged["liked_set"]["eig"]
    assert pooled["num_runs"] == 2 and pooled["seeds"] == [[0, 0], [1, 1]]
    assert merged["config"]["liked_set_seeds"] == 2
    for key in ("preferred", "liked_entropy_bits"):
        assert pooled[key] == pytest.approx(whole[key], abs=1e-4)
    for key in ("both_liked_share", "same_level_share"):
        assert pooled[key] == pytest.approx(whole[key])
    # The same file twice is one run, not two; a file overlapping a pooled range in part is refused.
    again = merge([parts[0], parts[0]], parse_args(["--merge", parts[0], "--name", "again", "--out", str(tmp_path)]))
    assert again["liked_set"]["eig"]["num_runs"] == 1
    both = str(tmp_path / "merged.json")
    with pytest.raises(InputDataError, match=r"liked set eig.*seeds 0-0, 1-1 \(pooled\) and [01]-[01]\."):
        merge([both, parts[1], parts[0]], parse_args(["--merge", both, "--name", "x", "--out", str(tmp_path)]))


def test_an_interrupted_queries_run_leaves_files_that_say_so_and_merge_refuses(tmp_path, monkeypatch):
    # Results are written after every setting; a run stopped (Ctrl-C) after the first left a JSON that --merge
    # took for a finished run, the setting and arms it never reached silently missing from the merged table.
    import benchmarks.bench_queries as bq

    calls = []

    def stop_at_the_second(strategy, seed, args):
        calls.append(strategy)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(strategy, seed, args)

    real = bq.liked_set_run
    monkeypatch.setattr(bq, "liked_set_run", stop_at_the_second)
    options = [*LIKED, "--liked-set-strategies", "eig,random", "--liked-set-seeds", "1", "--out", str(tmp_path)]
    with pytest.raises(KeyboardInterrupt):
        bq.main([*options, "--name", "stopped"])
    stopped = json.loads((tmp_path / "stopped.json").read_text())
    assert stopped["partial"] is True and list(stopped["liked_set"]) == ["eig"]
    assert "did not finish" in (tmp_path / "stopped.md").read_text()
    monkeypatch.setattr(bq, "liked_set_run", real)
    finished = bq.main([*options, "--name", "finished"])
    assert "partial" not in finished and "partial" not in json.loads((tmp_path / "finished.json").read_text())
    assert "did not finish" not in (tmp_path / "finished.md").read_text()
    paths = [str(tmp_path / "finished.json"), str(tmp_path / "stopped.json")]
    with pytest.raises(InputDataError, match=r"--merge: expected result files of finished runs, got .*stopped\.json "
                                             r"\(written while its run went on"):
        bq.merge(paths, bq.parse_args(["--merge", *paths, "--name", "m", "--out", str(tmp_path)]))
    assert not (tmp_path / "m.json").exists()


def test_results_are_replaced_whole_or_not_at_all(tmp_path, monkeypatch):
    # An interrupt while a result was written left a truncated JSON in place of the previous run's.
    import benchmarks.common as common

    common.write_results("bench_x", {"rows": [1]}, "table", tmp_path)
    before = (tmp_path / "bench_x.json").read_text()

    def interrupted(self, data, *args, **kwargs):
        with open(self, "w") as f:
            f.write(data[:5])
        raise KeyboardInterrupt

    monkeypatch.setattr(common.Path, "write_text", interrupted)
    with pytest.raises(KeyboardInterrupt):
        common.write_results("bench_x", {"rows": [1, 2]}, "table", tmp_path)
    monkeypatch.undo()
    assert (tmp_path / "bench_x.json").read_text() == before
    assert json.loads(before)["rows"] == [1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench_x.json", "bench_x.md"]  # no leftover part file


def test_run_all_passes_its_output_folder_to_every_benchmark(tmp_path, monkeypatch):
    # run_all had no --out: `run_all --tiny` could only write into benchmarks/results/tmp.
    from benchmarks import run_all
    import benchmarks.bench_gp as bg
    import benchmarks.bench_inference as bi

    called = []
    monkeypatch.setattr(bi, "main", lambda argv: called.append(argv))
    monkeypatch.setattr(bg, "main", lambda argv: called.append(argv))
    run_all.main(["bench_inference", "bench_gp", "--tiny", "--out", str(tmp_path)])
    assert called == [["--tiny", "--out", str(tmp_path)]] * 2
    run_all.main(["bench_gp"])
    assert called[-1] == []


def test_results_record_the_commit_they_ran_on(tmp_path, monkeypatch):
    # The records carried the package's version (0.1.0 through every change) but not the commit: two files could
    # not tell whether the same code wrote them.
    import subprocess

    import benchmarks.common as common

    head = subprocess.run(["git", "-C", str(common.ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    common.write_results("bench_x", {"rows": []}, "table", tmp_path)
    recorded = json.loads((tmp_path / "bench_x.json").read_text())["machine"]["commit"]
    assert recorded == (head.stdout.strip() if head.returncode == 0 else None)
    monkeypatch.setattr(common, "ROOT", tmp_path)  # no checkout there
    assert common.machine()["commit"] is None


def test_inference_and_gp_run_a_repeated_size_or_method_once(tmp_path, monkeypatch):
    # `--methods laplace laplace --sizes 30 30` timed every setting four times: four rows of one setting.
    import benchmarks.bench_gp as bg
    import benchmarks.bench_inference as bi

    rows = bi.main(["--tiny", "--methods", "laplace", "laplace", "--sizes", "30", "30", "--dims", "3", "3",
                    "--out", str(tmp_path)])
    assert [(r["method"], r["m"], r["d"]) for r in rows] == [("laplace", 30, 3)]
    args = json.loads((tmp_path / "bench_inference_tiny.json").read_text())["args"]
    assert (args["methods"], args["sizes"], args["dims"]) == (["laplace"], [30], [3])

    def timed(models, prob, **options):  # the timing itself is not what is tested here
        stats = {"fit_s": 1.0, "update_s": 1.0, "log_loss": 0.5, "peak_rss_gb": 0.1}
        return {name: dict(stats) for name in models} | {"fit_speedups": [1.0], "update_speedups": [1.0]}

    monkeypatch.setattr(bg, "_repeated", timed)
    assert [row["m"] for row in bg.main(["--tiny", "--sizes", "40", "40", "--out", str(tmp_path)])] == [40]
    assert json.loads((tmp_path / "bench_gp_tiny.json").read_text())["args"]["sizes"] == [40]


def test_queries_merge_records_the_options_of_every_part(tmp_path):
    # A merged file's config was its first protocol part's: botorch_seeds 8 and strategies 'eig' beside a
    # botorch_bald arm of 20 runs that another part (--botorch-seeds 20) had run.
    from benchmarks.bench_queries import merge, parse_args, summarize

    run = {"alignment": [0.5, 0.95], "log_loss": [0.6, 0.5], "regret": [0.2, 0.1],
           "information_bits": [float("nan"), 0.4], "seconds_per_query": [0.01], "select_seconds": [0.01]}
    paths = []
    for arm, options in (("eig", ["--botorch-seeds", "8"]), ("botorch_bald", ["--botorch-seeds", "20"])):
        cfg = vars(parse_args(["--skip-speed", "--queries", "2", "--strategies", "eig", *options]))
        part = {"benchmark": "bench_queries", "config": cfg, "protocol": {"d8_r1": {arm: summarize([run], 2)}}}
        paths.append(tmp_path / f"{arm}.json")
        paths[-1].write_text(json.dumps(part))
    args = parse_args(["--merge", *map(str, paths), "--name", "merged", "--out", str(tmp_path)])
    merge(args.merge, args)
    config = json.loads((tmp_path / "merged.json").read_text())["config"]
    assert [run["botorch_seeds"] for run in config["runs"]] == [8, 20]
    assert config["merged_from"] == [str(p) for p in paths]
