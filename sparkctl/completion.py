"""Shell completion from the real parser, through argcomplete.

argcomplete (not shtab) because it covers bash, zsh and fish from one source:
the shell hook re-runs `sparkctl` with the partial command line in its
environment and argcomplete answers from the live argparse parser, so a new
flag is completable the moment it exists. File options complete file names
of the kind they take (`-i`/`-p`: YAML files and folders).
"""

from __future__ import annotations

import argparse

from sparkctl.errors import InputError

SHELLS = ("bash", "zsh", "fish")

# dest -> the file name endings that option takes
_FILE_KINDS: dict[str, tuple[str, ...]] = {
    "inventory": ("yaml", "yml"),
    "playbook": ("yaml", "yml"),
    "report": ("html", "md"),
    "save_result": ("json",),
    "plot": ("png",),
    "results": ("json",),
    "identity_file": (),
    "known_hosts": (),
}


def _subparsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found = [parser]
    for action in parser._actions:  # noqa: SLF001 - argparse has no public walk
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            for child in action.choices.values():
                found += _subparsers(child)
    return found


def annotate(parser: argparse.ArgumentParser) -> None:
    """Give every file-taking option a completer for its kind of file."""
    try:
        from argcomplete.completers import FilesCompleter
    except ImportError:  # completion is optional at run time; the parser works without it
        return
    for sub in _subparsers(parser):
        for action in sub._actions:  # noqa: SLF001
            kinds = _FILE_KINDS.get(action.dest)
            if kinds is not None:
                action.completer = FilesCompleter(kinds) if kinds else FilesCompleter()  # type: ignore[attr-defined]


def complete_if_asked(parser: argparse.ArgumentParser) -> None:
    """Answer a shell's completion request and exit; a no-op in a normal run."""
    try:
        import argcomplete
    except ImportError:
        return
    annotate(parser)
    argcomplete.autocomplete(parser)


def script(shell: str, executable: str = "sparkctl") -> str:
    try:
        import argcomplete
    except ImportError:
        raise InputError("shell completion needs argcomplete", hint="pip install argcomplete") from None
    if shell not in SHELLS:
        raise InputError(f"unknown shell {shell!r}", hint="one of " + ", ".join(SHELLS))
    return argcomplete.shellcode([executable], shell=shell)
