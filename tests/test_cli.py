from __future__ import annotations

import io
import sys
from pathlib import Path

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
    # progress: each question is announced before its candidates are drawn (seconds each)
    assert text.index("Question 1 of 5: drawing candidates") < text.index("picture:")
    assert "Question 4 of 5" in text and "Question 5 of 5" not in text  # stopped at the fourth
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
    # Rater 0 began alone (LinearReward); resumed now that rater 1 has answered, the sitting switched to the
    # hierarchical model, pulling rater 0's posterior toward rater 1 (resume now refuses another model).
    back = iter(["2"])
    out = io.StringIO()
    assert label_main(common + ["--labels", "1"], read=lambda _: next(back), write=out) == 0
    assert "Resuming" in out.getvalue() and "rater 0" in out.getvalue()
    with PreferenceStore(store, create=False) as s:
        assert s.num_answers(0) == 4 and s.rater_config(0)["model"].startswith("LinearReward")


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


def test_benchmark_adds_the_working_directory_to_sys_path_once(benchmarks_checkout, capsys):
    """Each call inserted the folder again: a program running benchmarks in turn grew sys.path by one per call."""
    (benchmarks_checkout / "benchmarks" / "bench_noop.py").write_text("def main(argv):\n    pass\n")
    for _ in range(3):
        assert main(["benchmark", "noop"]) == 0
    assert sys.path.count(str(benchmarks_checkout)) == 1


def test_benchmark_run_all_is_reached_by_its_name(monkeypatch, capsys):
    """`papa-bayes benchmark run_all` looked for benchmarks/bench_run_all.py."""
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    with pytest.raises(SystemExit) as info:
        main(["benchmark", "run_all", "--help"])
    assert info.value.code == 0 and "--tiny" in capsys.readouterr().out


def test_label_command_ends_with_recommendations_when_asked(tmp_path):
    import matplotlib.image

    from papa_bayes.labeling import main as label_main

    store, out = tmp_path / "me.db", io.StringIO()
    tiny = ["--store", str(store), "--pool-steps", "4", "--scale", "0.5", "--num-base", "32"]
    answers = iter(["1", "2"])
    assert label_main(tiny + ["--labels", "2", "--recommend", "6"], read=lambda _: next(answers), write=out) == 0
    picture = tmp_path / "me.queries" / "rater0_recommended_after_2_n6.png"
    assert f"recommended: {picture}" in out.getvalue()
    grid = matplotlib.image.imread(picture)  # 6 digits of 8 x 8 pixels, 12 PNG pixels each, in a grid
    assert grid.ndim == 3 and grid.shape[0] >= 96 and grid.shape[1] >= 2 * 96
    with PreferenceStore(store, create=False) as s:
        assert s.num_answers(0) == 2  # recommending asks nothing and stores no answer
    # "only look": no new question, a picture named after the answers so far
    out = io.StringIO()
    assert label_main(tiny + ["--labels", "0", "--recommend", "4"], read=lambda _: "q", write=out) == 0
    assert "picture:" not in out.getvalue() and "Drawing 4 samples steered toward your 2 answers" in out.getvalue()
    looked = tmp_path / "me.queries" / "rater0_recommended_after_2_n4.png"  # beside the first: N is in the name
    assert f"recommended: {looked}" in out.getvalue() and matplotlib.image.imread(looked).shape != grid.shape


