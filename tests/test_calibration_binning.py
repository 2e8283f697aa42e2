"""Reliability bins of float32 probabilities, whatever container they come in."""

from __future__ import annotations

import numpy as np
import torch

from papa_bayes.diagnostics import expected_calibration_error, reliability_curve


def test_float32_probabilities_bin_alike_in_a_tensor_an_array_or_a_list_of_scalars():
    # A list of NumPy float32 scalars was parsed in float64: its 0.7 (0.69999999) fell in [0.6, 0.7), where the
    # same values as a float32 array or tensor fall in [0.7, 0.8).
    values = [0.1, 0.3, 0.7, 0.9]
    outcomes = [0, 0, 1, 1]
    expected = [1, 3, 7, 9]
    for probs in (torch.tensor(values, dtype=torch.float32), np.array(values, dtype=np.float32),
                  [np.float32(v) for v in values], np.array(values, dtype=np.float16)):
        _, _, count = reliability_curve(probs, outcomes, num_bins=10)
        assert count.nonzero().reshape(-1).tolist() == expected, type(probs)
    # Python floats and float64 stay in float64 (0.7 -> [0.7, 0.8) there too); a mixed list promotes to float64.
    for probs in (values, np.array(values), [np.float32(0.1), 0.3, 0.7, 0.9]):
        _, _, count = reliability_curve(probs, outcomes, num_bins=10)
        assert count.nonzero().reshape(-1).tolist() == expected
    listed = expected_calibration_error([np.float32(v) for v in values], outcomes)
    assert listed == expected_calibration_error(np.array(values, dtype=np.float32), outcomes)
