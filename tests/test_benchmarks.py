"""Each benchmark runs at a tiny size (proof that it runs, not a timing)."""

from __future__ import annotations

import importlib
import json
import math

import pytest
import torch

from benchmarks.run_all import BENCHMARKS
from papa_bayes.exceptions import InputDataError


@pytest.mark.parametrize("name", BENCHMARKS)
def test_benchmark_runs_tiny(name, tmp_path):
    module = importlib.import_module(f"benchmarks.{name}")
    module.main(["--tiny", "--out", str(tmp_path)])
    outputs = list(tmp_path.glob("*.json"))
    assert outputs, "no JSON written"
    for path in outputs:  # the options are recorded without the machine's --out (was its absolute path)
        assert str(tmp_path) not in path.read_text(), path.name
    payload = json.loads(outputs[0].read_text())
    assert isinstance(payload, dict) and payload
    assert list(tmp_path.glob("*.md"))


def test_alignment_merge_keeps_the_last_file_of_each_method_seed_and_labels(tmp_path):
    from benchmarks.bench_alignment import METRICS, merge

    def row(method, seed, labels, preferred, entropy):
        return {"method": method, "seed": seed, "labels": labels, "preferred_fraction": preferred, "judge_share": 0.9,
                "precision": 0.9, "recall": 0.2, "liked_class_entropy": entropy}

    old = {"rows": [row("eig_likes", 0, 20, 0.5, 1.0), row("papa", 0, 20, 0.6, 1.9)], "args": {"run": "old"}}
    new = {"rows": [row("eig_likes", s, n, p, 1.9) for s in (0, 1) for n, p in ((10, 0.8), (20, 0.95))],
           "args": {"run": "new"}}
    more = {"rows": [row("eig_likes", 2, n, p, 1.0) for n, p in ((10, 0.5), (20, 0.65))], "args": {"run": "more"}}
    longer = {"rows": [row("eig_likes", 1, 30, 0.9, 1.9), row("eig_likes", 1, 20, 0.7, 1.9)], "args": {"run": "longer"}}
    paths = []
    for i, part in enumerate((old, new, more, longer)):
        paths.append(tmp_path / f"part{i}.json")
        paths[-1].write_text(json.dumps({"benchmark": "bench_alignment", **part}))
    out = merge([str(p) for p in paths], tmp_path, "merged")
    by = {(s["method"], s["labels"]): s for s in out["summary"]}
    # the old seed-0 row is gone; seed 2 comes from the third file; the fourth
    # replaces seed 1's 20-label row and adds its 30-label one, keeping its 10
    assert by[("eig_likes", 20)]["preferred_fraction"] == pytest.approx((0.95 + 0.7 + 0.65) / 3)
    assert by[("eig_likes", 20)]["seeds_meeting_target"] == "1/3"
    assert by[("eig_likes", 30)]["preferred_fraction"] == pytest.approx(0.9)
    assert by[("papa", 20)]["seeds_meeting_target"] == "0/1"
    assert out["within20"] == {"eig_likes": 1, "papa": 0}
    assert out["labels_to_75"]["eig_likes"] == [10, 10, None]
    merged = json.loads((tmp_path / "merged.json").read_text())["rows"]
    assert [r["labels"] for r in merged if r["seed"] == 1] == [10, 20, 30]  # in order of labels
    assert set(METRICS) <= set(json.loads((tmp_path / "merged.json").read_text())["summary"][0])
    assert (tmp_path / "merged.png").stat().st_size > 0


def test_queries_arms_map_to_models_and_fit_options():
    from benchmarks.bench_queries import REFINE_STEPS, fit_options, make_model

    assert make_model("eig:refined", 8, 1.0).rationality is None  # learned, as the default arm
    assert fit_options("eig:refined") == {"refine_steps": REFINE_STEPS} and REFINE_STEPS > 0
    assert fit_options("eig") == {} and fit_options("random:known") == {}
    assert make_model("thompson:known", 8, 2.0).rationality == 2.0
    scaled = make_model("eig:scaled", 4, 2.0)
    assert scaled.rationality is None and scaled.prior_scale == 0.5  # 1 / sqrt(d)
    with pytest.raises(ValueError, match="refined"):
        make_model("eig:other", 8, 1.0)


def _fake_runs(seed: int, count: int, T: int) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    runs = []
    for _ in range(count):
        align = torch.rand(T, generator=g, dtype=torch.float64).cumsum(0) / T * 1.6
        runs.append({
            "alignment": align.tolist(), "log_loss": torch.rand(T, generator=g).tolist(),
            "regret": torch.rand(T, generator=g).tolist(),
            "information_bits": [math.nan] + torch.rand(T - 1, generator=g).tolist(),
            "seconds_per_query": torch.rand(T - 1, generator=g).tolist(),
            "select_seconds": torch.rand(T - 1, generator=g).tolist(),
        })
    return runs