def test_label_command_checks_rater_and_scale_before_loading_the_model(tmp_path, monkeypatch):
    import pytest

    import papa_bayes.demo
    from papa_bayes.exceptions import InputDataError
    from papa_bayes.labeling import main as label_main

    def no_model(**kwargs):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(papa_bayes.demo, "make_setup", no_model)
    store = tmp_path / "s.sqlite"
    for args, field in ((["--rater", "-1"], "--rater"), (["--rater", str(2**63)], "--rater"),
                        (["--seed", str(2**32)], "--seed"), (["--scale", "abc"], "--scale"), (["--recommend", "-2"], "--recommend"),
                        (["--labels", "0", "--recommend", "4"], "--recommend: expected answers of rater 0")):
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
        with pytest.raises(InputDataError, match=flag):  # --tiny silently replaced the 0 by its own size
            demo.main([flag, "0", "--tiny", "--out", str(tmp_path / "d")])
    with pytest.raises(InputDataError, match="^--liked:"):  # was named after make_setup's argument, after loading
        demo.main(["--liked", "11", "--out", str(tmp_path / "d")])
    # 1-3 samples failed after a session had run (manifold recall needs more than its 3 neighbours)
    with pytest.raises(InputDataError, match="--eval-samples: expected an integer >= 4, got 3"):
        demo.main(["--eval-samples", "3", "--tiny", "--out", str(tmp_path / "d")])
    assert not (tmp_path / "d").exists()
    # These failed after the model loaded, named strategy/exploration/seed, with --out's session.db deleted.
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "session.db").write_text("an earlier demo's answers")
    for args, field in ((["--strategy", "eigg"], "--strategy"), (["--exploration", "1.5"], "--exploration"),
                        (["--seed", "-1"], "--seed"), (["--out", str(tmp_path / "d" / "session.db")], "--out")):
        with pytest.raises(InputDataError, match=f"^{field}:"):
            demo.main(["--tiny", "--out", str(tmp_path / "d"), *args])
    assert (tmp_path / "d" / "session.db").read_text() == "an earlier demo's answers"


def test_the_demo_leaves_the_process_warning_filters_as_they_were(tmp_path, monkeypatch):
    """main() ignored every UserWarning (PapaBayesWarning among them) for the rest of the process."""
    import warnings

    import papa_bayes.demo as demo
    from papa_bayes.exceptions import PapaBayesWarning

    def run(args):
        warnings.warn("inside the demo", PapaBayesWarning)
        return {}

    monkeypatch.setattr(demo, "_run", run)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert demo.main(["--tiny", "--out", str(tmp_path / "d")]) == {}
        warnings.warn("after the demo", PapaBayesWarning)
    assert [str(w.message) for w in caught] == ["after the demo"]


def test_train_base_needs_an_out_folder_and_names_its_options(tmp_path, capsys):
    """A plain ``train-base`` overwrote the model shipped inside the package; errors named the function's fields."""
    with pytest.raises(SystemExit) as done:
        main(["train-base"])
    assert done.value.code == 2 and "--out" in capsys.readouterr().err
    for args, option in ((["--steps", "0"], "--steps"), (["--batch-size", "-1"], "--batch-size"),
                         (["--feature-samples", "1"], "--feature-samples"), (["--feature-steps", "0"], "--feature-steps")):
        assert main(["train-base", "--out", str(tmp_path / "m"), "--no-progress", *args]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"papa-bayes train-base: error: {option}: expected"), err
    assert not (tmp_path / "m").exists()  # refused before training (the feature options too)
    with pytest.raises(SystemExit):
        main(["train-base", "--help"])
    assert "(default: 3000)" in capsys.readouterr().out


def test_subcommand_help_names_the_subcommand(capsys):
    import pytest

    assert main(["benchmark", "--help"]) == 0
    for argv, usage in ((["benchmark", "inference", "--help"], "usage: papa-bayes benchmark inference"),
                        (["train-base", "--help"], "usage: papa-bayes train-base")):
        with pytest.raises(SystemExit) as done:
            main(argv)
        assert done.value.code == 0
        assert usage in capsys.readouterr().out


@pytest.fixture
def no_model(monkeypatch):
    """Loading the model fails the test: these arguments must be refused before it."""
    import papa_bayes.demo

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(papa_bayes.demo, "make_setup", refuse)


