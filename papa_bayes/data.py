"""PreferenceData: the one data type every layer of papa_bayes speaks.

Items are feature vectors; comparisons index into them, winner first (BoTorch's
convention); ratings are PAPA's like/dislike answers on single items.
"""

from __future__ import annotations

import json
import numbers
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from papa_bayes.checks import check_int, check_path, holds_bool, is_integer_tensor, plain_array, reading
from papa_bayes.exceptions import InputDataError

__all__ = ["PreferenceData", "check_preference_data"]


def _numbers_held_as_objects(values: Any) -> tuple[Any, list]:
    """An object array's values read as NumPy reads their list (numbers held as objects: a nullable Int64 frame,
    an array of mixed columns, a concatenated column), or ``values`` itself when they are not all numbers; and that
    list (where a bool among the numbers is still to be seen)."""
    listed = values.tolist()
    inferred = np.array(listed)
    return (inferred if inferred.dtype.kind in "biuf" else values), listed


def _as_tensor(name: str, value: Any, dtype: torch.dtype, *, allow_float: bool = True) -> Tensor:
    """Convert without silent coercion (floats for an integer field are an error); always a copy, on the CPU.

    A copy, so that the validated data never share memory with the caller's arrays:
    a later change to those would bypass the checks. On the CPU, so that every field sits
    beside the index tensors made here, NumPy (``to_dataframe``) can read it, and the models,
    which compute in float64 on the CPU, take it as it is.
    """
    if isinstance(value, Tensor):
        if value.device.type == "meta":  # no values to read (.cpu() raises NotImplementedError)
            raise InputDataError(name, "a tensor holding values", "a tensor on the meta device")
        t = value.detach().cpu()
    else:
        big = None
        try:
            # Through NumPy: Python floats stay float64 (torch.as_tensor would round them to float32), and
            # a read-only array (pandas' .values) is copied rather than read in place (torch warns).
            array = listed = np.array(plain_array(value))
            if array.dtype == object:  # as from_dataframe reads such a column
                array, listed = _numbers_held_as_objects(array)
            if dtype == torch.long and array.dtype.kind in "fuO":
                # NumPy reads [[2**63, 0]] as floats, [[2**70, 0]] as objects: the error named a float dtype
                big = _beyond_int64(value if listed is array else listed)
            t = torch.as_tensor(value) if array.dtype == object else torch.from_numpy(array)
        except (TypeError, ValueError, RuntimeError) as err:
            if big is not None:
                raise InputDataError(name, _INT64_IDS, big) from None
            raise InputDataError(name, "an array-like of numbers", type(value).__name__) from err
        if dtype != torch.bool and t.dtype != torch.bool and holds_bool(value if listed is array else listed):
            # NumPy reads [[0, True]] as integers: a bool among numbers would pass as 1 (an index, a like).
            raise InputDataError(name, "integer dtype" if dtype == torch.long else "a real (floating point) dtype",
                                 "bools among the numbers")
        if big is not None:
            raise InputDataError(name, _INT64_IDS, big)
    if dtype == torch.long and t.dtype == torch.uint64 and t.numel() and bool((t.view(torch.long) < 0).any()):
        # From 2**63 on, the cast to long wraps to negative ids (an id 2**64 - 1 was reported as -1, or
        # matched an items index label -1). Compared through the bits: torch has no uint64 comparisons.
        first = t.reshape(-1)[(t.view(torch.long) < 0).reshape(-1).nonzero()[0, 0]]
        raise InputDataError(name, _INT64_IDS, f"{int(first.view(torch.long)) + 2**64} (uint64)")
    if t.numel() == 0 and dtype in (torch.long, torch.bool):
        return t.to(dtype)  # an empty list ([]) reads as float32: it holds no value to coerce
    if dtype == torch.long:
        if not is_integer_tensor(t):
            # Indices are never coerced from floats or bools: that hides bugs upstream.
            raise InputDataError(name, "integer dtype", str(t.dtype))
        return t.to(torch.long, copy=True)
    if dtype == torch.bool:
        if t.dtype != torch.bool:
            if t.numel() and not bool(torch.all((t == 0) | (t == 1))):
                raise InputDataError(name, "bool values (True/False or 0/1)", str(t.dtype))
        return t.to(torch.bool, copy=True)
    if not (t.is_floating_point() or t.dtype in (torch.int32, torch.int64, torch.int16, torch.int8, torch.uint8)):
        raise InputDataError(name, "a real (floating point) dtype", str(t.dtype))
    return t.to(dtype, copy=True)