def test_queries_merge_pools_an_arm_run_on_disjoint_seeds(tmp_path):
    from benchmarks.bench_queries import merge, parse_args, summarize

    T = 12
    runs = {100: _fake_runs(0, 5, T), 105: _fake_runs(1, 3, T), 108: _fake_runs(2, 4, T)}
    paths = []
    for first, rs in runs.items():
        cfg = vars(parse_args(["--seed", str(first), "--seeds", str(len(rs)), "--queries", str(T)]))
        part = {"benchmark": "bench_queries", "config": cfg, "protocol": {"d8_r1": {"eig": summarize(rs, T)}},
                "speed": None}
        if first == 105:  # a second arm on these seeds only: merged as before, not pooled
            part["protocol"]["d8_r1"]["random"] = summarize(rs, T)
        paths.append(tmp_path / f"part{first}.json")
        paths[-1].write_text(json.dumps(part))
    args = parse_args(["--merge", *map(str, paths), "--name", "pooled", "--out", str(tmp_path)])
    pooled = merge(args.merge, args)["protocol"]["d8_r1"]
    direct = summarize([r for rs in runs.values() for r in rs], T)
    eig = pooled["eig"]
    assert eig["num_runs"] == 12 and eig["seeds"] == [[100, 104], [105, 107], [108, 111]]
    for key in ("alignment", "alignment_se", "log_loss_se", "regret", "expected_bits_curve"):
        assert eig[key] == pytest.approx(direct[key], abs=2e-5), key
    for key in ("queries_to_0.9", "never_reached", "mean_queries_to_0.9_censored"):
        assert eig[key] == direct[key]
    for key in ("expected_bits_per_query", "seconds_per_query"):
        assert eig[key] == pytest.approx(direct[key])
    assert pooled["random"]["num_runs"] == 3 and pooled["random"]["seeds"] == [[105, 107]]
    assert "| 12 (seeds 100-111) |" in (tmp_path / "pooled.md").read_text()
    # a pooled file pools again with further seeds
    cfg = vars(parse_args(["--seed", "112", "--seeds", "2", "--queries", str(T)]))
    more = {"config": cfg, "protocol": {"d8_r1": {"eig": summarize(_fake_runs(3, 2, T), T)}}}
    (tmp_path / "more.json").write_text(json.dumps(more))
    args = parse_args(["--merge", str(tmp_path / "pooled.json"), str(tmp_path / "more.json"), "--name", "more",
                       "--out", str(tmp_path)])
    assert merge(args.merge, args)["protocol"]["d8_r1"]["eig"]["num_runs"] == 14
    assert "| 14 (seeds 100-113) |" in (tmp_path / "more.md").read_text()
    # the same seeds twice: the later file replaces; overlapping seeds are refused
    args = parse_args(["--merge", str(paths[0]), str(paths[0]), "--name", "again", "--out", str(tmp_path)])
    assert merge(args.merge, args)["protocol"]["d8_r1"]["eig"]["num_runs"] == 5
    overlap = json.loads(paths[1].read_text())
    overlap["config"]["seed"] = 103
    (tmp_path / "overlap.json").write_text(json.dumps(overlap))
    args = parse_args(["--merge", str(paths[0]), str(tmp_path / "overlap.json"), "--name", "bad",
                       "--out", str(tmp_path)])
    with pytest.raises(InputDataError, match=r"seeds 100-104 and 103-105"):
        merge(args.merge, args)


def test_queries_merge_refuses_files_of_another_protocol(tmp_path):
    from benchmarks.bench_queries import merge, parse_args, summarize

    paths = []
    for first, T, arm in ((0, 12, "eig"), (0, 8, "random")):  # another horizon: one table cannot hold both
        cfg = vars(parse_args(["--seed", str(first), "--seeds", "3", "--queries", str(T)]))
        part = {"config": cfg, "protocol": {"d8_r1": {arm: summarize(_fake_runs(first, 3, T), T)}}}
        paths.append(tmp_path / f"{arm}.json")
        paths[-1].write_text(json.dumps(part))
    args = parse_args(["--merge", *map(str, paths), "--name", "bad", "--out", str(tmp_path)])
    with pytest.raises(InputDataError, match="queries = 12"):
        merge(args.merge, args)


def test_queries_and_alignment_check_their_seeds_and_labels():
    from benchmarks.bench_queries import parse_args

    with pytest.raises(InputDataError, match="--seeds"):
        parse_args(["--seeds", "0"])
    with pytest.raises(InputDataError, match="--botorch-seeds"):
        parse_args(["--botorch-seeds", "0"])
    assert parse_args(["--botorch-seeds", "0", "--botorch", ""]).botorch_seeds == 0  # no BoTorch arm: fine
    from benchmarks.common import RESULTS

    assert parse_args(["--tiny"]).out == str(RESULTS / "tmp")  # tiny runs never touch the committed results
    from benchmarks.bench_alignment import main as alignment

    with pytest.raises(InputDataError, match="--labels"):
        alignment(["--labels", "5", "-1"])


