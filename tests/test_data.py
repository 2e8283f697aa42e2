from __future__ import annotations

import math

import pytest
import torch

from papa_bayes import InputDataError, PreferenceData


def _data(**kw):
    base = dict(items=torch.randn(5, 3, dtype=torch.float64), comparisons=[[0, 1], [2, 4]])
    base.update(kw)
    return PreferenceData(**base)


def test_basic_fields_and_defaults():
    d = _data()
    assert d.items.dtype == torch.float64
    assert d.comparisons.dtype == torch.long and d.comparisons.shape == (2, 2)
    assert d.ties.shape == (2,) and not d.has_ties
    assert d.ratings.shape == (0, 2)
    assert (d.num_items, d.num_features, d.num_comparisons, d.num_ratings) == (5, 3, 2, 0)


@pytest.mark.parametrize(
    "kw, field",
    [
        (dict(items=torch.tensor([[0.0, math.nan], [1.0, 2.0]])), "items"),
        (dict(items=torch.tensor([[0.0, math.inf], [1.0, 2.0]]), comparisons=[[0, 1]]), "items"),
        (dict(items=torch.randn(5)), "items"),
        (dict(items=torch.randn(5, 0)), "items"),
        (dict(items=[["a", "b"]]), "items"),
        (dict(comparisons=[[0, 5]]), "comparisons"),
        (dict(comparisons=[[-1, 2]]), "comparisons"),
        (dict(comparisons=[[1, 1]]), "comparisons"),
        (dict(comparisons=[[0, 1, 2]]), "comparisons"),
        (dict(comparisons=torch.tensor([[0.5, 1.0]])), "comparisons"),
        (dict(comparisons=torch.tensor([[0.0, 1.0]])), "comparisons"),
        (dict(comparisons=torch.tensor([[True, False]])), "comparisons"),
        (dict(ties=[True]), "ties"),
        (dict(ties=[2, 0]), "ties"),
        (dict(ratings=[[0, 2]]), "ratings[:, 1]"),
        (dict(ratings=[[9, 1]]), "ratings[:, 0]"),
        (dict(ratings=[0, 1]), "ratings"),
        (dict(comparison_rater=[0]), "comparison_rater"),
        (dict(comparison_rater=[0, -1]), "comparison_rater"),
        (dict(feature_names=["a", "b"]), "feature_names"),
    ],
)
def test_bad_input_names_the_field(kw, field):
    with pytest.raises(InputDataError) as err:
        _data(**kw)
    assert err.value.field == field
    assert field in str(err.value) and "expected" in str(err.value)


def test_error_message_states_expected_and_actual_shape():
    with pytest.raises(InputDataError, match=r"comparisons: expected shape `m x 2`, got \(1, 3\)"):
        _data(comparisons=[[0, 1, 2]])


def test_empty_data_is_refused_where_data_is_needed():
    from papa_bayes import LinearReward, fit

    d = PreferenceData(items=torch.randn(4, 2, dtype=torch.float64))
    with pytest.raises(InputDataError, match="comparisons/ratings"):
        fit(LinearReward(), d)


def test_append_returns_new_object_and_keeps_old():
    d = _data()
    d2 = d.append(items=torch.randn(2, 3), comparisons=[[5, 6]], ties=[True], ratings=[[6, -1]])
    assert d.num_items == 5 and d.num_comparisons == 2
    assert d2.num_items == 7 and d2.num_comparisons == 3 and d2.num_ratings == 1
    assert d2.ties.tolist() == [False, False, True]
    assert d2.extends(d) and not d.extends(d2)
    with pytest.raises(InputDataError):
        d.append(comparisons=[[0, 9]])  # index beyond the combined items


def test_append_with_raters_requires_ids():
    d = _data(comparison_rater=[0, 1])
    with pytest.raises(InputDataError, match="comparison_rater"):
        d.append(comparisons=[[0, 1]])
    assert d.append(comparisons=[[0, 1]], comparison_rater=[3]).num_raters == 4


def test_json_round_trip_is_lossless(tmp_path):
    items = torch.randn(6, 4, dtype=torch.float64) * 1e-7 + torch.pi
    d = PreferenceData(
        items=items, comparisons=[[0, 1], [3, 2]], ties=[False, True], ratings=[[5, 1], [4, -1]],
        comparison_rater=[0, 2], rating_rater=[1, 2], feature_names=["a", "b", "c", "d"],
    )
    back = PreferenceData.from_json(d.to_json(tmp_path / "d.json"))
    back2 = PreferenceData.from_json(tmp_path / "d.json")
    for b in (back, back2):
        assert torch.equal(b.items, d.items)  # bit-exact
        assert torch.equal(b.comparisons, d.comparisons) and torch.equal(b.ties, d.ties)
        assert torch.equal(b.ratings, d.ratings)
        assert torch.equal(b.comparison_rater, d.comparison_rater) and torch.equal(b.rating_rater, d.rating_rater)
        assert b.feature_names == d.feature_names
        assert b == d and hash(b) == hash(d)  # == used to raise "Boolean value of Tensor ... is ambiguous"
    assert d != d.append(ratings=[[0, 1]], rating_rater=[0]) and d != "data"
    assert d != PreferenceData(items=d.items, comparisons=d.comparisons, ties=d.ties, ratings=d.ratings)


