"""A session run in a subprocess so that a test can kill it mid-round."""

from __future__ import annotations

import sys
import time

import torch

from papa_bayes.session import FeaturePool, PreferenceSession
from papa_bayes.users import SimulatedUser


def setup():
    g = torch.Generator().manual_seed(0)
    items = torch.randn(60, 4, generator=g, dtype=torch.float64)
    w = torch.tensor([1.0, -1.0, 0.5, 0.0], dtype=torch.float64)
    return FeaturePool(items), SimulatedUser(w, rationality=float("inf"), seed=0), w


class SlowUser:
    """Answers like the simulated user, slowly, so a kill lands mid-round."""

    def __init__(self, user, delay):
        self.user, self.delay = user, delay

    def compare(self, a, b):
        time.sleep(self.delay)
        return self.user.compare(a, b)


if __name__ == "__main__":
    path, rounds, delay = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    source, user, _ = setup()
    session = PreferenceSession(path, source, SlowUser(user, delay), pool_size=12, seed=3, strategy="eig")
    session.run(rounds, progress_bar=False)
