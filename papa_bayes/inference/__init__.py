"""Inference: ``fit(model, data, method=...)`` returning a :class:`RewardPosterior`."""

from papa_bayes.inference.fit import METHODS, fit, prior_posterior
from papa_bayes.inference.laplace import laplace_mode
from papa_bayes.inference.posterior import PosteriorDrawsModel, RewardPosterior, check_features
from papa_bayes.inference.pyro_posterior import PyroPosterior
from papa_bayes.inference.gp_posterior import GPPosterior
from papa_bayes.inference.gp_paths import PathwiseDraws

__all__ = ["fit", "prior_posterior", "METHODS", "RewardPosterior", "PyroPosterior", "PosteriorDrawsModel", "check_features", "laplace_mode", "GPPosterior", "PathwiseDraws"]
