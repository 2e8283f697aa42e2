"""Errors and warnings of papa_bayes.

Every error raised on bad user input is an :class:`InputDataError` that names the
field, what was expected and what was found, e.g.
``InputDataError("comparisons", "shape `m x 2`", "(5, 3)")`` reads
"comparisons: expected shape `m x 2`, got (5, 3)."
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "PapaBayesError",
    "InputDataError",
    "ModelError",
    "InferenceError",
    "StoreError",
    "PapaBayesWarning",
]


class PapaBayesError(Exception):
    """Base class of every error papa_bayes raises on purpose."""


class InputDataError(PapaBayesError, ValueError):
    """Bad user input: names the field, the expectation and what was found.

    Args:
        field: the argument or data field at fault (``"comparisons"``).
        expected: what a valid value looks like (``"shape `m x 2`"``).
        actual: what was passed (``(5, 3)``); formatted with ``repr`` unless a str.

    ``InputDataError(message)`` alone (as Pyro re-raises errors from inside a traced
    model, with the trace's shapes added) keeps the message and reads the field from
    its start.
    """

    def __init__(self, field: str, expected: str | None = None, actual: Any = None) -> None:
        if expected is None:  # a whole message: how Pyro's trace re-raises an error with its shapes added
            self.field, self.expected, self.actual = field.split(":", 1)[0], None, None
            super().__init__(field)
            return
        self.field = field
        self.expected = expected
        self.actual = actual
        shown = actual if isinstance(actual, str) else repr(actual)
        super().__init__(f"{field}: expected {expected}, got {shown}.")

    def __reduce__(self) -> tuple[Any, ...]:  # pickling keeps the fields (multiprocessing, joblib)
        if self.expected is None:
            return (type(self), (str(self),))
        return (type(self), (self.field, self.expected, self.actual))


class ModelError(PapaBayesError):
    """A model was configured or combined in a way it cannot support."""


class InferenceError(PapaBayesError):
    """Inference failed (non-finite log density, Newton did not converge, ...)."""


class StoreError(PapaBayesError):
    """The durable store is corrupt, from a newer schema, or otherwise unusable."""


class PapaBayesWarning(UserWarning):
    """Warnings of papa_bayes (poor convergence, fallbacks taken, ...)."""
