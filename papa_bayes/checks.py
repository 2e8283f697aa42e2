"""Argument checks shared across the package: each returns the value or raises
:class:`~papa_bayes.exceptions.InputDataError` naming the field, what was expected
and what came; :func:`reading` and :func:`read_json_object` do the same for files."""

from __future__ import annotations

import argparse
import functools
import json
import math
import numbers
import os
import sys
import textwrap
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, TypeVar

import torch
from torch import Tensor

from papa_bayes.exceptions import InputDataError

__all__ = ["MAX_SEED", "DefaultsHelpFormatter", "bounded_arg", "check_bool", "check_device", "check_finite",
           "check_float", "check_float_dtype", "check_generator", "check_int", "check_path", "check_real_tensor",
           "holds_bool", "is_integer_tensor", "parse_with_tiny", "plain_array", "read_json_object", "reading",
           "renamed_option", "shape_of"]

_Function = TypeVar("_Function", bound=Callable[..., Any])


def _shown(value: Any) -> Any:
    """``value`` as an error shows it: a str quoted, so that "3" does not read as 3."""
    return repr(value) if isinstance(value, str) else value


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` of the demo and the benchmarks: each option's default after its help (a list as typed:
    ``0 1 2``), except where it says nothing (None, a flag's False) or where the help says it in words
    (``"(default all seven)"``)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False or "(default " in (action.help or ""):
            return action.help
        text = super()._get_help_string(action) or ""
        if isinstance(action.default, (list, tuple)) and text.endswith("%(default)s)"):
            text = text[:-len("%(default)s)")] + " ".join(map(str, action.default)).replace("%", "%%") + ")"
        return text

    def _split_lines(self, text: str, width: int) -> list[str]:  # a default such as eig,eig:known kept whole
        return textwrap.wrap(" ".join(text.split()), width, break_long_words=False, break_on_hyphens=False)


def bounded_arg(kind: type, low: float, *, strict: bool = False) -> Callable[[str], Any]:
    """An argparse ``type=``: ``kind(text)``, at least ``low`` (above it if ``strict``), else argparse's one-line error.

    The examples' command lines use it, so that ``--queries -2`` reads "argument --queries: expected an integer
    >= 1, got '-2'" (exit 2) instead of a traceback from deep inside.

    Example:
        >>> import argparse
        >>> from papa_bayes.checks import bounded_arg
        >>> parser = argparse.ArgumentParser()
        >>> _ = parser.add_argument("--queries", type=bounded_arg(int, 1), default=20)
        >>> parser.parse_args(["--queries", "5"]).queries
        5
    """
    import argparse

    def parse(text: str) -> Any:
        value = kind(text)
        if not (value > low if strict else value >= low):  # NaN too
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'} "
                                             f"{'>' if strict else '>='} {low:g}, got {text!r}")
        return value

    parse.__name__ = kind.__name__  # text that is no number: argparse's "invalid int value: 'x'"
    return parse


def parse_with_tiny(parser: argparse.ArgumentParser, argv: Sequence[str] | None,
                    tiny: dict[str, Any]) -> argparse.Namespace:
    """``parser``'s options from ``argv``; with ``--tiny``, the options left off the command line take their
    value in ``tiny`` (keyed by dest) instead of their default, and options given explicitly are kept, as in
    ``papa-bayes demo --tiny``. Every value is then checked by the caller as usual (the benchmarks, the examples).

    Raises:
        ValueError: a key of ``tiny`` that is none of the parser's options (a mistake in the caller).
    """
    args = parser.parse_args(argv)
    if args.tiny:
        unknown = set(tiny) - {action.dest for action in parser._actions}
        if unknown:
            raise ValueError(f"tiny values for options the parser does not have: {sorted(unknown)}")
        parser.set_defaults(**tiny)  # a default is what an option left out takes; one given is parsed anew
        args = parser.parse_args(argv)
    return args


def shape_of(value: Any) -> Any:
    """What an error shows of a value that should have been a tensor: its shape, else its type's name."""
    return tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__


def is_integer_tensor(value: Any) -> bool:
    """True for a tensor of an integer dtype (not bool, floating or complex)."""
    return isinstance(value, Tensor) and not (value.is_floating_point() or value.is_complex() or value.dtype == torch.bool)


def holds_bool(value: Any) -> bool:
    """Whether a (nested) list or tuple holds a bool: NumPy and torch read ``[0, True]`` as integers."""
    if isinstance(value, (list, tuple)):
        return any(holds_bool(v) for v in value)
    return isinstance(value, bool) or str(getattr(value, "dtype", None)) in ("bool", "torch.bool")  # NumPy's, torch's


def plain_array(value: Any) -> Any:
    """A pandas DataFrame or Series as a writable NumPy array (torch warns on read-only ones); anything else as it is."""
    return value.to_numpy(copy=True) if hasattr(value, "to_numpy") and hasattr(value, "shape") else value


def _is_numpy_array(value: Any) -> bool:
    """Whether ``value`` is a NumPy array (told without importing NumPy, as :func:`check_bool` tells its bools)."""
    return type(value).__module__ == "numpy" and type(value).__name__ == "ndarray"


def check_finite(name: str, value: Tensor, what: str = "values") -> Tensor:
    """``value`` unless it holds NaN, inf or complex numbers: then InputDataError (shapes are the caller's)."""
    if value.is_complex() or not bool(torch.isfinite(value).all()):
        raise InputDataError(name, f"finite real {what}", "NaN, inf or complex values")
    return value


#: The largest seed torch takes (``torch.Generator.manual_seed``, ``torch.manual_seed``): a larger one was its
#: "Overflow when unpacking long long".
MAX_SEED = 2**64 - 1


def check_int(name: str, value: Any, *, minimum: int = 1, maximum: int | None = None,
              expected: str | None = None) -> int:
    """``value`` as an int, or InputDataError unless an integer >= ``minimum`` (and <= ``maximum``).

    NumPy integers and 0-d integer tensors or arrays count (as :func:`check_float` counts 0-d ones); bools,
    arrays of one number and integers held as floats do not. ``expected`` replaces the error's wording of the
    range (e.g. to say what the bounds are).
    """
    if expected is None:
        expected = f"an integer >= {minimum}" if maximum is None else f"an integer in [{minimum}, {maximum}]"
    if is_integer_tensor(value) and value.dim() == 0:
        value = int(value)
    elif _is_numpy_array(value) and value.ndim == 0 and value.dtype.kind in "iu":  # np.array(3); not np.array(True)
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum \
            or (maximum is not None and value > maximum):
        raise InputDataError(name, expected, _shown(value))
    return int(value)


def check_float(name: str, value: Any, *, minimum: float = 0.0, strict: bool = False,
                maximum: float | None = None, inclusive_maximum: bool = False, expected: str | None = None) -> float:
    """``value`` as a finite float in the given range, or InputDataError (also for a bool, a str or an array).

    NumPy numbers and 0-d tensors or arrays count; an array of one number does not (as in
    :func:`check_int`). The range is ``> minimum`` (``strict``) or ``>= minimum``, and, with ``maximum``,
    ``< maximum`` or (``inclusive_maximum``) ``<= maximum``. ``expected`` replaces
    the error's wording of the range.
    """
    if expected is None:
        bound = f"> {minimum:g}" if strict else f">= {minimum:g}"
        upper = "" if maximum is None else f" and {'<=' if inclusive_maximum else '<'} {maximum:g}"
        expected = f"a finite number {bound}{upper}"
    # np.array(True) too: a 0-d array is no np.bool_, and float() of it reads 1.0
    numpy_bool = type(value).__module__ == "numpy" and (type(value).__name__ in ("bool_", "bool")
                                                        or getattr(getattr(value, "dtype", None), "kind", None) == "b")
    tensor_bool = isinstance(value, torch.Tensor) and value.dtype == torch.bool
    # float() of a NumPy complex drops the imaginary part (with only a ComplexWarning)
    complex_ = (isinstance(value, numbers.Complex) and not isinstance(value, numbers.Real)) \
        or getattr(getattr(value, "dtype", None), "kind", None) == "c" \
        or (isinstance(value, Tensor) and value.is_complex())
    # An array of one number is refused as check_int refuses it (float() would read a tensor's, not NumPy's).
    array = getattr(value, "ndim", 0) != 0
    if isinstance(value, (bool, str, bytes)) or numpy_bool or tensor_bool or complex_ or array:
        raise InputDataError(name, expected, _shown(value))
    try:
        x = float(value)
    except (TypeError, ValueError, OverflowError, RuntimeError):  # RuntimeError: a tensor of several numbers
        raise InputDataError(name, expected, _shown(value)) from None
    above = maximum is not None and (x > maximum if inclusive_maximum else x >= maximum)
    if not math.isfinite(x) or x < minimum or (strict and x == minimum) or above:
        raise InputDataError(name, expected, value)
    return x


def check_device(name: str, value: Any) -> torch.device:
    """``value`` as a ``torch.device`` this machine has, or InputDataError.

    Catches what PyTorch would otherwise report late, or in its own words: a
    misspelt device (``"cpux"``), CUDA or MPS where there is none, a GPU index
    past the last one.
    """
    expected = "a torch device this machine has (e.g. 'cpu'" + (", 'cuda'" if torch.cuda.is_available() else "") + ")"
    if isinstance(value, torch.device):
        device = value
    elif isinstance(value, str) or (isinstance(value, numbers.Integral) and not isinstance(value, bool)):
        try:
            device = torch.device(value)
        except (RuntimeError, TypeError, ValueError):
            raise InputDataError(name, expected, _shown(value)) from None
    else:
        raise InputDataError(name, expected, _shown(value))
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (device.index is not None and device.index >= count):
            raise InputDataError(name, f"{expected}; this machine has {count} CUDA device(s)", _shown(value))
    elif device.type == "mps":
        if not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
            raise InputDataError(name, f"{expected}; MPS is not available here", _shown(value))
    elif device.type != "cpu":
        if not getattr(torch, device.type, None) or not getattr(getattr(torch, device.type), "is_available", lambda: False)():
            raise InputDataError(name, f"{expected}; {device.type!r} is not available here", _shown(value))
    return device


def check_bool(name: str, value: Any, *, optional: bool = False) -> bool | None:
    """``value`` as a bool (NumPy bools, 0-d tensors and the integers 0 and 1 too; None when ``optional``), or
    InputDataError.

    ``bool("no")`` is True: text or any other object is refused rather than read by
    its truthiness.
    """
    if optional and value is None:
        return None
    numpy_bool = type(value).__module__ == "numpy" and type(value).__name__ in ("bool_", "bool")  # without importing NumPy
    if isinstance(value, Tensor) and value.dim() == 0 and (value.dtype == torch.bool or is_integer_tensor(value)):
        value = value.item()  # a 0-d tensor counts, as in check_int; one of several elements does not
    if isinstance(value, bool) or numpy_bool or (isinstance(value, numbers.Integral) and value in (0, 1)):
        return bool(value)
    raise InputDataError(name, "None, True or False" if optional else "True or False", _shown(value))


def check_generator(name: str, value: Any, *, optional: bool = False, cpu: bool = False) -> torch.Generator | None:
    """``value`` as a ``torch.Generator`` (on the CPU with ``cpu``; None when ``optional``), or InputDataError."""
    if optional and value is None:
        return None
    if not isinstance(value, torch.Generator) or (cpu and value.device.type != "cpu"):
        what = "a CPU torch.Generator" if cpu else "a torch.Generator"
        raise InputDataError(name, f"None or {what}" if optional else what, _shown(value))
    return value


def check_real_tensor(name: str, value: Any, expected: str, *, dtype: torch.dtype | None = torch.float64) -> Tensor:
    """``value`` as a tensor of real numbers, or InputDataError for text, bools (among numbers too) and complex
    numbers.

    The result has ``dtype``; with ``dtype=None`` a floating tensor keeps its own
    (anything else, lists of floats too, becomes float64). Gradients are kept: acquisition values are
    differentiated through their inputs. Shapes are the caller's to check.
    """
    if isinstance(value, Tensor):
        t = value
    else:
        try:
            t = torch.as_tensor(value)
            if t.dtype == torch.float32 and getattr(value, "dtype", None) is None:
                t = torch.as_tensor(value, dtype=torch.float64)  # Python floats: parse in double, not float32
        except (TypeError, ValueError, RuntimeError):
            raise InputDataError(name, expected, type(value).__name__) from None
    shown = expected if "real" in expected else f"{expected} (real numbers)"  # said once
    if t.dtype != torch.bool and holds_bool(value):
        # [True, 2] reads as integers: its bool would pass as 1. The error names the bools as an array of
        # them is named (diagnostics.calibration, which reads bools as 0/1, tells them by that actual).
        raise InputDataError(name, f"{shown}, not bools among them", str(torch.bool))
    if t.dtype == torch.bool or t.is_complex():
        raise InputDataError(name, shown, str(t.dtype))
    if dtype is None:
        return t if isinstance(value, Tensor) and t.is_floating_point() else t.to(torch.float64)
    return t.to(dtype)


def check_path(name: str, value: Any, *, expected: str = "a path (str or os.PathLike)") -> Path:
    """``value`` as a Path, or InputDataError unless a non-empty str or ``os.PathLike`` (``expected`` words the error)."""
    if not isinstance(value, (str, os.PathLike)):
        raise InputDataError(name, expected, type(value).__name__)
    if not os.fspath(value):  # Path("") is ".", the current folder: never what an empty name meant
        raise InputDataError(name, expected, "''")
    return Path(value)


@contextmanager
def reading(name: str, expected: str, where: Any, *,
            errors: tuple[type[BaseException], ...] = (OSError, ValueError)) -> Iterator[None]:
    """Within: a missing, unreadable or corrupt file raises InputDataError rather than the reader's own error.

    ``errors`` are what the reader raises for such a file (OSError and ValueError:
    diffusers' and ``Path.read_text``'s words, JSONDecodeError and UnicodeDecodeError
    among them); the error reads ``name: expected <expected>, got <where> (<Error>:
    <its first line>)``. An InputDataError raised within passes unchanged.
    """
    try:
        yield
    except InputDataError:
        raise
    except errors as err:
        detail = str(err).splitlines()[0] if str(err) else ""
        raise InputDataError(name, expected, f"{where} ({type(err).__name__}: {detail})") from err


def read_json_object(name: str, file: Path, expected: str, *, actual: Any = None) -> dict[str, Any]:
    """The JSON object (a dict) in ``file``, or InputDataError(name, expected, ``actual``; the file by default)
    when the file cannot be read, is no JSON or holds another JSON value."""
    try:
        value = json.loads(Path(file).read_text())
    except (OSError, ValueError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        value = None
    if not isinstance(value, dict):
        raise InputDataError(name, expected, str(file) if actual is None else actual)
    return value


def check_float_dtype(name: str, value: Any) -> torch.dtype:
    """``value`` unless not a floating-point ``torch.dtype`` (a str such as "float16" too)."""
    if not isinstance(value, torch.dtype) or not value.is_floating_point:
        raise InputDataError(name, "a floating-point torch.dtype (e.g. torch.float32)", _shown(value))
    return value


def implements(obj: Any, name: str, protocol: type) -> bool:
    """Whether ``obj`` has a callable ``name`` of its own, not ``protocol``'s placeholder.

    A class that subclasses a protocol (``users.User``, ``sources.CandidateSource``)
    inherits its methods' docstring-only bodies: ``callable`` alone would accept a
    subclass that never wrote the method.
    """
    if not callable(getattr(obj, name, None)):
        return False
    return getattr(type(obj), name, None) is not getattr(protocol, name, None)


def caller_stacklevel() -> int:
    """The ``stacklevel`` of :func:`warnings.warn` that names the first caller outside papa_bayes (and torch).

    Called from the function that warns: however deep in the package it sits (a fit
    or an online update, or a feature map's ``forward`` under torch's ``Module.__call__``),
    the warning points at the user's line.
    """
    skip = tuple(os.path.dirname(os.path.abspath(f)) + os.sep for f in (__file__, torch.__file__))
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(skip):
        frame, level = frame.f_back, level + 1
    if frame is None or os.path.basename(frame.f_code.co_filename).startswith(("runpy", "<frozen runpy")):
        # Run as a program (python -m papa_bayes.cli): no user line calls in, so name the package's outermost one.
        return level - 1
    return level


def renamed_option(old: str, new: str) -> Callable[[_Function], _Function]:
    """Decorator: the keyword ``old`` of a function whose option is now ``new`` still works, for one release.

    A call with ``old=`` warns (a FutureWarning naming the function and ``new=``) and
    passes its value on as ``new=``, so that the function's own check of the value
    applies to either name; a call with both raises InputDataError (field ``old``).

    Example:
        >>> import warnings
        >>> from papa_bayes.checks import renamed_option
        >>> @renamed_option("progress", "progress_bar")
        ... def sample(model, *, progress_bar: bool = True):
        ...     return progress_bar
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     sample(None, progress=False)
        False
        >>> print(caught[0].message)
        sample: progress= is deprecated and will be removed in the next release; use progress_bar= instead.
    """

    def decorate(function: _Function) -> _Function:
        name = function.__qualname__.removesuffix(".__init__")  # a class is called by its own name

        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if old in kwargs:
                if new in kwargs:
                    raise InputDataError(old, f"only {new}= ({old}= is its old name)", f"both {old}= and {new}=")
                warnings.warn(f"{name}: {old}= is deprecated and will be removed in the next release; "
                              f"use {new}= instead.", FutureWarning, stacklevel=2)
                kwargs[new] = kwargs.pop(old)
            return function(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate
