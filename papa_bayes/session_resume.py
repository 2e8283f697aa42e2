"""What a resumed session checks: the model and source it is given are the ones its store began with.

A session stores its model's class and the fields the model's ``repr`` shows as JSON
(``model_record``) beside the repr, and its source's ``config()``. Stores written before
the record hold only the repr, which is parsed back into fields (:func:`_repr_fields`).
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from papa_bayes.exceptions import InputDataError
from papa_bayes.models import PairwiseGPReward, PreferenceGP, PyroRewardModel

if TYPE_CHECKING:
    from papa_bayes.session import PreferenceSession

__all__: list[str] = []


def check_resumed(cfg: dict[str, Any], session: PreferenceSession) -> None:
    """InputDataError unless ``session``'s model and source are those of the stored configuration ``cfg``.

    The error names the settings that differ, with their stored and given values (a diffusion source's
    configuration has some twenty settings, a model's repr may hold a prior's whole covariance); within a
    record both hold as dicts, the one entry that differs (``model.scheduler.prediction_type``). Only the
    stored settings are compared, and none the source's ``_unchecked_on_resume`` names (dotted paths it
    accepts changed on purpose, e.g. a diffusion source's ``accept_new_conditioning``).
    """
    stored_record = cfg.get("model_record")
    same = record_matches(stored_record, session.model)
    if same is not None:
        if not same:
            given_record = json.loads(json.dumps(model_record(session.model)))
            expected, got = _record_difference(stored_record, given_record, cfg.get("model"), repr(session.model))
            raise InputDataError("model", f"the session's model, {expected}", got)
    else:  # a store written before the record, or a model whose fields its repr does not say: the reprs
        _check_resumed_repr(cfg.get("model"), repr(session.model))
    stored_source, given_source = cfg.get("source"), json.loads(json.dumps(session.source.config()))
    # Only what was stored: a store written before a source recorded a setting does not refuse it now.
    if isinstance(stored_source, dict) and any(given_source.get(k, ...) != v for k, v in stored_source.items()):
        old, new = _flat_settings(stored_source, given_source)
        unchecked = tuple(getattr(session.source, "_unchecked_on_resume", ()))  # changed on purpose
        differ = [k for k, v in old.items() if new.get(k, ...) != v
                  and not any(k == u or k.startswith(u + ".") for u in unchecked)]
        if "kind" in differ:  # another kind of source: its other settings are beside the point
            differ = ["kind"]
        if differ:
            raise InputDataError("source", "the session's source, with "
                                 + _settings(old, differ, "not stored") + " (the settings that differ)",
                                 _settings(new, differ, "not set"))


def _flat_settings(stored: dict[str, Any], given: dict[str, Any], prefix: str = ""
                   ) -> tuple[dict[str, Any], dict[str, Any]]:
    """(stored, given) settings with the dicts both hold opened into dotted keys (``model.scheduler.beta_end``),
    so that a refusal names the one setting of a nested record that differs, not the whole record. Only the
    stored keys: a key a later version (of papa_bayes, or of diffusers' configs) adds does not refuse."""
    old: dict[str, Any] = {}
    new: dict[str, Any] = {}
    for k, v in stored.items():
        g = given.get(k, ...)
        if isinstance(v, dict) and isinstance(g, dict) and v != g:
            inner_old, inner_new = _flat_settings(v, g, f"{prefix}{k}.")
            old |= inner_old
            new |= inner_new
        else:
            old[prefix + k] = v
            if g is not ...:
                new[prefix + k] = g
    return old, new


def record_matches(stored: Any, model: Any) -> bool | None:
    """Whether ``model`` is the one whose :func:`model_record` was stored (``stored``, as read back from JSON):
    its class and every stored field equal. None where that cannot be told from records: ``stored`` is no
    record with fields (a store written before the record), or ``model``'s repr names no known fields.

    Only the stored fields: a field a later version adds (at the default that the stored session had)
    does not refuse the session, as with a source's settings.
    """
    if not (isinstance(stored, dict) and isinstance(stored.get("fields"), dict)):
        return None
    given = json.loads(json.dumps(model_record(model)))
    if given["fields"] is None:
        return None
    return stored.get("class") == given["class"] and all(given["fields"].get(k, ...) == v
                                                         for k, v in stored["fields"].items())


def _check_resumed_repr(stored: str | None, given: str) -> None:
    """InputDataError unless the stored repr of a session's model is ``given`` (compared by class where the
    model has no repr of its own). Stores before the ``model_record`` (and custom reprs) are compared so."""
    if stored is not None and stored != given:
        by_class = " object at 0x" in stored  # a model without a repr of its own: compare classes
        if not by_class or stored.split(" object at ")[0].lstrip("<") != given.split(" object at ")[0].lstrip("<"):
            expected, got = _model_difference(stored, given)
            raise InputDataError("model", f"the session's model, {expected}", got)


# The fields that the GP models' own reprs show (PyroRewardModel's repr shows every public attribute).
_REPR_FIELDS = {
    PreferenceGP.__repr__: ("link", "ties", "kernel", "num_inducing", "standardize"),
    PairwiseGPReward.__repr__: ("link", "kernel", "standardize"),
}


def model_record(model: Any) -> dict[str, Any]:
    """``{"class": name, "fields": {field: value}}``: the fields ``model``'s repr shows, as JSON (see
    :func:`_field_json`), that a resumed session compares. ``"fields"`` is None for a model whose repr
    names no known fields (a custom ``__repr__``, or none of its own): such a model is compared by repr.

    A record, not the repr parsed back: a tensor's repr rounds and elides its values, and a value's repr
    may hold commas, brackets, quotes or an address that changes with every process.
    """
    shown = type(model).__repr__
    if shown is PyroRewardModel.__repr__:
        names: tuple[str, ...] | None = tuple(k for k in vars(model) if not k.startswith("_"))
    else:
        names = _REPR_FIELDS.get(shown)
    fields = None if names is None else {k: _field_json(getattr(model, k)) for k in names}
    return {"class": type(model).__name__, "fields": fields}


def _field_json(value: Any) -> Any:
    """A model field's value as JSON that compares as the value does: numbers, text, bools and None as they
    are; ``{"tuple": [...]}``, ``{"dict": {...}}``, ``{"tensor": values, "dtype": name}`` (every value, not
    the repr's four digits), ``{"float": "nan"}`` (and infinities); ``{"object": class}`` for a value without
    a repr of its own (its address changes), ``{"repr": text}`` for any other."""
    if isinstance(value, float) and not math.isfinite(value):
        return {"float": repr(value)}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Tensor):
        return {"tensor": _field_json(value.detach().cpu().tolist()), "dtype": str(value.dtype).split(".")[-1]}
    if isinstance(value, (tuple, list)):
        items = [_field_json(v) for v in value]
        return {"tuple": items} if isinstance(value, tuple) else items
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {"dict": {k: _field_json(v) for k, v in value.items()}}
    if type(value).__repr__ is object.__repr__:
        return {"object": f"{type(value).__module__}.{type(value).__qualname__}"}
    return {"repr": repr(value)}


