#!/usr/bin/env bash
# The vmrouted demo: a throwaway lab in network namespaces on this host (the
# root namespace is never touched) with a real VM, narrated step by step, torn
# down on exit or Ctrl-C.
#   host ns:  vmrouted + gobgpd + libvirtd (its own dirs, scripts/lab/libvirtd.sh)
#   rr ns:    BIRD 2 route reflector, installing learned routes in its kernel
#   task ns:  a container-like namespace on the same routed network as the VM
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then echo "demo: run as root (it creates network namespaces)" >&2; exit 1; fi
bash scripts/setup.sh

ID=$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')
HOST="vmrd-$ID-host"; RR="vmrd-$ID-rr"; TASK="vmrd-$ID-task"
WORK=$(mktemp -d /tmp/vmrouted-demo.XXXXXX)
SOCK="$WORK/vmrouted.sock"
LV="$WORK/libvirt"
VIRSH=(virsh -q -c "qemu:///system?socket=$LV/run/libvirt-sock")
GUEST=demo-guest; GUEST_IP=172.31.16.5; TASK_IP=172.31.16.20
DAEMON_PID=""; GOBGPD_PID=""; BIRD_PID=""; LIBVIRTD_PID=""

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }
ctl() { node dist/cli/main.js --socket "$SOCK" "$@"; }
wait_until() { # wait_until SECONDS WHAT COMMAND...: polls every 0.2 s
  local limit=$(( $1 * 5 )) what=$2; shift 2
  for _ in $(seq "$limit"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  echo "demo: timed out waiting for $what" >&2; return 1
}
console() { grep -a '^VMR ' "$WORK/$GUEST.console" 2>/dev/null | tr -d '\r' || true; }

CLEANED=""
cleanup() {
  [ -z "$CLEANED" ] || return 0
  CLEANED=1
  trap - EXIT INT TERM
  say "Tearing the lab down"
  if [ -n "$LIBVIRTD_PID" ] && kill -0 "$LIBVIRTD_PID" 2>/dev/null; then
    "${VIRSH[@]}" destroy "$GUEST" >/dev/null 2>&1 || true
    "${VIRSH[@]}" undefine "$GUEST" >/dev/null 2>&1 || true
  fi
  for pid in "$DAEMON_PID" "$GOBGPD_PID" "$BIRD_PID" "$LIBVIRTD_PID"; do
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then kill "$pid"; wait "$pid" 2>/dev/null || true; fi
  done
  # A qemu that outlived libvirtd (interrupted mid-start, or libvirtd gone first):
  # stop it by the pid libvirt recorded, if that pid is still our guest's qemu.
  qpid=$(cat "$LV/run/qemu/$GUEST.pid" 2>/dev/null || true)
  if [ -n "$qpid" ] && grep -qa "guest=$GUEST" "/proc/$qpid/cmdline" 2>/dev/null; then
    kill "$qpid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$qpid" 2>/dev/null || break; sleep 0.1; done
  fi
  for ns in "$HOST" "$RR" "$TASK"; do ip netns del "$ns" 2>/dev/null || true; done
  rm -rf "$WORK"
  echo "done: domain, daemons, namespaces and files removed"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "1. A host (namespace $HOST, 10.99.0.1) and a route reflector ($RR, 10.99.0.2) on one link, and a task namespace"
for ns in "$HOST" "$RR" "$TASK"; do ip netns add "$ns"; ip -n "$ns" link set lo up; done
ip -n "$HOST" link add uplink type veth peer name downlink netns "$RR"
ip -n "$HOST" addr add 10.99.0.1/24 dev uplink; ip -n "$HOST" link set uplink up
ip -n "$RR" addr add 10.99.0.2/24 dev downlink; ip -n "$RR" link set downlink up

say "2. BIRD 2 as route reflector, gobgpd and libvirtd on the host, then vmrouted with its libvirt hook"
fill() { sed -e 's/${ASN}/64512/g; s/${NODE_ADDRESS}/10.99.0.1/g; s/${RR_ADDRESS}/10.99.0.2/g' "templates/$1"; }
{ fill bird-rr.conf; cat scripts/lab/bird-kernel.conf; } > "$WORK/bird.conf"
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
libvirt: { uri: "qemu:///system?socket=$LV/run/libvirt-sock" }
YAML
cat "$WORK/config.yaml"
bash scripts/lab/libvirtd.sh prepare "$LV"
# The hook is installed before libvirtd starts: libvirtd reads hooks at start.
run ctl install-hook --hooks-dir "$LV/etc/hooks" --config "$WORK/config.yaml"
ip netns exec "$HOST" unshare -m --propagation private bash scripts/lab/libvirtd.sh run "$LV" > "$WORK/libvirtd.log" 2>&1 &
LIBVIRTD_PID=$!
ip netns exec "$HOST" node dist/daemon/main.js --config "$WORK/config.yaml" > "$WORK/vmrouted.log" 2>&1 &
DAEMON_PID=$!
wait_until 20 libvirtd "${VIRSH[@]}" list
wait_until 15 vmrouted ctl status
echo "waiting for the BGP session gobgpd -> BIRD ..."
wait_until 40 "the BGP session" sh -c "birdc -s '$WORK/bird.ctl' show protocols host1 | grep -q Established"
birdc -s "$WORK/bird.ctl" show protocols host1 | tail -n 1

say "3. Declare the network and a task namespace on it (a veth pair, routed like a VM)"
cat > "$WORK/spec.yaml" <<YAML
networks:
  service: { gateway: 172.31.16.1/24 }
endpoints:
  - { kind: netns, network: service, ip: $TASK_IP, netns: $TASK }
YAML
cat "$WORK/spec.yaml"
run ctl apply -f "$WORK/spec.yaml"

say "4. A VM: Debian's cloud kernel + a busybox init (built once, cached in .cache/guest); give it a routed interface"
bash scripts/lab/guest-domain.sh "$GUEST" "$WORK/$GUEST.console" "$GUEST_IP/24" 172.31.16.1 \
  "172.31.16.1,10.99.0.2,$TASK_IP" 10.99.0.2 > "$WORK/$GUEST.xml"
run "${VIRSH[@]}" define "$WORK/$GUEST.xml"
run ctl iface add "$GUEST" --network service --ip "$GUEST_IP"
echo "the domain's XML now has a pre-created (managed='no') tap:"
"${VIRSH[@]}" dumpxml --inactive "$GUEST" | sed -n "/<interface type='ethernet'>/,/<\/interface>/p"

say "5. virsh start: the qemu hook makes the tap, vmrouted routes and announces it; the guest reports on its console"
run "${VIRSH[@]}" start "$GUEST"
echo "(the guest boots under software emulation: a few seconds)"
wait_until 150 "the guest's boot checks" sh -c "grep -aq 'VMR boot checks done' '$WORK/$GUEST.console'"
console | sed 's/^/  guest console: /'
echo "(ping 10.99.0.2 ok: the guest reached the route reflector across the host, which works only"
echo " because the host routes the guest's /32 and BIRD learned it from gobgpd)"

say "6. The route reflector learned the /32 (next hop: the host), installed it, and reaches the guest"
run birdc -s "$WORK/bird.ctl" show route "$GUEST_IP/32"
run ip -n "$RR" route show "$GUEST_IP/32"
run ip netns exec "$RR" ping -c 2 -W 2 "$GUEST_IP"
echo "and the task namespace reaches the VM on the same routed network:"
run ip netns exec "$TASK" ping -c 2 -W 2 "$GUEST_IP"

say "7. Drift is repaired: delete the VM's /32 on the host by hand, watch it come back"
run ip -n "$HOST" route del "$GUEST_IP/32"
wait_until 10 "the repair" sh -c "ip -n '$HOST' route show '$GUEST_IP/32' | grep -q ."
run ip -n "$HOST" route show "$GUEST_IP/32"
run ip netns exec "$RR" ping -c 1 -W 2 "$GUEST_IP"

say "8. Status: networks, endpoints (the VM's and the task's) with state, conditions and counters, BGP"
run ctl status

say "9. virsh destroy: the hook withdraws the /32; the route reflector forgets it"
run "${VIRSH[@]}" destroy "$GUEST"
wait_until 30 "the withdrawal" sh -c "! ip -n '$RR' route show '$GUEST_IP/32' | grep -q ."
run birdc -s "$WORK/bird.ctl" show route "$GUEST_IP/32" || true  # birdc exits 1 for "Network not found"
run ip -n "$RR" route show "$GUEST_IP/32"
echo "(no route at the reflector any more)"