def test_papa_online_stops_at_every_checkpoint(monkeypatch):
    import types

    import benchmarks.bench_finetune as bf

    shown = []
    monkeypatch.setattr(bf, "sample", lambda model, n, **kw: types.SimpleNamespace(images=torch.zeros(n, 1, 8, 8)))
    monkeypatch.setattr(bf, "papa_finetune", lambda model, images, signs, **kw: shown.append(images.shape[0]) or model)
    monkeypatch.setattr(bf, "_row", lambda name, labels, images, seconds: {"labels": labels})
    person = types.SimpleNamespace(rate=lambda images: torch.ones(images.shape[0]))
    args = types.SimpleNamespace(papa_labels=[60, 25], papa_round=10, steps=2, seed=0, papa_steps=1, papa_cutoff=0.0,
                                 papa_batch=4, num_samples=4)
    rows = bf.papa_online(object(), person, args, lr=1e-4, regularizer=1.0)
    assert [r["labels"] for r in rows] == [25, 60]
    assert shown == [10, 10, 5, 10, 10, 10, 5]


def test_run_all_runs_the_named_benchmarks(tmp_path, monkeypatch):
    from benchmarks import run_all

    called = []
    import benchmarks.bench_inference as bi

    monkeypatch.setattr(bi, "main", lambda argv: called.append(argv))
    assert run_all.main(["bench_inference", "--tiny"]) == ["bench_inference"]
    assert called == [["--tiny"]]
    with pytest.raises(SystemExit):
        run_all.main(["bench_nothing"])


def test_calibration_tiny_writes_the_table_and_both_figures_reproducibly(tmp_path):
    from benchmarks.bench_calibration import main

    tables = []
    for run in ("a", "b"):
        rows = main(["--tiny", "--methods", "laplace", "laplace_refined", "--out", str(tmp_path / run)])
        assert [r["method"] for r in rows] == ["laplace", "laplace_refined"]
        payload = json.loads((tmp_path / run / "bench_calibration_tiny.json").read_text())
        assert payload["args"]["tiny"] is True and payload["args"]["datasets"] == 4
        assert len(payload["raw"]["laplace"]["ranks"]["w"]) == 4  # 4 data sets x d=2
        for name in ("ranks", "reliability"):
            assert (tmp_path / run / f"bench_calibration_tiny_{name}.png").stat().st_size > 0
        table = (tmp_path / run / "bench_calibration_tiny.md").read_text()
        assert "| cov50_w | cov90_w |" in table and "sbc_p_rationality" in table
        tables.append([{k: v for k, v in r.items() if not k.endswith("_s") and k not in ("s_per_fit", "s_median")}
                       for r in payload["rows"]])
    for first, second in zip(*tables):  # same seed, same figures (to the last bits of the refined fits' sums)
        assert first.keys() == second.keys() and first["method"] == second["method"]
        assert {k: v for k, v in first.items() if k != "method"} == pytest.approx(
            {k: v for k, v in second.items() if k != "method"}, rel=1e-9)
    for row in tables[0]:
        assert 0.0 <= row["cov50_w"] <= row["cov90_w"] <= 1.0 and 0.0 <= row["ece"] <= 1.0


def test_calibration_refuses_bad_options_before_any_fit(monkeypatch, tmp_path):
    import benchmarks.bench_calibration as bc

    def started(*args, **kwargs):
        raise AssertionError("bench_calibration started fitting before refusing the option")

    monkeypatch.setattr(bc, "simulation_based_calibration", started)
    for argv, option in ((["--methods", "bogus"], "--methods"), (["--datasets", "0"], "--datasets"),
                         (["--sites", "v"], "--sites"), (["--num-bins", "1"], "--num-bins"),
                         (["--rank-draws", "0"], "--rank-draws")):
        for tiny in ([], ["--tiny"]):
            with pytest.raises(InputDataError, match=option):
                bc.main([*tiny, *argv, "--out", str(tmp_path)])


ROWS_OF_ONE_REPEAT = {  # bench_gp's row as it was before --repeats: one repeat keeps it
    "m", "n", "oracle_log_loss", "gp_fit_s", "gp_update_s", "gp_log_loss", "gp_peak_rss_gb", "pairwise_fit_s",
    "pairwise_update_s", "pairwise_log_loss", "fit_speedup", "update_speedup", "log_loss_gp_minus_pairwise"}


