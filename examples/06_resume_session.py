"""Stop a session and resume it later from its store: nothing is lost.

Runs a few rounds, closes the session (as a crash or a closed laptop would), then
``PreferenceSession.resume`` rebuilds the posterior from the stored answers and
continues with the same random stream. Prints every stored round (question and
answer) and whether they equal those of an uninterrupted session with the same seed
(True); writes the stores OUT/session.db and OUT/uninterrupted.db (default OUT:
example_output/06).

    python examples/06_resume_session.py --first 5 --then 5
    python examples/06_resume_session.py --tiny
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from papa_bayes.session import FeaturePool, PreferenceSession
from papa_bayes.store import PreferenceStore
from papa_bayes.users import SimulatedUser, random_unit_vector
from papa_bayes.checks import bounded_arg, parse_with_tiny


def main(argv: list[str] | None = None) -> list:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--first", type=bounded_arg(int, 1), default=5)
    p.add_argument("--then", type=bounded_arg(int, 1), default=5)
    p.add_argument("--num-features", type=bounded_arg(int, 1), default=4)
    p.add_argument("--tiny", action="store_true", help="a seconds-long run (tests); sizes given explicitly are kept")
    p.add_argument("--seed", type=bounded_arg(int, 0), default=0)
    p.add_argument("--out", type=Path, default=Path("example_output/06"))
    # --tiny shrinks only the sizes left off the command line (as the benchmarks' --tiny)
    args = parse_with_tiny(p, argv, dict(first=2, then=2))
    args.out.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(args.seed)
    items = torch.randn(100, args.num_features, generator=g, dtype=torch.float64)
    user = SimulatedUser(random_unit_vector(args.num_features, generator=g), rationality=float("inf"))
    path = args.out / "session.db"
    path.unlink(missing_ok=True)

    session = PreferenceSession(path, FeaturePool(items), user, pool_size=12, seed=args.seed)
    session.run(args.first, progress_bar=False)
    session.close()
    print(f"stopped after {args.first} answers")

    session = PreferenceSession.resume(path, FeaturePool(items), user)
    session.run(args.then, progress_bar=False)
    session.close()
    answers = _answers(path)
    for a in answers:
        print("round {}: items {} vs {} -> {}".format(*a))

    # The same session run without a stop: the same questions and answers.
    straight = args.out / "uninterrupted.db"
    straight.unlink(missing_ok=True)
    session = PreferenceSession(straight, FeaturePool(items), user, pool_size=12, seed=args.seed)
    session.run(args.first + args.then, progress_bar=False)
    session.close()
    same = answers == _answers(straight)
    print(f"same questions and answers as an uninterrupted session: {same}")
    return answers


def _answers(path: Path) -> list:
    with PreferenceStore(path, create=False) as store:
        return [(q.round, q.item_a, q.item_b, q.answer) for q in store.queries(answered=True)]


if __name__ == "__main__":
    main()
