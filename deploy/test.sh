#!/usr/bin/env bash
# The whole test command: set-up, formatting, lints, every test. `.ci/run` runs exactly
# this. Run as root: the runtime, network and lab tests make namespaces and cgroups.
set -euo pipefail
cd "$(dirname "$0")/.."

bash deploy/setup.sh

# Keep build output outside the clone so a machine that built before builds faster.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/skiff-target}"
export CARGO_TERM_COLOR=never
# Incremental caches double the disk a build takes and do not help a one-shot run.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# The multi-node suites start the daemons' binaries from the target directory.
cargo build --workspace --bins

log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --no-fail-fast 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e

passed=$(grep -E '^test result:' "$log" | sed -E 's/.* ([0-9]+) passed.*/\1/' | awk '{s += $1} END {print s + 0}')
failed=$(grep -E '^test result:' "$log" | sed -E 's/.* ([0-9]+) failed.*/\1/' | awk '{s += $1} END {print s + 0}')
echo "skiff tests: ${passed} passed, ${failed} failed"
if ((status != 0)); then
    exit "$status"
fi
if ((passed == 0)); then
    echo "no test ran: refusing to pass" >&2
    exit 1
fi
