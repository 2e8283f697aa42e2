"""Diagnostics: ArviZ conversion, calibration metrics, simulation-based calibration."""

from papa_bayes.diagnostics.arviz import build_inference_data, to_inference_data
from papa_bayes.diagnostics.calibration import (
    expected_calibration_error,
    interval_coverage,
    plot_reliability,
    plot_sbc_ranks,
    reliability_curve,
    sbc_ranks,
    sbc_uniformity,
)
from papa_bayes.diagnostics.sbc import SBCResult, simulation_based_calibration

__all__ = ["to_inference_data", "build_inference_data", "expected_calibration_error", "interval_coverage",
           "reliability_curve", "sbc_ranks", "sbc_uniformity", "plot_sbc_ranks", "plot_reliability", "SBCResult",
           "simulation_based_calibration"]
