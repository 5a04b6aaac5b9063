"""Live telemetry of one node, read ON the node (standard library only, Python >= 3.8):
the host's load and memory, each GPU's utilisation, power, temperature, clocks
and memory, and how long ago each log last grew.

GPUs are read through NVML (`pynvml`, from the nvidia-ml-py package that vLLM
installs): from this interpreter when it has it, else from the site-packages of
the Python that runs vLLM (pynvml is pure Python over ctypes, so any Python 3
can import it). Without NVML, `nvidia-smi --query-gpu` is parsed. On a GB10
NVML reports no framebuffer memory (the GPU shares the system's memory); the
reply then says the memory is unified and the host's figures stand for it.
"""

import glob
import os
import shutil
import subprocess
import sys
import time

from sparkctl.agent import protocol
from sparkctl.agent.node_proc import script_interpreter

SMI_FIELDS = ("index", "name", "utilization.gpu", "power.draw", "temperature.gpu", "clocks.sm", "clocks.mem",
              "memory.used", "memory.total")


def host_stats():
    """Load averages and memory from /proc (None where a file is missing)."""
    load = [None, None, None]
    try:
        with open("/proc/loadavg") as handle:
            load = [float(x) for x in handle.read().split()[:3]]
    except (OSError, ValueError):
        pass
    mem = meminfo()
    return protocol.HostStats(
        load_1m=load[0], load_5m=load[1], load_15m=load[2], cpus=os.cpu_count() or 1,
        mem_total_mib=_mib(mem.get("MemTotal")), mem_available_mib=_mib(mem.get("MemAvailable")),
    )


def meminfo():
    """/proc/meminfo as {name: kB}."""
    out = {}
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                name, _, rest = line.partition(":")
                words = rest.split()
                if words:
                    out[name.strip()] = int(words[0])
    except (OSError, ValueError):
        pass
    return out


def _mib(kib):
    return None if kib is None else kib // 1024


def nvml_module(interpreters):
    """pynvml from this Python, else from an interpreter's site-packages; None if nowhere."""
    try:
        import pynvml  # noqa: F401 - present in this interpreter

        return sys.modules["pynvml"]
    except ImportError:
        pass
    for interpreter in interpreters:
        python = script_interpreter(interpreter) if os.path.exists(interpreter) else None
        if not python:
            continue
        prefix = os.path.dirname(os.path.dirname(os.path.abspath(python)))
        for site in glob.glob(os.path.join(prefix, "lib", "python3*", "site-packages")):
            if os.path.exists(os.path.join(site, "pynvml.py")):
                sys.path.append(site)
                try:
                    import pynvml

                    return pynvml
                except ImportError:
                    sys.path.remove(site)
    return None


def _nvml_call(fn, *args):
    """NVML's answer, or None where the device does not support the query."""
    try:
        return fn(*args)
    except Exception:  # noqa: BLE001 - NVMLError_NotSupported and its many siblings
        return None


def gpus_from_nvml(nvml):
    nvml.nvmlInit()
    try:
        gpus = []
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            name = _nvml_call(nvml.nvmlDeviceGetName, handle)
            util = _nvml_call(nvml.nvmlDeviceGetUtilizationRates, handle)
            power = _nvml_call(nvml.nvmlDeviceGetPowerUsage, handle)
            memory = _nvml_call(nvml.nvmlDeviceGetMemoryInfo, handle)
            gpus.append(protocol.GpuStats(
                index=index,
                name=name.decode() if isinstance(name, bytes) else name,
                utilization_pct=None if util is None else float(util.gpu),
                power_w=None if power is None else power / 1000.0,
                temperature_c=_nvml_call(nvml.nvmlDeviceGetTemperature, handle, nvml.NVML_TEMPERATURE_GPU),
                sm_clock_mhz=_nvml_call(nvml.nvmlDeviceGetClockInfo, handle, nvml.NVML_CLOCK_SM),
                mem_clock_mhz=_nvml_call(nvml.nvmlDeviceGetClockInfo, handle, nvml.NVML_CLOCK_MEM),
                memory_used_mib=None if memory is None else memory.used // (1 << 20),
                memory_total_mib=None if memory is None else memory.total // (1 << 20),
            ))
        return gpus
    finally:
        _nvml_call(nvml.nvmlShutdown)


