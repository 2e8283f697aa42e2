"""A resumed session's model is compared field by field with the record its store keeps beside the repr
(``config()["model_record"]``); stores written before the record are compared through the repr, as then."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from papa_bayes.exceptions import InputDataError
from papa_bayes.models import HierarchicalLinearReward, LinearReward, PairwiseGPReward, PreferenceGP
from papa_bayes.session import PreferenceSession
from papa_bayes.session_resume import _repr_fields
from papa_bayes.store import PreferenceStore

sys.path.insert(0, str(Path(__file__).parent))
from session_worker import setup  # noqa: E402


class Tagged(LinearReward):
    """A custom model whose repr (PyroRewardModel's) shows two fields of its own after the linear ones."""

    def __init__(self, *, tag, level=1, **options):
        super().__init__(**options)
        self.tag, self.level = tag, level


class Marker:
    """A value without a repr of its own: its repr holds an address, new in every process."""


def _begin(path, model):
    source, user, _ = setup()
    PreferenceSession(path, source, user, model=model, pool_size=8).run(1, progress_bar=False)
    return source, user


def _refusal(path, source, user, model) -> str:
    with pytest.raises(InputDataError) as err:
        PreferenceSession.resume(path, source, user, model=model)
    assert err.value.field == "model"
    return str(err.value)


def _as_before_the_record(path):
    """Rewrite the store's configuration as papa_bayes wrote it before the record: the repr alone."""
    with PreferenceStore(path, create=False) as store:
        old = {k: v for k, v in store.rater_config(0).items() if k != "model_record"}
        store.set_config(old, rater=0)
        assert "model_record" not in store.config and "model_record" not in store.rater_config(0)


def test_a_new_session_stores_its_model_fields_beside_the_repr(tmp_path):
    model = LinearReward(rationality=1.0, ties=True, prior_loc=torch.tensor([0.5, 0.0, 0.0, 0.0]))
    _begin(tmp_path / "s.db", model)
    with PreferenceStore(tmp_path / "s.db", create=False) as store:
        cfg = store.rater_config(0)
    assert cfg["model"] == repr(model)
    record = cfg["model_record"]
    assert record["class"] == "LinearReward"
    assert list(record["fields"]) == ["link", "ties", "prior_scale", "prior_loc", "prior_scale_tril", "rationality",
                                      "rationality_prior", "threshold_prior_scale", "tie_prior"]
    assert record["fields"]["link"] == "logit" and record["fields"]["rationality"] == 1.0
    assert record["fields"]["tie_prior"] == {"tuple": [-0.6931471805599453, 1.0]}
    assert record["fields"]["prior_loc"] == {"tensor": [0.5, 0.0, 0.0, 0.0], "dtype": "float64"}


@pytest.mark.parametrize("model", [
    LinearReward(rationality=1.0), HierarchicalLinearReward(ties=True), PreferenceGP(), PairwiseGPReward(),
    Tagged(tag="a, b (c) 'd'", rationality=1.0),
], ids=lambda m: type(m).__name__)
def test_the_record_holds_the_fields_the_repr_shows(model):
    """The GP models' own reprs show some of their settings: the record holds those, as a resume compared."""
    from papa_bayes.session_resume import model_record as _model_record

    name, shown = _repr_fields(repr(model))
    record = _model_record(model)
    assert record["class"] == name == type(model).__name__ and list(record["fields"]) == list(shown)


def test_resume_with_the_same_model_continues_and_another_field_is_named(tmp_path):
    path = tmp_path / "s.db"
    loc = torch.tensor([0.5, 0.0, 0.0, 0.0], dtype=torch.float64)
    source, user = _begin(path, LinearReward(rationality=1.0, prior_loc=loc))
    message = _refusal(path, source, user, LinearReward(rationality=2.0, prior_loc=loc))
    assert message.startswith("model: expected the session's model, LinearReward with rationality=1.0 "
                              "(the fields that differ)"), message
    assert message.endswith("got rationality=2.0."), message
    assert "prior_loc" not in message and "link" not in message, message
    message = _refusal(path, source, user, HierarchicalLinearReward(rationality=1.0))
    assert "LinearReward(link='logit'" in message and "HierarchicalLinearReward(" in message, message  # whole
    session = PreferenceSession.resume(path, source, user, model=LinearReward(rationality=1.0, prior_loc=loc.clone()))
    assert session.step().round == 1
    session.close()


@pytest.mark.parametrize("stored, given", [
    ("a, b (c) 'd'", "a, b (c) 'e'"),  # commas, parentheses and quotes: the old parser handled these
    ("ends in a backslash \\", "ends in a slash /"),  # the old parser read the closing quote as escaped
])
def test_a_string_field_with_commas_parentheses_or_quotes_is_compared_and_named(tmp_path, stored, given):
    path = tmp_path / "s.db"
    source, user = _begin(path, Tagged(tag=stored, rationality=1.0))
    message = _refusal(path, source, user, Tagged(tag=given, rationality=1.0))
    assert message.startswith(f"model: expected the session's model, Tagged with tag={stored!r} "
                              "(the fields that differ)"), message
    assert message.endswith(f"got tag={given!r}."), message
    assert "prior_scale" not in message and "level" not in message, message
    PreferenceSession.resume(path, source, user, model=Tagged(tag=stored, rationality=1.0)).close()


def test_a_tuple_field_is_compared_and_named(tmp_path):
    path = tmp_path / "s.db"
    source, user = _begin(path, LinearReward(rationality=1.0, tie_prior=(-0.5, 1.0)))
    message = _refusal(path, source, user, LinearReward(rationality=1.0, tie_prior=(-0.5, 2.0)))
    assert "with tie_prior=(-0.5, 1.0) (the fields that differ)" in message and message.endswith(
        "got tie_prior=(-0.5, 2.0)."), message
    PreferenceSession.resume(path, source, user, model=LinearReward(rationality=1.0, tie_prior=[-0.5, 1.0])).close()


def test_a_prior_that_differs_below_the_repr_precision_is_refused(tmp_path):
    """A tensor's repr shows four digits (and elides long ones): the repr compare accepted another prior mean."""
    path = tmp_path / "s.db"
    loc = torch.tensor([0.1, 0.0, 0.0, 0.0], dtype=torch.float64)
    source, user = _begin(path, LinearReward(rationality=1.0, prior_loc=loc))
    other = LinearReward(rationality=1.0, prior_loc=loc + torch.tensor([1e-5, 0.0, 0.0, 0.0], dtype=torch.float64))
    assert repr(other) == repr(LinearReward(rationality=1.0, prior_loc=loc))
    message = _refusal(path, source, user, other)
    assert "prior_loc=" in message and "rationality" not in message, message


def test_fields_after_one_without_a_repr_of_its_own_are_compared(tmp_path):
    """A field whose repr holds an address made the whole model compared by class up to that field: a field
    after it (``level``) could change silently. The field is compared by its class, the others by value."""
    path = tmp_path / "s.db"
    source, user = _begin(path, Tagged(tag=Marker(), level=1, rationality=1.0))
    message = _refusal(path, source, user, Tagged(tag=Marker(), level=2, rationality=1.0))
    assert "with level=1 (the fields that differ)" in message and message.endswith("got level=2."), message
    assert "Marker" not in message, message
    PreferenceSession.resume(path, source, user, model=Tagged(tag=Marker(), level=1, rationality=1.0)).close()


def test_a_store_written_before_the_record_still_resumes(tmp_path):
    path = tmp_path / "s.db"
    model = LinearReward(rationality=1.0, ties=True)
    source, user = _begin(path, model)
    _as_before_the_record(path)
    message = _refusal(path, source, user, LinearReward(rationality=1.0, ties=True, link="probit"))
    assert message.startswith("model: expected the session's model, LinearReward with link='logit' "
                              "(the fields that differ)") and message.endswith("got link='probit'."), message
    session = PreferenceSession.resume(path, source, user, model=LinearReward(rationality=1.0, ties=True))
    assert session.step().round == 1 and session.store.num_answers(0) == 2
    session.close()
    with PreferenceStore(path, create=False) as store:  # a resume writes no configuration: the file stays as it was
        assert "model_record" not in store.rater_config(0)


def test_only_the_stored_fields_are_compared(tmp_path):
    """As with a source's settings: a field the stored record lacks (one a later version added, at the default
    the stored session had) does not refuse the session; a stored field the model lacks does, by name."""
    path = tmp_path / "s.db"
    source, user = _begin(path, Tagged(tag="x", level=1, rationality=1.0))
    with PreferenceStore(path, create=False) as store:
        cfg = store.rater_config(0)
        del cfg["model_record"]["fields"]["level"]
        store.set_config(cfg, rater=0)
    PreferenceSession.resume(path, source, user, model=Tagged(tag="x", level=1, rationality=1.0)).close()
    untagged = Tagged(tag="x", rationality=1.0)
    del untagged.tag
    message = _refusal(path, source, user, untagged)
    assert "with tag='x' (the fields that differ)" in message and message.endswith("got tag not set."), message


def test_a_linear_model_is_rebuilt_from_its_record_and_other_records_give_none():
    """A hierarchical newcomer's prior is kept in the store as its model_record and rebuilt from it."""
    import json

    from papa_bayes.session_resume import model_from_record, model_record

    model = LinearReward(ties=True, prior_loc=torch.tensor([0.1, -0.2], dtype=torch.float64),
                         prior_scale_tril=torch.tensor([[0.5, 0.0], [0.1, 0.3]], dtype=torch.float64),
                         rationality_prior=(0.1, 0.7), tie_prior=(-1.0, 0.5))
    record = json.loads(json.dumps(model_record(model)))
    rebuilt = model_from_record(record, LinearReward)
    assert type(rebuilt) is LinearReward and model_record(rebuilt) == model_record(model)
    assert torch.equal(rebuilt.prior_scale_tril, model.prior_scale_tril) and rebuilt.tie_prior == (-1.0, 0.5)
    assert model_from_record(None, LinearReward) is None  # (a prior kept in this session's first format)
    assert model_from_record({"class": "PreferenceGP", "fields": {}}, LinearReward) is None
    assert model_from_record({**record, "fields": {**record["fields"], "link": {"repr": "x"}}}, LinearReward) is None
