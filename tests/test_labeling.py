"""``papa-bayes label`` before its model loads: the store it reads, the strategies it refuses."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest

from papa_bayes.exceptions import InputDataError
from papa_bayes.labeling import main as label_main
from papa_bayes.session import PreferenceSession
from papa_bayes.store import PreferenceStore

sys.path.insert(0, str(Path(__file__).parent))
from session_worker import setup  # noqa: E402


class _ModelLoaded(Exception):
    pass


@pytest.fixture
def opens(monkeypatch):
    """Stops the command where it would load the model; counts the stores it opened until then."""
    import papa_bayes.demo

    def refuse(*args, **kwargs):
        raise _ModelLoaded

    monkeypatch.setattr(papa_bayes.demo, "make_setup", refuse)
    count = []
    original = PreferenceStore.__init__

    def counting(self, *args, **kwargs):
        count.append(args[0] if args else kwargs["path"])
        original(self, *args, **kwargs)

    monkeypatch.setattr(PreferenceStore, "__init__", counting)
    return count


def test_an_existing_store_is_opened_once_to_check_and_read_it(tmp_path, opens):
    store = tmp_path / "s.db"
    source, user, _ = setup()
    PreferenceSession(store, source, user, pool_size=8).run(1, progress_bar=False)
    del opens[:]
    with pytest.raises(_ModelLoaded):  # it got past the store's checks and its options (rater 0's began elsewhere)
        label_main(["--store", str(store), "--rater", "1"], read=lambda _: "q", write=io.StringIO())
    assert opens == [store]  # was opened twice: once to check it, once to read its options
    with pytest.raises(_ModelLoaded):  # a new store: nothing to open before the session creates it
        label_main(["--store", str(tmp_path / "new.db")], read=lambda _: "q", write=io.StringIO())
    assert opens == [store] and not (tmp_path / "new.db").exists()


def test_eubo_is_refused_for_ratings_in_the_same_words_everywhere(tmp_path):
    from papa_bayes.acquisition import select_queries
    from papa_bayes.data import PreferenceData
    from papa_bayes.inference import prior_posterior
    from papa_bayes.models import LinearReward

    source, user, _ = setup()
    with pytest.raises(InputDataError) as by_session:
        PreferenceSession(tmp_path / "a.db", source, user, query_type="rating", strategy="eubo")
    with pytest.raises(InputDataError) as by_command:
        label_main(["--store", str(tmp_path / "b.db"), "--query-type", "rating", "--strategy", "eubo"])
    items = source.items[:6]
    post = prior_posterior(LinearReward(), PreferenceData(items=items), num_samples=16, seed=0)
    with pytest.raises(InputDataError) as by_selection:
        select_queries(post, items, strategy="eubo", query_type="rating")
    fields = [e.value.field for e in (by_session, by_command, by_selection)]
    assert fields == ["strategy", "--strategy", "strategy"]
    assert len({e.value.expected for e in (by_session, by_command, by_selection)}) == 1
    assert "EUBO needs two options" in str(by_command.value)
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_pictures_folder_is_checked_before_the_model_loads(tmp_path, opens):
    """--images under a file failed with NotADirectoryError from TerminalUser, after the model had loaded."""
    (tmp_path / "afile").write_text("")
    with pytest.raises(InputDataError, match="--images: expected a folder for the pictures"):
        label_main(["--store", str(tmp_path / "s.db"), "--images", str(tmp_path / "afile" / "pics")],
                   read=lambda _: "q", write=io.StringIO())


def test_a_terminal_without_a_picture_viewer_goes_on(tmp_path, monkeypatch):
    """--open ended the sitting with FileNotFoundError: 'xdg-open' where no viewer is installed."""
    import contextlib

    import torch

    from papa_bayes.labeling import TerminalUser

    monkeypatch.setenv("PATH", str(tmp_path))  # no xdg-open on it
    monkeypatch.setattr(sys, "platform", "linux")
    out = io.StringIO()
    user = TerminalUser(tmp_path / "pics", read=lambda _: "1", write=out, open_images=True)
    pair = torch.zeros(1, 1, 8, 8), torch.ones(1, 1, 8, 8)
    assert bool(user.compare(*pair)[0][0]) and bool(user.compare(*pair)[0][0])
    assert out.getvalue().count("cannot open pictures here") == 1
    redirected = io.StringIO()  # without write=, prompts go to sys.stdout as it is when they are written
    with contextlib.redirect_stdout(redirected):
        TerminalUser(tmp_path / "pics", read=lambda _: "2").compare(*pair)
    assert "picture:" in redirected.getvalue()


def test_a_resumed_sitting_keeps_the_stores_num_base_and_reads_strategy_aliases():
    from papa_bayes.labeling import _recorded_options

    recorded = _recorded_options({"query_type": "pair", "strategy": "bald", "source": {"num_base": 64, "seed": 3}})
    assert recorded["num_base"] == 64 and recorded["seed"] == 3 and recorded["strategy"] == "eig"


def test_a_lock_file_that_cannot_be_written_is_not_called_another_terminal(tmp_path, monkeypatch):
    """``papa-bayes label`` told a person whose store folder is read-only that their rater was already answering
    in another terminal (it reworded every lock error so; before, the lock's PermissionError escaped bare)."""
    import papa_bayes.locks as locks
    from papa_bayes.exceptions import StoreError
    from papa_bayes.labeling import _lock_rater

    def no_lock_file(path, mode="r", *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(locks, "open", no_lock_file, raising=False)
    with pytest.raises(StoreError, match="cannot be written") as err:
        _lock_rater(tmp_path / "s.db", 0)
    assert "already answering" not in str(err.value)
    monkeypatch.undo()
    with _lock_rater(tmp_path / "s.db", 0):  # held: another process is refused in the --rater words
        pass


def test_an_answer_the_terminal_cannot_decode_is_asked_again(tmp_path):
    """A byte the terminal's encoding cannot read (a Latin-1 "é" in a UTF-8 locale) ended the sitting with a
    UnicodeDecodeError traceback from ``input``."""
    import torch

    from papa_bayes.labeling import TerminalUser

    replies = iter([b"\xff".decode, lambda: "2"])

    def read(prompt):
        return next(replies)()

    out = io.StringIO()
    user = TerminalUser(tmp_path / "pics", read=read, write=out)
    first_won, tie = user.compare(torch.zeros(1, 1, 8, 8), torch.ones(1, 1, 8, 8))
    assert not bool(first_won[0]) and not bool(tie[0])
    assert "please answer one of" in out.getvalue()


def test_store_errors_name_the_store_option(tmp_path, capsys, opens):
    """README: "a mistake gets a one-line error naming the option"; a folder or a file that is no store was
    refused in the store's words only ("... is a folder; a store is a file")."""
    from papa_bayes.cli import main as cli_main

    (tmp_path / "notes.txt").write_text("not a store")
    for store in (tmp_path, tmp_path / "notes.txt"):
        assert cli_main(["label", "--store", str(store)]) == 2
        assert capsys.readouterr().err.startswith("papa-bayes label: error: --store: ")


def test_a_store_named_queries_keeps_its_place(tmp_path, opens):
    """--store x.queries took the pictures' default folder (the store's path with suffix .queries) for itself:
    the folder was made where the store belonged, and the sitting ended with "x.queries is a folder"."""
    store = tmp_path / "x.queries"
    with pytest.raises(_ModelLoaded):
        label_main(["--store", str(store)], read=lambda _: "q", write=io.StringIO())
    assert not store.exists() and (tmp_path / "x.queries.queries").is_dir()
    with pytest.raises(InputDataError, match="--images: expected a folder for the pictures other than"):
        label_main(["--store", str(tmp_path / "y.db"), "--images", str(tmp_path / "y.db")],
                   read=lambda _: "q", write=io.StringIO())
    assert not (tmp_path / "y.db").exists()


def test_recommend_with_nothing_to_steer_by_leaves_nothing_behind(tmp_path, opens):
    """A new store with --labels 0 --recommend N was refused after the rater's lock file had been made."""
    with pytest.raises(InputDataError, match="--recommend: expected answers of rater 0"):
        label_main(["--store", str(tmp_path / "s.db"), "--labels", "0", "--recommend", "4"],
                   read=lambda _: "q", write=io.StringIO())
    assert not any(tmp_path.iterdir())


def test_a_rater_another_program_began_is_refused_by_name(tmp_path, opens):
    """Resuming the simulated person of a store `papa-bayes demo` (or the API) wrote loaded the model, printed
    "Resuming", then failed with "model: expected the session's model, LinearReward(... ties=False ...)"."""
    store = tmp_path / "s.db"
    source, user, _ = setup()
    PreferenceSession(store, source, user, pool_size=8).run(1, progress_bar=False)
    out = io.StringIO()
    with pytest.raises(InputDataError, match=r"--rater: expected a rater whose session papa-bayes label began") as err:
        label_main(["--store", str(store)], read=lambda _: "q", write=out)
    assert "--rater 1" in str(err.value) and "Resuming" not in out.getvalue()


def test_ratings_take_yes_and_no_and_the_question_asked_again_is_numbered(tmp_path, capsys):
    """A rating took only y or n ("yes", as the prompt spelled it, was refused); and on resume the question
    left unanswered was asked with no "Question 1 of N" header while the next was announced as "Question 2 of N"."""
    store = tmp_path / "me.db"
    tiny = ["--store", str(store), "--pool-steps", "4", "--scale", "0.5", "--num-base", "32"]
    answers = iter(["Yes", "q"])  # the second question is left unanswered
    out = io.StringIO()
    label_main(tiny + ["--query-type", "rating", "--features", "pca", "--labels", "3"],
               read=lambda _: next(answers), write=out)
    assert "please answer" not in out.getvalue()
    answers = iter([" NO ", "y"])
    out = io.StringIO()
    label_main(tiny + ["--labels", "2"], read=lambda _: next(answers), write=out)
    text = out.getvalue()
    assert text.index("Resuming") < text.index("Question 1 of 2: asked again") < text.index("picture:")
    assert text.index("Question 2 of 2") > text.index("picture:") and "please answer" not in text
    with PreferenceStore(store, create=False) as s:
        assert [q.answer for q in s.queries(answered=True)] == ["like", "dislike", "like"]
    with pytest.raises(SystemExit):
        label_main(["--help"])
    assert "y (yes) or n (no) for ratings" in " ".join(capsys.readouterr().out.split())


def test_a_rater_another_program_registered_without_asking_is_refused_by_name(tmp_path, opens):
    """The refusal's suggested free rater id took max() of the raters that were asked something: with none,
    a raw ValueError ("max() arg is an empty sequence") instead of the message."""
    store = tmp_path / "s.db"
    source, user, _ = setup()
    PreferenceSession(store, source, user, pool_size=8, rater=2).close()  # registered, nothing asked
    with pytest.raises(InputDataError, match=r"--rater: expected a rater whose session papa-bayes label began") as err:
        label_main(["--store", str(store), "--rater", "2"], read=lambda _: "q", write=io.StringIO())
    assert "--rater 3" in str(err.value)


def test_num_base_below_two_is_refused_under_its_option(tmp_path):
    """--num-base 1 passed the command's check (>= 1) and failed in DiffusionCandidates as 'num_base'."""
    with pytest.raises(InputDataError, match=r"^--num-base: expected .*>= 2.*got 1"):
        label_main(["--store", str(tmp_path / "s.db"), "--num-base", "1"], read=lambda _: "q", write=io.StringIO())
    assert not (tmp_path / "s.db").exists()  # refused before anything was made