def test_from_dataframe():
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame({"winner": [0, 2], "loser": [1, 3], "tie": [False, True], "rater": [0, 1]})
    d = PreferenceData.from_dataframe(df, torch.randn(4, 2))
    assert d.comparisons.tolist() == [[0, 1], [2, 3]]
    assert d.ties.tolist() == [False, True] and d.comparison_rater.tolist() == [0, 1]
    with pytest.raises(InputDataError, match="winner"):
        PreferenceData.from_dataframe(df.rename(columns={"winner": "w"}), torch.randn(4, 2))
    with pytest.raises(InputDataError, match="integer dtype"):
        PreferenceData.from_dataframe(df.astype({"winner": float}), torch.randn(4, 2))
    with pytest.raises(InputDataError, match="df"):
        PreferenceData.from_dataframe("winner,loser", torch.randn(4, 2))
    with pytest.raises(InputDataError, match="tie"):
        PreferenceData.from_dataframe(df.assign(tie=["no", "yes"]), torch.randn(4, 2))
    # Features and new rows as pandas objects (they used to raise KeyError / ValueError).
    feats = pd.DataFrame({"a": [0.0, 1.0, 2.0, 3.0], "b": [1.0, 0.0, 1.0, 0.0]}, dtype="float32")
    d = PreferenceData.from_dataframe(df, feats)
    assert d.items.dtype == torch.float64 and d.items.tolist() == feats.to_numpy().tolist()
    assert d.append(comparisons=pd.DataFrame({"w": [3], "l": [0]}), comparison_rater=0).comparisons.tolist()[-1] == [3, 0]
    with pytest.raises(InputDataError, match="comparisons"):
        d.append(comparisons=[[0, 1], [2]], comparison_rater=0)  # ragged rows


def test_append_refuses_malformed_rows_and_orphan_ties():
    d = _data()
    assert d.append(comparisons=[0, 1]).comparisons[-1].tolist() == [0, 1]  # one pair as a vector
    with pytest.raises(InputDataError, match="comparisons"):
        d.append(comparisons=[[0, 1, 2], [2, 3, 4]])  # 3 columns are not pairs
    with pytest.raises(InputDataError, match="comparisons"):
        d.append(comparisons=[0, 1, 2])
    with pytest.raises(InputDataError, match="ratings"):
        d.append(ratings=[[0, 1, 1]])
    with pytest.raises(InputDataError, match="ties"):
        d.append(ties=[True])  # tie flags without the comparisons they belong to
    with pytest.raises(InputDataError, match="comparison_rater"):
        d.append(comparison_rater=[1])  # rater ids without the rows they belong to
    with pytest.raises(InputDataError, match="rating_rater"):
        d.append(comparisons=[[0, 1]], rating_rater=[1])


def test_extends_compares_ties_and_raters_too():
    d = _data(comparison_rater=[0, 1])
    same = d.append(comparisons=[[0, 1]], comparison_rater=[1])
    assert same.extends(d)
    retied = PreferenceData(items=d.items, comparisons=d.comparisons, ties=[True, False], comparison_rater=[0, 1])
    assert not retied.extends(d)
    reassigned = PreferenceData(items=d.items, comparisons=d.comparisons, comparison_rater=[1, 1])
    assert not reassigned.extends(d)
    plain = PreferenceData(items=d.items, comparisons=d.comparisons)
    assert plain.extends(PreferenceData(items=d.items, comparisons=d.comparisons, comparison_rater=[0, 0]))
    with pytest.raises(InputDataError, match="other"):
        d.extends("not data")


def test_for_rater_checks_the_rater_id():
    d = _data(comparison_rater=[0, 1])
    assert d.for_rater(1).num_comparisons == 1 and d.for_rater(torch.tensor(0)).num_comparisons == 1
    # Data without rater ids belong to rater 0 only.
    plain = _data(ratings=[[0, 1]])
    assert (plain.for_rater(0).num_comparisons, plain.for_rater(0).num_ratings) == (2, 1)
    for bad in (-1, "a", 1.5, True):
        with pytest.raises(InputDataError, match="rater"):
            d.for_rater(bad)


def test_for_rater_refuses_a_rater_the_data_does_not_have():
    """An id beyond the data's raters (a typo, an id of another data set) gave empty data without a word,
    and a fit of it the prior. Ids below the largest are raters of a hierarchical model, with or without
    answers: kept."""
    d = _data(comparison_rater=[0, 2])
    assert d.for_rater(1).num_observations == 0  # a rater without answers (yet)
    for data, bad, present in ((d, 3, "[0, 2]"), (_data(ratings=[[0, 1]]), 1, "[0]")):
        with pytest.raises(InputDataError) as err:
            data.for_rater(bad)
        assert err.value.field == "rater" and err.value.actual == bad
        assert f"with answers: {present}" in str(err.value), str(err.value)


def test_feature_names_are_a_sequence_of_names():
    with pytest.raises(InputDataError, match="feature_names"):
        PreferenceData(items=torch.zeros(2, 2), feature_names="ab")  # not ('a', 'b')
    with pytest.raises(InputDataError, match="feature_names"):
        PreferenceData(items=torch.zeros(2, 2), feature_names=5)
    with pytest.raises(InputDataError, match="repeated"):
        PreferenceData(items=torch.zeros(2, 3), feature_names=["a", "b", "a"])


