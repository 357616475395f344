"""JSON objects (plain dicts) -> :class:`ExampleFields`: the CLI's JSONL form, NATS messages.

The object has the keys of the CLI's JSONL files: ``id``, one of ``text`` |
``features`` | ``probabilities``, ``labels`` and/or ``label_indices``,
``annotator_id``, ``metadata``. Type errors are :class:`InvalidExample` naming
the example and the field; everything else is checked by
:class:`~labelwatch.codec.fields.ExampleDecoder`, as for every transport.

>>> fields_from_mapping({"id": "a", "probabilities": [0.2, 0.9], "labels": ["cat"]}).input
'probabilities'
>>> fields_from_mapping({"id": "a", "labels": "cat"})
Traceback (most recent call last):
...
labelwatch.errors.InvalidExample: example 'a': field 'labels': must be a list of strings
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from labelwatch.codec.fields import ExampleFields, InputField
from labelwatch.errors import InvalidExample

KNOWN_FIELDS = frozenset(
    {
        "id",
        "text",
        "features",
        "probabilities",
        "labels",
        "label_indices",
        "annotator_id",
        "metadata",
    }
)
_INPUTS: tuple[InputField, ...] = ("text", "features", "probabilities")
_INT32_LIMIT = 2**31


def _where(obj: Mapping[str, Any]) -> str:
    ident = obj.get("id")
    return f"example {ident!r}" if isinstance(ident, str) and ident else "example (no id)"


def _utf8(value: str, where: str, name: str) -> str:
    """``value`` if it can be stored as UTF-8 (JSON may carry lone surrogates: not storable)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidExample(
            f"{where}: field '{name}': not valid Unicode text ({exc.reason})"
        ) from exc
    return value


def _string(obj: Mapping[str, Any], name: str, where: str) -> str:
    value = obj.get(name, "")
    if not isinstance(value, str):
        raise InvalidExample(f"{where}: field '{name}': must be a string")
    return _utf8(value, where, name)


def _numbers(obj: Mapping[str, Any], name: str, where: str) -> list[float]:
    values = obj[name]
    if not isinstance(values, list) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in values
    ):
        raise InvalidExample(f"{where}: field '{name}': must be a list of numbers")
    try:
        return [float(v) for v in values]
    except OverflowError as exc:  # an integer beyond any float
        raise InvalidExample(f"{where}: field '{name}': must be a list of numbers") from exc


def _strings(obj: Mapping[str, Any], name: str, where: str) -> list[str]:
    values = obj.get(name, [])
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise InvalidExample(f"{where}: field '{name}': must be a list of strings")
    return [_utf8(v, where, name) for v in values]


def fields_from_mapping(obj: Mapping[str, Any]) -> ExampleFields:
    """The fields of one example object; :class:`InvalidExample` naming the field if malformed."""
    where = _where(obj)
    unknown = sorted(set(obj) - KNOWN_FIELDS)
    if unknown:
        raise InvalidExample(
            f"{where}: unknown field {unknown[0]!r}; "
            f"expected some of {', '.join(sorted(KNOWN_FIELDS))}"
        )
    ident = _string(obj, "id", where)
    annotator_id = _string(obj, "annotator_id", where)
    text = _string(obj, "text", where)
    given = [name for name in _INPUTS if name in obj]
    if len(given) > 1:
        raise InvalidExample(f"{where}: fields {given}: give exactly one input")
    which = given[0] if given else None
    values: list[float] = []
    if which in ("features", "probabilities"):
        values = _numbers(obj, which, where)
    labels = _strings(obj, "labels", where)
    indices = obj.get("label_indices", [])
    if not isinstance(indices, list) or not all(
        isinstance(i, int) and not isinstance(i, bool) and 0 <= i < _INT32_LIMIT for i in indices
    ):
        raise InvalidExample(f"{where}: field 'label_indices': must be a list of integers >= 0")
    metadata = obj.get("metadata", {})
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise InvalidExample(f"{where}: field 'metadata': must be an object of strings")
    for key, value in metadata.items():
        _utf8(key + value, where, "metadata")
    return ExampleFields(
        id=ident,
        input=which,
        text=text,
        values=values,
        labels=labels,
        label_indices=list(indices),
        annotator_id=annotator_id,
        metadata=dict(metadata),
    )


def fields_from_json(data: bytes) -> ExampleFields:
    """Parse one JSON example object; :class:`InvalidExample` if not JSON or malformed."""
    try:
        obj = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidExample(f"message is not valid JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise InvalidExample(f"message must be a JSON object, got {type(obj).__name__}")
    return fields_from_mapping(obj)
