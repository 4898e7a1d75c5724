#!/usr/bin/env bash
# The vmrouted demo: a throwaway lab in network namespaces on this host (the
# root namespace is never touched), narrated step by step, torn down on exit
# or Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then echo "demo: run as root (it creates network namespaces)" >&2; exit 1; fi
bash scripts/setup.sh

ID=$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')
HOST="vmrd-$ID-host"; RR="vmrd-$ID-rr"; T1="vmrd-$ID-task1"; T2="vmrd-$ID-task2"
WORK=$(mktemp -d /tmp/vmrouted-demo.XXXXXX)
SOCK="$WORK/vmrouted.sock"
DAEMON_PID=""; GOBGPD_PID=""; BIRD_PID=""

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }
ctl() { node dist/cli/main.js --socket "$SOCK" "$@"; }

CLEANED=""
cleanup() {
  [ -z "$CLEANED" ] || return 0
  CLEANED=1
  trap - EXIT INT TERM
  say "Tearing the lab down"
  for pid in "$DAEMON_PID" "$GOBGPD_PID" "$BIRD_PID"; do
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then kill "$pid"; wait "$pid" 2>/dev/null || true; fi
  done
  for ns in "$HOST" "$RR" "$T1" "$T2"; do ip netns del "$ns" 2>/dev/null || true; done
  rm -rf "$WORK"
  echo "done: namespaces, daemons and files removed"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "1. A host (namespace $HOST, 10.99.0.1) and a route reflector ($RR, 10.99.0.2) on one link, and two task namespaces"
for ns in "$HOST" "$RR" "$T1" "$T2"; do ip netns add "$ns"; ip -n "$ns" link set lo up; done
ip -n "$HOST" link add uplink type veth peer name downlink netns "$RR"
ip -n "$HOST" addr add 10.99.0.1/24 dev uplink; ip -n "$HOST" link set uplink up
ip -n "$RR" addr add 10.99.0.2/24 dev downlink; ip -n "$RR" link set downlink up

say "2. BIRD 2 as route reflector, gobgpd on the host (both from templates/), then vmrouted"
fill() { sed -e 's/${ASN}/64512/g; s/${NODE_ADDRESS}/10.99.0.1/g; s/${RR_ADDRESS}/10.99.0.2/g' "templates/$1"; }
fill bird-rr.conf > "$WORK/bird.conf"
fill gobgpd.toml > "$WORK/gobgpd.toml"
ip netns exec "$RR" bird -f -c "$WORK/bird.conf" -s "$WORK/bird.ctl" -P "$WORK/bird.pid" > "$WORK/bird.log" 2>&1 &
BIRD_PID=$!
ip netns exec "$HOST" gobgpd -f "$WORK/gobgpd.toml" --api-hosts 127.0.0.1:50051 --pprof-disable -l warn > "$WORK/gobgpd.log" 2>&1 &
GOBGPD_PID=$!
cat > "$WORK/config.yaml" <<YAML
node: { address: 10.99.0.1, name: demo-host }
api: { socket: $SOCK }
stateDir: $WORK/state
bgp: { gobgp: "127.0.0.1:50051", communities: ["64512:100"] }
networks:
  service: { gateway: 172.31.16.1/24 }
YAML
cat "$WORK/config.yaml"
ip netns exec "$HOST" node dist/daemon/main.js --config "$WORK/config.yaml" > "$WORK/vmrouted.log" 2>&1 &
DAEMON_PID=$!
for _ in $(seq 50); do [ -S "$SOCK" ] && break; sleep 0.1; done
echo "waiting for the BGP session gobgpd -> BIRD ..."
for _ in $(seq 60); do birdc -s "$WORK/bird.ctl" show protocols host1 2>/dev/null | grep -q Established && break; sleep 0.5; done
birdc -s "$WORK/bird.ctl" show protocols host1 | tail -1

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

say "5. The route reflector learned every /32, next hop = the host"
sleep 0.5
run birdc -s "$WORK/bird.ctl" show route protocol host1

say "6. A task reaches its gateway, and the other task through the host's /32 route"
run ip netns exec "$T1" ping -c 2 -W 2 172.31.16.1
run ip netns exec "$T1" ping -c 2 -W 2 172.31.16.32

say "7. Drift is repaired: delete a /32 by hand, watch it come back"
run ip -n "$HOST" route del 172.31.16.32/32
for _ in $(seq 50); do ip -n "$HOST" route show 172.31.16.32/32 | grep -q . && break; sleep 0.1; done
run ip -n "$HOST" route show 172.31.16.32/32

say "8. Status, with per-endpoint state and counters"
run ctl status
