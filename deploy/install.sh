#!/usr/bin/env bash
# Installs skiff on a real machine: binaries, config, data dirs, systemd units.
#   deploy/install.sh master|agent|both [--bin-dir DIR]
# Builds release binaries if no --bin-dir is given. It does not init or join a cluster:
# it prints the command for that. See docs/install.md for a multi-machine cluster.
set -euo pipefail
cd "$(dirname "$0")/.."

role="${1:-}"
case "$role" in master|agent|both) ;; *) echo "usage: $0 master|agent|both [--bin-dir DIR]" >&2; exit 2 ;; esac
shift
bin_dir=""
while (($#)); do
    case "$1" in
        --bin-dir) bin_dir="$2"; shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
if [[ -z "$bin_dir" ]]; then
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/skiff-target}"
    cargo build --release --bins
    bin_dir="$CARGO_TARGET_DIR/release"
fi

install -d -m 0755 /etc/skiff /usr/local/share/doc/skiff
install -d -m 0700 /var/lib/skiff
install -m 0644 docs/*.md /usr/local/share/doc/skiff/
install -m 0755 "$bin_dir/skiffctl" /usr/local/bin/skiffctl

if [[ "$role" == master || "$role" == both ]]; then
    install -m 0755 "$bin_dir/skiff-master" /usr/local/bin/skiff-master
    [[ -e /etc/skiff/master.toml ]] || cat > /etc/skiff/master.toml <<'TOML'
# skiff-master settings; every key is also a flag (--data-dir) and an environment
# variable (SKIFF_MASTER_DATA_DIR). `skiff-master --help` lists them with defaults.
data_dir = "/var/lib/skiff/master"
log_format = "text"
TOML
    install -m 0644 deploy/systemd/skiff-master.service /etc/systemd/system/
fi
if [[ "$role" == agent || "$role" == both ]]; then
    install -m 0755 "$bin_dir/skiff-agent" /usr/local/bin/skiff-agent
    for extra in skiff-shim; do
        [[ -x "$bin_dir/$extra" ]] && install -m 0755 "$bin_dir/$extra" "/usr/local/bin/$extra"
    done
    [[ -e /etc/skiff/agent.toml ]] || cat > /etc/skiff/agent.toml <<'TOML'
# skiff-agent settings; every key is also a flag (--data-dir) and an environment
# variable (SKIFF_AGENT_DATA_DIR). `skiff-agent --help` lists them with defaults.
data_dir = "/var/lib/skiff/agent"
log_format = "text"
TOML
    install -m 0644 deploy/systemd/skiff-agent.service /etc/systemd/system/
fi

if command -v systemctl >/dev/null && [[ -d /run/systemd/system ]]; then
    systemctl daemon-reload
fi
echo "skiff installed ($role). Next:"
[[ "$role" != agent ]] && echo "  first master:  skiff-master init --listen <this machine's IP>:7700 && systemctl enable --now skiff-master"
[[ "$role" != agent ]] && echo "  more masters:  skiff-master join --token <manager token> <first master>:7700 && systemctl enable --now skiff-master"
[[ "$role" != master ]] && echo "  agents:        skiff-agent join --token <worker token> <a master>:7700 && systemctl enable --now skiff-agent"
