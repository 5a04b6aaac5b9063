"""`sparkctl init`'s flags, checked and turned into typed options (kept out of cli.py)."""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from datetime import datetime
from typing import Any, Callable

from sparkctl.errors import InputError
from sparkctl.init.discover import Target
from sparkctl.init.flow import InitOptions
from sparkctl.init.hostkeys import HostKey
from sparkctl.validation import _check_host, _check_name, _check_user


def init_options(args: argparse.Namespace) -> tuple[InitOptions, Callable[[HostKey], bool] | None]:
    if not args.hosts:
        raise InputError("sparkctl init needs --hosts (or --playbook MODEL -i INVENTORY)",
                         hint="sparkctl init --hosts spark-a,spark-b --user nvidia")
    hosts = tuple(h.strip() for h in args.hosts.split(",") if h.strip())
    user = args.user or _current_user()
    checks = [(_check_host, h, "--hosts") for h in hosts] + [(_check_user, user, "--user"), (_check_name, args.name, "--name")]
    for check, value, flag in checks:
        try:
            check(value)
        except ValueError as exc:
            raise InputError(f"{flag}: {exc}") from None
    # --port and --mtu are checked by the parser (sparkctl.argtypes)
    identity = os.path.abspath(os.path.expanduser(args.identity_file)) if args.identity_file else None
    if identity and not os.path.isfile(identity):
        raise InputError(f"--identity-file {args.identity_file}: no such file")
    target = Target(hosts=hosts, head=args.head or hosts[0], user=user, port=args.port, identity_file=identity,
                    known_hosts=os.path.abspath(os.path.expanduser(args.known_hosts)), cluster=args.name)
    output = args.output or os.path.join("inventories", f"{args.name}.yaml")
    created = datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
    options = InitOptions(target, output, args.force, args.accept_new, args.apply, args.mtu, args.netplan_dir,
                          args.command_line, created)
    return options, _ask_on_terminal if sys.stdin.isatty() and not args.json else None


def _ask_on_terminal(key: HostKey) -> bool:
    sys.stderr.write(f"The authenticity of host {key.entry_name} can't be established.\n"
                     f"{key.key_type} key fingerprint is {key.fingerprint}.\n"
                     "Record it in known_hosts and continue? [y/N] ")
    sys.stderr.flush()
    return sys.stdin.readline().strip().lower() in ("y", "yes")


def _current_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "root"


def playbook_mode(args: argparse.Namespace, print_json: Callable[[Any], None]) -> int:
    from sparkctl.init.playbook_wizard import playbook_command

    return playbook_command(args, print_json)
