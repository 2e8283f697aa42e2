"""pandas DataFrames to PreferenceData fields: the work of :meth:`PreferenceData.from_dataframe`.

Kept apart from :mod:`papa_bayes.data` so that the data class reads without the
column handling; nothing here imports pandas (frames are read through their
``columns``, ``index`` and ``[name]``).
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np
import torch
from torch import Tensor

from papa_bayes.checks import holds_bool, is_integer_tensor, plain_array
from papa_bayes.data import _as_tensor, _numbers_held_as_objects, _OptionalColumn
from papa_bayes.exceptions import InputDataError

__all__ = ["dataframe_fields"]

_ITEM_INDICES = "integer item ids (rows of items, or the labels of an items DataFrame's index)"
_LIKE = "+1 (like) or -1 (dislike), or bools (True = like, False = dislike)"


def _rater_ids(field: str, name: str) -> str:
    return f"integer rater ids (map text ids to codes first, e.g. {field}[{name!r}].astype('category').cat.codes)"


def _has_column(argument: str, frame: Any, name: Any) -> bool:
    """Whether ``frame`` has a column ``name``; InputDataError (naming ``argument``) for a name pandas can't look up."""
    try:
        return name in frame.columns
    except TypeError:  # a list or another unhashable value (pandas raises TypeError): no column's name
        raise InputDataError(argument, "a column name (e.g. a str)", type(name).__name__) from None


def _check_frame(field: str, frame: Any, required: dict[str, str]) -> None:
    """InputDataError unless ``frame`` is a DataFrame with the ``required`` columns (argument -> column name)."""
    if not hasattr(frame, "columns"):
        raise InputDataError(field, "a pandas DataFrame", type(frame).__name__)
    for argument, name in required.items():
        if not _has_column(argument, frame, name):
            raise InputDataError(field, f"a column named {name!r} (or {argument}= naming the column)",
                                 list(frame.columns))


def _optional_column(argument: str, name: str | None, field: str, frame: Any) -> str | None:
    """The column ``argument`` names in ``frame``: None when not asked for or a default name absent."""
    if name is None or (isinstance(name, _OptionalColumn) and name not in frame.columns):
        return None
    if not _has_column(argument, frame, name):
        raise InputDataError(argument, f"the name of a column of {field} (it has {list(frame.columns)}) or None",
                             repr(name))
    return name


def _row(frame: Any, i: int) -> str:
    """Row ``i`` as an error names it: by position, with the index label where that differs."""
    label = frame.index[i]
    return f"row {i}" if label == i else f"row {i} (index {label!r})"


def _column(field: str, frame: Any, name: str, expected: str, *, bools_among_numbers: bool = False) -> Tensor:
    """Column ``name`` as a tensor (an empty one as `0` long); text or other non-numbers raise InputDataError.

    So do bools among numbers in an object column (NumPy reads ``[True, 2]`` as ``[1, 2]``), as the
    constructor refuses them in a list, unless ``bools_among_numbers`` (a column of flags: 0/1 and bools).
    """
    column = frame[name]
    if hasattr(column, "columns"):  # several columns of that name (a concat along columns): a frame, not a column
        raise InputDataError(f"{field}[{name!r}]", "one column of that name", f"{len(column.columns)} columns")
    values = plain_array(column)
    if len(values) == 0:  # pandas types empty columns float64
        return torch.zeros(0, dtype=torch.long)
    missing = column.isna() if hasattr(column, "isna") else None
    if missing is not None and bool(missing.any()):
        # (a nullable Int64 column's NA reads as a float NaN, which was reported as a float dtype)
        i = int(np.flatnonzero(np.asarray(missing))[0])
        raise InputDataError(f"{field}[{name!r}]", expected,
                             f"a missing value ({column.iloc[i]}) in {_row(frame, i)}; drop or fill those rows")
    if getattr(values, "dtype", None) == object:
        # An object column of bools or ints (after concat, or a column first filled with None) holds
        # numbers all the same: read them as NumPy would a list.
        values, listed = _numbers_held_as_objects(values)
        if values.dtype.kind in "iuf" and not bools_among_numbers:
            i = next((i for i, v in enumerate(listed) if holds_bool(v)), None)
            if i is not None:
                raise InputDataError(f"{field}[{name!r}]", expected,
                                     f"bools among the numbers, e.g. {listed[i]!r} in {_row(frame, i)}")
    try:
        return torch.as_tensor(values)
    except (TypeError, ValueError, RuntimeError):
        i = next((i for i, v in enumerate(values)
                  if isinstance(v, bool) or not isinstance(v, numbers.Number)), 0)
        raise InputDataError(f"{field}[{name!r}]", expected,
                             f"{column.dtype} values, e.g. {values[i]!r} in {_row(frame, i)}") from None


def _index_column(field: str, frame: Any, name: str, expected: str) -> Tensor:
    return _as_tensor(f"{field}[{name!r}]", _column(field, frame, name, expected), torch.long)


def _like_labels(frame: Any, name: str) -> Tensor:
    """Column ``name`` of a ratings frame as `k` labels +1/-1; bools read as True = +1 (like), False = -1."""
    field = f"ratings[{name!r}]"
    t = _column("ratings", frame, name, _LIKE)
    if t.dtype == torch.bool:
        return t.long() * 2 - 1
    if not is_integer_tensor(t):
        raise InputDataError(field, _LIKE, f"{frame[name].dtype} values, e.g. {t[0].item()!r} in {_row(frame, 0)}")
    bad = (t != 1) & (t != -1)
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        # 0 may mean dislike or "not rated": the caller says which by passing bools.
        hint = f"; for 0/1 labels pass ratings[{name!r}].astype(bool)" if bool(((t == 0) | (t == 1)).all()) else ""
        raise InputDataError(field, _LIKE + hint, f"{int(t[i])} in {_row(frame, i)}")
    return t.long()


