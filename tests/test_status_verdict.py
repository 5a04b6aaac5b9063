"""The status verdict's rules, the wedge tracking across samples, the node
telemetry parsers on captured nvidia-smi output, and the sparkline."""

from __future__ import annotations

import pytest

from sparkctl.agent import node_telemetry
from sparkctl.bench.metrics import MetricsSample
from sparkctl.observe.endpoint import EndpointSample
from sparkctl.observe.verdict import GpuView, Observation, ProcessView, Progress, judge, process_state
from sparkctl.render import sparkline

RUNNING = (ProcessView("head", "vllm", 10, "running"), ProcessView("worker", "vllm", 20, "running"))


def obs(**changes) -> Observation:
    base = dict(unreachable=(), anything_running=True, health=200, processes=RUNNING, progress=None,
                frozen_for_s=None, canary=None)
    return Observation(**{**base, **changes})


def test_serving_when_all_is_well():
    v = judge(obs(progress=Progress(3.0, 2, 40, 0)), wedge_after_s=30)
    assert (v.state, v.reasons, v.exit_code) == ("serving", (), 0)


def test_a_remote_worker_gone_stopped_or_zombie_is_degraded_naming_it():
    for state, word in (("gone", "is gone"), ("stopped", "is stopped"), ("zombie", "is a zombie")):
        v = judge(obs(processes=(RUNNING[0], ProcessView("worker", "vllm", 20, state))), wedge_after_s=30)
        assert v.state == "degraded" and v.exit_code == 1
        assert v.reasons[0].node == "worker" and word in v.reasons[0].message and v.reasons[0].code == f"process-{state}"


def test_precedence_unreachable_stopped_down():
    assert judge(obs(unreachable=("worker",)), wedge_after_s=30).exit_code == 3
    stopped = judge(obs(anything_running=False, processes=()), wedge_after_s=30)
    assert stopped.state == "stopped" and stopped.exit_code == 0  # deliberately down is not a failure
    down = judge(obs(health=None, processes=(RUNNING[0], ProcessView("worker", "vllm", 20, "gone"))), wedge_after_s=30)
    assert down.state == "down" and down.exit_code == 1 and {r.code for r in down.reasons} == {"health", "process-gone"}


def test_wedge_needs_running_requests_and_frozen_counters():
    frozen = Progress(3.0, running=2, generation_delta=0, prompt_delta=0)
    one_look = judge(obs(progress=frozen), wedge_after_s=30)
    assert one_look.state == "wedged" and "3.0 s (sampled" in one_look.reasons[0].message
    assert judge(obs(progress=Progress(3.0, 0, 0, 0)), wedge_after_s=30).state == "serving"  # idle is fine
    assert judge(obs(progress=Progress(3.0, 2, 0, 500)), wedge_after_s=30).state == "serving"  # a long prefill
    # across watch samples, only past --wedge-after
    assert judge(obs(progress=frozen, frozen_for_s=12), wedge_after_s=30).state == "serving"
    late = judge(obs(progress=frozen, frozen_for_s=31), wedge_after_s=30)
    assert late.state == "wedged" and "across samples" in late.reasons[0].message


def test_idle_power_at_high_utilisation_supports_a_wedge_and_a_canary_timeout_is_one():
    frozen = Progress(3.0, 1, 0, 0)
    v = judge(obs(progress=frozen, gpus=(GpuView("head", 96.0, 18.0), GpuView("worker", 40.0, 60.0))), wedge_after_s=5)
    assert [r.code for r in v.reasons] == ["tokens-frozen", "gpu-idle-power"] and v.reasons[1].node == "head"
    canary = judge(obs(canary="no answer within 10 s (timed out)"), wedge_after_s=30)
    assert canary.state == "wedged" and canary.reasons[0].code == "canary"
    assert judge(obs(canary="ok"), wedge_after_s=30).state == "serving"


def test_process_state_letters():
    assert [process_state(True, s) for s in ("R", "S", "D", "T", "t", "Z")] == [
        "running", "running", "running", "stopped", "stopped", "zombie"]
    assert process_state(False, None) == "gone"


def test_the_observer_measures_a_freeze_across_samples():
    from sparkctl.ops.status import Observer

    observer = Observer.__new__(Observer)  # only the counter tracking, no cluster
    observer.previous, observer.moved_at = None, None

    def at(t: float, gen: float, running: float) -> EndpointSample:
        return EndpointSample(t, 200, ("m",), MetricsSample(at=t, running=running, generation_tokens=gen, prompt_tokens=10))

    assert observer._frozen_for(at(0, 100, 2)) == (None, None)
    window, frozen = observer._frozen_for(at(5, 150, 2))
    assert frozen is None and window.generation_tok_s == pytest.approx(10.0)
    assert observer._frozen_for(at(10, 150, 2))[1] == pytest.approx(5.0)  # frozen since the last move
    assert observer._frozen_for(at(40, 150, 2))[1] == pytest.approx(35.0)
    assert observer._frozen_for(at(45, 151, 2))[1] is None  # moving again


