"""JSONB fidelity: PostgreSQL's JSONB keeps neither the order of object keys nor the spelling of a
float such as ``1e+16``. A small hint, stored beside the value (NULL when JSONB keeps it as is),
records what JSONB forgets, so that a document read back is exactly the one saved."""

from __future__ import annotations

import math
from typing import Any

def _jsonb_sorted(keys: list[str]) -> bool:
    """True if ``keys`` are already in JSONB's storage order (shorter first, then bytewise)."""
    prev = None
    for k in keys:
        b = k.encode()
        cur = (len(b), b)
        if prev is not None and cur < prev:
            return False
        prev = cur
    return True


def order_hint(value: Any) -> Any:
    """What JSONB would forget about ``value``: None if it keeps it exactly.

    ``{"k": [keys in order]}`` for an object JSONB would reorder, ``{"c": {key or index: hint}}`` for
    members that need one, ``{"f": "1e+16"}`` for a float JSONB would turn into an integer (or -0.0).
    """
    t = type(value)
    if t is dict:
        sub: dict[str, Any] | None = None
        for k, v in value.items():
            h = order_hint(v)
            if h is not None:
                if sub is None:
                    sub = {}
                sub[k] = h
        hint: dict[str, Any] = {}
        if len(value) > 1 and not _jsonb_sorted(list(value)):
            hint["k"] = list(value)
        if sub is not None:
            hint["c"] = sub
        return hint or None
    if t is list:
        members: dict[str, Any] | None = None
        for i, v in enumerate(value):
            h = order_hint(v)
            if h is not None:
                if members is None:
                    members = {}
                members[str(i)] = h
        return None if members is None else {"c": members}
    if t is float:
        if (value.is_integer() and abs(value) >= 1e16) or (value == 0 and math.copysign(1.0, value) < 0):
            return {"f": repr(value)}
    return None


def apply_hint(value: Any, hint: Any) -> Any:
    """Inverse of :func:`order_hint`: ``value`` as read from JSONB, restored."""
    if not hint:
        return value
    if "f" in hint:
        return float(hint["f"])
    sub = hint.get("c") or {}
    if isinstance(value, dict):
        keys = hint.get("k") or list(value)
        return {k: apply_hint(value[k], sub.get(k)) for k in keys}
    if isinstance(value, list) and sub:
        return [apply_hint(v, sub.get(str(i))) for i, v in enumerate(value)]
    return value