def dataframe_fields(
    df: Any | None, ratings: Any | None, *, winner: str, loser: str, tie: str | None, rater: str | None, item: str,
    label: str,
) -> dict[str, Any]:
    """The PreferenceData fields (comparisons, ties, ratings, rater ids) of the frames; see ``from_dataframe``."""
    if df is None and ratings is None:
        raise InputDataError("df", "a DataFrame of comparisons, or ratings= a DataFrame of ratings", None)
    fields: dict[str, Any] = {}
    if df is not None:
        _check_frame("df", df, {"winner": winner, "loser": loser})
        tie_col, rater_col = _optional_column("tie", tie, "df", df), _optional_column("rater", rater, "df", df)
        pairs = [_index_column("df", df, c, _ITEM_INDICES) for c in (winner, loser)]
        fields["comparisons"] = torch.stack(pairs, -1)
        if tie_col is not None:
            ties = _column("df", df, tie_col, "bools", bools_among_numbers=True)
            fields["ties"] = _as_tensor(f"df[{tie_col!r}]", ties, torch.bool)
        if rater_col is not None:
            fields["comparison_rater"] = _index_column("df", df, rater_col, _rater_ids("df", rater_col))
    if ratings is not None:
        _check_frame("ratings", ratings, {"item": item, "label": label})
        rater_col = _optional_column("rater", rater, "ratings", ratings)
        fields["ratings"] = torch.stack([_index_column("ratings", ratings, item, _ITEM_INDICES),
                                         _like_labels(ratings, label)], -1)
        if rater_col is not None:
            fields["rating_rater"] = _index_column("ratings", ratings, rater_col, _rater_ids("ratings", rater_col))
    if df is not None and ratings is not None and len(df) and len(ratings) \
            and ("comparison_rater" in fields) != ("rating_rater" in fields):
        # Rows without ids would count as rater 0, a real rater's id: the constructor refuses
        # that too, but in tensor terms.
        has, lacks, lacking = ("df", "ratings", ratings) if "comparison_rater" in fields else ("ratings", "df", df)
        raise InputDataError("rater", f"a rater column {str(rater)!r} in both df and ratings, or in neither",
                             f"one in {has} only ({lacks} has {list(lacking.columns)})")
    return fields


def dataframe_items(items: Any, fields: dict[str, Any], feature_names: Any) -> tuple[Any, dict[str, Any], Any]:
    """``(items, fields, feature_names)`` with an items DataFrame read as pandas users mean it.

    Its index labels are the item ids the frames use (a default ``RangeIndex`` means
    row numbers, as for an array), its columns the feature names (unless
    ``feature_names`` is given), and every column must hold numbers. Anything else
    passes unchanged.
    """
    if not (hasattr(items, "columns") and hasattr(items, "index") and hasattr(items, "dtypes")):
        return items, fields, feature_names
    text = [str(c) for c, dtype in zip(items.columns, items.dtypes)
            if getattr(dtype, "kind", "O") not in "iuf"]  # bools, text, objects, categories, dates
    if text:
        raise InputDataError("items", "numeric feature columns (drop or encode the others)",
                             f"non-numeric columns {text}")
    if feature_names is None and len(items.columns) and all(isinstance(c, str) for c in items.columns):
        feature_names = list(items.columns)
    index = items.index
    if not _is_row_numbers(index):
        bools = [label for label in index if holds_bool(label)]
        if bools:  # pandas matches the id 1 to the label True (and 0 to False): another item, silently
            raise InputDataError("items", "an index of integer item ids (not bools)",
                                 f"bool labels {bools[:5]} in items.index")
        if not index.is_unique:
            raise InputDataError("items", "an index of distinct item ids", "repeated labels in items.index")
        fields = dict(fields)
        for name, column in (("comparisons", None), ("ratings", 0)):
            if name not in fields:
                continue
            ids = fields[name] if column is None else fields[name][:, column]
            rows = torch.as_tensor(index.get_indexer(ids.reshape(-1).tolist()), dtype=torch.long).reshape(ids.shape)
            if bool((rows < 0).any()):
                missing = sorted({int(i) for i in ids.reshape(-1)[rows.reshape(-1) < 0]})[:5]
                raise InputDataError(name, "item ids found in items.index", f"ids {missing} not in it")
            if column is None:
                fields[name] = rows
            else:
                fields[name] = torch.stack([rows, fields[name][:, 1]], -1)
    # As float64: a nullable column (Int64, Float64) made the frame's array one of objects, refused
    # as "not an array-like of numbers"; its NA reads as NaN, which the data's finiteness check names.
    return items.to_numpy(dtype="float64", na_value=np.nan, copy=True), fields, feature_names


def _is_row_numbers(index: Any) -> bool:
    """Whether a pandas index is 0, 1, ..., n - 1 in order (a default RangeIndex or the same numbers).

    Compared as numbers, not truncated: the labels 0.5, 1.5 or "0", "1" are item ids, not row numbers.
    """
    return all(not holds_bool(i) and isinstance(i, numbers.Real) and i == row for row, i in enumerate(index))
