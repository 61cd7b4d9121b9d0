"""The machine report: `report.to_dict()` (schema v1) as strict JSON.

Python's `json` writes NaN and Infinity as bare `NaN`/`Infinity`, which strict parsers (jq,
JavaScript's JSON.parse, Go) reject, and a string such as "nan" where a number belongs breaks every
consumer that sums or compares the field. A diverging model is exactly when such values appear, so
a non-finite number is written as `null` (the contract: valid JSON that every consumer parses) and
what it was is kept in one place, `nonfinite_values`: JSON-pointer path -> "nan" | "inf" | "-inf".
The `non-finite` finding and `loss` fields say why (the step the loss first went non-finite).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping

from diagnose.report import Report

NONFINITE_KEY = "nonfinite_values"


def render_json(report: Report) -> str:
    return json.dumps(finite_json(report.to_dict()), indent=2, allow_nan=False) + "\n"


def finite_json(data: object) -> object:
    """A copy of `data` with non-finite floats as None and tuples as lists.

    When `data` is a mapping and any value was not finite, the copy gains `nonfinite_values`, a
    map from each such value's JSON pointer (RFC 6901, e.g. `/loss/history/2`) to its spelling.
    """
    found: dict[str, str] = {}
    clean = _replace_nonfinite(data, "", found)
    if found and isinstance(clean, dict):
        clean[NONFINITE_KEY] = found
    return clean


def _replace_nonfinite(data: object, path: str, found: dict[str, str]) -> object:
    if isinstance(data, float) and not math.isfinite(data):
        found[path] = "nan" if math.isnan(data) else ("inf" if data > 0 else "-inf")
        return None
    if isinstance(data, Mapping):
        return {str(key): _replace_nonfinite(value, f"{path}/{_escape(str(key))}", found)
                for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [_replace_nonfinite(item, f"{path}/{i}", found) for i, item in enumerate(data)]
    return data


def _escape(key: str) -> str:
    """A JSON-pointer reference token: `~` and `/` escaped as RFC 6901 says."""
    return key.replace("~", "~0").replace("/", "~1")
