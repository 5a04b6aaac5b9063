"""Processes on the nodes, through the agent client: launch planned processes,
run a group to completion, stop by tag and verify. Used by the backends and by
the commands that run jobs (nccl-probe, run)."""
