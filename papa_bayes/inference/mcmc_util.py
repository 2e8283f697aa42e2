"""What every NUTS chain of papa_bayes reads off Pyro's ``MCMC`` after a run."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["chain_results"]


def chain_results(mcmc, num_samples: int) -> tuple[dict[str, Tensor], Tensor, float]:
    """(draws site -> `num_samples x shape`, `num_samples` divergence flags, acceptance rate) of a one-chain run."""
    draws = {k: v.detach() for k, v in mcmc.get_samples().items()}
    diagnostics = mcmc.diagnostics()
    diverging = torch.zeros(num_samples, dtype=torch.bool)
    idx = diagnostics.get("divergences", {}).get("chain 0", [])
    if len(idx):
        diverging[torch.as_tensor(list(idx), dtype=torch.long)] = True
    accept = float(diagnostics.get("acceptance rate", {}).get("chain 0", float("nan")))
    return draws, diverging, accept
