"""``papa-bayes label``: a real person answers queries about digits samples.

Each query's images are saved side by side as a PNG whose path is printed (and
opened with the system viewer with ``--open``); the answer is typed. Every answer is
written to the store before anything else, so the session can be stopped at any
time (Ctrl-C, or ``q``) and continued later with the same command. A store keeps
the options its sessions began with; people sharing one answer as different
``--rater`` s, and each rater in one terminal at a time. With ``--recommend N`` the
sitting ends by drawing N samples steered toward the rater's answers so far, saved
as one picture: what the model has learned of their taste.

    papa-bayes label --store my_taste.db --labels 20 --recommend 64
    papa-bayes label --store my_taste.db --labels 0 --recommend 64   # only look

(``--labels 0`` asks nothing new; a question left unanswered, by ``q``, Ctrl-C or a
crash, is still asked first, as on every resume, and stopping at it again skips the
recommendations.)
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable, TextIO

import torch
from torch import Tensor

from papa_bayes.checks import check_int
from papa_bayes.exceptions import InputDataError, StoreError
from papa_bayes.locks import RaterLock, lock_rater
from papa_bayes.store import MAX_ID, PreferenceStore
from papa_bayes.users import User

if TYPE_CHECKING:
    from papa_bayes.session import PreferenceSession

__all__ = ["TerminalUser", "main"]


class TerminalUser(User):
    """Asks a person through a terminal (or any text streams).

    Args:
        image_dir: where query pictures are written.
        read: reads one answer line (default ``input``).
        write: a text stream for prompts.
        open_images: open each picture with the system viewer.
        prefix: file names of the pictures, before their number.
        start: pictures already shown (numbering continues after them).
    """

    def __init__(self, image_dir: Path, *, read: Callable[[str], str] = input, write: TextIO | None = None,
                 open_images: bool = False, prefix: str = "query_", start: int = 0) -> None:
        self.image_dir = Path(image_dir)
        self.image_dir.mkdir(parents=True, exist_ok=True)
        # None: sys.stdout when written to, so that a redirected stdout (a notebook, pytest) is the one used
        self._write, self.read, self.open_images = write, read, open_images
        self.prefix, self.count = prefix, start

    @property
    def write(self) -> TextIO:
        """The stream prompts go to (``sys.stdout`` at the time of writing unless one was given)."""
        return self._write if self._write is not None else sys.stdout

    def _show(self, images: Tensor) -> Path:
        from papa_bayes.diffusion import save_image_grid

        self.count += 1
        path = self.image_dir / f"{self.prefix}{self.count:04d}.png"
        save_image_grid(images, path, ncol=images.shape[0], upscale=16)
        print(f"  picture: {path}", file=self.write)
        if self.open_images:
            self._open(path)
        return path

    def _open(self, path: Path) -> None:
        """Open a picture with the system viewer; where there is none, say so once and go on (the path is printed)."""
        try:
            if sys.platform == "win32":
                os.startfile(path)  # type: ignore[attr-defined]  (Windows only)
                return
            opener = "open" if sys.platform == "darwin" else shutil.which("xdg-open")
            if opener is None:
                raise FileNotFoundError("xdg-open")
            subprocess.Popen([opener, str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        except OSError as err:
            self.open_images = False
            print(f"  (cannot open pictures here: {err}; open them from the paths above)", file=self.write)

    def _discard_typeahead(self) -> None:
        """Forget what was typed at the terminal before the question was shown (while candidates were drawn):
        an answer typed twice, or early, is not this question's answer (asking with ``input`` on a terminal)."""
        if self.read is not input:
            return
        try:
            import termios

            if sys.stdin is not None and sys.stdin.isatty():
                termios.tcflush(sys.stdin.fileno(), termios.TCIFLUSH)
        except (ImportError, OSError, ValueError):  # (Windows; a closed or unusual stdin): nothing to forget
            pass

    def _ask(self, prompt: str, answers: dict[str, object], hint: str) -> object:
        """The value in ``answers`` of the first reply that is one of its keys (``hint`` lists them for a person)."""
        self._discard_typeahead()
        while True:
            try:
                reply = self.read(prompt).strip().lower()
            except UnicodeDecodeError:  # bytes the terminal's encoding cannot read: no answer, not a traceback
                reply = ""
            if reply in ("q", "quit", "exit"):
                raise KeyboardInterrupt
            if reply in answers:
                return answers[reply]
            print(f"  please answer one of {hint}; q to stop", file=self.write)

    def compare(self, first: Tensor, second: Tensor) -> tuple[Tensor, Tensor]:
        """Ask about one pair (`1 x ...` items, side by side in one picture): (`1` first_won, `1` tie)."""
        self._show(torch.cat([first, second]))
        # the words of the prompt count too, as "yes" does for a rating
        ans = self._ask("Which do you prefer? [1] left  [2] right  [t] tie: ",
                        {"1": 0, "left": 0, "2": 1, "right": 1, "t": 2, "tie": 2}, "1 (left), 2 (right), t (tie)")
        return torch.tensor([ans in (0, 2)]), torch.tensor([ans == 2])

    def rate(self, images: Tensor) -> Tensor:
        """Ask about one item (`1 x ...`): `1` long, +1 like / -1 dislike."""
        self._show(images)
        ans = self._ask("Do you like it? [y]es  [n]o: ", {"y": 1, "yes": 1, "n": -1, "no": -1}, "y (yes), n (no)")
        return torch.tensor([ans], dtype=torch.long)


