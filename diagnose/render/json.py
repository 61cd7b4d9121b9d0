"""The machine report: `report.to_dict()` (schema v1) as strict JSON.

Python's `json` writes NaN and Infinity as bare `NaN`/`Infinity`, which strict parsers (jq,
JavaScript's JSON.parse, Go) reject. A diverging model is exactly when such values appear, so
non-finite floats are written as the strings "nan", "inf" and "-inf": the file stays valid JSON
and still says what happened (null would read as "does not apply").
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping

from diagnose.report import Report


def render_json(report: Report) -> str:
    return json.dumps(finite_json(report.to_dict()), indent=2, allow_nan=False) + "\n"


def finite_json(data: object) -> object:
    """A copy of `data` with non-finite floats replaced by "nan"/"inf"/"-inf" and tuples as lists."""
    if isinstance(data, float) and not math.isfinite(data):
        if math.isnan(data):
            return "nan"
        return "inf" if data > 0 else "-inf"
    if isinstance(data, Mapping):
        return {str(key): finite_json(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [finite_json(item) for item in data]
    return data
