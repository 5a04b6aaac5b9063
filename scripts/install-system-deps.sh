#!/usr/bin/env bash
# System packages the test suite's virtual cluster needs: a real OpenSSH server,
# iproute2 (network namespaces, veth, bridges), ping, procps, and Chromium for the report tests. Installs only
# what is missing, and only as root; without root those tests skip and say why.
set -euo pipefail
need=()
command -v /usr/sbin/sshd >/dev/null 2>&1 || need+=(openssh-server)
command -v ssh >/dev/null 2>&1 || need+=(openssh-client)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v ping >/dev/null 2>&1 || need+=(iputils-ping)
command -v pgrep >/dev/null 2>&1 || need+=(procps)
command -v curl >/dev/null 2>&1 || need+=(curl)
# a real headless browser for the report tests (tests/test_report.py)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
if [ ${#need[@]} -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" != "0" ]; then
    echo "install-system-deps: not root; missing ${need[*]} (the virtual-cluster tests will be skipped)" >&2
    exit 0
fi
echo "install-system-deps: installing ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