#: The most samples ``--recommend`` draws (in one batch, into one picture: 256 take about 1.5 min and 0.7 GB).
MAX_RECOMMEND = 1024

#: The options that shape a rater's session, with their defaults. A store records
#: them; a resumed session keeps its own, and the features are the store's.
SESSION_OPTIONS = {"query_type": "pair", "strategy": "region", "features": "both", "pool_steps": 20, "scale": "auto",
                   "num_base": 256, "seed": 0}


def _recorded_options(config: dict) -> dict:
    """The session options a rater's stored configuration began with (None: not recorded)."""
    label, source = config.get("label", {}), config.get("source", {})
    from papa_bayes.acquisition.selection import check_strategy

    strategy = config.get("strategy")
    return {"query_type": config.get("query_type"),
            "strategy": None if strategy is None else check_strategy(strategy, None),  # "bald" began as "eig"
            "features": label.get("features"), "pool_steps": label.get("pool_steps", source.get("pool_steps")),
            "scale": label.get("scale", source.get("scale")),
            "num_base": label.get("num_base", source.get("num_base")),
            "seed": label.get("seed", source.get("seed"))}


def _lock_rater(store: Path, rater: int) -> RaterLock | None:
    """Hold rater ``rater``'s lock of ``store`` for the sitting (:func:`~papa_bayes.locks.lock_rater`).

    Taken before the model loads, so that a second terminal of the same rater is
    told at once; the session takes the same lock again (one process may).
    """
    try:
        return lock_rater(store, rater)
    except StoreError as err:
        if isinstance(err.__cause__, OSError):  # a lock file that cannot be written: lock_rater's words say so
            raise
        raise StoreError(f"Rater {rater} is already answering in {store} (another papa-bayes label runs); "
                         "a second person needs their own --rater.") from None


def _holds_store(path: Path) -> bool:
    """Whether ``path`` is something to open as a store, not a path to create one at."""
    try:
        return path.is_dir() or (path.exists() and path.stat().st_size > 0)
    except OSError:  # (a name too long, a folder that may not be entered): the store's error says so, naming it
        return True


def _session_options(args: argparse.Namespace, existing: PreferenceStore | None
                     ) -> tuple[dict, bool, int, list[int], int | None]:
    """The session's options, resolved against what the store ``existing`` recorded, and the store's state.

    Args:
        existing: the open store at ``args.store``, or None where there is none yet.

    Returns:
        ``(options, resuming, answers so far, other raters, num_features or None)``.

    Raises:
        InputDataError: an option given differs from the one the store recorded.
    """
    others: list[int] = []
    resuming, before, recorded, num_features = False, 0, dict.fromkeys(SESSION_OPTIONS), None
    if existing is not None:
        others = [r for r in existing.raters() if r != args.rater]
        config = existing.rater_config(args.rater)
        resuming = config is not None
        before = existing.num_answers(args.rater)
        num_features = existing.num_features
        if resuming:
            recorded = _recorded_options(config)
        for r in others:  # one store, one feature space
            other = existing.rater_config(r)
            if recorded["features"] is None and other is not None:
                recorded["features"] = _recorded_options(other)["features"]
    options = {}
    for name, default in SESSION_OPTIONS.items():
        given, stored = getattr(args, name), recorded[name]
        if stored is not None and given is not None and given != stored:
            whose = f"the session of rater {args.rater}" if resuming and name != "features" else "this store"
            raise InputDataError(f"--{name.replace('_', '-')}", f"{stored!r}, as {whose} in {args.store} began "
                                 "(leave the option out to continue it)", repr(given))
        options[name] = stored if stored is not None else given if given is not None else default
    return options, resuming, before, others, num_features


