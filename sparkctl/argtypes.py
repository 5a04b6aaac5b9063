"""Number types for command-line flags: finite, and inside the range where the flag
means something. argparse turns the ArgumentTypeError into exit 2 with the flag named.
Every numeric flag is checked here, at parse time; `flag_value` applies the same rules
where argparse does not see the number (one item of a comma-separated list).
"""

from __future__ import annotations

import argparse
import math
from typing import Callable, TypeVar

from sparkctl.errors import InputError

N = TypeVar("N", int, float)


def _number(convert: Callable[[str], N], what: str, low: float | None, high: float | None = None, *,
            low_open: bool = False) -> Callable[[str], N]:
    def parse(text: str) -> N:
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
mtu = _number(int, "an MTU from 576 to 9216", 576, 9216)


def flag_value(flag: str, parse: Callable[[str], N], text: str) -> N:
    """One of these types outside argparse: InputError (exit 2) naming the flag."""
    try:
        return parse(text)
    except argparse.ArgumentTypeError as exc:
        raise InputError(f"{flag}: {exc}") from None


def number_list(flag: str, parse: Callable[[str], N], text: str) -> tuple[N, ...]:
    """`1,4,16`: each item one of these types; empty items are skipped, no item at all is refused."""
    items = [p.strip() for p in text.split(",") if p.strip()]
    if not items:
        raise InputError(f"{flag} is empty")
    return tuple(flag_value(flag, parse, item) for item in items)
