"""Kubernetes resource quantities by amount, so that "0.5" and the "500m" Knative's webhook stores are the
same CPU: resource.Quantity's suffixes (k8s.io/apimachinery pkg/api/resource), parsed exactly.

The synchronous `kubernetes` client has the same function (kubernetes.utils.parse_quantity), but the
operator does not install that client: kopf imports it whenever it is importable, and it alone is 45 MB
of the operator's memory. tests/test_status_and_ownership.py holds this parser to that one, input for
input."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

# Decimal SI suffixes (powers of 1000) and binary ones (powers of 1024), as resource.Quantity reads them.
_DECIMAL = {"n": -3, "u": -2, "m": -1, "k": 1, "K": 1, "M": 2, "G": 3, "T": 4, "P": 5, "E": 6}
_BINARY = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4, "Pi": 5, "Ei": 6}


def parse_quantity(quantity: object) -> Decimal:
    """The amount a quantity stands for; ValueError for what is not one."""
    if isinstance(quantity, (int, float, Decimal)):
        return Decimal(quantity)
    text = str(quantity)
    if text[-2:] in _BINARY:
        number, scale = text[:-2], Decimal(1024) ** _BINARY[text[-2:]]
    elif text.endswith("i"):
        raise ValueError(f"{text} has unknown suffix")
    elif text[-1:] in _DECIMAL:
        number, scale = text[:-1], Decimal(1000) ** _DECIMAL[text[-1:]]
    else:
        number, scale = text, Decimal(1)
    try:
        return Decimal(number) * scale
    except InvalidOperation:
        raise ValueError(f"Invalid number format: {number}") from None
