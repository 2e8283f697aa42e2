"""PreferenceData on other devices, ids int64 cannot hold, bool index labels, and the scalar checks' 0-d arrays."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from papa_bayes import InputDataError, PreferenceData
from papa_bayes.checks import check_float, check_int


class _OnGpu(torch.Tensor):
    """A CPU tensor that reports a CUDA device and refuses NumPy, as a CUDA tensor does (no GPU in CI)."""

    @property
    def device(self) -> torch.device:
        return torch.device("cuda", 0)

    def numpy(self, *args, **kwargs):
        raise TypeError("can't convert cuda:0 device type tensor to numpy. Use Tensor.cpu() to copy the tensor "
                        "to host memory first.")

    def cpu(self, *args, **kwargs):
        return self.as_subclass(torch.Tensor).clone()


def _on_gpu(t: torch.Tensor) -> torch.Tensor:
    return t.as_subclass(_OnGpu)


def test_fields_from_a_gpu_are_held_on_the_cpu_and_reach_pandas():
    """GPU items sat beside CPU index tensors, and to_dataframe failed in NumPy on them."""
    items = torch.randn(3, 2, dtype=torch.float64)
    data = PreferenceData(items=_on_gpu(items), comparisons=_on_gpu(torch.tensor([[0, 1]])),
                          ratings=_on_gpu(torch.tensor([[2, 1]])), comparison_rater=_on_gpu(torch.tensor([1])),
                          rating_rater=_on_gpu(torch.tensor([0])))
    for name in ("items", "comparisons", "ties", "ratings", "comparison_rater", "rating_rater"):
        value = getattr(data, name)
        assert type(value) is torch.Tensor and value.device.type == "cpu", name
    comparisons, ratings, frame = data.to_dataframe()
    assert comparisons["winner"].tolist() == [0] and ratings["label"].tolist() == [1]
    assert np.array_equal(frame.to_numpy(), items.numpy())
    grown = data.append(items=_on_gpu(torch.randn(1, 2)), comparisons=_on_gpu(torch.tensor([3, 0])),
                        comparison_rater=_on_gpu(torch.tensor(2)))
    assert type(grown.items) is torch.Tensor and grown.to_dataframe()[0]["winner"].tolist() == [0, 3]


def test_meta_tensors_are_refused_in_our_words():
    with pytest.raises(InputDataError, match="items: expected a tensor holding values, got a tensor on the meta"):
        PreferenceData(items=torch.zeros(3, 2, device="meta"))


@pytest.mark.parametrize("ids, where", [
    (np.array([[2**64 - 1, 0]], dtype=np.uint64), r"18446744073709551615 \(uint64\)"),  # was "got -1"
    ([[2**64 - 1, 0]], "18446744073709551615"),  # NumPy read it as a float: was "got torch.float64"
    ([[2**70, 0]], "1180591620717411303424"),  # an object array: was "an array-like of numbers, got list"
])
def test_ids_beyond_int64_are_refused_not_wrapped(ids, where):
    with pytest.raises(InputDataError, match=rf"^comparisons: expected integers that int64 holds .*, got {where}\.$"):
        PreferenceData(items=torch.randn(3, 2), comparisons=ids)
    with pytest.raises(InputDataError, match="^comparison_rater: expected integers that int64 holds"):
        PreferenceData(items=torch.randn(3, 2), comparisons=[[1, 0]], comparison_rater=np.array([2**63], np.uint64))
    small = PreferenceData(items=torch.randn(3, 2), comparisons=np.array([[2, 1]], dtype=np.uint64))
    assert small.comparisons.tolist() == [[2, 1]]


def test_a_uint64_id_does_not_wrap_onto_a_negative_index_label():
    """The id 2**64 - 1 wrapped to -1 and matched the items index label -1: another item, silently."""
    items = pd.DataFrame({"a": [0.1, 0.2]}, index=[-1, 3])
    df = pd.DataFrame({"winner": np.array([2**64 - 1], dtype=np.uint64), "loser": np.array([3], dtype=np.uint64)})
    with pytest.raises(InputDataError, match=r"^df\['winner'\]: expected integers that int64 holds"):
        PreferenceData.from_dataframe(df, items)


@pytest.mark.parametrize("index", [pd.Index([5, True, 7], dtype=object), pd.Index([False, True])])
def test_bool_index_labels_are_refused(index):
    """An id 1 matched the label True (pandas: True == 1): the comparison went to that row silently."""
    items = pd.DataFrame({"a": np.arange(len(index), dtype=float)}, index=index)
    df = pd.DataFrame({"winner": [1], "loser": [5 if len(index) == 3 else 0]})
    with pytest.raises(InputDataError, match=r"^items: expected an index of integer item ids \(not bools\)"):
        PreferenceData.from_dataframe(df, items)


def test_check_int_takes_0d_integer_arrays_as_check_float_takes_0d_arrays():
    assert check_int("n", np.array(3)) == 3 and type(check_int("n", np.array(3, dtype=np.uint8))) is int
    assert check_float("x", np.array(0.5)) == 0.5
    for value in (np.array(True), np.array(2.0), np.array([3]), np.array(0)):
        with pytest.raises(InputDataError, match="^n: expected an integer >= 1"):
            check_int("n", value)


def test_check_float_refuses_a_0d_bool_array():
    """np.array(True) is no np.bool_: float() read it as 1.0."""
    with pytest.raises(InputDataError, match="^x: expected a finite number >= 0, got array\\(True\\)"):
        check_float("x", np.array(True))