def test_from_dict_and_json_validate_without_coercion(tmp_path):
    d = PreferenceData(items=torch.randn(4, 2, dtype=torch.float64), comparisons=[[0, 1]], comparison_rater=[0])
    good = d.to_dict()
    for change, field in (({"comparisons": [[0.5, 1.0]]}, "comparisons"),  # not truncated to [0, 1]
                          ({"ties": [2]}, "ties"), ({"comparison_rater": [0.7]}, "comparison_rater"),
                          ({"comparisons": [0, 1, 2]}, "comparisons"), ({"items": [["zz", "0x1p0"]] * 4}, "items")):
        with pytest.raises(InputDataError, match=field):
            PreferenceData.from_dict({**good, **change})
    with pytest.raises(InputDataError, match="items"):
        PreferenceData.from_dict({k: v for k, v in good.items() if k != "items"})
    with pytest.raises(InputDataError, match="d"):
        PreferenceData.from_dict("not a dict")
    with pytest.raises(InputDataError, match="text_or_path"):
        PreferenceData.from_json("{not json")
    with pytest.raises(InputDataError, match="text_or_path"):
        PreferenceData.from_json(5)
    empty = PreferenceData(items=torch.zeros(0, 3, dtype=torch.float64))
    assert PreferenceData.from_dict(empty.to_dict()).items.shape == (0, 3)


def test_from_dataframe_requires_a_column_named_explicitly():
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame({"winner": [0, 2], "loser": [1, 3], "is_tie": [False, True]})
    # The default names are optional: a frame without "tie" or "rater" columns is fine.
    assert PreferenceData.from_dataframe(df, torch.randn(4, 2)).ties.tolist() == [False, False]
    assert PreferenceData.from_dataframe(df, torch.randn(4, 2), tie="is_tie").ties.tolist() == [False, True]
    for kw, field in ((dict(tie="tied"), "tie"), (dict(rater="who"), "rater")):
        with pytest.raises(InputDataError) as err:
            PreferenceData.from_dataframe(df, torch.randn(4, 2), **kw)  # used to be ignored silently
        assert err.value.field == field and "['winner', 'loser', 'is_tie']" in str(err.value)
    # None means no such column, even where the frame has one.
    with_cols = df.assign(tie=[True, True], rater=[0, 1])
    d = PreferenceData.from_dataframe(with_cols, torch.randn(4, 2), tie=None, rater=None)
    assert not d.has_ties and d.comparison_rater is None


def test_from_dataframe_says_how_to_code_text_ids():
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame({"winner": [0, 2], "loser": [1, 3], "rater": ["alice", "bob"]})
    with pytest.raises(InputDataError, match=r"cat\.codes.*'alice' in row 0") as err:
        PreferenceData.from_dataframe(df, torch.randn(4, 2))
    assert err.value.field == "df['rater']"
    with pytest.raises(InputDataError, match="integer item ids") as err:
        PreferenceData.from_dataframe(df.assign(winner=["a", "c"], rater=[0, 1]), torch.randn(4, 2))
    assert err.value.field == "df['winner']"
    coded = df.assign(rater=df["rater"].astype("category").cat.codes)  # the fix the message names
    assert PreferenceData.from_dataframe(coded, torch.randn(4, 2)).comparison_rater.tolist() == [0, 1]


def test_from_dataframe_reads_ratings_with_or_without_comparisons():
    pd = pytest.importorskip("pandas")
    items = torch.randn(4, 2)
    df = pd.DataFrame({"winner": [0, 2], "loser": [1, 3], "rater": [0, 1]})
    likes = pd.DataFrame({"item": [3, 1], "label": [1, -1], "rater": [1, 2]})
    d = PreferenceData.from_dataframe(df, items, ratings=likes)
    assert d.comparisons.tolist() == [[0, 1], [2, 3]] and d.ratings.tolist() == [[3, 1], [1, -1]]
    assert d.comparison_rater.tolist() == [0, 1] and d.rating_rater.tolist() == [1, 2]
    # Ratings only; bools read as True = like (+1), False = dislike (-1); other column names.
    votes = pd.DataFrame({"img": [0, 2, 2], "liked": [True, False, True]})
    d = PreferenceData.from_dataframe(None, items, ratings=votes, item="img", label="liked")
    assert d.num_comparisons == 0 and d.ratings.tolist() == [[0, 1], [2, -1], [2, 1]] and d.rating_rater is None
    assert PreferenceData.from_dataframe(None, items, ratings=likes).rating_rater.tolist() == [1, 2]
    # Neither frame with rater ids is fine too.
    d = PreferenceData.from_dataframe(df.drop(columns="rater"), items, ratings=likes.drop(columns="rater"))
    assert d.comparison_rater is None and d.rating_rater is None and d.num_observations == 4


