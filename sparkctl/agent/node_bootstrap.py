"""The one piece of node-side code that receives the others: the controller runs
this module's source as `python3 -c SOURCE` (sparkctl.agent.client.bootstrap_program,
docstrings and comments left out), and sends on stdin one JSON line with the
node-side modules, the request and where compiled code may be cached.

It installs the modules under an empty `sparkctl.agent` package (so an installed
sparkctl of another version is never imported), dependencies first, the agent
last, and lets the agent answer. Compiled code is cached on the node, keyed by
the interpreter's version and the source, because compiling ~100 kB of source
was most of an agent call's own time. Standard library only, Python 3.8+.
"""

import hashlib
import json
import marshal
import os
import sys
import types


def compiled(name, source, cache):
    """The module's code object, from the node's cache when this interpreter compiled this source before."""
    if not cache:
        return compile(source, name, "exec")
    digest = hashlib.sha256((sys.version + source).encode()).hexdigest()[:32]
    path = os.path.join(os.path.expanduser(cache), name + "-" + digest)
    try:
        with open(path, "rb") as f:
            return marshal.load(f)
    except (OSError, ValueError, EOFError, TypeError):
        pass  # not cached yet, or a torn or foreign file: compile again
    code = compile(source, name, "exec")
    try:
        os.makedirs(os.path.dirname(path), 0o700, exist_ok=True)
        partial = path + "." + str(os.getpid())
        with open(partial, "wb") as f:
            marshal.dump(code, f)
        os.replace(partial, path)  # whole or absent: another call may read it at once
    except OSError:
        pass  # a read-only or full work dir costs time, not correctness
    return code


def install(modules, cache):
    """Each (name, source) as a module of the empty package, in the order given."""
    for package in ("sparkctl", "sparkctl.agent"):
        module = types.ModuleType(package)
        module.__path__ = []
        sys.modules[package] = module
    for name, source in modules:
        module = types.ModuleType(name)
        module.__source__ = source  # type: ignore[attr-defined]  # node_proc ships a module's own source to a child process
        sys.modules[name] = module
        parent, _, leaf = name.rpartition(".")
        setattr(sys.modules[parent], leaf, module)
        exec(compiled(name, source, cache), module.__dict__)


def main():
    message = json.loads(sys.stdin.readline())
    install(message["mods"], message.get("cache"))
    sys.modules["sparkctl.agent.node_agent"].respond(message["req"])


if __name__ == "__main__":
    main()
