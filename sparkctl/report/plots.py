"""Plots for a report, as PNG bytes drawn by the commands' own plot functions."""

from __future__ import annotations

import os
import tempfile
from typing import Callable

from sparkctl.errors import InputError


def png_of(draw: Callable[[str], object]) -> tuple[bytes | None, str | None]:
    """(png, None), or (None, why) when matplotlib is missing: the report goes out without the plot."""
    with tempfile.TemporaryDirectory(prefix="sparkctl-report-") as folder:
        path = os.path.join(folder, "plot.png")
        try:
            draw(path)
        except InputError as exc:  # matplotlib not installed
            return None, f"plot left out: {exc.message}"
        with open(path, "rb") as handle:
            return handle.read(), None