def _field_text(value: Any) -> str:
    """A value :func:`_field_json` wrote, as its repr reads (a tensor, torch's repr of it)."""
    if isinstance(value, list):
        return "[" + ", ".join(map(_field_text, value)) + "]"
    if isinstance(value, dict) and len(value) <= 2:
        if isinstance(value.get("tuple"), list):
            items = [_field_text(v) for v in value["tuple"]]
            return "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"
        if isinstance(value.get("dict"), dict):
            return "{" + ", ".join(f"{k!r}: {_field_text(v)}" for k, v in value["dict"].items()) + "}"
        if "tensor" in value:
            try:
                return repr(torch.tensor(_field_value(value["tensor"]), dtype=getattr(torch, value["dtype"])))
            except (TypeError, ValueError, RuntimeError, AttributeError):
                return f"tensor({value['tensor']})"
        if isinstance(value.get("object"), str):
            return f"<{value['object']} object>"
        for key in ("float", "repr"):
            if isinstance(value.get(key), str):
                return value[key]
    return repr(value)


def model_from_record(record: dict[str, Any], cls: type) -> Any | None:
    """A ``cls`` built from the fields :func:`model_record` stored, or None where the record cannot rebuild one
    (another class, no fields, a value kept only as its repr or class name)."""
    fields = record.get("fields") if isinstance(record, dict) else None
    if not isinstance(fields, dict) or record.get("class") != cls.__name__:
        return None
    try:
        kwargs = {k: _from_field_json(v) for k, v in fields.items()}
    except ValueError:
        return None
    return cls(**kwargs)


