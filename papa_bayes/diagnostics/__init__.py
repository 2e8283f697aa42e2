"""Diagnostics: ArviZ conversion, calibration metrics, exposure diversity."""

from papa_bayes.diagnostics.arviz import build_inference_data, to_inference_data
from papa_bayes.diagnostics.calibration import expected_calibration_error, interval_coverage, reliability_curve

__all__ = ["to_inference_data", "build_inference_data", "expected_calibration_error", "interval_coverage",
           "reliability_curve"]
