"""Manifold precision / recall, class entropy and evaluate_samples: bad input names its field."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from papa_bayes.diffusion import (
    DigitsPerson,
    class_entropy,
    evaluate_samples,
    knn_radii,
    manifold_membership,
    manifold_precision,
    manifold_recall,
)
from papa_bayes.exceptions import InputDataError


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


REF = torch.randn(20, 1, 8, 8, generator=gen(0))
SAMPLES = torch.randn(6, 1, 8, 8, generator=gen(1))


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda: knn_radii(REF, k=0), "k"),  # k=0: every radius 0, precision silently 0
        (lambda: manifold_precision(SAMPLES, REF, k=0), "k"),
        (lambda: manifold_precision(SAMPLES, REF, k=-1), "k"),
        (lambda: manifold_precision(SAMPLES, REF, k=2.5), "k"),
        (lambda: manifold_precision(SAMPLES[:0], REF), "samples"),
        (lambda: manifold_recall(SAMPLES[:0], REF), "samples"),
        (lambda: manifold_recall(SAMPLES[:3], REF), "samples"),  # the balls are the samples' own: n > k
        (lambda: manifold_recall(SAMPLES[..., :4], REF), "samples"),
        (lambda: manifold_precision(SAMPLES, REF.numpy()), "reference"),
        (lambda: manifold_membership(SAMPLES, REF, radii=torch.ones(7)), "radii"),
        (lambda: manifold_membership(SAMPLES, REF, radii=torch.ones(1)), "radii"),  # no silent broadcast
        (lambda: class_entropy([-1, 2]), "classes"),
        (lambda: class_entropy([1.9, 1.2]), "classes"),  # no silent truncation
        (lambda: class_entropy([10]), "classes"),
        (lambda: class_entropy(["a"]), "classes"),
        (lambda: class_entropy(np.eye(10, dtype=int)), "classes"),  # one-hot rows were read as classes 0 and 1
        (lambda: knn_radii(torch.full((5, 4), float("nan"))), "reference"),  # were NaN radii
        (lambda: manifold_precision(torch.full((3, 64), float("nan")), REF), "samples"),  # was 0.0, silently
        (lambda: manifold_recall(SAMPLES, torch.full((20, 1, 8, 8), float("inf"))), "reference"),
        (lambda: manifold_membership(SAMPLES, REF, radii=torch.full((20,), float("nan"))), "radii"),
        (lambda: manifold_membership(SAMPLES, REF, radii=-torch.ones(20)), "radii"),
    ],
)
def test_metrics_bad_input(call, field):
    with pytest.raises(InputDataError) as info:
        call()
    assert info.value.field == field


def test_metrics_values_on_valid_input():
    assert manifold_precision(REF, REF) == 1.0 and manifold_recall(REF, REF) == 1.0
    assert manifold_precision(REF + 100, REF) == 0.0
    single = class_entropy([4, 4, 4])
    assert single == 0.0 and math.copysign(1.0, single) == 1.0  # not -0.0
    assert class_entropy([]) == 0.0 and class_entropy(np.array([1.0, 4.0])) == 1.0  # integral floats are classes
    assert math.isclose(class_entropy(torch.tensor([1, 4, 7, 9])), 2.0)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"images": torch.zeros(0, 1, 8, 8)}, "images"),
        ({"k": 0}, "k"),
        ({"reference": np.zeros((20, 1, 8, 8))}, "reference"),
        ({"reference": torch.zeros(20, 1, 4, 4)}, "reference"),  # was blamed on "samples"
        ({"liked": 4}, "liked"),
        ({"reference": torch.full((20, 1, 8, 8), float("nan"))}, "reference"),  # every measure was 0, silently
    ],
)
def test_evaluate_samples_bad_input(kwargs, field):
    args = {"images": torch.zeros(4, 1, 8, 8), **kwargs}
    with pytest.raises(InputDataError) as info:
        evaluate_samples(args.pop("images"), **args)
    assert info.value.field == field


@pytest.mark.parametrize("liked", [4, "14", ("a",), (1.7, 4.2), (True, 4), (), (1, 1), (3, 10)])
def test_liked_must_be_distinct_integer_digits(liked):
    with pytest.raises(InputDataError) as info:
        DigitsPerson(liked=liked)
    assert info.value.field == "liked"


def test_liked_accepts_integer_sequences():
    assert DigitsPerson(liked=np.array([1, 4])).liked == (1, 4)
    assert DigitsPerson(liked=torch.tensor([7, 9])).liked == (7, 9)
    assert DigitsPerson(liked=[1, 4, 7, 9]).liked == (1, 4, 7, 9)


def test_images_in_unit_range_warn_where_the_measure_depends_on_scale():
    """Images in [0, 1] (a diffusers pipeline's output) scored silently: 0.594 preferred against 0.469."""
    import warnings

    from papa_bayes.diffusion import ManifoldGuard, load_digits_splits, load_judge
    from papa_bayes.exceptions import PapaBayesWarning

    digits = load_digits_splits()
    images, reference = digits.user.images[:16], digits.generator.images[:32]
    unit = (images + 1) / 2
    person, guard = DigitsPerson(), ManifoldGuard(reference)
    calls = {
        "evaluate_samples": lambda x: evaluate_samples(x, reference=reference),
        "judge": lambda x: load_judge().predict_proba(x),
        "person.rate": lambda x: person.rate(x),
        "person.utility": lambda x: person.utility(x),
        "person.prefers": lambda x: person.prefers(x, x),
        "manifold_precision": lambda x: manifold_precision(x, reference),
        "manifold_recall": lambda x: manifold_recall(x, reference),
        "guard": lambda x: guard(x),
    }
    for name, call in calls.items():
        with pytest.warns(PapaBayesWarning, match=r"\[-1, 1\]|reference") as record:
            call(unit)
        message = str(record[0].message)
        assert "got values in [0, 1]" in message, (name, message)
        assert record[0].filename == __file__, name  # points at the caller's line
        assert len(record) == (2 if name == "person.prefers" else 1), name  # first and second, no repeats
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            call(images)  # the model's own range: no warning
    with pytest.warns(PapaBayesWarning, match=r"^reference: expected images in the model's range \[-1, 1\]"):
        evaluate_samples(images, reference=(reference + 1) / 2)
    with warnings.catch_warnings():  # a manifold of [0, 1] data measures [0, 1] images as it should
        warnings.simplefilter("error")
        manifold_precision(unit, (reference + 1) / 2)
        DigitsPerson().rate(images[:0])  # an empty batch has no range
