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
        paths[-1].write_text(json.dumps(part))
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
            "seconds_per_query": torch.rand(T - 1, generator=g).tolist(), "select_seconds": torch.rand(T - 1, generator=g).tolist(),
        })
    return runs


def test_queries_merge_pools_an_arm_run_on_disjoint_seeds(tmp_path):
    from benchmarks.bench_queries import merge, parse_args, summarize

    T = 12
    runs = {100: _fake_runs(0, 5, T), 105: _fake_runs(1, 3, T), 108: _fake_runs(2, 4, T)}
    paths = []
    for first, rs in runs.items():
        cfg = vars(parse_args(["--seed", str(first), "--seeds", str(len(rs)), "--queries", str(T)]))
        part = {"benchmark": "bench_queries", "config": cfg, "protocol": {"d8_r1": {"eig": summarize(rs, T)}}, "speed": None}
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
    (tmp_path / "more.json").write_text(json.dumps({"config": cfg, "protocol": {"d8_r1": {"eig": summarize(_fake_runs(3, 2, T), T)}}}))
    args = parse_args(["--merge", str(tmp_path / "pooled.json"), str(tmp_path / "more.json"), "--name", "more", "--out", str(tmp_path)])
    assert merge(args.merge, args)["protocol"]["d8_r1"]["eig"]["num_runs"] == 14
    assert "| 14 (seeds 100-113) |" in (tmp_path / "more.md").read_text()
    # the same seeds twice: the later file replaces; overlapping seeds are refused
    args = parse_args(["--merge", str(paths[0]), str(paths[0]), "--name", "again", "--out", str(tmp_path)])
    assert merge(args.merge, args)["protocol"]["d8_r1"]["eig"]["num_runs"] == 5
    overlap = json.loads(paths[1].read_text())
    overlap["config"]["seed"] = 103
    (tmp_path / "overlap.json").write_text(json.dumps(overlap))
    args = parse_args(["--merge", str(paths[0]), str(tmp_path / "overlap.json"), "--name", "bad", "--out", str(tmp_path)])
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
    assert parse_args(["--tiny"]).out == "benchmarks/results/tmp"  # tiny runs never touch the committed results
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