def gpus_from_smi_csv(text):
    """GpuStats from `nvidia-smi --query-gpu=<SMI_FIELDS> --format=csv,noheader,nounits`."""
    from sparkctl.agent.node_facts import parse_nvidia_smi_csv  # shipped with this op

    gpus = []
    for i, row in enumerate(parse_nvidia_smi_csv(text, list(SMI_FIELDS))):
        gpus.append(protocol.GpuStats(
            index=row.get("index") if row.get("index") is not None else i,
            name=row.get("name"),
            utilization_pct=_float(row.get("utilization.gpu")),
            power_w=row.get("power.draw"),
            temperature_c=row.get("temperature.gpu"),
            sm_clock_mhz=_int(row.get("clocks.sm")),
            mem_clock_mhz=_int(row.get("clocks.mem")),
            memory_used_mib=row.get("memory.used"),
            memory_total_mib=row.get("memory.total"),
        ))
    return gpus


def _float(value):
    return None if value is None else float(value)


def _int(value):
    return None if value is None else int(value)


def gpu_stats(interpreters):
    """(gpus, source, error): NVML first, nvidia-smi second, ([], "none", why) without either."""
    nvml = nvml_module(interpreters)
    nvml_error = None
    if nvml is not None:
        try:
            return tuple(gpus_from_nvml(nvml)), "nvml", None
        except Exception as exc:  # noqa: BLE001 - NVML fails in many ways (no driver, no device)
            nvml_error = "NVML: %s" % exc
    smi = _which_smi()
    if smi is None:
        return (), "none", nvml_error or "no NVML (pynvml) and no nvidia-smi"
    try:
        proc = subprocess.run([smi, "--query-gpu=" + ",".join(SMI_FIELDS), "--format=csv,noheader,nounits"],
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return (), "none", "nvidia-smi: %s" % exc
    if proc.returncode != 0:
        return (), "none", "nvidia-smi: exit %d: %s" % (proc.returncode, proc.stderr.decode("utf-8", "replace")[-200:])
    return tuple(gpus_from_smi_csv(proc.stdout.decode("utf-8", "replace"))), "nvidia-smi", nvml_error


def _which_smi():
    for folder in os.environ.get("PATH", "").split(os.pathsep) + ["/usr/bin", "/usr/local/nvidia/bin"]:
        candidate = os.path.join(folder, "nvidia-smi")
        if folder and os.access(candidate, os.X_OK):
            return candidate
    return None


def log_ages(paths):
    now = time.time()
    ages = []
    for path in paths:
        full = os.path.expanduser(path)
        try:
            st = os.stat(full)
        except OSError:
            ages.append(protocol.LogAge(path=path, exists=False))
            continue
        ages.append(protocol.LogAge(path=path, exists=True, size=st.st_size, grew_s_ago=max(0.0, now - st.st_mtime)))
    return tuple(ages)


def interpreters_of(records):
    """The programs the records launched (`python`, `vllm`, a venv's python): where pynvml may live."""
    found = []
    for record in records:
        if record.argv:
            program = record.argv[0]
            found.append(program if os.path.isabs(program) else (shutil.which(program) or program))
    return found


def telemetry(status_reply, req):
    """The status reply of the same round trip, plus this node's telemetry."""
    records = status_reply.records
    gpus, source, error = gpu_stats(interpreters_of(records)) if req.gpus else ((), "skipped", None)
    return protocol.TelemetryReply(
        status=status_reply,
        host=host_stats(),
        gpus=gpus,
        gpu_source=source,
        gpu_error=error,
        unified_memory=any(g.memory_total_mib is None for g in gpus),
        logs=log_ages(sorted(set(r.log for r in records if r.log))),
        at=time.time(),
    )
