"""`sparkctl bench`: the serving benchmark against the cluster's endpoint (from
the inventory, the playbook and the state `up` saved) or any OpenAI-compatible URL."""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import replace
from typing import Mapping

from sparkctl import __version__
from sparkctl.backends.serving import members_behind
from sparkctl.bench.options import BenchOptions
from sparkctl.bench.result import BenchMetadata, BenchResult, ClusterInfo, slo_summary
from sparkctl.bench.runner import Progress, Target, run_bench
from sparkctl.errors import InputError
from sparkctl.inventory import Inventory
from sparkctl.observe.telemetry import TelemetrySampler
from sparkctl.playbook import Playbook, load_playbook
from sparkctl.serve.endpoint import endpoint_url
from sparkctl.state import StateStore

API_KEY_ENV = "VLLM_API_KEY"  # what vLLM reads for --api-key, and what playbooks forward


def cluster_target(inventory: Inventory, playbook: Playbook | None, environ: Mapping[str, str],
                   api_key_env: str) -> tuple[Target, ClusterInfo]:
    """The endpoint `up` started, its served name and the API key the playbook forwards."""
    recorded = StateStore.for_cluster(inventory.cluster).load() or {}
    if playbook is None:
        path = recorded.get("playbook")
        if not isinstance(path, str) or not os.path.isfile(path):
            raise InputError("no playbook given and none recorded by `sparkctl up` for this cluster",
                             hint="pass -p PLAYBOOK (the one the cluster was started with)")
        playbook = load_playbook(path)
    endpoint = recorded.get("endpoint") if isinstance(recorded.get("endpoint"), str) else None
    key = environ.get(api_key_env) or None
    if api_key_env in playbook.forward_env and not key:
        raise InputError(f"the playbook forwards {api_key_env}, but it is not set in this shell",
                         hint=f"export {api_key_env}=... (the same key `up` sent to the nodes)")
    kv = recorded.get("kv_cache") if isinstance(recorded.get("kv_cache"), dict) else None
    info = ClusterInfo(
        cluster=inventory.cluster,
        node_names=tuple(n.name for n in inventory.nodes),
        tensor_parallel_size=playbook.tensor_parallel_size,
        pipeline_parallel_size=playbook.pipeline_parallel_size,
        backend=playbook.backend,
        model_path=playbook.model,
        vllm_args=playbook.vllm_args,
        kv_cache=kv,
    )
    # behind a router the server's view is the replicas' own /metrics, summed
    members = members_behind(recorded, inventory, playbook)
    target = Target(endpoint or endpoint_url(inventory, playbook), playbook.served_model_name, key,
                    nodes=len(inventory.nodes), metrics_from=tuple(m.url for m in members))
    return target, info


def bench(target: Target, options: BenchOptions, progress: Progress, cluster: ClusterInfo | None = None,
          inventory: Inventory | None = None) -> BenchResult:
    """Run the steps and assemble the result document (also when interrupted)."""
    date = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    if inventory is None:
        run = run_bench(target, options, progress)
    else:
        # the nodes' GPUs and hosts, sampled beside the load and joined to each step by time
        with TelemetrySampler(inventory) as sampler:
            run = run_bench(target, options, progress)
        run.steps = [replace(s, telemetry={n: w.to_dict() for n, w in sampler.window(s.started_at, s.ended_at).items()})
                     for s in run.steps]
    metadata = BenchMetadata(
        date=date,
        sparkctl_version=__version__,
        endpoint=target.base_url,
        model=run.endpoint.model,
        endpoint_type=options.endpoint,
        vllm_version=run.endpoint.version,
        served_models=run.endpoint.models,
        tokenizer=run.tokenizer,
        prompt_lengths_exact=run.tokens_exact,
        ignore_eos=run.ignore_eos,
        seed=options.seed,
        num_prompts=options.num_prompts,
        duration_s=options.duration_s,
        warmup=options.warmup,
        prefix_len=options.prefix_len,
        request_timeout_s=options.request_timeout_s,
        percentiles=options.percentiles,
        nodes=target.nodes,
        cluster=cluster,
    )
    return BenchResult(metadata, run.steps, run.notes, run.interrupted, slo_summary(run.steps, options.slo))