_INT64_IDS = "integers that int64 holds (-2**63 to 2**63 - 1)"


def _refuse_text_ids(name: str, value: Any) -> None:
    """InputDataError naming the way out for rater ids given as text ("an array-like of numbers, got list" did not)."""
    text = _first_text(value)
    if text is not None:
        raise InputDataError(name, "integer rater ids (map text ids to 0..R-1 first, e.g. with pandas.factorize "
                             "or pd.Categorical(ids, categories=names).codes)", repr(text))


def _first_text(value: Any) -> str | None:
    """The first str (or bytes) in a list, tuple or NumPy / pandas array of ids, or None."""
    if isinstance(value, (str, bytes)):
        return value if isinstance(value, str) else value.decode(errors="replace")
    if isinstance(value, Tensor):
        return None
    values = plain_array(value)
    if getattr(values, "dtype", None) is not None and values.dtype.kind not in "OUS":
        return None  # numbers: nothing to look through
    if not isinstance(values, (list, tuple)) and not hasattr(values, "tolist"):
        return None
    listed = values.tolist() if hasattr(values, "tolist") else values
    for v in listed if isinstance(listed, (list, tuple)) else [listed]:
        found = _first_text(v) if isinstance(v, (str, bytes, list, tuple)) else None
        if found is not None:
            return found
    return None


def _beyond_int64(listed: Any) -> int | None:
    """The first Python int in a (nested) list that int64 cannot hold, or None."""
    if isinstance(listed, (list, tuple)):
        return next((big for v in listed if (big := _beyond_int64(v)) is not None), None)
    is_int = isinstance(listed, numbers.Integral) and not isinstance(listed, bool)
    return int(listed) if is_int and not -2**63 <= listed < 2**63 else None


def _index_rows(name: str, value: Any, expected: str) -> Tensor:
    """New `m x 2` index rows for ``append`` (one row may come as a `2` vector; empty: `0 x 2`)."""
    t = _as_tensor(name, value, torch.long)
    if t.ndim == 1 and t.numel() == 0:  # [] (a `0 x 3` or `3 x 0` array is a wrong shape, not empty rows)
        return torch.zeros(0, 2, dtype=torch.long)
    if t.shape == (2,):
        t = t.reshape(1, 2)
    _check_shape(name, t, expected, 2, 2)
    return t


def _check_shape(name: str, t: Tensor, expected: str, ndim: int, last: int | None = None) -> None:
    if t.ndim != ndim or (last is not None and t.shape[-1] != last):
        raise InputDataError(name, f"shape `{expected}`", tuple(t.shape))


class _OptionalColumn(str):
    """A default column name of ``from_dataframe``: used where the frame has it, skipped where not.

    A name the caller passes is a plain str and must be there; the subclass tells the
    two apart while the signature still reads ``tie='tie'``.
    """

    __slots__ = ()


