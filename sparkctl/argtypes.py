"""Number types for command-line flags: finite, and inside the range where the flag
means something. argparse turns the ArgumentTypeError into exit 2 with the flag named."""

from __future__ import annotations

import argparse
import math
from typing import Callable


def _number(convert: type, what: str, low: float | None, high: float | None = None, *,
            low_open: bool = False) -> Callable[[str], float | int]:
    def parse(text: str) -> float | int:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        # float() accepts "nan" and "inf"; no flag means anything with them
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        too_low = low is not None and (value <= low if low_open else value < low)
        if too_low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    parse.__name__ = what
    return parse


positive_float = _number(float, "a number above 0", 0, low_open=True)
non_negative_float = _number(float, "a number of 0 or more", 0)
fraction = _number(float, "a fraction above 0 and at most 1", 0, 1, low_open=True)
positive_int = _number(int, "a whole number of 1 or more", 1)
non_negative_int = _number(int, "a whole number of 0 or more", 0)
size_factor = _number(int, "a whole number of 2 or more", 2)
port = _number(int, "a port number from 1 to 65535", 1, 65535)
