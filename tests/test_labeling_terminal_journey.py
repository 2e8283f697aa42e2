"""A person labeling in a terminal: what they type, how they stop, what the store keeps."""

from __future__ import annotations

import io
import os
import re
import select
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from papa_bayes.labeling import TerminalUser
from papa_bayes.labeling import main as label_main
from papa_bayes.store import PreferenceStore

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["--pool-steps", "4", "--scale", "0.5", "--num-base", "32", "--features", "pca"]
PAIR = torch.zeros(1, 1, 8, 8), torch.ones(1, 1, 8, 8)


def _replies(*replies):
    """A ``read`` giving ``replies`` in turn (an exception class is raised); asking for more fails the test."""
    it = iter(replies)

    def read(prompt):
        reply = next(it, None)
        if reply is None:
            raise AssertionError(f"asked once more than expected: {prompt!r}")
        if isinstance(reply, type) and issubclass(reply, BaseException):
            raise reply
        return reply

    return read


def _answers(store: Path) -> list[tuple[int, str | None]]:
    with PreferenceStore(store, create=False) as s:
        return [(q.round, q.answer) for q in s.queries(rater=0)]


def test_pairs_take_the_words_of_the_prompt_and_a_refusal_reads_plainly(tmp_path):
    """The prompt reads "[1] left  [2] right  [t] tie", but "left", "right" and "tie" were refused (as "yes" was
    for "[y]es"), each time with a Python list: "please answer one of ['1', '2', 't'] (q to stop)"."""
    out = io.StringIO()
    user = TerminalUser(tmp_path / "pics", read=_replies("Left", " RIGHT ", "tie"), write=out)
    got = [tuple(bool(v[0]) for v in user.compare(*PAIR)) for _ in range(3)]
    assert got == [(True, False), (False, False), (True, True)]  # (first won, tie)
    assert "please answer" not in out.getvalue()

    out = io.StringIO()
    user = TerminalUser(tmp_path / "pics", read=_replies("a", "=", "?", "", "2"), write=out)
    assert not bool(user.compare(*PAIR)[0][0])
    refusals = out.getvalue().splitlines()[1:]
    assert refusals == ["  please answer one of 1 (left), 2 (right), t (tie); q to stop"] * 4
    out = io.StringIO()
    user = TerminalUser(tmp_path / "pics", read=_replies("1", "Yes"), write=out)
    assert int(user.rate(PAIR[0])[0]) == 1
    assert out.getvalue().splitlines()[1:] == ["  please answer one of y (yes), n (no); q to stop"]


def test_too_many_recommendations_are_refused_before_the_model_loads(tmp_path, monkeypatch, capsys):
    """--recommend 1000000000000 was taken: after the whole sitting it ended in a traceback (the sampler's
    "DefaultCPUAllocator: can't allocate memory: you tried to allocate 1024000000000000 bytes")."""
    import papa_bayes.demo
    from papa_bayes.cli import main as cli_main

    def loaded(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(papa_bayes.demo, "make_setup", loaded)
    for n in (1025, 10**12, -1):
        assert cli_main(["label", "--store", str(tmp_path / "s.db"), "--recommend", str(n)]) == 2
        err = capsys.readouterr().err
        assert err == f"papa-bayes label: error: --recommend: expected a number of samples in [0, 1024], got {n}.\n"
    assert not any(tmp_path.iterdir())
    with pytest.raises(AssertionError, match="model was loaded"):  # the most is taken
        cli_main(["label", "--store", str(tmp_path / "s.db"), "--recommend", "1024"])


def test_a_sitting_of_odd_replies_keeps_every_confirmed_answer(tmp_path):
    """What people type, in one sitting and its restart: nothing unconfirmed is stored, the question left open
    is asked again, and every stop ends with the same two lines and status 0."""
    store = tmp_path / "me.db"
    args = ["--store", str(store), *TINY]
    out = io.StringIO()  # a typo, unicode, a very long line, then "tie"; then Ctrl-C at the second question
    read = _replies("2x", "ü", "x" * 10_000, "undo", "tie", KeyboardInterrupt)
    assert label_main(args + ["--labels", "3"], read=read, write=out) == 0
    text = out.getvalue()
    assert text.count("please answer one of") == 4 and text.endswith(
        "\nStopped; every answer so far is saved.\n1 answers stored in " + str(store) + ". Run the same command to "
        "continue.\n")
    assert _answers(store) == [(0, "tie"), (1, None)]

    out = io.StringIO()  # the same command: the open question first (Ctrl-D there keeps it open)
    assert label_main(args + ["--labels", "3"], read=_replies(EOFError), write=out) == 0
    assert "Question 1 of 3: asked again" in out.getvalue() and _answers(store) == [(0, "tie"), (1, None)]
    pictures = sorted(p.name for p in (tmp_path / "me.queries").iterdir())
    assert pictures == ["rater0_query_0001.png", "rater0_query_0002.png"]  # shown again under its own number

    out = io.StringIO()  # answered, then "quit" at the next one
    assert label_main(args + ["--labels", "3"], read=_replies("left", "QUIT"), write=out) == 0
    assert _answers(store) == [(0, "tie"), (1, "first"), (2, None)]
    assert "Stopped" in out.getvalue() and "Traceback" not in out.getvalue()


_TYPEAHEAD_CHILD = textwrap.dedent("""
    import select, sys, torch
    from papa_bayes.labeling import TerminalUser
    user = TerminalUser(sys.argv[1], write=sys.stdout)  # reads with input(), as papa-bayes label does
    print("drawing candidates...", flush=True)
    select.select([sys.stdin], [], [], 60)  # meanwhile the person types a line
    won, tie = user.compare(torch.zeros(1, 1, 8, 8), torch.ones(1, 1, 8, 8))
    print("RESULT", int(won[0]), int(tie[0]), flush=True)
    """)


@pytest.mark.skipif(sys.platform == "win32", reason="a POSIX terminal")
def test_an_answer_typed_before_the_question_is_not_its_answer(tmp_path):
    """Typed while candidates were drawn (a second press of an answer, or impatience), a line waited in the
    terminal and answered the next question before its picture was shown: the answer was stored unseen."""
    import pty

    master, slave = pty.openpty()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen([sys.executable, "-c", _TYPEAHEAD_CHILD, str(tmp_path / "pics")], stdin=slave,
                             stdout=slave, stderr=slave, env=env)
    os.close(slave)
    seen = ""

    def until(pattern, timeout=60.0):
        nonlocal seen
        end = time.monotonic() + timeout
        while not re.search(pattern, seen) and time.monotonic() < end:
            if select.select([master], [], [], 0.5)[0]:
                try:
                    seen += os.read(master, 4096).decode(errors="replace")
                except OSError:  # (the child ended)
                    break
        assert re.search(pattern, seen), seen

    try:
        until("drawing candidates")
        os.write(master, b"2\n")  # before the question
        until("Which do you prefer?")
        time.sleep(0.2)
        os.write(master, b"1\n")  # the answer to the question shown
        until(r"RESULT \d \d")
    finally:
        child.wait(timeout=60)
        os.close(master)
    assert re.search(r"RESULT \d \d", seen).group() == "RESULT 1 0", seen  # left won: the early "2" was not taken
