"""matplotlib, when a plot is asked for.

It is optional: imported only for --plot, and its absence is a clear input error
with the install command, raised before minutes of measuring rather than after.
"""

from __future__ import annotations

from typing import Any

from sparkctl.errors import InputError, OperationFailed


def pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display on a headless controller
        import matplotlib.pyplot as plt
    except ImportError:
        raise InputError(
            "--plot needs matplotlib, which is not installed in sparkctl's environment",
            hint="pip install matplotlib (into the environment that runs sparkctl)",
        ) from None
    return plt


def require_matplotlib() -> None:
    """Fail before a long measurement rather than after it, when --plot cannot work."""
    pyplot()


def save(fig: Any, path: str) -> str:
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=120)
    except OSError as exc:
        raise OperationFailed(f"cannot write the plot to {path}: {exc.strerror or exc}") from None
    return path
