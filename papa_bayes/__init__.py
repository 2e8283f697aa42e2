"""papa_bayes: Bayesian reward inference from preferences, active queries, and
posterior-guided diffusion sampling.

Example:
    A simulated person compares 60 random pairs of 3-feature items; Laplace's
    posterior (the default method) finds the direction of their weights, and
    ArviZ reads it:

    >>> import arviz as az
    >>> import torch
    >>> from papa_bayes import LinearReward, fit
    >>> from papa_bayes.users import SimulatedUser, simulate_comparisons
    >>> gen = torch.Generator().manual_seed(0)
    >>> items = torch.randn(30, 3, generator=gen, dtype=torch.float64)
    >>> person = SimulatedUser([1.0, -1.0, 0.0], rationality=3.0, seed=0)
    >>> data = simulate_comparisons(person, items, 60, generator=gen)
    >>> post = fit(LinearReward(), data, seed=0)
    >>> w = post.mean("w")  # `d`
    >>> bool(torch.cosine_similarity(w, person.weights, dim=0) > 0.9)
    True
    >>> az.summary(post.to_inference_data(), var_names=["w"], kind="stats").shape  # d rows
    (3, 4)
"""

from papa_bayes.data import PreferenceData
from papa_bayes.exceptions import (
    InferenceError,
    InputDataError,
    ModelError,
    PapaBayesError,
    PapaBayesWarning,
    StoreError,
)
from papa_bayes.inference import PyroPosterior, RewardPosterior, fit
from papa_bayes.models import HierarchicalLinearReward, LinearReward

__version__ = "0.1.0"

__all__ = [
    "PreferenceData",
    "LinearReward",
    "HierarchicalLinearReward",
    "fit",
    "RewardPosterior",
    "PyroPosterior",
    "PapaBayesError",
    "InputDataError",
    "ModelError",
    "InferenceError",
    "StoreError",
    "PapaBayesWarning",
]
