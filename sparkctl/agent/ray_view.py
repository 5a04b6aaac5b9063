"""Ray's own view of a cluster, read on the head with the cluster's own Ray
Python: join as a driver, read `ray.nodes()` and the resources, print them as
one marked JSON line. Run as `python -c <this source> ADDRESS NODE_IP` through
the agent's exec operation (ExecRequest.program); standard library at import
time, Python >= 3.8."""

import json
import sys

RESULT_MARKER = "SPARKCTL-RAY-VIEW "
KEEP = ("NodeID", "Alive", "NodeManagerAddress", "NodeManagerHostname", "Resources", "DeathReasonMessage")


def view(address, node_ip):
    out = {"ok": False}
    ray = None
    try:
        import ray

        out["ray_version"] = ray.__version__
        out["python"] = sys.version.split()[0]
        ray.init(address=address, _node_ip_address=node_ip, logging_level="ERROR",
                 log_to_driver=False, configure_logging=True)
        out["nodes"] = [dict((k, n.get(k)) for k in KEEP) for n in ray.nodes()]
        out["resources"] = ray.cluster_resources()
        out["available"] = ray.available_resources()
        out["ok"] = True
    except BaseException as exc:  # noqa: BLE001 - every failure is the answer, as JSON
        out["error"] = "%s: %s" % (type(exc).__name__, str(exc)[:2000])
    finally:
        if ray is not None:
            try:
                ray.shutdown()
            except BaseException:  # noqa: BLE001 - shutting down a half-initialised driver
                pass
    return out


if __name__ == "__main__":
    print(RESULT_MARKER + json.dumps(view(sys.argv[1], sys.argv[2]), default=str), flush=True)
