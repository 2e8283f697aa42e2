"""Reward models: Pyro functions (linear, hierarchical) and Gaussian-process models."""

from papa_bayes.models.base import PyroRewardModel
from papa_bayes.models.likelihoods import comparison_log_probs, log_cdf
from papa_bayes.models.linear import HierarchicalLinearReward, LinearReward
from papa_bayes.models.gp import PreferenceGP, PreferenceLikelihood, VariationalPreferenceGP
from papa_bayes.models.gp_pairwise import PairwiseGPReward

__all__ = [
    "PyroRewardModel",
    "LinearReward",
    "HierarchicalLinearReward",
    "comparison_log_probs",
    "log_cdf",
    "PreferenceGP",
    "VariationalPreferenceGP",
    "PreferenceLikelihood",
    "PairwiseGPReward",
]