@dataclass(frozen=True)
class PreferenceData:
    """Items shown to people and what they answered.

    Args:
        items: `n x d` float64 feature vectors of every item ever shown.
        comparisons: `m x 2` long item indices, winner first.
        ties: `m` bool; True where the pair was judged equal (order then meaningless).
            Defaults to all False.
        ratings: `k x 2` long rows (item index, +1 like / -1 dislike).
        comparison_rater: optional `m` long rater ids of the comparisons.
        rating_rater: optional `k` long rater ids of the ratings.
        feature_names: optional `d` names of the features.

    Every field is validated on construction; bad input raises
    :class:`~papa_bayes.exceptions.InputDataError` naming the field. Every field is a
    copy on the CPU, whatever the device of the tensors given: the index tensors are
    made there, and the models compute in float64 on the CPU (move ``items`` to a GPU
    where a method of yours needs them there).

    Example:
        >>> import torch
        >>> from papa_bayes import PreferenceData
        >>> data = PreferenceData(items=torch.randn(5, 3), comparisons=[[0, 1], [2, 4]])
        >>> data.num_comparisons
        2
        >>> PreferenceData(items=torch.randn(5, 3), comparisons=[[0, 5]])
        Traceback (most recent call last):
        ...
        papa_bayes.exceptions.InputDataError: comparisons: expected ...
    """

    items: Tensor
    comparisons: Tensor = field(default_factory=lambda: torch.zeros(0, 2, dtype=torch.long))
    ties: Tensor | None = None
    ratings: Tensor = field(default_factory=lambda: torch.zeros(0, 2, dtype=torch.long))
    comparison_rater: Tensor | None = None
    rating_rater: Tensor | None = None
    feature_names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen dataclass)
        items = _as_tensor("items", self.items, torch.float64)
        if items.ndim == 1 and items.numel() == 0:
            items = items.reshape(0, 0)
        _check_shape("items", items, "n x d", 2)
        if items.shape[1] == 0:
            raise InputDataError("items", "at least one feature (`n x d` with d >= 1)", tuple(items.shape))
        if not bool(torch.isfinite(items).all()):
            bad = (~torch.isfinite(items)).nonzero()[0].tolist()
            raise InputDataError("items", "finite values", f"{items[bad[0], bad[1]].item()} at index {tuple(bad)}")
        set_("items", items)
        n = items.shape[0]

        comps = _as_tensor("comparisons", self.comparisons, torch.long)
        if comps.ndim == 1 and comps.numel() == 0:  # [] (a `0 x 3` or `3 x 0` array is a wrong shape, not empty data)
            comps = comps.reshape(0, 2)
        _check_shape("comparisons", comps, "m x 2", 2, 2)
        self._check_indices("comparisons", comps, n)
        same = comps[:, 0] == comps[:, 1]
        if bool(same.any()):
            i = int(same.nonzero()[0, 0])
            raise InputDataError("comparisons", "two different items per row", f"item {int(comps[i, 0])} compared with itself in row {i}")
        set_("comparisons", comps)
        m = comps.shape[0]

        ties = torch.zeros(m, dtype=torch.bool) if self.ties is None else _as_tensor("ties", self.ties, torch.bool)
        if ties.shape != (m,):
            raise InputDataError("ties", f"shape `m` = ({m},)", tuple(ties.shape))
        set_("ties", ties)

        ratings = _as_tensor("ratings", self.ratings, torch.long)
        if ratings.ndim == 1 and ratings.numel() == 0:
            ratings = ratings.reshape(0, 2)
        _check_shape("ratings", ratings, "k x 2", 2, 2)
        self._check_indices("ratings[:, 0]", ratings[:, 0], n)
        bad = (ratings[:, 1] != 1) & (ratings[:, 1] != -1)
        if bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            raise InputDataError("ratings[:, 1]", "+1 (like) or -1 (dislike)", f"{int(ratings[i, 1])} in row {i}")
        set_("ratings", ratings)

        for name, size in (("comparison_rater", m), ("rating_rater", ratings.shape[0])):
            value = getattr(self, name)
            if value is None:
                continue
            _refuse_text_ids(name, value)
            r = _as_tensor(name, value, torch.long)
            if r.shape != (size,):
                raise InputDataError(name, f"shape ({size},), one id per row", tuple(r.shape))
            if r.numel() and int(r.min()) < 0:
                raise InputDataError(name, "non-negative rater ids", int(r.min()))
            set_(name, r)
        if (self.comparison_rater is None) != (self.rating_rater is None) and m and ratings.shape[0]:
            raise InputDataError(
                "comparison_rater/rating_rater", "both given or both omitted when there are comparisons and ratings",
                "only one given",
            )

        if self.feature_names is not None:
            if isinstance(self.feature_names, (str, bytes)) or not hasattr(self.feature_names, "__iter__"):
                raise InputDataError("feature_names", f"a sequence of {items.shape[1]} names (one per feature)",
                                     repr(self.feature_names) if isinstance(self.feature_names, str)
                                     else type(self.feature_names).__name__)
            names = tuple(str(s) for s in self.feature_names)
            if len(names) != items.shape[1]:
                raise InputDataError("feature_names", f"{items.shape[1]} names (one per feature)", len(names))
            repeated = sorted({n for n in names if names.count(n) > 1})
            if repeated:  # ArviZ labels the feature coordinate with them
                raise InputDataError("feature_names", "distinct names", f"repeated {repeated}")
            set_("feature_names", names)

    @staticmethod
    def _check_indices(name: str, idx: Tensor, n: int) -> None:
        if idx.numel() == 0:
            return
        lo, hi = int(idx.min()), int(idx.max())
        if lo < 0 or hi >= n:
            raise InputDataError(name, f"item indices in [0, {n - 1}]", hi if hi >= n else lo)

    # ------------------------------------------------------------------ sizes
    @property
    def num_items(self) -> int:
        """`n`: items (rows of ``items``)."""
        return self.items.shape[0]

    @property
    def num_features(self) -> int:
        """`d`: features per item."""
        return self.items.shape[1]

    @property
    def num_comparisons(self) -> int:
        """`m`: comparisons, ties included."""
        return self.comparisons.shape[0]

    @property
    def num_ratings(self) -> int:
        """`k`: like/dislike ratings."""
        return self.ratings.shape[0]

    @property
    def num_observations(self) -> int:
        """`m + k`: comparisons and ratings."""
        return self.num_comparisons + self.num_ratings

    @property
    def has_ties(self) -> bool:
        """Whether any comparison is a tie."""
        return bool(self.ties.any())

    @property
    def raters(self) -> Tensor:
        """Sorted unique rater ids over comparisons and ratings (`[0]` when none given)."""
        parts = [r for r in (self.comparison_rater, self.rating_rater) if r is not None and r.numel()]
        if not parts:
            return torch.zeros(1, dtype=torch.long)
        return torch.unique(torch.cat(parts))

    def rater_ids(self) -> tuple[Tensor, Tensor]:
        """(`m`, `k`): the rater of each comparison and of each rating (0 where the data carries no ids)."""
        cr = torch.zeros(self.num_comparisons, dtype=torch.long) if self.comparison_rater is None else self.comparison_rater
        rr = torch.zeros(self.num_ratings, dtype=torch.long) if self.rating_rater is None else self.rating_rater
        return cr, rr

    @property
    def num_raters(self) -> int:
        """`R`: the largest rater id + 1 (1 without rater ids)."""
        return int(self.raters.max()) + 1

    def require_observations(self) -> None:
        """Raise when there is nothing to learn from (no comparison and no rating)."""
        if self.num_observations == 0:
            raise InputDataError("comparisons/ratings", "at least one comparison or rating", "empty data")

    # ------------------------------------------------------------- building
    def append(
        self,
        *,
        items: Any | None = None,
        comparisons: Any | None = None,
        ties: Any | None = None,
        ratings: Any | None = None,
        comparison_rater: Any | None = None,
        rating_rater: Any | None = None,
    ) -> PreferenceData:
        """Return new data with rows added; indices refer to the combined item list.

        Args:
            items: `n' x d` new items, appended after the existing ones.
            comparisons: `m' x 2` new comparisons, winner first (one pair may be
                given as a `2` vector).
            ties: `m'` tie flags of the new comparisons (default False; one pair's may
                be a scalar); only with ``comparisons``.
            ratings: `k' x 2` new (item, +1/-1) rows (one may be a `2` vector).
            comparison_rater / rating_rater: ids of the new rows (one id for all of
                them may be given as a scalar). Needed when the data already carries
                rater ids, of either kind: ratings appended to comparisons with ids
                need ids too. Without any ids the new rows are rater 0.

        Raises:
            InputDataError: rows that do not fit (shape, indices past the combined
                items), or new rows without rater ids where the data carries them.
        """
        new_items = self.items if items is None else torch.cat([self.items, _feature_rows(items, self.num_features)])
        new_comps, new_ties, new_crater = self.comparisons, self.ties, self.comparison_rater
        if ties is not None and comparisons is None:
            raise InputDataError("ties", "tie flags only with the new comparisons they belong to", "ties without comparisons")
        if comparison_rater is not None and comparisons is None:
            raise InputDataError("comparison_rater", "rater ids only with the new comparisons they belong to",
                                 "comparison_rater without comparisons")
        if rating_rater is not None and ratings is None:
            raise InputDataError("rating_rater", "rater ids only with the new ratings they belong to",
                                 "rating_rater without ratings")
        carries_ids = self.comparison_rater is not None or self.rating_rater is not None
        if comparisons is not None:
            c = _index_rows("comparisons", comparisons, "m' x 2")
            t = torch.zeros(c.shape[0], dtype=torch.bool) if ties is None else _as_tensor("ties", ties, torch.bool)
            if t.ndim == 0:  # the flag of one pair (given as a `2` vector)
                t = t.reshape(1)
            if t.shape != (c.shape[0],):  # an `m' x 1` column is refused, as the constructor refuses it
                raise InputDataError("ties", f"shape `m'` = ({c.shape[0]},), one flag per new comparison",
                                     tuple(t.shape))
            new_comps, new_ties = torch.cat([self.comparisons, c]), torch.cat([self.ties, t])
            new_crater = _append_rater("comparison_rater", self.comparison_rater, comparison_rater, c.shape[0],
                                       self.num_comparisons, carries_ids)
        new_ratings, new_rrater = self.ratings, self.rating_rater
        if ratings is not None:
            r = _index_rows("ratings", ratings, "k' x 2")
            new_ratings = torch.cat([self.ratings, r])
            new_rrater = _append_rater("rating_rater", self.rating_rater, rating_rater, r.shape[0], self.num_ratings,
                                       carries_ids)
        if (new_crater is None) != (new_rrater is None):  # ids for one kind now: the other kind's rows are rater 0
            if new_crater is None:
                new_crater = torch.zeros(new_comps.shape[0], dtype=torch.long)
            else:
                new_rrater = torch.zeros(new_ratings.shape[0], dtype=torch.long)
        return replace(
            self,
            items=new_items,
            comparisons=new_comps,
            ties=new_ties,
            ratings=new_ratings,
            comparison_rater=new_crater,
            rating_rater=new_rrater,
        )

    def extends(self, other: PreferenceData) -> bool:
        """True when this data holds ``other`` as a prefix (what online updates expect).

        Items, comparisons with their tie flags and rater ids, and ratings with
        their rater ids must all begin with ``other``'s (no rater ids: rater 0).
        """
        return self.extension_mismatch(other) is None

    def extension_mismatch(self, other: PreferenceData) -> str | None:
        """Where this data stops extending ``other`` (the data a posterior was fitted on), or None.

        Returns:
            The first field that is shorter or differs, e.g. ``"ties differ at
            comparison 3"``; None when :meth:`extends` holds.
        """
        check_preference_data(other, "other")
        (cr, rr), (other_cr, other_rr) = self.rater_ids(), other.rater_ids()
        for name, rows, a, b in (
            ("items", "row", self.items, other.items), ("comparisons", "comparison", self.comparisons, other.comparisons),
            ("ties", "comparison", self.ties, other.ties), ("comparison raters", "comparison", cr, other_cr),
            ("ratings", "rating", self.ratings, other.ratings), ("rating raters", "rating", rr, other_rr),
        ):
            if a.shape[0] < b.shape[0]:
                return f"{a.shape[0]} {name}, fewer than the fitted {b.shape[0]}"
            if a.shape[1:] != b.shape[1:]:
                return f"{name} of shape {tuple(a.shape)}, the fitted {tuple(b.shape)}"
            if b.shape[0] == 0:
                continue
            same = (a[: b.shape[0]] == b).reshape(b.shape[0], -1).all(-1)
            if not bool(same.all()):
                return f"{name} differ at {rows} {int((~same).nonzero()[0])}"
        return None

    def for_rater(self, rater: int) -> PreferenceData:
        """The comparisons and ratings of one rater (all items kept, rater ids dropped).

        ``rater`` is an id of the data's raters, ``0`` to ``num_raters - 1``: one with answers,
        or one below the largest id without any (a rater of a hierarchical model, which counts
        every id below the largest, whose answers are yet to come). Data without rater ids
        belong to rater 0.

        Raises:
            InputDataError: ``rater`` is no non-negative integer, or is beyond the data's raters
                (a typo gave empty data, and a fit of it the prior, without a word).
        """
        rater = check_int("rater", rater, minimum=0)
        if rater >= self.num_raters:
            raise InputDataError("rater", f"an id of the data's raters, 0 to {self.num_raters - 1} (with answers: "
                                 f"{self.raters.tolist()})", rater)
        cr, rr = self.rater_ids()  # rater 0 where the data carries no ids
        cm, rm = cr == rater, rr == rater
        return PreferenceData(
            items=self.items, comparisons=self.comparisons[cm], ties=self.ties[cm], ratings=self.ratings[rm],
            feature_names=self.feature_names,
        )

    # ---------------------------------------------------------------- JSON
    def to_dict(self) -> dict[str, Any]:
        """Plain-Python form. Floats are written with ``float.hex`` so the round trip is exact."""
        return {
            "format": "papa_bayes.PreferenceData",
            "version": 1,
            "num_features": self.num_features,
            "items": [[float(v).hex() for v in row] for row in self.items.tolist()],
            "comparisons": self.comparisons.tolist(),
            "ties": self.ties.tolist(),
            "ratings": self.ratings.tolist(),
            "comparison_rater": None if self.comparison_rater is None else self.comparison_rater.tolist(),
            "rating_rater": None if self.rating_rater is None else self.rating_rater.tolist(),
            "feature_names": None if self.feature_names is None else list(self.feature_names),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreferenceData:
        """Inverse of :meth:`to_dict`; every field is validated as by the constructor
        (no silent coercion: a float index or a tie flag of 2 raises)."""
        if not isinstance(d, dict):
            raise InputDataError("d", "a dict from PreferenceData.to_dict()", type(d).__name__)
        if d.get("format") != "papa_bayes.PreferenceData":
            raise InputDataError("format", "'papa_bayes.PreferenceData'", d.get("format"))
        missing = [k for k in ("items", "comparisons", "ties", "ratings") if k not in d]
        if missing:
            raise InputDataError(missing[0], "a field of PreferenceData.to_dict()", "missing")
        rows = d["items"]
        if not isinstance(rows, list) or not all(isinstance(row, list) for row in rows):
            # (a str would be read row by row, character by character: "abc" as hex numbers)
            raise InputDataError("items", "a list of rows of numbers (float.hex strings or numbers)",
                                 type(rows).__name__)
        try:
            items = [[_json_number(v) for v in row] for row in rows]
        except (TypeError, ValueError):
            raise InputDataError("items", "rows of numbers (float.hex strings or numbers)", "unreadable values") from None
        if items:
            try:
                items_t = torch.tensor(items, dtype=torch.float64)  # float64 from the start: the round trip is exact
            except (TypeError, ValueError, RuntimeError):
                raise InputDataError("items", "rows of equal length (`n x d`)", "ragged rows") from None
        else:
            items_t = torch.zeros(0, check_int("num_features", d.get("num_features")), dtype=torch.float64)
        if d.get("num_features") is not None and items_t.shape[1] != check_int("num_features", d["num_features"]):
            # a file edited by hand, or two files' fields mixed: the rows and the count disagree
            raise InputDataError("num_features", f"the length of the items' rows ({items_t.shape[1]})",
                                 d["num_features"])
        return cls(
            items=items_t,
            comparisons=_json_rows(d["comparisons"], (0, 2)),
            ties=_json_rows(d["ties"], (0,)),
            ratings=_json_rows(d["ratings"], (0, 2)),
            comparison_rater=None if d.get("comparison_rater") is None else _json_rows(d["comparison_rater"], (0,)),
            rating_rater=None if d.get("rating_rater") is None else _json_rows(d["rating_rater"], (0,)),
            feature_names=d.get("feature_names"),
        )

    def to_json(self, path: str | Path | None = None) -> str:
        """Serialize losslessly; also write to ``path`` when given.

        The file is replaced in one step (written beside it, synced, then renamed):
        a save that fails, e.g. on a full disk, leaves the previous file as it was.
        """
        text = json.dumps(self.to_dict())
        if path is not None:
            _write_atomically(check_path("path", path), text)
        return text

    @classmethod
    def from_json(cls, text_or_path: str | Path) -> PreferenceData:
        """Inverse of :meth:`to_json`: from its text (a str starting with ``{``) or a file holding it.

        Raises:
            InputDataError: on a file that is missing or unreadable, text that is not
                JSON, or JSON that :meth:`from_dict` refuses.
        """
        expected = "JSON text or a path to a JSON file"
        if not isinstance(text_or_path, (str, Path)):
            raise InputDataError("text_or_path", expected, type(text_or_path).__name__)
        text = str(text_or_path)
        if not text.lstrip().startswith("{"):
            with reading("text_or_path", expected, text_or_path):
                text = Path(text_or_path).read_text()
        try:
            loaded = json.loads(text)
        except json.JSONDecodeError as err:
            raise InputDataError("text_or_path", "JSON text of PreferenceData.to_json()", f"invalid JSON ({err})") from None
        return cls.from_dict(loaded)

    # ------------------------------------------------------------- pandas
    @classmethod
    def from_dataframe(
        cls,
        df: Any | None,
        items: Any,
        *,
        winner: str = "winner",
        loser: str = "loser",
        tie: str | None = _OptionalColumn("tie"),
        rater: str | None = _OptionalColumn("rater"),
        ratings: Any | None = None,
        item: str = "item",
        label: str = "label",
        feature_names: Sequence[str] | None = None,
    ) -> PreferenceData:
        """Build from pandas DataFrames: comparisons in ``df``, like/dislike ratings in ``ratings``.

        Args:
            df: `m` rows, one per comparison: columns ``winner`` and ``loser`` (item
                indices, winner first), optionally ``tie`` (bools) and ``rater``
                (integer ids). None for ratings only.
            items: `n x d` features the indices refer to. A DataFrame too: its index
                labels are then the item ids of ``df`` and ``ratings`` (a default
                ``RangeIndex``: row numbers), its columns the feature names (unless
                ``feature_names`` is given), and every column must hold numbers.
            winner / loser: column names of the item indices in ``df``.
            tie / rater: column names in ``df`` (``rater`` in ``ratings`` too). By
                default "tie" and "rater", each used when the frame has it and
                skipped when not; a name you pass must be there; None: no such column.
            ratings: `k` rows, one per rating: columns ``item`` (item index),
                ``label`` and optionally ``rater``. Labels are +1 (like) / -1
                (dislike), or bools read as True = like (+1), False = dislike (-1);
                anything else (0/1 integers too) is refused.
            item / label: column names in ``ratings``.
            feature_names: optional `d` names of the features.

        Returns:
            PreferenceData with `m x 2` comparisons, `m` ties, `k x 2` ratings and,
            where the frames have a rater column, `m` / `k` rater ids. With both
            comparisons and ratings, both frames have the rater column or neither.

        Raises:
            InputDataError: a column missing, or holding text, floats or bad labels.
                Item indices and rater ids must be integers: map text ids first, e.g.
                ``df["rater"] = df["rater"].astype("category").cat.codes`` (with both
                frames, ``pd.Categorical(col, categories=names).codes`` with the same
                ``names`` for each, so that one person has one id).

        Example:
            >>> import pandas as pd
            >>> import torch
            >>> from papa_bayes import PreferenceData
            >>> comparisons = pd.DataFrame({"winner": [0, 2], "loser": [1, 0], "rater": [0, 1]})
            >>> likes = pd.DataFrame({"item": [1, 2], "label": [True, False], "rater": [1, 1]})
            >>> data = PreferenceData.from_dataframe(comparisons, torch.randn(3, 2), ratings=likes)
            >>> data.ratings.tolist()
            [[1, 1], [2, -1]]
            >>> PreferenceData.from_dataframe(None, torch.randn(3, 2), ratings=likes).num_ratings
            2
        """
        from papa_bayes.data_frames import dataframe_fields, dataframe_items

        fields = dataframe_fields(df, ratings, winner=winner, loser=loser, tie=tie, rater=rater, item=item, label=label)
        items, fields, feature_names = dataframe_items(items, fields, feature_names)
        return cls(items=items, feature_names=feature_names, **fields)

    def to_dataframe(self) -> tuple[Any, Any, Any]:
        """pandas DataFrames of the data, the inverse of :meth:`from_dataframe`.

        Returns:
            ``(comparisons, ratings, items)``: `m` rows of ``winner``, ``loser``,
            ``tie`` and (where the data carry rater ids) ``rater``; `k` rows of
            ``item``, ``label`` (+1 like / -1 dislike) and ``rater`` likewise; the
            `n x d` features, columns named by ``feature_names`` (else numbered 0, 1, ...:
            :meth:`from_dataframe` takes string column names as feature names).

        Example:
            >>> import torch
            >>> from papa_bayes import PreferenceData
            >>> data = PreferenceData(items=torch.randn(3, 2), comparisons=[[0, 1]], ratings=[[2, -1]],
            ...                       feature_names=["hue", "size"])
            >>> comparisons, ratings, items = data.to_dataframe()
            >>> comparisons.columns.tolist(), ratings.columns.tolist(), items.columns.tolist()
            (['winner', 'loser', 'tie'], ['item', 'label'], ['hue', 'size'])
            >>> PreferenceData.from_dataframe(comparisons, items, ratings=ratings,
            ...                               feature_names=list(items.columns)) == data
            True
        """
        import pandas as pd

        def array(t: Tensor) -> Any:  # a copy: editing a frame must not edit the (validated) data
            return t.cpu().numpy().copy()  # (the fields are on the CPU: NumPy reads no other device)

        comparisons = pd.DataFrame({"winner": array(self.comparisons[:, 0]), "loser": array(self.comparisons[:, 1]),
                                    "tie": array(self.ties)})
        ratings = pd.DataFrame({"item": array(self.ratings[:, 0]), "label": array(self.ratings[:, 1])})
        if self.comparison_rater is not None:
            comparisons["rater"] = array(self.comparison_rater)
        if self.rating_rater is not None:
            ratings["rater"] = array(self.rating_rater)
        names = list(self.feature_names) if self.feature_names else list(range(self.num_features))
        return comparisons, ratings, pd.DataFrame(array(self.items), columns=names)

    def __eq__(self, other: object) -> bool:
        """Same items, answers, rater ids and feature names (the tensors compared exactly)."""
        if not isinstance(other, PreferenceData):
            return NotImplemented

        def same(a: Tensor | None, b: Tensor | None) -> bool:
            return a is b if a is None or b is None else torch.equal(a, b)

        fields = ("items", "comparisons", "ties", "ratings", "comparison_rater", "rating_rater")
        return self.feature_names == other.feature_names and all(same(getattr(self, f), getattr(other, f)) for f in fields)

    def __hash__(self) -> int:  # consistent with __eq__: equal data have equal sizes and names
        return hash((self.num_items, self.num_features, self.num_comparisons, self.num_ratings, self.feature_names))

    def __repr__(self) -> str:
        return (
            f"PreferenceData(items={self.num_items}x{self.num_features}, comparisons={self.num_comparisons}"
            f" ({int(self.ties.sum())} ties), ratings={self.num_ratings}, raters={self.num_raters})"
        )


def _json_number(value: Any) -> float:
    """A feature value of ``to_dict``: a ``float.hex`` str or a number; a bool is refused, as the constructor does."""
    if isinstance(value, str):
        return float.fromhex(value)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(type(value).__name__)
    return float(value)


def _json_rows(value: Any, empty_shape: tuple[int, ...]) -> Any:
    """A JSON list as it is (the constructor checks its dtype and shape); an empty one typed empty."""
    if isinstance(value, list) and not value:
        return torch.zeros(empty_shape, dtype=torch.long)
    return value


def _feature_rows(items: Any, d: int) -> Tensor:
    t = _as_tensor("items", items, torch.float64)
    if t.ndim == 1 and t.numel() in (0, d):  # one item as a `d` vector; [] as no item (as comparisons=[])
        t = t.reshape(-1, d)
    _check_shape("items", t, f"n x {d}", 2, d)
    return t


def _append_rater(name: str, old: Tensor | None, new: Any | None, rows: int, old_rows: int,
                  carries_ids: bool) -> Tensor | None:
    """The rater ids after ``append``: ``old`` then ``new`` (one id for all new rows; old rows without ids: 0).

    Where the data carries rater ids (``carries_ids``, of either kind), new rows must bring
    theirs: as rater 0 they would be given to one person silently, which the
    constructor refuses for comparisons and ratings too.
    """
    if new is None:
        if carries_ids and rows:
            raise InputDataError(name, f"{rows} rater ids for the new rows (the data carries rater ids: comparisons "
                                       "and ratings both have them or neither)", None)
        return old  # no new rows, or data without ids (then None)
    _refuse_text_ids(name, new)
    new_t = _as_tensor(name, new, torch.long).reshape(-1)
    if new_t.numel() == 1 and rows > 1:
        new_t = new_t.expand(rows).clone()
    base = old if old is not None else torch.zeros(old_rows, dtype=torch.long)
    return torch.cat([base, new_t])


def _write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` by ``text`` in one step: written to a file beside it, synced, then renamed over it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def check_preference_data(data: Any, name: str = "data") -> PreferenceData:
    """``data`` unless it is not a :class:`PreferenceData`: then InputDataError naming ``name``."""
    if not isinstance(data, PreferenceData):
        raise InputDataError(name, "a PreferenceData", type(data).__name__)
    return data