def test_user_errors_are_one_line_on_stderr_before_the_model_loads(tmp_path, capsys, no_model):
    (tmp_path / "folder").mkdir()
    (tmp_path / "notes.txt").write_text("not a store")
    cases = (
        (["--store", str(tmp_path / "s.db"), "--rater", "-1"], "--rater"),
        (["--store", str(tmp_path / "s.db"), "--pool-steps", "0"], "--pool-steps"),
        (["--store", str(tmp_path / "s.db"), "--scale", "nan"], "--scale"),
        (["--store", str(tmp_path / "s.db"), "--strategy", "best"], "--strategy"),
        (["--store", str(tmp_path / "s.db"), "--strategy", "eubo", "--query-type", "rating"], "--strategy"),
        (["--store", str(tmp_path / "folder")], "is a folder"),
        (["--store", str(tmp_path / "notes.txt")], "not a SQLite file"),
        (["--store", str(tmp_path / "typo" / "s.db")], "--store"),
        (["--store", str(tmp_path / "s.db"), "--images", str(tmp_path / "notes.txt")], "--images"),
    )
    for args, message in cases:
        assert main(["label", *args]) == 2, args
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert err.startswith("papa-bayes label: error: ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder", "notes.txt"]  # nothing created


def test_interrupt_while_loading_is_one_line(tmp_path, capsys, monkeypatch):
    import papa_bayes.demo

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(papa_bayes.demo, "make_setup", interrupted)
    assert main(["label", "--store", str(tmp_path / "s.db")]) == 130
    assert capsys.readouterr().err.strip() == "papa-bayes label: interrupted"