def test_gpu_telemetry_from_nvidia_smi_csv_including_gb10_unsupported_memory():
    gb10 = "0, NVIDIA GB10, 96, 21.34, 47, 2405, [N/A], [N/A], [N/A]\n"
    [g] = node_telemetry.gpus_from_smi_csv(gb10)
    assert (g.name, g.utilization_pct, g.power_w, g.temperature_c, g.sm_clock_mhz) == ("NVIDIA GB10", 96.0, 21.34, 47, 2405)
    assert g.memory_total_mib is None and g.memory_used_mib is None  # GB10: unified memory
    h100 = "0, NVIDIA H100 80GB HBM3, 0, 69.88, 31, 345, 2619, 1, 81559\n"
    [h] = node_telemetry.gpus_from_smi_csv(h100)
    assert (h.memory_used_mib, h.memory_total_mib, h.mem_clock_mhz) == (1, 81559, 2619)
    assert node_telemetry.gpus_from_smi_csv("No devices were found\n") == []


def test_host_stats_and_log_ages_are_read_from_this_machine(tmp_path):
    host = node_telemetry.host_stats()
    assert host.cpus >= 1 and host.mem_total_mib and 0 < host.mem_available_mib <= host.mem_total_mib
    log = tmp_path / "vllm.log"
    log.write_text("x")
    ages = node_telemetry.log_ages([str(log), str(tmp_path / "missing.log")])
    assert ages[0].exists and ages[0].size == 1 and 0 <= ages[0].grew_s_ago < 60
    assert not ages[1].exists


def test_sparkline_scales_to_its_own_maximum():
    assert sparkline([0, 5, 10]) == "▁▄█"
    assert sparkline([None, 1.0]) == " █"
    assert len(sparkline(list(range(100)), width=12)) == 12



def test_gpu_telemetry_from_real_nvidia_smi_and_nvml_captures():
    """Captured on an H200 (scripts/capture_gpu_status.sh): nvidia-smi's CSV and, at the
    same moment, sparkctl status reading NVML agree on what the GPU did."""
    import json

    from tests.conftest import REPO

    fixtures = REPO / "tests" / "fixtures"
    for load in ("idle", "busy"):
        [smi] = node_telemetry.gpus_from_smi_csv((fixtures / "nvidia-smi" / f"h200-query-telemetry-{load}.csv").read_text())
        status = json.loads((fixtures / "status" / f"h200-one-node-{load}.json").read_text())
        node = status["nodes"]["gpu0"]
        [nvml] = node["gpus"]
        assert node["gpu_source"] == "nvml" and node["unified_memory"] is False
        assert smi.name == nvml["name"] == "NVIDIA H200" and smi.memory_total_mib == nvml["memory_total_mib"]
        assert abs(smi.power_w - nvml["power_w"]) < 0.05 * nvml["power_w"]
        assert abs(smi.utilization_pct - nvml["utilization_pct"]) <= 5
    busy = json.loads((fixtures / "status" / "h200-one-node-busy.json").read_text())["nodes"]["gpu0"]["gpus"][0]
    assert busy["utilization_pct"] >= 90 and busy["power_w"] > 300  # under load: not the idle-power signature
    [gb10] = node_telemetry.gpus_from_smi_csv("0, NVIDIA GB10, [N/A], 12.31, 43, [N/A], [N/A], [N/A], [N/A]\n")
    assert gb10.memory_total_mib is None and gb10.power_w == 12.31


def test_telemetry_windows_summarise_gpus_and_hosts():
    from sparkctl.agent import protocol as p
    from sparkctl.observe.telemetry import summarise

    def reply(util: float, power: float, load: float, free: int) -> p.TelemetryReply:
        status = p.StatusReply(records=(), processes=(), ports=(), in_use=(), logs=(), boot_id="b")
        gpus = tuple(p.GpuStats(index=i, name="g", utilization_pct=util, power_w=power, temperature_c=40,
                                sm_clock_mhz=1000, mem_clock_mhz=None, memory_used_mib=100, memory_total_mib=1000)
                     for i in range(2))
        host = p.HostStats(load_1m=load, load_5m=None, load_15m=None, cpus=4, mem_total_mib=1000, mem_available_mib=free)
        return p.TelemetryReply(status=status, host=host, gpus=gpus, gpu_source="nvml", gpu_error=None,
                                unified_memory=False, logs=(), at=0.0)

    w = summarise([reply(50, 40, 1.0, 800), reply(90, 60, 3.0, 600)])
    assert (w.samples, w.gpu_utilization_mean, w.gpu_utilization_max) == (2, 70.0, 90.0)
    assert (w.gpu_power_w_mean, w.gpu_power_w_max) == (100.0, 120.0)  # two GPUs' power, summed
    assert (w.gpu_memory_used_mib_max, w.host_load_mean, w.host_mem_available_mib_min) == (200, 2.0, 600)
