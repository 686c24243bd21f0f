#!/usr/bin/env bash
# Installs what building and testing skiff needs on a fresh Debian machine, once:
# packages already present are not fetched again. `--bench` adds the peers the
# benchmarks compare against (runc, crun, skopeo, umoci, etcd, docker).
set -euo pipefail

want=(busybox-static docker-registry nftables iproute2 iptables ca-certificates curl util-linux)
if [[ "${1:-}" == "--bench" ]]; then
    want+=(runc crun skopeo umoci etcd-server etcd-client docker.io)
fi

missing=()
for pkg in "${want[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    echo "setup: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # policy-rc.d keeps package scripts from starting services (docker-registry, etcd)
    # on the host: tests start their own on loopback.
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    rm -f /usr/sbin/policy-rc.d
fi

for tool in cargo rustc; do
    command -v "$tool" >/dev/null || { echo "setup: $tool not found: install a Rust toolchain (rustup) first" >&2; exit 1; }
done