def _from_field_json(value: Any) -> Any:
    """The inverse of :func:`_field_json` (ValueError for what it kept only as a repr or a class name)."""
    if isinstance(value, list):
        return [_from_field_json(v) for v in value]
    if not isinstance(value, dict):
        return value
    if "float" in value:
        return float(value["float"])
    if "tensor" in value:
        return torch.tensor(_field_value(value["tensor"]), dtype=getattr(torch, value["dtype"]))
    if "tuple" in value:
        return tuple(_from_field_json(v) for v in value["tuple"])
    if "dict" in value:
        return {k: _from_field_json(v) for k, v in value["dict"].items()}
    raise ValueError(f"a field kept as {next(iter(value), None)!r} cannot be rebuilt")


def _field_value(value: Any) -> Any:
    """A tensor's values as :func:`_field_json` wrote them, back to numbers (non-finite ones too)."""
    if isinstance(value, list):
        return [_field_value(v) for v in value]
    return float(value["float"]) if isinstance(value, dict) and "float" in value else value


def _record_difference(stored: dict[str, Any], given: dict[str, Any], stored_repr: str | None,
                       given_repr: str) -> tuple[str, str]:
    """(stored, given) models as a refusal names them: the fields that differ where both are of one class,
    whole reprs otherwise (another class: its fields are beside the point, and its name is the news)."""
    if stored.get("class") != given["class"]:
        return stored_repr or str(stored.get("class")), given_repr
    old, new = stored["fields"], given["fields"]
    return _fields_that_differ(given["class"], old, new, [k for k, v in old.items() if new.get(k, ...) != v],
                               shown=_field_text)


def _fields_that_differ(name: str, old: dict[str, Any], new: dict[str, Any], differ: list[str], *,
                        shown: Any) -> tuple[str, str]:
    """(stored, given) model of class ``name`` as a refusal names them: only the fields in ``differ``."""
    return (f"{name} with {_settings(old, differ, 'not stored', shown=shown)} (the fields that differ)",
            _settings(new, differ, "not set", shown=shown))


def _settings(values: dict[str, Any], keys: list[str], missing: str, *, shown: Any = repr) -> str:
    """``k=v, ...`` of ``keys`` in ``values``, each value as ``shown`` writes it (``k missing`` where absent)."""
    return ", ".join(f"{k}={shown(values[k])}" if k in values else f"{k} {missing}" for k in keys)


def _model_difference(stored: str, given: str) -> tuple[str, str]:
    """(stored, given) reprs of two models, cut to the fields that differ where both are ``Name(k=v, ...)`` of
    one class; whole otherwise (another class: its fields are beside the point, and its name is the news)."""
    a, b = _repr_fields(stored), _repr_fields(given)
    if a is None or b is None or a[0] != b[0]:
        return stored, given
    (name, old), (_, new) = a, b
    return _fields_that_differ(name, old, new, [k for k in {**old, **new} if old.get(k) != new.get(k)], shown=str)


def _repr_fields(text: str) -> tuple[str, dict[str, str]] | None:
    """``("Name", {"k": "v", ...})`` of a repr ``Name(k=v, ...)`` (split at its top-level commas), else None."""
    name, paren, body = text.partition("(")
    if not paren or not name.isidentifier() or not body.endswith(")"):
        return None
    parts, depth, quote, start = [], 0, "", 0
    body = body[:-1]
    for i, ch in enumerate(body):
        if quote:
            quote = "" if ch == quote and body[i - 1] != "\\" else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(body[start:i])
            start = i + 1
    parts.append(body[start:])
    fields = {}
    for part in parts:
        key, eq, value = part.strip().partition("=")
        if not eq or not key.isidentifier():
            return None
        fields[key] = value
    return (name, fields) if depth == 0 and not quote else None
