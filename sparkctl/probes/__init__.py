"""Probes: measurements of the fabric between nodes, and pure parsers for the
artefacts they (or a user) produce: `NCCL_DEBUG=INFO` logs and nccl-tests output."""

from sparkctl.probes.nccl_log import NcclLogReport, parse_nccl_log
from sparkctl.probes.nccl_tests import NcclTestsReport, parse_nccl_tests

__all__ = ["NcclLogReport", "NcclTestsReport", "parse_nccl_log", "parse_nccl_tests"]
