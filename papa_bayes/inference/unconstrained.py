"""A flat unconstrained parameter vector for a model's latent sites.

Each site maps through ``biject_to(prior.support)`` exactly as Pyro's NUTS and
autoguides do, so the order and transforms match Pyro's own.
"""

from __future__ import annotations

import math

import torch
import torch.distributions as tdist
from torch import Tensor
from torch.distributions import biject_to

__all__ = ["UnconstrainedSpace"]


class UnconstrainedSpace:
    """Packs and unpacks the latent sites of one model on one data set.

    Args:
        priors: site name -> prior, in sampling order (``model.priors(data)``).
    """

    def __init__(self, priors: dict[str, tdist.Distribution]) -> None:
        self.priors = priors
        self.names = list(priors)
        self.shapes = {k: tuple(p.batch_shape + p.event_shape) for k, p in priors.items()}
        self.transforms = {k: biject_to(p.support) for k, p in priors.items()}
        # Unconstrained shapes: a simplex of k values has k - 1 coordinates (stick-breaking), as in Pyro's autoguides.
        self.raw_shapes = {k: tuple(self.transforms[k].inverse_shape(torch.Size(s))) for k, s in self.shapes.items()}
        self.sizes = {k: math.prod(s) for k, s in self.raw_shapes.items()}
        self.dim = sum(self.sizes.values())

    def unpack(self, theta: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        """`s x D` unconstrained -> (constrained site values `s x shape`, log|J| `s`)."""
        out, logdet, i = {}, theta.new_zeros(theta.shape[:-1]), 0
        for k in self.names:
            raw = theta[..., i : i + self.sizes[k]].reshape(*theta.shape[:-1], *self.raw_shapes[k])
            i += self.sizes[k]
            t = self.transforms[k]
            value = t(raw)
            ladj = t.log_abs_det_jacobian(raw, value)
            # Sum the Jacobian over the site's own dims, whatever event dims the transform kept.
            extra = ladj.dim() - (theta.dim() - 1)
            out[k] = value
            logdet = logdet + (ladj.reshape(*theta.shape[:-1], -1).sum(-1) if extra > 0 else ladj)
        return out, logdet

    def pack(self, values: dict[str, Tensor]) -> Tensor:
        """Constrained site values `s x shape` -> `s x D` (missing sites raise KeyError)."""
        parts = []
        for k in self.names:
            v = values[k]
            raw = self.transforms[k].inv(v)
            parts.append(raw.reshape(*raw.shape[: raw.dim() - len(self.raw_shapes[k])], -1))
        return torch.cat(parts, dim=-1)

    def initial(self, previous: dict[str, Tensor] | None = None) -> Tensor:
        """A starting point `D`: previous values where a site existed (overlap copied), else the prior's centre."""
        parts = []
        for k in self.names:
            p = self.priors[k]
            try:
                centre = p.mean if torch.isfinite(p.mean).all() else p.sample()
            except NotImplementedError:
                centre = p.sample()
            raw = self.transforms[k].inv(centre.to(torch.float64)).reshape(self.raw_shapes[k]).clone()
            if previous is not None and k in previous:
                old = previous[k].reshape(previous[k].shape[-len(self.shapes[k]) :] if self.shapes[k] else ())
                old_raw = self.transforms[k].inv(old)
                if old_raw.shape == raw.shape:
                    raw = old_raw.clone()
                elif old_raw.dim() == raw.dim():  # e.g. a new rater added: copy the overlap
                    sl = tuple(slice(0, min(a, b)) for a, b in zip(old_raw.shape, raw.shape))
                    raw[sl] = old_raw[sl]
            parts.append(raw.reshape(-1))
        return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64)