def test_from_dataframe_refuses_bad_ratings():
    pd = pytest.importorskip("pandas")
    items = torch.randn(4, 2)
    likes = pd.DataFrame({"item": [3, 1], "label": [1, -1]})
    for labels, pattern in (([1, 0], r"astype\(bool\).*got 0 in row 1"),  # 0/1 is ambiguous: pass bools
                            ([1, 2], "got 2 in row 1"), ([1.0, -1.0], "float64"), (["like", "no"], "'like' in row 0")):
        with pytest.raises(InputDataError, match=pattern) as err:
            PreferenceData.from_dataframe(None, items, ratings=likes.assign(label=labels))
        assert err.value.field == "ratings['label']"
    with pytest.raises(InputDataError, match=r"row 1 \(index 'b'\)"):  # the row as the frame shows it
        PreferenceData.from_dataframe(None, items, ratings=likes.assign(label=[1, 5]).set_axis(["a", "b"]))
    with pytest.raises(InputDataError, match="'item'") as err:
        PreferenceData.from_dataframe(None, items, ratings=likes.rename(columns={"item": "img"}))
    assert err.value.field == "ratings"
    with pytest.raises(InputDataError, match="ratings"):
        PreferenceData.from_dataframe(None, items, ratings=[[0, 1]])
    with pytest.raises(InputDataError, match="ratings=") as err:
        PreferenceData.from_dataframe(None, items)  # nothing to read
    assert err.value.field == "df"
    with pytest.raises(InputDataError, match=r"ratings\[:, 0\]"):
        PreferenceData.from_dataframe(None, items, ratings=likes.assign(item=[0, 9]))  # the constructor's checks hold


def test_from_dataframe_wants_rater_ids_in_both_frames_or_neither():
    pd = pytest.importorskip("pandas")
    items = torch.randn(4, 2)
    df = pd.DataFrame({"winner": [0, 2], "loser": [1, 3], "rater": [0, 1]})
    likes = pd.DataFrame({"item": [3, 1], "label": [1, -1], "rater": [1, 1]})
    for comps, rated, has in ((df, likes.drop(columns="rater"), "df"), (df.drop(columns="rater"), likes, "ratings")):
        with pytest.raises(InputDataError, match=f"in both df and ratings, or in neither, got one in {has} only") \
                as err:
            PreferenceData.from_dataframe(comps, items, ratings=rated)
        assert err.value.field == "rater"
    # A name given explicitly must be in both frames.
    with pytest.raises(InputDataError, match="a column of ratings") as err:
        PreferenceData.from_dataframe(df.rename(columns={"rater": "who"}), items, rater="who", ratings=likes)
    assert err.value.field == "rater"
    d = PreferenceData.from_dataframe(df.rename(columns={"rater": "who"}), items, rater="who",
                                      ratings=likes.rename(columns={"rater": "who"}))
    assert d.raters.tolist() == [0, 1]


def test_from_dataframe_docstring_example_runs():
    pytest.importorskip("pandas")
    import doctest

    globs = {"PreferenceData": PreferenceData, "torch": torch}
    (test,) = doctest.DocTestFinder().find(PreferenceData.from_dataframe, "from_dataframe", globs=globs)
    result = doctest.DocTestRunner().run(test)
    assert result.attempted > 0 and result.failed == 0


def test_to_dataframe_is_the_inverse_of_from_dataframe():
    items = torch.randn(5, 2, dtype=torch.float64)
    full = PreferenceData(items=items, comparisons=[[0, 1], [2, 3]], ties=[False, True], comparison_rater=[0, 1],
                          ratings=[[4, 1], [0, -1]], rating_rater=[1, 1], feature_names=["a", "b"])
    comparisons, ratings, frame = full.to_dataframe()
    assert list(comparisons.columns) == ["winner", "loser", "tie", "rater"] and list(frame.columns) == ["a", "b"]
    assert ratings["label"].tolist() == [1, -1]
    back = PreferenceData.from_dataframe(comparisons, frame, ratings=ratings, feature_names=list(frame.columns))
    assert back == full
    plain = PreferenceData(items=items, comparisons=[[1, 0]])  # no ids, no names, no ratings
    comparisons, ratings, frame = plain.to_dataframe()
    assert "rater" not in comparisons.columns and list(frame.columns) == [0, 1] and len(ratings) == 0
    assert PreferenceData.from_dataframe(comparisons, frame, ratings=ratings) == plain


def test_from_json_names_a_missing_or_unreadable_file(tmp_path):
    """A missing file raised FileNotFoundError, a folder IsADirectoryError, a binary file UnicodeDecodeError."""
    (tmp_path / "binary.json").write_bytes(b"\xff\xfe\x00")
    for path, error in ((tmp_path / "missing.json", "FileNotFoundError"), (tmp_path, "IsADirectoryError"),
                        (tmp_path / "binary.json", "UnicodeDecodeError")):
        for given in (path, str(path)):
            with pytest.raises(InputDataError, match="^text_or_path:") as info:
                PreferenceData.from_json(given)
            assert str(path) in str(info.value) and error in str(info.value)


def test_to_json_names_a_path_that_is_no_path():
    """to_json(path=3) raised a raw TypeError from pathlib."""
    data = PreferenceData(items=torch.zeros(2, 1), comparisons=[[0, 1]])
    with pytest.raises(InputDataError, match="^path: expected a path"):
        data.to_json(3)


def test_the_data_do_not_share_memory_with_the_callers_arrays():
    """Validated data held views of the caller's arrays: a NaN written afterwards, or a comparison edited
    into a self-comparison, went into the 'frozen' data unchecked."""
    import numpy as np

    X, C = np.zeros((3, 2)), torch.tensor([[0, 1]])
    data = PreferenceData(items=X, comparisons=C, ratings=torch.tensor([[2, 1]]))
    X[0, 0], C[0, 1] = np.nan, 0
    assert bool(torch.isfinite(data.items).all()) and data.comparisons.tolist() == [[0, 1]]
    items = torch.zeros(3, 2, dtype=torch.float64)
    data = PreferenceData(items=items, comparisons=[[0, 1]])
    items[1, 1] = float("inf")
    assert bool(torch.isfinite(data.items).all())
    comparisons, _, frame = data.to_dataframe()
    frame.iloc[0, 0], comparisons.iloc[0, 1] = float("nan"), 0
    assert bool(torch.isfinite(data.items).all()) and data.comparisons.tolist() == [[0, 1]]


