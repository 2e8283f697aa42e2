"""``python -m papa_bayes``: the ``papa-bayes`` command, where its script is not on the PATH."""

from papa_bayes.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
