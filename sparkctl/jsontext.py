"""JSON as sparkctl writes it: NaN and infinities are not JSON, so a number
nobody could measure is written as null (and json is told to refuse any left)."""

from __future__ import annotations

import json
import math
from typing import Any


def finite(data: Any) -> Any:
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {key: finite(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [finite(value) for value in data]
    return data


def dumps(data: Any, *, indent: int | None = 2) -> str:
    return json.dumps(finite(data), indent=indent, default=str, allow_nan=False)
