from __future__ import annotations

import io
import sys

import pytest

from papa_bayes.cli import main
from papa_bayes.store import PreferenceStore


def test_help_lists_commands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for cmd in ("demo", "label", "train-base", "benchmark"):
        assert cmd in out


def test_label_command_stores_answers_and_resumes(tmp_path):
    from papa_bayes.labeling import main as label_main

    answers = iter(["1", "x", "2", "t", "q"])  # "x" is refused and asked again
    out = io.StringIO()
    store = tmp_path / "me.db"
    label_main(["--store", str(store), "--labels", "5", "--pool-steps", "4", "--scale", "0.5", "--num-base", "32"], read=lambda _: next(answers), write=out)
    text = out.getvalue()
    assert "picture:" in text and "please answer" in text and "Stopped" in text
    with PreferenceStore(store, create=False) as s:
        got = [q.answer for q in s.queries(answered=True)]
    assert got == ["first", "second", "tie"]
    assert list((tmp_path / "me.queries").glob("*.png"))

    more = iter(["2"])
    out2 = io.StringIO()
    label_main(["--store", str(store), "--labels", "1", "--pool-steps", "4", "--scale", "0.5", "--num-base", "32"], read=lambda _: next(more), write=out2)
    assert "Resuming" in out2.getvalue()
    with PreferenceStore(store, create=False) as s:
        assert [q.answer for q in s.queries(answered=True)] == ["first", "second", "tie", "second"]


def test_label_command_serves_several_raters_from_one_store(tmp_path):
    from papa_bayes.labeling import main as label_main

    store = tmp_path / "team.db"
    common = ["--store", str(store), "--pool-steps", "4", "--scale", "0.5", "--num-base", "32"]
    first = iter(["1", "1", "2"])
    label_main(common + ["--labels", "3"], read=lambda _: next(first), write=io.StringIO())
    second = iter(["2", "2"])
    out = io.StringIO()
    label_main(common + ["--labels", "2", "--rater", "1"], read=lambda _: next(second), write=out)
    assert "Resuming" not in out.getvalue()
    with PreferenceStore(store, create=False) as s:
        assert s.raters() == [0, 1]
        assert [q.answer for q in s.queries(rater=1, answered=True)] == ["second", "second"]
        assert s.num_answers(0) == 3
        assert s.rater_config(1)["model"].startswith("HierarchicalLinearReward")  # pooled with rater 0
    again = iter(["1"])
    out = io.StringIO()
    label_main(common + ["--labels", "1", "--rater", "1"], read=lambda _: next(again), write=out)
    assert "Resuming" in out.getvalue() and "rater 1" in out.getvalue()
    with PreferenceStore(store, create=False) as s:
        assert s.num_answers(1) == 3 and s.num_answers(0) == 3


@pytest.fixture
def benchmarks_checkout(tmp_path, monkeypatch):
    """A checkout whose ``benchmarks/bench_needs_dep.py`` imports a module that is not installed."""
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "__init__.py").write_text("")
    (tmp_path / "benchmarks" / "bench_needs_dep.py").write_text(
        "import papa_bayes_missing_dependency_xyz  # noqa: F401\n\n\ndef main(argv):\n    pass\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    saved = {k: sys.modules.pop(k) for k in list(sys.modules) if k == "benchmarks" or k.startswith("benchmarks.")}
    yield tmp_path
    for k in [k for k in sys.modules if k == "benchmarks" or k.startswith("benchmarks.")]:
        del sys.modules[k]
    sys.modules.update(saved)


def test_benchmark_whose_dependency_is_missing_is_not_reported_missing(benchmarks_checkout, capsys):
    with pytest.raises(ModuleNotFoundError, match="papa_bayes_missing_dependency_xyz"):
        main(["benchmark", "needs_dep"])
    assert main(["benchmark", "no_such_benchmark"]) == 2
    assert "benchmarks/bench_no_such_benchmark.py not found" in capsys.readouterr().err


def test_label_command_checks_rater_and_scale_before_loading_the_model(tmp_path, monkeypatch):
    import pytest

    import papa_bayes.demo
    from papa_bayes.exceptions import InputDataError
    from papa_bayes.labeling import main as label_main

    def no_model(**kwargs):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(papa_bayes.demo, "make_setup", no_model)
    store = tmp_path / "s.sqlite"
    for args, field in ((["--rater", "-1"], "--rater"), (["--scale", "abc"], "--scale")):
        with pytest.raises(InputDataError, match=field):
            label_main(["--store", str(store), *args], read=lambda _: "q", write=io.StringIO())
        assert not store.with_suffix(".queries").exists()


def test_demo_refuses_zero_labels_before_loading_the_model(tmp_path, monkeypatch):
    import pytest

    import papa_bayes.demo as demo
    from papa_bayes.exceptions import InputDataError

    monkeypatch.setattr(demo, "make_setup", lambda *a, **k: (_ for _ in ()).throw(AssertionError("model loaded")))
    for flag in ("--labels", "--eval-samples", "--papa-steps"):
        with pytest.raises(InputDataError, match=flag):
            demo.main([flag, "0", "--out", str(tmp_path / "d")])


def test_subcommand_help_names_the_subcommand(capsys):
    import pytest

    assert main(["benchmark", "--help"]) == 0
    for argv, usage in ((["benchmark", "inference", "--help"], "usage: papa-bayes benchmark inference"),
                        (["train-base", "--help"], "usage: papa-bayes train-base")):
        with pytest.raises(SystemExit) as done:
            main(argv)
        assert done.value.code == 0
        assert usage in capsys.readouterr().out
