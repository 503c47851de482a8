"""Does the live object already say what we want? Only the fields this operator owns are compared, so
defaults that Knative's webhook adds, and fields other controllers own, never trigger an update."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kubernetes.utils import parse_quantity

FIELD_MANAGER = "zeroserve-operator"


def _same_quantity(a: Any, b: Any) -> bool:
    try:
        return parse_quantity(a) == parse_quantity(b)
    except (ValueError, TypeError):
        return False


def contains(actual: Any, desired: Any, path: tuple[str, ...] = ()) -> bool:
    """True when every field set in `desired` has the same value in `actual`; lists match item by item."""
    if isinstance(desired, Mapping):
        return isinstance(actual, Mapping) and all(
            key in actual and contains(actual[key], value, (*path, key)) for key, value in desired.items()
        )
    if isinstance(desired, list):
        return (
            isinstance(actual, list)
            and len(actual) == len(desired)
            and all(contains(a, d, path) for a, d in zip(actual, desired, strict=True))
        )
    if desired == actual:
        return True
    # The webhook may canonicalize quantities ("0.5" -> "500m"); the same amount is the same field.
    return bool(path) and path[-2:-1] in (("requests",), ("limits",)) and _same_quantity(actual, desired)


def _stale_paths(owned: Mapping[str, Any], desired: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Fields the managedFields entry says we own but that `desired` no longer sets."""
    stale = []
    for key, sub in owned.items():
        if not key.startswith("f:"):
            continue  # list items (k:/v:/i:) are compared whole by `contains`
        name = key[2:]
        if not isinstance(desired, Mapping) or name not in desired:
            stale.append((*path, name))
        elif isinstance(desired[name], Mapping) and sub:
            stale += _stale_paths(sub, desired[name], (*path, name))
    return stale


def owned_fields_match(desired: Mapping[str, Any], actual: Mapping[str, Any]) -> bool:
    """True when applying `desired` would change nothing we own."""
    if not contains(actual, desired):
        return False
    for entry in actual.get("metadata", {}).get("managedFields") or []:
        if entry.get("manager") == FIELD_MANAGER and entry.get("operation") == "Apply":
            if _stale_paths(entry.get("fieldsV1") or {}, desired):
                return False
    return True
