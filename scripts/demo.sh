#!/usr/bin/env bash
# The vmrouted demo: a throwaway lab in network namespaces on this host (the
# root namespace is never touched), narrated step by step, torn down on exit
# or Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then echo "demo: run as root (it creates network namespaces)" >&2; exit 1; fi
bash scripts/setup.sh

ID=$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')
HOST="vmrd-$ID-host"; T1="vmrd-$ID-task1"; T2="vmrd-$ID-task2"
WORK=$(mktemp -d /tmp/vmrouted-demo.XXXXXX)
SOCK="$WORK/vmrouted.sock"
DAEMON_PID=""

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }
ctl() { node dist/cli/main.js --socket "$SOCK" "$@"; }

cleanup() {
  trap - EXIT INT TERM
  say "Tearing the lab down"
  if [ -n "$DAEMON_PID" ] && kill -0 "$DAEMON_PID" 2>/dev/null; then kill "$DAEMON_PID"; wait "$DAEMON_PID" 2>/dev/null || true; fi
  for ns in "$HOST" "$T1" "$T2"; do ip netns del "$ns" 2>/dev/null || true; done
  rm -rf "$WORK"
  echo "done: namespaces, daemon and files removed"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "1. A host (namespace $HOST) and two task namespaces"
for ns in "$HOST" "$T1" "$T2"; do ip netns add "$ns"; ip -n "$ns" link set lo up; done

say "2. Start vmrouted in the host, with network 'service' (gateway 172.31.16.1/24)"
cat > "$WORK/config.yaml" <<YAML
node: { address: 10.99.0.1, name: demo-host }
api: { socket: $SOCK }
stateDir: $WORK/state
networks:
  service: { gateway: 172.31.16.1/24 }
YAML
cat "$WORK/config.yaml"
ip netns exec "$HOST" node dist/daemon/main.js --config "$WORK/config.yaml" > "$WORK/vmrouted.log" 2>&1 &
DAEMON_PID=$!
for _ in $(seq 50); do [ -S "$SOCK" ] && break; sleep 0.1; done

say "3. Declare the workloads: a tap for a VM, and two task namespaces on veth pairs"
cat > "$WORK/spec.yaml" <<YAML
networks:
  service: { gateway: 172.31.16.1/24 }
endpoints:
  - { kind: tap,   network: service, ip: 172.31.16.10 }
  - { kind: netns, network: service, ip: 172.31.16.31, netns: $T1 }
  - { kind: netns, network: service, ip: 172.31.16.32, netns: $T2 }
YAML
cat "$WORK/spec.yaml"
run ctl apply -f "$WORK/spec.yaml"

say "4. What the host kernel now has: one /32 per workload, protocol 94 (vmrouted's)"
run ip -n "$HOST" route show proto 94
echo "(no connected route for 172.31.16.0/24: traffic to workloads follows the /32s only)"
run ip -n "$HOST" neigh show nud permanent

say "5. A task reaches its gateway, and the other task through the host's /32 route"
run ip netns exec "$T1" ping -c 2 -W 2 172.31.16.1
run ip netns exec "$T1" ping -c 2 -W 2 172.31.16.32

say "6. Drift is repaired: delete a /32 by hand, watch it come back"
run ip -n "$HOST" route del 172.31.16.32/32
for _ in $(seq 50); do ip -n "$HOST" route show 172.31.16.32/32 | grep -q . && break; sleep 0.1; done
run ip -n "$HOST" route show 172.31.16.32/32

say "7. Status, with per-endpoint state and counters"
run ctl status