def main(argv: list[str] | None = None, *, read: Callable[[str], str] = input, write: TextIO | None = None) -> int:
    """``papa-bayes label``: ask a person (``read`` answers, ``write`` prompts) with the options in ``argv``; exit status."""
    d = SESSION_OPTIONS
    kept = "; a resumed session keeps its own"
    p = argparse.ArgumentParser(prog="papa-bayes label", description=__doc__.splitlines()[0].replace("``", ""),
                                epilog="Answers: 1 (left), 2 (right) or t (tie) for pairs, y (yes) or n (no) for "
                                       "ratings; q, Ctrl-C or Ctrl-D stops, every answer kept; the same command "
                                       "continues.")
    p.add_argument("--store", type=Path, required=True,
                   help="the session's SQLite file: created when missing (in an existing folder), else resumed")
    p.add_argument("--labels", type=int, default=20, help="questions to ask in this sitting (default: %(default)s)")
    # The session's options default to None, "not given": a resumed session takes the stored ones.
    p.add_argument("--query-type", choices=("pair", "rating"), default=None,
                   help=f"pair: which of two you prefer; rating: like or dislike one (default: {d['query_type']}{kept})")
    p.add_argument("--strategy", default=None,
                   help="how the next question is chosen: eig, region, argmax, eubo (pairs only), uncertainty, "
                        f"thompson or random (default: {d['strategy']}{kept})")
    p.add_argument("--images", type=Path, default=None,
                   help="folder for query pictures (default: the store's path with suffix .queries)")
    p.add_argument("--open", action="store_true", help="open each picture with the system viewer")
    p.add_argument("--pool-steps", type=int, default=None,
                   help=f"denoising steps of each candidate image (default: {d['pool_steps']}{kept})")
    p.add_argument("--scale", default=None,
                   help=f"guidance scale, or 'auto' for the package's rule (default: {d['scale']}{kept})")
    p.add_argument("--num-base", type=int, default=None,
                   help=f"base samples that calibrate the preferred region (default: {d['num_base']}{kept})")
    p.add_argument("--features", default=None,
                   help=f"reward features: pca, midblock, both or midblock32 (default: {d['features']}; "
                        "a store keeps the features it began with)")
    p.add_argument("--seed", type=int, default=None, help=f"seed of the session (default: {d['seed']}{kept})")
    p.add_argument("--recommend", type=int, default=0, metavar="N",
                   help="after the sitting, draw N samples steered toward your answers and save them as one picture "
                        f"in the --images folder (default: %(default)s, none; at most {MAX_RECOMMEND}; 64 take about "
                        "20 s on two CPU cores)")
    p.add_argument("--rater", type=int, default=0,
                   help="who is answering (default: %(default)s): several people may share one store, each with "
                        "their own posterior and a prior learned from the others' answers")
    args = p.parse_args(argv)
    if args.labels < 0:
        raise InputDataError("--labels", "a number >= 0", args.labels)
    check_int("--rater", args.rater, minimum=0, maximum=MAX_ID, expected="a rater id in [0, 2**63 - 1]")
    # at most one picture's worth, drawn in one batch: 10**12 ended the sitting in an allocation error's traceback
    check_int("--recommend", args.recommend, minimum=0, maximum=MAX_RECOMMEND,
              expected=f"a number of samples in [0, {MAX_RECOMMEND}]")
    # --num-base: DiffusionCandidates' num_base (a region's calibration needs two samples); --seed: torch's range
    for flag, value, minimum, maximum in (("--pool-steps", args.pool_steps, 1, None),
                                          ("--num-base", args.num_base, 2, None), ("--seed", args.seed, 0, 2**32 - 1)):
        if value is not None:
            check_int(flag, value, minimum=minimum, maximum=maximum)
    if args.scale is not None and args.scale != "auto":  # checked here, before the model loads
        try:
            args.scale = float(args.scale)
        except ValueError:
            raise InputDataError("--scale", "a number >= 0 or 'auto'", args.scale) from None
        if not math.isfinite(args.scale) or args.scale < 0:
            raise InputDataError("--scale", "a number >= 0 or 'auto'", args.scale)

    from papa_bayes.acquisition.selection import check_strategy
    from papa_bayes.demo import FEATURES

    if args.features is not None and args.features not in FEATURES:
        raise InputDataError("--features", f"one of {FEATURES}", args.features)
    if args.strategy is not None:
        args.strategy = check_strategy(args.strategy, args.query_type, field="--strategy")  # aliases resolved
    # The store is checked before the model loads and before anything is written.
    if not args.store.parent.is_dir():
        raise InputDataError("--store", "a file in an existing folder", f"{args.store} ({args.store.parent} is not a folder)")
    with contextlib.ExitStack() as held:
        existing = None
        if _holds_store(args.store):  # a folder, or not a papa_bayes store: StoreError
            try:
                existing = held.enter_context(PreferenceStore(args.store, create=False))
            except StoreError as err:  # the store's own words, naming the option as every other mistake does
                raise StoreError(f"--store: {err}") from err.__cause__
        if args.images is None:  # beside the store; a store named *.queries keeps its name whole
            default = args.store.with_suffix(".queries")
            args.images = default if default != args.store else args.store.with_name(args.store.name + ".queries")
        elif args.images.resolve() == args.store.resolve():  # the pictures' folder would take the store's place
            raise InputDataError("--images", "a folder for the pictures other than the --store file", str(args.images))
        if args.images.exists() and not args.images.is_dir():
            raise InputDataError("--images", "a folder for the pictures", f"{args.images}, a file")
        if args.recommend and args.labels == 0 and existing is None:  # before the lock file is made
            _refuse_recommend(args)
        lock = _lock_rater(args.store, args.rater)
        if lock is not None:
            held.callback(lock.close)
        return _label(args, existing, read=read, write=write)