@pytest.mark.parametrize("field", ["comparisons", "ratings", "ties", "comparison_rater"])
def test_an_empty_list_is_empty_data_not_a_dtype_error(field):
    """`comparisons=[]` was refused: 'expected integer dtype, got torch.float32' ([] reads as float)."""
    data = PreferenceData(items=torch.randn(3, 2), **{field: []})
    assert data.num_observations == 0
    assert PreferenceData(items=torch.randn(3, 2), comparisons=[], ratings=[[0, 1]]).num_ratings == 1


def test_appending_one_kind_with_rater_ids_to_mixed_data_without_ids():
    """Mixed data without ids took new ratings of rater 1 only when the comparisons got ids too: refused.
    The rows that had none are rater 0, as the default says."""
    data = PreferenceData(items=torch.randn(4, 2), comparisons=[[0, 1]], ratings=[[2, 1]])
    more = data.append(ratings=[[3, -1]], rating_rater=1)
    assert more.comparison_rater.tolist() == [0] and more.rating_rater.tolist() == [0, 1]
    assert more.for_rater(1).ratings.tolist() == [[3, -1]]
    more = data.append(comparisons=[[2, 3]], comparison_rater=2)
    assert more.comparison_rater.tolist() == [0, 2] and more.rating_rater.tolist() == [0]


