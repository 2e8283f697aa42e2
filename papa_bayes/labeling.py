"""``papa-bayes label``: a real person answers queries about digits samples.

Each query's images are saved side by side as a PNG whose path is printed (and
opened with the system viewer with ``--open``); the answer is typed. Every answer is
written to the store before anything else, so the session can be stopped at any
time (Ctrl-C, or ``q``) and continued later with the same command.

    papa-bayes label --store my_taste.db --labels 20
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Callable, TextIO

import torch
from torch import Tensor

from papa_bayes.exceptions import InputDataError

__all__ = ["TerminalUser", "main"]


class TerminalUser:
    """Asks a person through a terminal (or any text streams).

    Args:
        image_dir: where query pictures are written.
        read: reads one answer line (default ``input``).
        write: a text stream for prompts.
        open_images: open each picture with the system viewer.
    """

    def __init__(self, image_dir: Path, *, read: Callable[[str], str] = input, write: TextIO = sys.stdout,
                 open_images: bool = False) -> None:
        self.image_dir = Path(image_dir)
        self.image_dir.mkdir(parents=True, exist_ok=True)
        self.read, self.write, self.open_images = read, write, open_images
        self.count = 0

    def _show(self, images: Tensor) -> Path:
        from papa_bayes.diffusion import save_image_grid

        self.count += 1
        path = self.image_dir / f"query_{self.count:04d}.png"
        save_image_grid(images, path, ncol=images.shape[0], upscale=16)
        print(f"  picture: {path}", file=self.write)
        if self.open_images:
            opener = "open" if sys.platform == "darwin" else "xdg-open"
            subprocess.Popen([opener, str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return path

    def _ask(self, prompt: str, answers: dict[str, object]) -> object:
        while True:
            reply = self.read(prompt).strip().lower()
            if reply in ("q", "quit", "exit"):
                raise KeyboardInterrupt
            if reply in answers:
                return answers[reply]
            print(f"  please answer one of {sorted(answers)} (q to stop)", file=self.write)

    def compare(self, first: Tensor, second: Tensor) -> tuple[Tensor, Tensor]:
        self._show(torch.cat([first, second]))
        ans = self._ask("Which do you prefer? [1] left  [2] right  [t] tie: ", {"1": 0, "2": 1, "t": 2})
        return torch.tensor([ans in (0, 2)]), torch.tensor([ans == 2])

    def rate(self, images: Tensor) -> Tensor:
        self._show(images)
        ans = self._ask("Do you like it? [y] yes  [n] no: ", {"y": 1, "n": -1})
        return torch.tensor([ans], dtype=torch.long)


def main(argv: list[str] | None = None, *, read: Callable[[str], str] = input, write: TextIO = sys.stdout) -> int:
    p = argparse.ArgumentParser(prog="papa-bayes label", description=__doc__.splitlines()[0])
    p.add_argument("--store", type=Path, required=True, help="the session's SQLite file (created or resumed)")
    p.add_argument("--labels", type=int, default=20, help="questions to ask in this sitting")
    p.add_argument("--query-type", choices=("pair", "rating"), default="pair", help="for a new store")
    p.add_argument("--strategy", default="region", help="acquisition strategy, for a new store")
    p.add_argument("--images", type=Path, default=None, help="folder for query pictures (default: next to the store)")
    p.add_argument("--open", action="store_true", help="open each picture with the system viewer")
    p.add_argument("--pool-steps", type=int, default=20)
    p.add_argument("--scale", default="auto", help="guidance scale, or 'auto' for the package's rule")
    p.add_argument("--num-base", type=int, default=256, help="base samples that calibrate the preferred region")
    p.add_argument("--features", default="both",
                   help="reward features (papa_bayes.demo.FEATURES); a store keeps the features it began with")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rater", type=int, default=0,
                   help="who is answering: several people may share one store, each with their own posterior "
                        "and a prior learned from the others' answers")
    args = p.parse_args(argv)
    if args.labels < 0:
        raise InputDataError("--labels", "a number >= 0", args.labels)
    if args.rater < 0:
        raise InputDataError("--rater", "a rater id >= 0", args.rater)
    try:  # checked here, before the model loads
        scale = args.scale if args.scale == "auto" else float(args.scale)
    except ValueError:
        raise InputDataError("--scale", "a number or 'auto'", args.scale) from None

    from papa_bayes.demo import FEATURES, make_setup
    from papa_bayes.diffusion.candidates import DiffusionCandidates
    from papa_bayes.models import HierarchicalLinearReward, LinearReward
    from papa_bayes.session import PreferenceSession
    from papa_bayes.store import PreferenceStore

    if args.features not in FEATURES:
        raise InputDataError("--features", f"one of {FEATURES}", args.features)
    setup = make_setup(features=args.features)
    source = DiffusionCandidates(setup.model, setup.feature_map, setup.guard, seed=args.seed, pool_steps=args.pool_steps,
                                 scale=scale, num_base=args.num_base)
    user = TerminalUser(args.images or args.store.with_suffix(".queries"), read=read, write=write, open_images=args.open)
    others: list[int] = []
    resuming, before = False, 0
    if args.store.exists():
        with PreferenceStore(args.store, create=False) as existing:
            others = [r for r in existing.raters() if r != args.rater]
            resuming = existing.rater_config(args.rater) is not None
            before = existing.num_answers(args.rater)
    # People may answer "tie": the model says how (Davidson). With other raters in the
    # store, their answers give this rater's prior (hierarchical cold start).
    model = HierarchicalLinearReward(ties=True) if others else LinearReward(rationality=1.0, ties=True)
    if resuming:  # a question left unanswered last time is asked first, and counts
        session = PreferenceSession.resume(args.store, source, user, model=model, rater=args.rater)
        print(f"Resuming {args.store} (rater {args.rater}): {session.store.num_answers(session.rater)} answers so far.",
              file=write)
    else:
        session = PreferenceSession(args.store, source, user, model=model, query_type=args.query_type,
                                    strategy=args.strategy, pool_size=16, seed=args.seed + 1009 * args.rater,
                                    rater=args.rater)
    try:
        while session.store.num_answers(session.rater) - before < args.labels:
            session.step()
    except (KeyboardInterrupt, EOFError):
        print("\nStopped; every answer so far is saved.", file=write)
    n = session.store.num_answers(session.rater)
    print(f"{n} answers stored in {args.store}. Run the same command to continue.", file=write)
    session.close()
    return 0