def _refuse_recommend(args: argparse.Namespace) -> None:
    """InputDataError: ``--recommend`` with nothing to steer by (no stored answers, ``--labels 0``)."""
    raise InputDataError("--recommend", f"answers of rater {args.rater} to steer by (--labels N, or a store "
                         "that holds some)", f"none in {args.store} and --labels 0")


def _recommend(session: PreferenceSession, args: argparse.Namespace, write: TextIO) -> Path:
    """``args.recommend`` samples steered by the rater's posterior, saved as one grid picture; its path."""
    from papa_bayes.diffusion import save_image_grid

    answers = session.store.num_answers(session.rater)
    print(f"Drawing {args.recommend} samples steered toward your {answers} answers...", file=write, flush=True)
    images = session.recommend(args.recommend).images
    path = save_image_grid(images, args.images / f"rater{args.rater}_recommended_after_{answers}_n{args.recommend}.png",
                           upscale=12)
    print(f"  recommended: {path}", file=write)
    return path


def _label(args: argparse.Namespace, existing: PreferenceStore | None, *, read: Callable[[str], str],
           write: TextIO) -> int:
    """The sitting of ``main``, once its arguments are checked and the rater's lock is held.

    ``existing`` is the store at ``args.store``, open (None where there is none yet):
    it is read only now that the lock keeps this rater's other terminals out.
    """
    from papa_bayes.demo import make_setup
    from papa_bayes.diffusion.candidates import DiffusionCandidates
    from papa_bayes.models import HierarchicalLinearReward, LinearReward
    from papa_bayes.session import PreferenceSession
    from papa_bayes.session_resume import record_matches

    options, resuming, before, others, num_features = _session_options(args, existing)
    if args.recommend and before + args.labels == 0:  # before the model loads and anything is written
        _refuse_recommend(args)
    # People may answer "tie": the model says how (Davidson). With other raters in the
    # store, their answers give this rater's prior (hierarchical cold start); a resumed
    # sitting keeps the model it began with, even when others have answered since.
    # The model's class and fields are read from the stored record (model_record); a store written before
    # the record keeps only the model's repr, read as then.
    began_config = existing.rater_config(args.rater) if resuming else {}
    began, record = began_config.get("model"), began_config.get("model_record")
    if not (isinstance(record, dict) and isinstance(record.get("fields"), dict)):
        record = None
    if not resuming:
        hierarchical = bool(others)
    elif record is not None:
        hierarchical = record.get("class") == "HierarchicalLinearReward"
    else:
        hierarchical = (began or "").startswith("HierarchicalLinearReward(")
    model = HierarchicalLinearReward(ties=True) if hierarchical else LinearReward(rationality=1.0, ties=True)
    # Another program's session (perhaps registered, nothing asked yet: no rater of the store asked anything):
    # said here, not by resume's check.
    same = record_matches(record, model)  # None: no record, the repr says
    if same is False or (same is None and began is not None and began != repr(model)):
        name, ties = ((record.get("class"), record["fields"].get("ties")) if record is not None
                      else (began.split("(")[0], "ties=True" in began))
        raise InputDataError("--rater", "a rater whose session papa-bayes label began",
                             f"rater {args.rater} of {args.store}, whose session another program began with "
                             f"{name}(ties={ties}, ...); answer as a new rater "
                             f"(e.g. --rater {max([*existing.raters(), args.rater]) + 1})")
    try:  # before the model loads
        args.images.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputDataError("--images", "a folder for the pictures (or a path where one can be made)",
                             f"{args.images} ({type(err).__name__}: {err.strerror or err})") from None
    setup = make_setup(features=options["features"])
    if num_features is not None and setup.feature_map.num_features != num_features:  # a store that did not record them
        raise InputDataError("--features", f"features with {num_features} dimensions, as {args.store} holds",
                             f"{options['features']!r} ({setup.feature_map.num_features} dimensions)")
    source = DiffusionCandidates(setup.model, setup.feature_map, setup.guard, seed=options["seed"],
                                 pool_steps=options["pool_steps"], scale=options["scale"], num_base=options["num_base"])
    mine = source.config()["feature_map"]
    configs = [existing.config, *map(existing.rater_config, existing.raters())] if existing is not None else []
    for config in configs:  # e.g. of a store `papa-bayes demo` wrote, which records no --features
        stored = ((config or {}).get("source") or {}).get("feature_map")
        if stored is not None and stored != mine:  # one store, one feature space, even at equal dimension
            raise InputDataError("--features", f"the feature map of the items in {args.store} ({stored['kind']}, "
                                 f"fingerprint {stored['fingerprint']})",
                                 f"{options['features']!r} ({mine['kind']}, fingerprint {mine['fingerprint']})")
    # Pictures are numbered by question, per rater, so that neither a later sitting nor
    # another person sharing the store overwrites a picture shown earlier.
    user = TerminalUser(args.images, read=read, write=write, open_images=args.open,
                        prefix=f"rater{args.rater}_query_", start=before)
    session = None
    try:
        if resuming:  # a question left unanswered last time is asked first (inside resume), and counts
            print(f"Resuming {args.store} (rater {args.rater}): {before} answers so far.", file=write)
            if existing.pending_query(args.rater) is not None:  # numbered as the questions after it are
                again = f"Question 1 of {args.labels}" if args.labels else "The question"
                print(f"{again}: asked again, left unanswered last time.", file=write, flush=True)
            session = PreferenceSession.resume(args.store, source, user, model=model, rater=args.rater)
        else:
            session = PreferenceSession(args.store, source, user, model=model, query_type=options["query_type"],
                                        strategy=options["strategy"], pool_size=16,
                                        seed=(options["seed"] + 1009 * args.rater) % 2**32, rater=args.rater)
            session.store.set_config({**session.config(), "label": options}, rater=args.rater)
        while (asked := session.store.num_answers(session.rater) - before) < args.labels:
            # drawing and scoring a pool takes seconds (about a minute when the guidance scale is re-chosen)
            print(f"Question {asked + 1} of {args.labels}: drawing candidates...", file=write, flush=True)
            session.step()
        if args.recommend:
            _recommend(session, args, write)
    except (KeyboardInterrupt, EOFError):
        print("\nStopped; every answer so far is saved.", file=write)
    finally:
        if session is not None:
            session.close()
    if existing is not None:
        n = existing.num_answers(args.rater)
    else:  # created by the session
        with PreferenceStore(args.store, create=False) as stored:
            n = stored.num_answers(args.rater)
    print(f"{n} answers stored in {args.store}. Run the same command to continue.", file=write)
    return 0