def test_a_failed_save_leaves_the_previous_file(tmp_path, monkeypatch):
    """to_json(path) wrote over the file in place: a save that failed half-way (a full disk) left a
    fragment, and every answer in it was lost."""
    import builtins

    path = tmp_path / "answers.json"
    data = PreferenceData(items=torch.randn(3, 2), comparisons=[[0, 1]])
    data.to_json(path)
    before = path.read_text()
    real_open = builtins.open

    class FullDisk:
        def __init__(self, f):
            self.f = f

        def write(self, text):
            self.f.write(text[:10])
            raise OSError(28, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(builtins, "open", lambda *a, **k: FullDisk(real_open(*a, **k)))
    with pytest.raises(OSError, match="No space"):
        data.append(comparisons=[[1, 2]]).to_json(path)
    monkeypatch.undo()
    assert path.read_text() == before and PreferenceData.from_json(path) == data
    assert [p.name for p in tmp_path.iterdir()] == ["answers.json"]  # no temporary file left behind
    data.append(comparisons=[[1, 2]]).to_json(path)
    assert PreferenceData.from_json(path).num_comparisons == 2


def test_an_items_frame_is_read_by_its_index_and_columns():
    """from_dataframe read the ids as row numbers of an items frame indexed otherwise (after sort_values, say):
    the comparisons silently pointed at other items. Its column names were dropped too."""
    import pandas as pd

    items = pd.DataFrame([[0.0, 1.0], [2.0, 3.0], [4.0, 5.0], [6.0, 7.0]], columns=["hue", "size"], index=[30, 10, 40, 0])
    data = PreferenceData.from_dataframe(pd.DataFrame({"winner": [30, 0], "loser": [10, 40]}), items,
                                         ratings=pd.DataFrame({"item": [40], "label": [True]}))
    assert data.items[data.comparisons[:, 0]].tolist() == [items.loc[30].tolist(), items.loc[0].tolist()]
    assert data.items[data.ratings[0, 0]].tolist() == items.loc[40].tolist()
    assert data.feature_names == ("hue", "size")
    assert PreferenceData.from_dataframe(pd.DataFrame({"winner": [0]}, columns=["winner"]).assign(loser=1),
                                         items.reset_index(drop=True), feature_names=["a", "b"]).feature_names == ("a", "b")
    with pytest.raises(InputDataError, match=r"comparisons: expected item ids found in items.index, got ids \[7\]"):
        PreferenceData.from_dataframe(pd.DataFrame({"winner": [7], "loser": [10]}), items)
    with pytest.raises(InputDataError, match=r"items: expected numeric feature columns .*\['name'\]"):
        PreferenceData.from_dataframe(pd.DataFrame({"winner": [0], "loser": [1]}),
                                      pd.DataFrame({"name": ["a", "b"], "hue": [1.0, 2.0]}))


def test_python_floats_keep_double_precision_and_read_only_arrays_raise_no_warning():
    """torch.as_tensor read a list of Python floats as float32 (0.1 became 0.10000000149), and warned about
    a read-only NumPy array (pandas' .values under copy-on-write) although the data copy it."""
    import warnings

    import numpy as np

    assert PreferenceData(items=[[0.1, 0.2], [0.3, 0.4]], comparisons=[[0, 1]]).items[0, 0].item() == 0.1
    frozen = np.arange(6.0).reshape(3, 2)
    frozen.setflags(write=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert PreferenceData(items=frozen, comparisons=[[0, 1]]).items.tolist() == frozen.tolist()


@pytest.mark.parametrize("kind", ["ratings", "comparisons"])
def test_append_of_the_other_kind_without_ids_to_data_with_rater_ids_is_refused(kind):
    """Likes appended to comparisons with rater ids (or comparisons to likes with ids) went silently
    to rater 0; the constructor refuses such data, and so does append, naming the rater field."""
    items = torch.randn(4, 2)
    if kind == "ratings":
        data, rows, field = PreferenceData(items=items, comparisons=[[0, 1]], comparison_rater=[2]), [[3, 1]], "rating_rater"
    else:
        data, rows, field = PreferenceData(items=items, ratings=[[0, 1]], rating_rater=[2]), [[2, 3]], "comparison_rater"
    with pytest.raises(InputDataError, match=f"{field}: expected .*rater ids") as err:
        data.append(**{kind: rows})
    assert err.value.field == field
    with pytest.raises(InputDataError, match=field):  # as the constructor refuses the combined data
        PreferenceData(items=items, comparisons=[[0, 1]], ratings=[[3, 1]],
                       **{"comparison_rater" if field == "rating_rater" else "rating_rater": [2]})
    more = data.append(**{kind: rows, field: [2]})  # with their ids they are taken
    assert getattr(more, field).tolist() == [2] and more.num_raters == 3
    for empty in (dict(comparisons=torch.zeros(0, 2, dtype=torch.long)), dict(ratings=torch.zeros(0, 2, dtype=torch.long))):
        same = data.append(**empty)  # no new rows: no ids to ask for
        assert same.num_observations == 1
        assert [r.tolist() for r in same.rater_ids()] == [r.tolist() for r in data.rater_ids()]


def test_from_dataframe_reads_nullable_and_object_columns_and_names_missing_values():
    """pandas dtypes a real frame has: an items frame with a nullable Int64 / Float64 column was refused as
    'items: expected an array-like of numbers, got ndarray'; object columns of bools or ints (after a concat)
    as 'got object values, e.g. True in row 0'; an NA in an Int64 id column as 'expected integer dtype, got
    torch.float64', which hides the missing row."""
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame({"winner": [0, 1], "loser": [2, 0], "tie": [False, True]})
    feats = pd.DataFrame({"a": [0.5, 1.0, 2.0], "b": pd.array([1, 2, 3], dtype="Int64"),
                          "c": pd.array([0.25, 1.5, 2.0], dtype="Float64")})
    d = PreferenceData.from_dataframe(df, feats)
    assert d.items.tolist() == [[0.5, 1.0, 0.25], [1.0, 2.0, 1.5], [2.0, 3.0, 2.0]]
    assert d.feature_names == ("a", "b", "c")
    with pytest.raises(InputDataError, match="items: expected finite values"):
        PreferenceData.from_dataframe(df, feats.assign(b=pd.array([1, None, 3], dtype="Int64")))
    mixed = df.astype({"winner": object, "tie": object})
    d = PreferenceData.from_dataframe(mixed, feats)
    assert d.comparisons.tolist() == [[0, 2], [1, 0]] and d.ties.tolist() == [False, True]
    likes = pd.DataFrame({"item": [0, 2], "label": pd.Series([True, False], dtype=object)})
    assert PreferenceData.from_dataframe(None, feats, ratings=likes).ratings.tolist() == [[0, 1], [2, -1]]
    for frame, field in ((df.assign(winner=pd.array([0, None], dtype="Int64")), "df['winner']"),
                         (df.assign(loser=[2.0, float("nan")]), "df['loser']"),
                         (df.assign(tie=pd.array([False, None], dtype="boolean")), "df['tie']")):
        with pytest.raises(InputDataError, match=r"missing value .* in row 1") as err:
            PreferenceData.from_dataframe(frame, feats)
        assert err.value.field == field
    with pytest.raises(InputDataError, match=r"missing value .* in row 0") as err:
        PreferenceData.from_dataframe(None, feats, ratings=likes.assign(label=pd.array([None, True], dtype="boolean")))
    assert err.value.field == "ratings['label']"
    with pytest.raises(InputDataError, match="integer dtype"):  # float ids stay refused (no silent coercion)
        PreferenceData.from_dataframe(df.astype({"winner": float}), feats)


@pytest.mark.parametrize(
    "kw, field",
    [
        (dict(ratings=[[0, True]]), "ratings"),  # was read as a like (+1)
        (dict(comparisons=[[True, 2]]), "comparisons"),  # was item 1
        (dict(comparison_rater=[1, False]), "comparison_rater"),
        (dict(items=[[True, 0.5], [1.0, 2.0]], comparisons=[]), "items"),
    ],
)
def test_bools_among_numbers_in_a_list_are_refused_as_bool_arrays_are(kw, field):
    """NumPy reads [[0, True]] as integers: a bool in a list of indices passed as 1 where a bool array is refused."""
    import numpy as np

    with pytest.raises(InputDataError) as err:
        _data(**kw)
    assert err.value.field == field and "bools" in str(err.value)
    with pytest.raises(InputDataError, match="comparisons"):
        _data().append(comparisons=[np.True_, 3])
    assert _data(ratings=[[0, 1]], ties=[True, 0]).ties.tolist() == [True, False]  # tie flags stay bools


def test_from_dict_refuses_bool_and_non_list_items_as_the_constructor_does():
    """from_dict read JSON true/false features as 1.0/0.0 (the constructor refuses bool items) and a str row by row."""
    d = _data().to_dict()
    with pytest.raises(InputDataError, match="items"):
        PreferenceData.from_dict({**d, "items": [[True, False, True]] * 5})
    with pytest.raises(InputDataError, match="items: expected a list of rows"):
        PreferenceData.from_dict({**d, "items": "abcde"})  # was [[10.0], [11.0], ...]: float.fromhex of each letter
    assert PreferenceData.from_dict({**d, "items": [[1, 2.5, "0x1.8p+0"]] * 5}).items[0].tolist() == [1.0, 2.5, 1.5]


@pytest.mark.parametrize("field, shape", [("comparisons", (3, 0)), ("comparisons", (0, 3)), ("ratings", (2, 0)),
                                          ("ties", (0, 1)), ("comparison_rater", (0, 4))])
def test_empty_arrays_of_the_wrong_shape_are_refused_not_read_as_empty(field, shape):
    """A `3 x 0` comparisons array was silently reshaped to `0 x 2`: three rows became none."""
    kw = {field: torch.zeros(shape, dtype=torch.long)}
    if field in ("ties", "comparison_rater"):
        kw["comparisons"] = []
    with pytest.raises(InputDataError) as err:
        _data(**kw)
    assert err.value.field == field and str(tuple(shape)) in str(err.value)
    with pytest.raises(InputDataError, match="comparisons"):
        _data().append(comparisons=torch.zeros(3, 0, dtype=torch.long))
    assert _data(comparisons=[], ratings=torch.zeros(0)).num_observations == 0  # [] and `0` vectors stay empty data


def test_append_takes_an_empty_list_of_items_as_it_does_of_comparisons():
    d = _data()
    assert d.append(items=[]) == d and d.append(comparisons=[]) == d and d.append(items=[], ratings=[]) == d


def test_check_float_refuses_numpy_complex_numbers_as_it_does_python_and_torch_ones():
    """check_float(np.complex128(1 + 2j)) returned 1.0: float() dropped the imaginary part with only a warning."""
    import warnings

    import numpy as np

    from papa_bayes.checks import check_float

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (no ComplexWarning on the way either)
        for value in (1 + 2j, np.complex128(1 + 2j), np.complex64(1), np.array(1 + 0j), torch.tensor(1 + 0j)):
            with pytest.raises(InputDataError, match="scale"):
                check_float("scale", value)
        assert check_float("scale", np.float32(0.5)) == 0.5 and check_float("scale", np.int64(2)) == 2.0


def test_numbers_held_as_objects_are_read_as_numbers_by_the_constructor():
    """A nullable Int64 frame of comparisons (its array holds objects) was refused: 'expected an array-like of
    numbers, got DataFrame', though from_dataframe reads such columns."""
    import numpy as np
    import pandas as pd

    pairs = pd.DataFrame({"winner": [0, 2], "loser": [1, 4]}, dtype="Int64")
    assert _data(comparisons=pairs).comparisons.tolist() == [[0, 1], [2, 4]]
    assert _data(comparisons=np.array([[0, 1], [2, 4]], dtype=object)).comparisons.dtype == torch.long
    features = pd.DataFrame({"a": [1, 2], "b": [0.5, 1.5]}).astype({"a": "Int64", "b": "Float64"})
    assert PreferenceData(items=features).items.tolist() == [[1.0, 0.5], [2.0, 1.5]]
    with pytest.raises(InputDataError, match="comparisons: expected integer dtype, got bools"):
        _data(comparisons=np.array([[0, True], [2, 4]], dtype=object))
    with pytest.raises(InputDataError, match="comparisons"):
        _data(comparisons=np.array([[0.0, 1], [2, 4]], dtype=object))


def test_an_object_column_of_bools_among_numbers_is_refused_as_a_list_of_them_is():
    """A column holding True and 2 as objects (after a concat) read as [1, 2]: the bool passed as item 1,
    though the constructor refuses [[True, 2]]. Tie flags may still mix bools and 0/1, as in a list."""
    import pandas as pd

    items = torch.randn(3, 2, dtype=torch.float64)
    mixed = pd.Series([True, 2], dtype=object)
    with pytest.raises(InputDataError, match=r"df\['winner'\]: expected integer item ids .*got bools among the "
                                             r"numbers, e.g. True in row 0\."):
        PreferenceData.from_dataframe(pd.DataFrame({"winner": mixed, "loser": [0, 0]}), items)
    with pytest.raises(InputDataError, match=r"ratings\['label'\]: .*got bools among the numbers"):
        PreferenceData.from_dataframe(None, items, ratings=pd.DataFrame(
            {"item": [0, 1], "label": pd.Series([True, -1], dtype=object)}))
    pairs = pd.DataFrame({"winner": pd.Series([1, 2], dtype=object), "loser": [0, 0],
                          "tie": pd.Series([True, 0], dtype=object)})
    data = PreferenceData.from_dataframe(pairs, items)
    assert data.comparisons.tolist() == [[1, 0], [2, 0]] and data.ties.tolist() == [True, False]


def test_an_items_index_of_fractional_labels_is_read_as_ids_not_row_numbers():
    """The index 0.5, 1.5 was truncated to 0, 1 and taken for row numbers: ids 0 and 1 found items."""
    import pandas as pd

    pairs = pd.DataFrame({"winner": [0], "loser": [1]})
    for index in ([0.5, 1.5], ["0", "1"]):
        items = pd.DataFrame({"hue": [1.0, 2.0]}, index=index)
        with pytest.raises(InputDataError, match=r"comparisons: expected item ids found in items.index, "
                                                 r"got ids \[0, 1\]"):
            PreferenceData.from_dataframe(pairs, items)
    whole = pd.DataFrame({"hue": [1.0, 2.0]}, index=[0.0, 1.0])  # the row numbers all the same
    assert PreferenceData.from_dataframe(pairs, whole).comparisons.tolist() == [[0, 1]]


def test_check_bool_and_check_float_read_arrays_as_check_int_does():
    """check_bool refused torch.tensor(True) though it took np.bool_(True); check_float took torch.tensor([0.5])
    but refused np.array([0.5]). As check_int: a 0-d tensor counts, an array of one number does not."""
    import numpy as np

    from papa_bayes.checks import check_bool, check_float, check_int

    assert check_int("n", torch.tensor(2)) == 2
    assert check_bool("flag", torch.tensor(True)) is True and check_bool("flag", torch.tensor(0)) is False
    assert check_bool("flag", np.bool_(True)) is True
    assert check_float("scale", torch.tensor(0.5)) == 0.5 and check_float("scale", np.float64(0.5)) == 0.5
    for one_element in (torch.tensor([1]), np.array([1])):
        with pytest.raises(InputDataError, match="n: expected an integer"):
            check_int("n", one_element)
    for one_element in (torch.tensor([0.5]), np.array([0.5]), torch.tensor([[0.5]])):
        with pytest.raises(InputDataError, match="scale: expected a finite number >= 0"):
            check_float("scale", one_element)
    for value in (torch.tensor([True]), torch.tensor(2), torch.tensor(0.0), np.array([True])):
        with pytest.raises(InputDataError, match="flag: expected True or False"):
            check_bool("flag", value)


def test_check_real_tensor_refuses_bools_among_numbers_as_it_refuses_bool_arrays():
    """[True, 2] read as [1., 2.]: the bool passed as the number 1. calibration's outcomes still read bools as 0/1."""
    from papa_bayes.checks import check_real_tensor
    from papa_bayes.diagnostics.calibration import _real

    for value in ([True, 2.0], [[0.5], [True]], (1, torch.tensor(False))):
        with pytest.raises(InputDataError, match=r"weights: expected .*real numbers.*bools.*got torch.bool\.") as info:
            check_real_tensor("weights", value, "`d` weights")
        assert info.value.actual == str(torch.bool)
    assert check_real_tensor("weights", [1, 2.5], "`d` weights").tolist() == [1.0, 2.5]
    assert _real("outcomes", [True, 0]).tolist() == [1.0, 0.0]


def test_append_refuses_a_column_of_ties_as_the_constructor_does():
    """append(ties=[[True], [False]]) flattened the `m x 1` column that the constructor refuses."""
    d = _data()
    with pytest.raises(InputDataError, match=r"ties: expected shape `m` = \(2,\), got \(2, 1\)"):
        _data(ties=[[True], [False]])
    with pytest.raises(InputDataError, match=r"ties: expected shape `m'` = \(2,\).*got \(2, 1\)"):
        d.append(comparisons=[[0, 1], [1, 2]], ties=[[True], [False]])
    with pytest.raises(InputDataError, match=r"ties: expected shape `m'` = \(2,\).*got \(1,\)"):
        d.append(comparisons=[[0, 1], [1, 2]], ties=[True])
    assert d.append(comparisons=[[0, 1], [1, 2]], ties=[True, False]).ties.tolist() == [False, False, True, False]
    assert d.append(comparisons=[3, 4], ties=True).ties.tolist() == [False, False, True]


def test_from_dict_checks_num_features_against_the_items():
    """A num_features that disagreed with the items' rows was not read: only empty items used it."""
    d = _data().to_dict()
    assert PreferenceData.from_dict(d) == _data(items=PreferenceData.from_dict(d).items)
    with pytest.raises(InputDataError, match=r"num_features: expected the length of the items' rows \(3\), got 5\."):
        PreferenceData.from_dict({**d, "num_features": 5})
    with pytest.raises(InputDataError, match="num_features"):
        PreferenceData.from_dict({**d, "num_features": True})
    assert PreferenceData.from_dict({k: v for k, v in d.items() if k != "num_features"}).num_features == 3


def test_from_dataframe_names_a_repeated_column_and_a_column_name_pandas_cannot_look_up():
    """Two columns named 'winner' (a concat along columns) raised pandas' 'truth value of a Series is
    ambiguous'; winner=['winner'] raised TypeError: unhashable type."""
    import pandas as pd

    items = torch.randn(3, 2, dtype=torch.float64)
    twice = pd.concat([pd.DataFrame({"winner": [0, 1]}), pd.DataFrame({"winner": [1, 2], "loser": [2, 0]})], axis=1)
    with pytest.raises(InputDataError, match=r"df\['winner'\]: expected one column of that name, got 2 columns\."):
        PreferenceData.from_dataframe(twice, items)
    pairs = pd.DataFrame({"winner": [0, 1], "loser": [1, 2]})
    for option in ("winner", "tie", "rater"):
        with pytest.raises(InputDataError, match=rf"^{option}: expected a column name \(e.g. a str\), got list\.$"):
            PreferenceData.from_dataframe(pairs, items, **{option: [option]})
    with pytest.raises(InputDataError, match=r"^item: expected a column name"):
        PreferenceData.from_dataframe(None, items, ratings=pd.DataFrame({"item": [0], "label": [1]}), item=["item"])
