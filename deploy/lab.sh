#!/usr/bin/env bash
# The main job: builds skiff, brings up a lab on this machine (3 masters and 3 agents,
# each a network namespace on a lab bridge running the real daemons, a registry on the
# bridge holding a busybox image), deploys deploy/examples/web.yaml, and shows what to
# try. `deploy/lab.sh down` removes it all; other verbs pass to `skiff-lab`.
set -euo pipefail
cd "$(dirname "$0")/.."

bash deploy/setup.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/skiff-target}"
cargo build --quiet --bins
bin="$CARGO_TARGET_DIR/debug"
lab="$bin/skiff-lab"

verb="${1:-up}"
shift || true
case "$verb" in
    up)
        "$lab" up --masters "${SKIFF_LAB_MASTERS:-3}" --agents "${SKIFF_LAB_AGENTS:-3}" \
            --deploy "${SKIFF_LAB_EXAMPLE:-deploy/examples/web.yaml}" "$@"
        "$lab" status
        cat <<TRY

Try next:
  bash deploy/lab.sh ctl ps                      where the example's replicas run
  bash deploy/lab.sh ctl logs -f demo_client     the client fetching from web by name
  bash deploy/lab.sh ctl exec -it demo_web sh    a shell in a replica, wherever it runs
  bash deploy/lab.sh exec m1 curl -s <agent ip>:8080   the published port, on any agent
  bash deploy/lab.sh ctl scale demo_web=5        scale up; ctl node ls, ctl services
  bash deploy/lab.sh stop a2 / start a2          lose an agent, see its tasks move
  bash deploy/lab.sh cut a1 / heal a1            partition a machine and heal it
  bash deploy/lab.sh down                        remove everything the lab made
TRY
        ;;
    *)
        exec "$lab" "$verb" "$@"
        ;;
esac
