"""Does the live Knative Service already say what we want? Only what this operator sets is compared, so
defaults that Knative's webhook adds, and fields other controllers own, never trigger an update.

Two checks: every field we set still has our value (someone may have edited it), and the hash of the
whole desired object, stamped on it at the last apply, still matches (a field we stopped setting is
gone from `desired`, so only the hash can tell that it must be removed).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from zeroserve_operator.quantity import parse_quantity

FIELD_MANAGER = "zeroserve-operator"
DESIRED_HASH = "zeroserve.dev/desired-hash"


def desired_hash(obj: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:20]


def stamp(obj: dict[str, Any]) -> dict[str, Any]:
    """`obj` with the hash of its own content in an annotation."""
    digest = desired_hash(obj)
    obj.setdefault("metadata", {}).setdefault("annotations", {})[DESIRED_HASH] = digest
    return obj


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


def owned_fields_match(desired: Mapping[str, Any], actual: Mapping[str, Any]) -> bool:
    """True when applying `desired` (already stamped) would change nothing we own."""
    return contains(actual, desired)