def test_benchmark_errors_go_to_stderr_and_list_the_benchmarks(benchmarks_checkout, capsys):
    assert main(["benchmark"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "usage: papa-bayes benchmark NAME" in captured.err
    assert main(["benchmark", "nope"]) == 2
    err = capsys.readouterr().err
    assert "bench_nope.py not found" in err and "needs_dep" in err and "checkout" not in err


def test_label_resume_keeps_the_store_options_and_earlier_pictures(tmp_path, monkeypatch):
    from papa_bayes.exceptions import InputDataError
    from papa_bayes.labeling import main as label_main

    store = tmp_path / "me.db"
    tiny = ["--store", str(store), "--pool-steps", "4", "--scale", "0.5", "--num-base", "32", "--labels", "2"]
    answers = iter(["y", "q"])  # the second question is left unanswered
    label_main(tiny + ["--query-type", "rating", "--features", "pca"], read=lambda _: next(answers), write=io.StringIO())
    first = sorted((tmp_path / "me.queries").glob("*.png"))
    assert len(first) == 2
    shown = first[0].read_bytes()

    def end_of_input(prompt):
        raise EOFError

    out = io.StringIO()  # Ctrl-D at the question asked again on resume
    assert label_main(tiny, read=end_of_input, write=out) == 0
    assert "Stopped" in out.getvalue() and "1 answers stored" in out.getvalue()

    out = io.StringIO()  # the same command without the options: the store's are kept
    label_main(["--store", str(store), "--labels", "1"], read=lambda _: "n", write=out)
    text = out.getvalue()
    assert "Resuming" in text and "1 answers so far" in text and text.index("Resuming") < text.index("picture:")
    with PreferenceStore(store, create=False) as s:
        assert [q.answer for q in s.queries(answered=True)] == ["like", "dislike"]
        assert s.num_features == 8
    pictures = sorted((tmp_path / "me.queries").glob("*.png"))
    assert len(pictures) == 2 and first[0].read_bytes() == shown  # the first sitting's picture is kept

    import papa_bayes.demo

    monkeypatch.setattr(papa_bayes.demo, "make_setup", lambda *a, **k: (_ for _ in ()).throw(AssertionError("model loaded")))
    for args, flag, stored in ((["--query-type", "pair"], "--query-type", "'rating'"),
                               (["--seed", "4"], "--seed", "0"), (["--scale", "auto"], "--scale", "0.5"),
                               (["--rater", "1", "--features", "both"], "--features", "'pca'")):
        with pytest.raises(InputDataError, match=f"{flag}: expected {stored}") as err:
            label_main(["--store", str(store), *args], read=lambda _: "q", write=io.StringIO())
        assert "leave the option out" in str(err.value)


def test_one_rater_answers_in_one_terminal_at_a_time(tmp_path, capsys, no_model):
    import subprocess
    import textwrap

    store = tmp_path / "team.db"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import fcntl, sys
        lock = open({str(store) + ".lock"!r}, "a")
        fcntl.lockf(lock, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 0)  # rater 0 is answering
        print("locked", flush=True)
        sys.stdin.read()
        """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert main(["label", "--store", str(store)]) == 2
        err = capsys.readouterr().err
        assert "Rater 0 is already answering" in err and "--rater" in err
        with pytest.raises(AssertionError, match="model was loaded"):  # rater 1 is free: it gets to the model
            main(["label", "--store", str(store), "--rater", "1"])
    finally:
        holder.communicate("")


def test_label_refuses_another_feature_map_of_the_same_dimension(tmp_path):
    """A store begun through the API (as `papa-bayes demo` writes one) records no label options: a new rater's
    `--features midblock` passed the dimension check (8 = 8) against pixel-PCA items and mixed two spaces."""
    from papa_bayes.demo import make_setup
    from papa_bayes.diffusion.candidates import DiffusionCandidates
    from papa_bayes.exceptions import InputDataError
    from papa_bayes.labeling import main as label_main
    from papa_bayes.session import PreferenceSession
    from papa_bayes.users import CallbackUser

    setup = make_setup(features="pca")
    source = DiffusionCandidates(setup.model, setup.feature_map, setup.guard, pool_steps=4, scale=0.5, num_base=32)
    store = tmp_path / "demo.db"
    PreferenceSession(store, source, CallbackUser(lambda a, b: 0)).close()
    with pytest.raises(InputDataError, match=r"--features: expected the feature map of the items in .*\(pca, "):
        label_main(["--store", str(store), "--rater", "1", "--features", "midblock", "--labels", "0"],
                   read=lambda _: "q", write=io.StringIO())
    with PreferenceStore(store, create=False) as s:
        assert s.rater_config(1) is None  # refused before anything was written
    assert label_main(["--store", str(store), "--rater", "1", "--features", "pca", "--labels", "0"],
                      read=lambda _: "q", write=io.StringIO()) == 0


@pytest.fixture
def no_training(monkeypatch):
    """Training or fitting the feature maps fails the test: these arguments must be refused before either."""
    import papa_bayes.diffusion.train as train

    def started(*args, **kwargs):
        raise AssertionError("train-base started before refusing its options")

    monkeypatch.setattr(train, "_train", started)
    monkeypatch.setattr(train, "fit_default_features", started)


def test_train_base_checks_out_and_feature_samples_before_training(tmp_path, capsys, no_training):
    # Both were found only after the minutes of training: --out naming a file (when the UNet was saved) and
    # --feature-samples below the maps' 8 features ("num_features: expected at most num_samples").
    (tmp_path / "file").write_text("in the way\n")
    for out, args, message in (
        (tmp_path / "file", [], f"--out: expected a folder (or a path where one can be made), got {tmp_path / 'file'} (a file)"),
        (tmp_path / "file" / "m", [], f"({tmp_path / 'file'} is a file)"),
        (tmp_path / "m", ["--feature-samples", "4"], "--feature-samples: expected an integer >= 8, got 4"),
    ):
        assert main(["train-base", "--out", str(out), "--no-progress", *args]) == 2
        err = capsys.readouterr().err
        assert err.startswith("papa-bayes train-base: error: ") and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "m").exists()


def test_train_base_features_only_names_out_and_says_what_it_rewrites(tmp_path, capsys):
    # --features-only on a folder that is no checkpoint said "path: expected ..."; its help spoke of the PCA map only.
    assert main(["train-base", "--features-only", "--out", str(tmp_path / "nowhere"), "--no-progress"]) == 2
    assert capsys.readouterr().err.startswith("papa-bayes train-base: error: --out: expected a checkpoint folder")
    with pytest.raises(SystemExit):
        main(["train-base", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "pca_features/, midblock_features/ and midblock32_features/" in text


def test_python_dash_m_runs_the_command():
    """``python -m papa_bayes`` said "'papa_bayes' is a package and cannot be directly executed"."""
    import subprocess

    done = subprocess.run([sys.executable, "-m", "papa_bayes", "label", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.startswith("usage: papa-bayes label"), done.stderr