def test_gp_repeats_record_every_time_and_the_speedup_range(tmp_path):
    # README's "2.7-7.2x across runs" came from runs no file held: --repeats records them all.
    from benchmarks.bench_gp import main

    main(["--tiny", "--out", str(tmp_path / "one")])
    (one,) = json.loads((tmp_path / "one" / "bench_gp_tiny.json").read_text())["rows"]
    assert set(one) == ROWS_OF_ONE_REPEAT and one["fit_speedup"] == one["pairwise_fit_s"] / one["gp_fit_s"]

    main(["--tiny", "--repeats", "2", "--out", str(tmp_path / "two")])
    payload = json.loads((tmp_path / "two" / "bench_gp_tiny.json").read_text())
    assert payload["args"]["repeats"] == 2
    (row,) = payload["rows"]
    for model in ("gp", "pairwise"):
        assert len(row[f"{model}_fit_s_repeats"]) == 2
        assert [min(times) for times in row[f"{model}_fit_times_s"]] == row[f"{model}_fit_s_repeats"]  # best of each
        assert row[f"{model}_fit_s"] == pytest.approx(sum(row[f"{model}_fit_s_repeats"]) / 2)  # median of two
    ratios = [p / g for p, g in zip(row["pairwise_fit_s_repeats"], row["gp_fit_s_repeats"])]
    assert row["fit_speedup_repeats"] == pytest.approx(ratios)
    assert (row["fit_speedup_min"], row["fit_speedup_max"]) == (min(ratios), max(ratios))
    assert row["fit_speedup"] == pytest.approx(sum(ratios) / 2)
    assert row["gp_log_loss"] == one["gp_log_loss"] and row["pairwise_log_loss"] == one["pairwise_log_loss"]
    table = (tmp_path / "two" / "bench_gp_tiny.md").read_text()
    assert "| fit_speedup | fit_speedup_min | fit_speedup_max |" in table
    assert "| m | repeat | gp_fit_s | pairwise_fit_s | fit_speedup |" in table
    assert table.count(f"| {row['m']} | 1 |") == 1 and table.count(f"| {row['m']} | 2 |") == 1


def test_gp_repeats_below_one_are_refused_before_any_fit(monkeypatch, tmp_path):
    import benchmarks.bench_gp as bg

    def started(*args, **kwargs):
        raise AssertionError("bench_gp started before refusing --repeats")

    monkeypatch.setattr(bg, "_problem", started)
    monkeypatch.setattr(bg, "fit", started)
    for tiny in ([], ["--tiny"]):
        with pytest.raises(InputDataError, match="--repeats: expected an integer >= 1, got 0"):
            bg.main([*tiny, "--repeats", "0", "--out", str(tmp_path)])


