"""A sweep's output folder: what it measures, kept so an interrupted sweep resumes.

    sweep.json          what this sweep is: files, layouts, the bench settings
    <label>.json        a layout's bench result, written as soon as it is measured
    <label>.partial.json  what an interrupted layout measured (not counted as done)
    report.json         the report over every measured layout
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from sparkctl.bench.result import save_result
from sparkctl.errors import InputError


@dataclass(frozen=True)
class SweepManifest:
    inventory: str
    playbook: str
    layouts: tuple[str, ...]
    bench: str  # the bench settings as canonical JSON: a resumed sweep must measure the same way

    def to_dict(self) -> dict[str, Any]:
        return {"inventory": self.inventory, "playbook": self.playbook, "layouts": list(self.layouts),
                "bench": json.loads(self.bench)}


class SweepStore:
    def __init__(self, folder: str):
        self.folder = folder

    def path(self, name: str) -> str:
        return os.path.join(self.folder, name)

    def result_path(self, label: str) -> str:
        return self.path(f"{label}.json")

    def begin(self, manifest: SweepManifest, *, resume: bool) -> None:
        """Start a sweep here, or continue the one recorded, refusing to mix two."""
        recorded = self._manifest()
        if recorded is None:
            if resume and self._results():
                raise InputError(f"{self.folder} holds results but no sweep.json; cannot tell what they measured")
        elif not resume:
            raise InputError(f"{self.folder} holds an earlier sweep ({', '.join(recorded.get('layouts', []))})",
                             hint="pass --resume to continue it, or choose another --output-dir")
        elif recorded.get("bench") != json.loads(manifest.bench):
            raise InputError(f"--resume: the bench settings differ from the sweep in {self.folder}; its results "
                             "would not compare", hint="resume with the same bench flags, or choose another --output-dir")
        os.makedirs(self.folder, exist_ok=True)
        save_result(manifest.to_dict(), self.path("sweep.json"))

    def done(self, label: str) -> bool:
        data = self.load(label)
        return data is not None and not data.get("interrupted")

    def load(self, label: str) -> dict[str, Any] | None:
        try:
            with open(self.result_path(label), encoding="utf-8") as handle:
                data = json.load(handle)
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def save(self, label: str, document: dict[str, Any]) -> str:
        """A complete result is the layout's; an interrupted one is kept aside."""
        path = self.path(f"{label}.partial.json") if document.get("interrupted") else self.result_path(label)
        save_result(document, path)
        return path

    def _manifest(self) -> dict[str, Any] | None:
        try:
            with open(self.path("sweep.json"), encoding="utf-8") as handle:
                data = json.load(handle)
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def _results(self) -> list[str]:
        try:
            return [n for n in os.listdir(self.folder) if n.endswith(".json")]
        except OSError:
            return []
