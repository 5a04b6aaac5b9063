"""`status` and the supervisor on the fake cluster (tests/fake_agent.py): the
verdicts from real agent replies through the real codec, the endpoint's
/metrics, and every supervisor path. No root, no vLLM, seconds."""

from __future__ import annotations

import pytest

from sparkctl import render
from sparkctl.ops.status import status
from sparkctl.ops.watch import SuperviseOptions, supervise, watch
from tests.test_lifecycle_fake import Events, bring_up, fake, inventory, local_facts, write_playbook  # noqa: F401

FAST = dict(sample_s=0.2, wedge_after_s=30.0)


def test_serving_with_telemetry_and_metrics(inventory, fake, tmp_path):
    playbook = write_playbook(tmp_path, fake)
    bring_up(inventory, playbook, fake)
    fake.running_requests = 2
    fake.gpus["head"] = (70.0, 60.0)
    result = status(inventory, playbook=playbook, connect=fake.connect, **FAST)
    assert result.state == "serving" and result.exit_code == 0
    data = result.to_dict()
    assert data["metrics"]["running"] == 2 and data["metrics"]["generation_tok_s"] > 0
    assert data["metrics"]["kv_cache_usage"] == 0.25
    head = data["nodes"]["head"]
    assert head["gpus"][0]["power_w"] == 60.0 and head["unified_memory"] is True
    assert head["records"][0]["state"] == "running" and head["logs"][0]["grew_s_ago"] == 1.0
    assert head["host"]["mem_available_mib"] == 60000


def test_replicas_are_asked_themselves_and_their_metrics_add_up(inventory, fake, tmp_path):
    from tests.test_layouts import replicas_playbook

    playbook = replicas_playbook(tmp_path, fake)
    bring_up(inventory, playbook, fake)
    fake.running_requests = 2  # each fake replica reports 2 running
    result = status(inventory, playbook=playbook, connect=fake.connect, **FAST)
    assert result.state == "serving", result.reasons
    data = result.to_dict()
    assert [(m["label"], m["node"], m["health"]) for m in data["members"]] == [
        ("replica 0", "head", 200), ("replica 1", "worker", 200)]
    assert data["metrics"]["running"] == 4  # the router has no vLLM metrics: the replicas' sum
    assert "behind it: replica 0 on head" in render.status_text(result)


def test_a_replica_that_stops_answering_is_degraded_while_the_router_answers(inventory, fake, tmp_path):
    from tests.test_layouts import replicas_playbook

    playbook = replicas_playbook(tmp_path, fake)
    bring_up(inventory, playbook, fake)
    fake.replica_after_polls[1] = 10**6  # replica 1 answers 503 from now on; its process still runs
    result = status(inventory, playbook=None, connect=fake.connect, **FAST)  # members from the state `up` saved
    assert result.state == "degraded" and result.health == 200 and result.exit_code == 1
    assert [(r.code, r.node) for r in result.reasons] == [("replica-health", "worker")]
    assert "replica 1 at http://127.0.0.1:" in result.reasons[0].message


def test_a_frozen_worker_is_degraded_while_the_head_answers(inventory, fake, tmp_path):
    playbook = write_playbook(tmp_path, fake)
    bring_up(inventory, playbook, fake)
    fake.process_state["worker"] = "T"
    result = status(inventory, playbook=playbook, connect=fake.connect, **FAST)
    assert result.state == "degraded" and result.health == 200 and result.exit_code == 1
    assert [(r.code, r.node) for r in result.reasons] == [("process-stopped", "worker")]


def test_a_dead_worker_is_degraded_naming_it(inventory, fake, tmp_path):
    playbook = write_playbook(tmp_path, fake)
    bring_up(inventory, playbook, fake)
    for proc in fake.nodes["worker"].processes.values():
        proc.alive = False
    result = status(inventory, playbook=playbook, connect=fake.connect, **FAST)
    assert result.state == "degraded" and result.reasons[0].node == "worker" and "is gone" in result.reasons[0].message


def test_tokens_frozen_with_requests_running_is_a_wedge(inventory, fake, tmp_path):
    playbook = write_playbook(tmp_path, fake)
    bring_up(inventory, playbook, fake)
    fake.running_requests, fake.wedged = 3, True
    fake.gpus["head"] = (97.0, 19.0)
    result = status(inventory, playbook=playbook, connect=fake.connect, **FAST)
    assert result.state == "wedged" and result.health == 200
    assert [r.code for r in result.reasons] == ["tokens-frozen", "gpu-idle-power"]
    fake.wedged = False
    assert status(inventory, playbook=playbook, connect=fake.connect, **FAST).state == "serving"


def test_watch_measures_the_freeze_across_samples(inventory, fake, tmp_path):
    playbook = write_playbook(tmp_path, fake)
    bring_up(inventory, playbook, fake)
    fake.running_requests, fake.wedged = 1, True
    samples = watch(inventory, playbook=playbook, interval_s=0.05, wedge_after_s=0.3, connect=fake.connect)
    states = [next(samples).state for _ in range(12)]
    samples.close()
    assert states[0] == "serving" and states[-1] == "wedged"  # wedged only once frozen for --wedge-after


def test_the_supervisor_restarts_after_the_grace_period_and_gives_up_past_its_budget(inventory, fake, tmp_path):
    playbook = write_playbook(tmp_path, fake)
    bring_up(inventory, playbook, fake)
    fake.process_state["worker"] = "T"
    restarts = []
    now = [0.0]

    def restart() -> None:
        restarts.append(now[0])  # still frozen afterwards: the budget runs out

    def sleep(seconds: float) -> None:
        now[0] += seconds

    options = SuperviseOptions(interval_s=5, grace_s=10, max_restarts=2, backoff_s=30, evidence_dir=str(tmp_path / "ev"))
    result = supervise(inventory, playbook, options, Events(), restart=restart, connect=fake.connect,
                       clock=lambda: now[0], sleep=sleep)
    assert result.outcome == "gave-up" and "--max-restarts 2" in result.message
    assert len(restarts) == 2 and restarts[1] - restarts[0] >= 30 + 10  # back-off, then the grace period again
    evidence = result.restarts[0]["evidence"]
    assert (tmp_path / "ev").exists() and evidence.startswith(str(tmp_path / "ev"))
    import json
    import os

    assert json.load(open(os.path.join(evidence, "status.json")))["state"] == "degraded"


def test_the_supervisor_never_restarts_what_a_person_stopped(inventory, fake, tmp_path):
    from sparkctl.ops.down import down

    playbook = write_playbook(tmp_path, fake)
    bring_up(inventory, playbook, fake)
    down(inventory, Events(), connect=fake.connect)
    with pytest.raises(Exception, match="not up"):
        supervise(inventory, playbook, SuperviseOptions(), Events(), restart=lambda: None, connect=fake.connect)
    bring_up(inventory, playbook, fake)
    calls = []

    def sleep(seconds: float) -> None:
        calls.append(seconds)
        if len(calls) == 2:
            down(inventory, Events(), connect=fake.connect)  # a person runs `sparkctl down` meanwhile

    result = supervise(inventory, playbook, SuperviseOptions(interval_s=1), Events(), restart=lambda: None,
                       connect=fake.connect, sleep=sleep)
    assert result.outcome == "stopped-by-down" and result.restarts == []