def test_finetune_records_which_model_it_tuned_not_a_local_path(tmp_path):
    # finetune.json said "checkpoint": "/tmp/ft_ckpt": a folder of the machine that ran it.
    import hashlib
    import shutil

    from benchmarks.bench_finetune import ROOT, checkpoint_identity, main
    from papa_bayes.diffusion import DEFAULT_CHECKPOINT

    shipped = "papa_bayes/diffusion/checkpoints/digits_unet"
    assert checkpoint_identity(None) == shipped
    assert checkpoint_identity(ROOT / "benchmarks" / ".." / shipped) == shipped  # given absolute, still relative
    copy = shutil.copytree(DEFAULT_CHECKPOINT, tmp_path / "ft_ckpt")
    weights = (copy / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    assert checkpoint_identity(copy) == f"ft_ckpt (UNet weights sha256 {hashlib.sha256(weights).hexdigest()[:12]})"

    result = main(["--tiny", "--checkpoint", str(ROOT / shipped), "--out", str(tmp_path / "in")])
    assert result["checkpoint"] == shipped
    assert json.loads((tmp_path / "in" / "finetune.json").read_text())["checkpoint"] == shipped
    assert f"base model {shipped};" in (tmp_path / "in" / "finetune.md").read_text()
    outside = main(["--tiny", "--checkpoint", str(copy), "--out", str(tmp_path / "out")])
    assert outside["checkpoint"] == checkpoint_identity(copy) and str(tmp_path) not in outside["checkpoint"]


def _speed_section(pool_size: int) -> dict:
    """A bench_queries speed section as speed() writes it (figures made up)."""
    t = {"min_s": 0.01, "median_s": 0.02}
    steps = ("update", "update_refined", "select_eig_all_pairs", "round_eig", "round_region",
             "select_eig_exhaustive_mc")
    return {"pool_size": pool_size, "num_draws": 32, "threads": 1,
            "m=10": {**{k: t for k in steps}, "botorch": {"fit": t, "bald_30_pairs": t}}}


def test_queries_merge_takes_the_protocol_settings_from_a_file_that_ran_it(tmp_path):
    # A speed-only part (--skip-protocol) listed first gave the merge its --queries (6 for curves of 4): the
    # pooled censored means counted a miss as 7, the columns read align@6 and markdown() raised IndexError.
    from benchmarks.bench_queries import merge, parse_args, summarize

    T = 4
    runs = {0: _fake_runs(5, 3, T), 3: _fake_runs(6, 3, T)}
    direct = summarize([r for rs in runs.values() for r in rs], T)
    assert direct["never_reached"] > 0  # the censored mean depends on the horizon
    paths = []
    for first, rs in runs.items():
        cfg = vars(parse_args(["--skip-speed", "--seed", str(first), "--seeds", "3", "--queries", str(T)]))
        part = {"benchmark": "bench_queries", "config": cfg, "protocol": {"d8_r1": {"eig": summarize(rs, T)}},
                "speed": None}
        paths.append(tmp_path / f"part{first}.json")
        paths[-1].write_text(json.dumps(part))
    speed_cfg = vars(parse_args(["--skip-protocol", "--queries", "6", "--pool-size", "30"]))
    (tmp_path / "speed.json").write_text(json.dumps(
        {"benchmark": "bench_queries", "config": speed_cfg, "protocol": {}, "speed": _speed_section(30)}))
    for i, order in enumerate(([tmp_path / "speed.json", *paths], [*paths, tmp_path / "speed.json"])):
        args = parse_args(["--merge", *map(str, order), "--name", f"merged{i}", "--out", str(tmp_path)])
        result = merge(args.merge, args)
        assert result["config"]["queries"] == T and result["config"]["pool_size"] == 500  # the protocol's
        eig = result["protocol"]["d8_r1"]["eig"]
        assert eig["mean_queries_to_0.9_censored"] == direct["mean_queries_to_0.9_censored"]
        assert result["speed"]["pool_size"] == 30
        table = (tmp_path / f"merged{i}.md").read_text()
        assert f"align@{T} |" in table and "align@6" not in table
        assert "Pool 500 N(0, I) items" in table and "Pool 30 items = 435 pairs" in table  # each section its own


def test_queries_merge_refuses_liked_set_runs_of_another_pool_or_draws(tmp_path):
    # liked_set_run reads --pool-size and --num-samples: runs of different ones were pooled into one table.
    from benchmarks.bench_queries import merge, parse_args

    liked = {"eig": {"num_runs": 1, "preferred": [0.5] * 4, "liked_entropy_bits": [1.0] * 4, "both_liked_share": 0.0,
                     "same_level_share": 0.5}}
    for option, value, key in (("--pool-size", "30", "pool_size"), ("--num-samples", "16", "num_samples")):
        paths = []
        for i, extra in enumerate(([], [option, value])):
            cfg = vars(parse_args(["--tiny", "--skip-protocol", "--skip-speed", "--seed", str(i), *extra]))
            paths.append(tmp_path / f"liked{key}{i}.json")
            paths[-1].write_text(json.dumps({"benchmark": "bench_queries", "config": cfg, "protocol": {},
                                             "liked_set": liked}))
        args = parse_args(["--merge", *map(str, paths), "--name", "bad", "--out", str(tmp_path)])
        with pytest.raises(InputDataError, match=f"{key} = "):
            merge(args.merge, args)


def test_queries_noiseless_user_runs_and_known_arms_refuse_it(tmp_path):
    # --rationalities inf (a noiseless user, as the help says) raised OverflowError seeding the problem.
    from benchmarks.bench_queries import main, make_problem, parse_args

    w, pool, (a, b) = make_problem(3, math.inf, 0, 20, 10)
    assert pool.shape == (20, 3) and a.shape == b.shape == (10, 3)
    assert not torch.equal(make_problem(3, 1.0, 0, 20, 10)[1], pool)
    for strategies in ("random:known", "eig,thompson:known"):  # LinearReward refuses an infinite rationality
        with pytest.raises(InputDataError, match="--rationalities: expected finite rationalities with ':known' arms"):
            parse_args(["--rationalities", "1,inf", "--strategies", strategies])
    for far in ("1e4", "1e-4"):  # outside LinearReward's range for a fixed rationality: refused before any run
        with pytest.raises(InputDataError, match=r"--rationalities: expected rationalities in \[0.001, 1000\]"):
            parse_args(["--rationalities", f"1,{far}", "--strategies", "eig:known"])
    assert parse_args(["--rationalities", "1e4", "--strategies", "eig"]).rationalities == "1e4"
    result = main(["--tiny", "--rationalities", "inf", "--strategies", "random", "--botorch", "", "--skip-speed",
                   "--liked-set-seeds", "0", "--out", str(tmp_path)])
    assert list(result["protocol"]) == ["d3_rinf"] and len(result["protocol"]["d3_rinf"]["random"]["alignment"]) == 4


def test_queries_default_out_is_the_results_folder_wherever_it_runs(tmp_path, monkeypatch):
    # It was the relative "benchmarks/results": from another folder, results landed there.
    from benchmarks.bench_queries import parse_args
    from benchmarks.common import RESULTS

    monkeypatch.chdir(tmp_path)
    assert parse_args([]).out == str(RESULTS) and parse_args(["--tiny"]).out == str(RESULTS / "tmp")
    assert parse_args(["--out", "x"]).out == "x"


@pytest.mark.parametrize("name", ["a/b", "../up", "", ".."])
def test_queries_and_alignment_refuse_a_name_that_is_a_path(name, tmp_path):
    # --name a/b ran the whole benchmark, then failed writing <out>/a/b.json (FileNotFoundError).
    from benchmarks.bench_alignment import main as alignment
    from benchmarks.bench_queries import parse_args

    (tmp_path / "part.json").write_text(json.dumps({"benchmark": "bench_alignment", "rows": [], "args": {}}))
    for argv in ([], ["--merge", str(tmp_path / "part.json")]):
        with pytest.raises(InputDataError, match="--name: expected a file stem without a path separator"):
            parse_args([*argv, "--name", name, "--out", str(tmp_path)])
        with pytest.raises(InputDataError, match="--name: expected a file stem"):
            alignment([*argv, "--name", name, "--out", str(tmp_path)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["part.json"]


def _alignment_row(method: str, seed: int, labels: int) -> dict:
    return {"method": method, "seed": seed, "labels": labels, "preferred_fraction": 0.8, "judge_share": 0.9,
            "precision": 0.9, "recall": 0.2, "liked_class_entropy": 1.9}


def _alignment_part(method: str, seed: int, **options) -> dict:
    """A bench_alignment result of one run of ``method`` on ``seed`` with the defaults' options but ``options``."""
    args = {"seeds": [seed], "labels": [0, 20], "methods": [method], "eval_samples": 256, "papa_steps": 60,
            "features": "both", "exploration": None, "filter_quantile": None, "tiny": False, "merge": None,
            "name": "bench_alignment", "out": None, **options}
    return {"benchmark": "bench_alignment", "rows": [_alignment_row(method, seed, n) for n in (0, 20)], "args": args}


def test_alignment_merge_refuses_runs_of_another_protocol_or_another_benchmark(tmp_path):
    # Runs of other --eval-samples, --features, ... were merged into one table without a word; a bench_gp
    # result (it has "rows" too) failed with KeyError 'seed'.
    from benchmarks.bench_alignment import main

    def merged(*parts, name="merged"):
        paths = []
        for part in parts:
            paths.append(tmp_path / f"part{len(list(tmp_path.glob('part*.json')))}.json")
            paths[-1].write_text(json.dumps(part))
        return main(["--merge", *map(str, paths), "--name", name, "--out", str(tmp_path / "out")])

    base = _alignment_part("eig_likes", 0)
    for option, value, method in (("eval_samples", 128, "eig_likes"), ("tiny", True, "papa"),
                                  ("features", "midblock", "eig_likes"), ("exploration", 0.2, "region_likes"),
                                  ("filter_quantile", 0.3, "eig_likes")):
        with pytest.raises(InputDataError, match=fr"--merge \(.*part\d+.json\): expected {option} = .* as in "):
            merged(base, _alignment_part(method, 1, **{option: value}))
    with pytest.raises(InputDataError, match="expected papa_steps = 60"):
        merged(_alignment_part("papa", 0), _alignment_part("papa", 1, papa_steps=30))
    # an option a method does not read may differ: PAPA reads no reward features, sessions no PAPA steps
    mixed = merged(base, _alignment_part("papa", 1, features="midblock", papa_steps=30, exploration=0.2))
    assert mixed["labels_to_75"] == {"eig_likes": [0], "papa": [0]}
    # a merged file (any --name) merges again, its runs checked one by one
    merged(base, _alignment_part("eig_pairs", 0), name="pooled")
    pooled = json.loads((tmp_path / "out" / "pooled.json").read_text())
    assert pooled["benchmark"] == "bench_alignment"
    assert merged(pooled, _alignment_part("eig_likes", 2))["labels_to_75"] == {"eig_likes": [0, 0], "eig_pairs": [0]}
    with pytest.raises(InputDataError, match="expected eval_samples = 256"):
        merged(pooled, _alignment_part("eig_likes", 2, eval_samples=64))
    gp = {"benchmark": "bench_gp", "rows": [{"m": 40, "n": 20}], "args": {"tiny": True}}
    with pytest.raises(InputDataError, match=r"--merge: expected a bench_alignment result file, got .*part\d+.json "
                                             r"\(benchmark 'bench_gp'\)"):
        merged(base, gp)


def test_alignment_tiny_merge_never_writes_over_the_committed_results(tmp_path, monkeypatch):
    # --tiny --merge without --out wrote <results>/bench_alignment.*, as a full merge does.
    import benchmarks.bench_alignment as ba

    written = []
    monkeypatch.setattr(ba, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(ba, "report", lambda curves, rows, labels, args, out, name: written.append((out, name)) or {})
    (tmp_path / "part.json").write_text(json.dumps(_alignment_part("eig_likes", 0, tiny=True)))
    ba.main(["--tiny", "--merge", str(tmp_path / "part.json")])
    assert written == [(tmp_path / "results" / "tmp", "bench_alignment_tiny")]
    ba.main(["--tiny", "--merge", str(tmp_path / "part.json"), "--name", "mine", "--out", str(tmp_path / "o")])
    assert written[-1] == (tmp_path / "o", "mine")  # given explicitly: kept


def test_calibration_checks_bins_and_rank_draws_against_the_draws_each_fit_keeps(monkeypatch, tmp_path):
    # Both failed after the first method's whole run: --num-bins above the possible ranks, --rank-draws above the
    # draws a fit keeps (Laplace, SVI: --num-samples; NUTS: 2 chains x --num-samples).
    import benchmarks.bench_calibration as bc

    def started(*args, **kwargs):
        raise AssertionError("started")

    monkeypatch.setattr(bc, "simulation_based_calibration", started)
    for argv, message in (
        (["--rank-draws", "19", "--num-bins", "21"], "--num-bins: expected at most --rank-draws + 1 = 20"),
        (["--num-samples", "40", "--rank-draws", "41"],
         "--rank-draws: expected at most the 40 draws a laplace fit keeps"),
        (["--methods", "svi", "--num-samples", "1000", "--rank-draws", "1001"],
         "at most the 1000 draws a svi fit keeps"),
        (["--methods", "nuts", "--num-samples", "40", "--rank-draws", "81"], "at most the 80 draws a nuts fit keeps"),
        (["--methods", "nuts", "--num-samples", "3", "--rank-draws", "2"], "--num-samples: expected an integer >= 4"),
    ):
        for tiny in ([], ["--tiny"]):
            with pytest.raises(InputDataError, match=message.replace("(", r"\(").replace("+", r"\+")):
                bc.main([*tiny, *argv, "--out", str(tmp_path)])
    with pytest.raises(InputDataError, match="at most the 1000 draws a nuts fit keeps"):  # fit()'s default: 2 x 500
        bc.main(["--methods", "nuts", "--rank-draws", "1001", "--out", str(tmp_path)])
    for argv in (["--methods", "nuts", "--num-samples", "40", "--rank-draws", "80"],  # NUTS: both chains' draws
                 ["--rank-draws", "19", "--num-bins", "20"], ["--methods", "laplace", "--rank-draws", "1000"]):
        with pytest.raises(AssertionError, match="started"):  # accepted: the fits begin
            bc.main([*argv, "--out", str(tmp_path)])


def test_calibration_times_each_method_after_an_untimed_first_fit(monkeypatch, tmp_path):
    # s_per_fit held each method's first fit in the process (Laplace: 0.64 s against 0.03 s for the others).
    import benchmarks.bench_calibration as bc

    calls, real = [], bc.simulation_based_calibration

    def recorded(model, items, m, num_datasets, **kwargs):
        calls.append((kwargs["method"], num_datasets))
        return real(model, items, m, num_datasets, **kwargs)

    monkeypatch.setattr(bc, "simulation_based_calibration", recorded)
    rows = bc.main(["--tiny", "--methods", "laplace", "svi", "--out", str(tmp_path)])
    assert calls == [("laplace", 1), ("laplace", 4), ("svi", 1), ("svi", 4)]
    raw = json.loads((tmp_path / "bench_calibration_tiny.json").read_text())["raw"]
    for row in rows:
        assert row["first_fit_s"] > 0 and len(raw[row["method"]]["seconds"]) == 4
        assert row["s_per_fit"] == pytest.approx(sum(raw[row["method"]]["seconds"]) / 4)


def test_inference_fits_every_method_once_untimed_before_timing(monkeypatch, tmp_path):
    # Only Laplace was warmed up: SVI's first timed fit took 1.1 s against 0.12 s.
    import benchmarks.bench_inference as bi

    calls, real = [], bi.fit

    def recorded(model, data, **kwargs):
        calls.append((kwargs["method"], data.num_observations))
        return real(model, data, **kwargs)

    monkeypatch.setattr(bi, "fit", recorded)
    rows = bi.main(["--tiny", "--methods", "laplace", "svi", "--out", str(tmp_path)])
    first = {method: next(n for m, n in calls if m == method) for method in ("laplace", "svi")}
    assert first == {"laplace": 5, "svi": 5}  # the small warm-up problem, not the timed m = 30
    assert [(m, n) for m, n in calls if n == 30] == [("laplace", 30), ("svi", 30)]
    assert calls.index(("svi", 5)) < calls.index(("laplace", 30))  # every warm-up before any timed fit
    payload = json.loads((tmp_path / "bench_inference_tiny.json").read_text())
    assert set(payload["first_fit_s"]) == {"laplace", "svi"} and [r["method"] for r in rows] == ["laplace", "svi"]


def test_gp_notes_say_the_threads_it_ran_with(tmp_path):
    # The Markdown said "one thread for both models" whatever --threads was.
    from benchmarks.bench_gp import main

    main(["--tiny", "--threads", "2", "--out", str(tmp_path)])
    notes = (tmp_path / "bench_gp_tiny.md").read_text()
    assert "2 threads for both models" in notes and "one thread" not in notes


def test_alignment_runs_a_repeated_seed_or_method_once(monkeypatch, tmp_path):
    # `--seeds 0 0` ran seed 0 twice and wrote its rows twice: the summary counted one curve ("x/1") while the
    # JSON rows held two, and a merge of that file counted both ("2/2" seeds meeting the target for one seed).
    import benchmarks.bench_alignment as ba

    calls = []

    def curve(method, seed, labels):
        calls.append((method, seed))
        return [{"labels": n, "preferred_fraction": 0.95, "judge_share": 0.9, "precision": 0.9, "recall": 0.2,
                 "liked_class_entropy": 1.9} for n in labels]

    monkeypatch.setattr(ba, "make_setup", lambda **kwargs: None)
    monkeypatch.setattr(ba, "discard_session", lambda session: None)
    monkeypatch.setattr(ba, "run_papa", lambda setup, label_counts, seed, **kw: curve("papa", seed, label_counts))
    monkeypatch.setattr(ba, "run_session", lambda setup, checkpoints, seed, **kw: (curve("session", seed, checkpoints),
                                                                                    None, None))
    ba.main(["--seeds", "0", "0", "--methods", "papa", "papa", "eig_likes", "--labels", "5", "10",
             "--eval-samples", "8", "--out", str(tmp_path)])
    assert calls == [("papa", 0), ("session", 0)]
    payload = json.loads((tmp_path / "bench_alignment.json").read_text())
    keys = [(r["method"], r["seed"], r["labels"]) for r in payload["rows"]]
    assert len(keys) == len(set(keys)) == 4
    assert payload["args"]["seeds"] == [0] and payload["args"]["methods"] == ["papa", "eig_likes"]
    merged = ba.merge([str(tmp_path / "bench_alignment.json")], tmp_path, "merged")
    assert {s["seeds_meeting_target"] for s in merged["summary"]} == {"1/1"}


def test_queries_merge_names_a_pooled_arm_it_cannot_partly_replace(tmp_path):
    # An arm pooled over seeds 0-1 and 2-3, merged with a rerun of seeds 0-1 alone, was refused as "expected runs
    # of one arm on identical or disjoint seeds, got seeds 0-1 and 0-1": identical as far as the message showed.
    from benchmarks.bench_queries import merge, parse_args

    def part(name, seeds):
        summary = {"num_runs": sum(hi - lo + 1 for lo, hi in seeds), "seeds": seeds, "alignment": [0.5, 0.9],
                   "alignment_se": [0.1, 0.1], "log_loss": [0.6, 0.5], "log_loss_se": [0.0, 0.0], "regret": [1.0, 0.5],
                   "regret_se": [0.0, 0.0], "queries_to_0.9": [2] * sum(hi - lo + 1 for lo, hi in seeds),
                   "never_reached": 0, "mean_queries_to_0.9_reached": 2, "mean_queries_to_0.9_censored": 2,
                   "expected_bits_per_query": 0.5, "expected_bits_curve": [0.5], "seconds_per_query": 0.1,
                   "select_seconds": 0.05}
        cfg = vars(parse_args(["--tiny", "--queries", "2", "--seed", str(seeds[0][0])]))
        path = tmp_path / f"{name}.json"
        payload = {"benchmark": "bench_queries", "config": cfg, "protocol": {"d3_r1": {"eig": summary}}}
        path.write_text(json.dumps(payload))
        return str(path)

    pooled, rerun = part("pooled", [[0, 1], [2, 3]]), part("rerun", [[0, 1]])
    args = parse_args(["--merge", pooled, rerun, "--name", "bad", "--out", str(tmp_path)])
    with pytest.raises(InputDataError) as refused:
        merge(args.merge, args)
    message = str(refused.value)
    assert "0-1, 2-3" in message and "pooled" in message
    # the same seeds as the pooled arm, or disjoint ones, still merge
    again = part("again", [[0, 1], [2, 3]])
    args = parse_args(["--merge", pooled, again, "--name", "ok", "--out", str(tmp_path)])
    assert merge(args.merge, args)["protocol"]["d3_r1"]["eig"]["num_runs"] == 4
