"""Inference: ``fit(model, data, method=...)`` returning a :class:`RewardPosterior`."""

from papa_bayes.inference.fit import METHODS, fit
from papa_bayes.inference.laplace import laplace_mode
from papa_bayes.inference.posterior import PosteriorDrawsModel, RewardPosterior, check_features
from papa_bayes.inference.pyro_posterior import PyroPosterior

__all__ = ["fit", "METHODS", "RewardPosterior", "PyroPosterior", "PosteriorDrawsModel", "check_features", "laplace_mode"]
