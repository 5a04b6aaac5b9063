"""Parsers for `nvidia-smi` output (controller side).

The implementation lives in sparkctl/agent/node_facts.py, which runs on the
nodes with the standard library only and parses there too; this module is the
controller's name for the same functions, so there is one parser, tested on
captured GB10 outputs (tests/fixtures/nvidia-smi).

GB10 quirks they accept: memory '[N/A]' (CSV) / 'Not Supported' (table),
power cap 'N/A', 8-digit upper-case bus ids ('0000000F:01:00.0'), Disp.A On/Off,
an optional processes table.
"""

from __future__ import annotations

from typing import Any, Mapping

from sparkctl.agent.node_facts import (
    NVIDIA_SMI_QUERY,
    gpus_from_nvidia_smi,
    normalize_pci_bus_id,
    parse_nvidia_smi_csv,
    parse_nvidia_smi_list,
    parse_nvidia_smi_table,
    smi_value,
)

__all__ = [
    "NVIDIA_SMI_QUERY",
    "gpus_from_nvidia_smi",
    "gpus_from_raw",
    "normalize_pci_bus_id",
    "parse_csv",
    "parse_list",
    "parse_table",
    "smi_value",
]

parse_csv = parse_nvidia_smi_csv
parse_table = parse_nvidia_smi_table
parse_list = parse_nvidia_smi_list


def gpus_from_raw(gpu_section: Mapping[str, Any]) -> list[dict]:
    """Re-parse the raw nvidia-smi outputs a node kept in facts["gpu"]["nvidia_smi"]
    (for controllers newer than the node-side parser)."""
    raw = gpu_section.get("nvidia_smi") or {}
    rows = parse_csv(raw.get("csv") or "", NVIDIA_SMI_QUERY.split(",")) if raw.get("csv_rc") == 0 else []
    table = parse_table(raw.get("table") or "") if raw.get("table_rc") == 0 else {"gpus": []}
    return gpus_from_nvidia_smi(rows, table)
