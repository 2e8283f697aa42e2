"""What every NUTS chain of papa_bayes reads off Pyro's ``MCMC`` after a run."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from papa_bayes.exceptions import InputDataError

__all__ = ["check_nuts_samples", "chain_results"]


def check_nuts_samples(num_samples: Any, name: str = "num_samples") -> None:
    """InputDataError naming ``name`` when fewer than 4 draws per NUTS chain are asked for: split R-hat halves each
    chain (Pyro asserts it with a bare AssertionError, and only after every chain has run)."""
    if num_samples < 4:
        raise InputDataError(name, "an integer >= 4 for NUTS (split R-hat halves each chain)", num_samples)


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
