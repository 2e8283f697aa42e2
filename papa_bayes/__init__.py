"""papa_bayes: Bayesian reward inference from preferences, active queries, and
posterior-guided diffusion sampling.

Example:
    >>> from papa_bayes import PreferenceData, LinearReward, fit
    >>> post = fit(LinearReward(), data, method="nuts")
    >>> import arviz as az; az.summary(post.to_inference_data())
"""

from papa_bayes.data import PreferenceData
from papa_bayes.exceptions import InputDataError, ModelError, PapaBayesError, PapaBayesWarning
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
    "PapaBayesWarning",
]
