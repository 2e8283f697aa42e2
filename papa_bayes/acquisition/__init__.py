"""Acquisition: which question to ask next.

BoTorch ``AcquisitionFunction`` subclasses working on any
:class:`~papa_bayes.RewardPosterior` (through its joint draws) or on a BoTorch model
of the utility; ``forward`` takes `batch_shape x 2 x d` (pairs) or
`batch_shape x 1 x d` (like/dislike) and returns `batch_shape`.

- Information about the reward (BALD): :class:`PairwiseInformationGain` (strict or
  with ties), :class:`RatingInformationGain`; Houlsby's closed form
  :class:`HoulsbyInformationGain`.
- About the preferred region: :class:`PreferredRegionInformation`,
  :class:`ArgmaxInformation`, :class:`ExpectedUtilityOfBestOption` (and BoTorch's
  qEUBO via :func:`botorch_qeubo`).
- Baselines: :class:`RandomQueries`, :class:`UtilityDifferenceVariance`,
  :class:`ThompsonSampling`.
- Selection: :func:`select_queries` (all pairs of a pool, batches with diversity,
  exploration), :func:`optimize_queries` (continuous features), and
  :func:`exposure_diversity`.

With BoTorch's optimizers: ``optimize_acqf(acq, bounds, q=2)`` optimizes a pair
jointly (what :func:`optimize_queries` does), and with one pending item
(``acq.set_X_pending(anchor)``) ``optimize_acqf_discrete(acq, q=1, choices=pool)``
finds the anchor's best partner in a pool. ``optimize_acqf_discrete(acq, q=2,
choices=pool)`` does not work for a pairwise acquisition: BoTorch builds that
batch one item at a time, valuing each candidate alone (`n x 1 x d`), which a pair
acquisition refuses with an ``InputDataError``. For the best pairs of a pool use
:func:`select_queries` (all pairs scored at once, batches with diversity).

A :class:`~papa_bayes.RewardPosterior` brings its own link and noise units: an
acquisition's ``link=`` or ``noise_scale=`` are for plain BoTorch models, and
one that differs from the posterior's is an ``InputDataError``.

Example:
    Fifteen answers of a simulated person, each question the pair of a 100-item
    pool with the most expected information (:func:`select_queries` picks one; see
    its example), the posterior updated online after every answer:

    >>> import torch
    >>> from papa_bayes.acquisition import queries_to_reach, run_active_learning
    >>> from papa_bayes.users import SimulatedUser
    >>> pool = torch.randn(100, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    >>> person = SimulatedUser([1.0, -1.0, 0.5], rationality=3.0, seed=0)
    >>> run = run_active_learning(person, pool, strategy="eig", num_queries=15)
    >>> len(run.alignment)  # cos(E[w], w*) after each answer
    15
    >>> queries_to_reach(run.alignment, 0.9) <= 15
    True
"""

from papa_bayes.acquisition.base import DrawsAcquisitionFunction, entropy_bits, outcome_log_probs
from papa_bayes.acquisition.baselines import RandomQueries, ThompsonSampling, UtilityDifferenceVariance
from papa_bayes.acquisition.batch import greedy_dpp, greedy_joint_information
from papa_bayes.acquisition.closed_form import (
    HoulsbyInformationGain,
    gaussian_expected_max,
    houlsby_information_gain,
    pair_moments,
    utility_moments,
)
from papa_bayes.acquisition.continuous import optimize_queries
from papa_bayes.acquisition.diversity import ExposureDiversity, exposure_diversity
from papa_bayes.acquisition.information import (
    PairwiseInformationGain,
    RatingInformationGain,
    comparison_information_gain,
    information_from_log_probs,
    rating_information_gain,
)
from papa_bayes.acquisition.preferred import (
    ArgmaxInformation,
    ExpectedUtilityOfBestOption,
    PreferredRegionInformation,
    botorch_qeubo,
    grouped_information,
    region_thresholds,
)
from papa_bayes.acquisition.selection import (
    MAX_PAIRS,
    STRATEGIES,
    QuerySelection,
    all_pairs,
    make_acquisition,
    select_queries,
)
from papa_bayes.acquisition.simulation import (
    ActiveLearningRun,
    estimated_weights,
    queries_to_reach,
    run_active_learning,
    weight_entropy_bits,
)

__all__ = [
    "DrawsAcquisitionFunction",
    "PairwiseInformationGain",
    "RatingInformationGain",
    "HoulsbyInformationGain",
    "PreferredRegionInformation",
    "ArgmaxInformation",
    "ExpectedUtilityOfBestOption",
    "botorch_qeubo",
    "RandomQueries",
    "UtilityDifferenceVariance",
    "ThompsonSampling",
    "STRATEGIES",
    "MAX_PAIRS",
    "QuerySelection",
    "select_queries",
    "make_acquisition",
    "optimize_queries",
    "run_active_learning",
    "ActiveLearningRun",
    "queries_to_reach",
    "estimated_weights",
    "weight_entropy_bits",
    "ExposureDiversity",
    "exposure_diversity",
    "all_pairs",
    "comparison_information_gain",
    "rating_information_gain",
    "information_from_log_probs",
    "grouped_information",
    "region_thresholds",
    "houlsby_information_gain",
    "gaussian_expected_max",
    "utility_moments",
    "pair_moments",
    "entropy_bits",
    "outcome_log_probs",
    "greedy_dpp",
    "greedy_joint_information",
]
