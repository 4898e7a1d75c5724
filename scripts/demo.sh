#!/usr/bin/env bash
# The vmrouted demo: a throwaway lab in network namespaces on this host (the
# root namespace is never touched) with a real VM, narrated step by step, torn
# down on exit or Ctrl-C.
#   host ns:   vmrouted + gobgpd + libvirtd (its own dirs, scripts/lab/libvirtd.sh)
#   host2 ns:  the same, a second hypervisor the VM live-migrates to
#   rr ns:     BIRD 2 route reflector, installing learned routes in its kernel
#   task ns:   a container-like namespace on the same routed network as the VM
#   fabric ns: the bridge they all hang off (10.99.0.0/24)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then echo "demo: run as root (it creates network namespaces)" >&2; exit 1; fi
bash scripts/setup.sh

ID=$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')
HOST="vmrd-$ID-host"; HOST2="vmrd-$ID-host2"; RR="vmrd-$ID-rr"; TASK="vmrd-$ID-task"; FABRIC="vmrd-$ID-fab"
WORK=$(mktemp -d /tmp/vmrouted-demo.XXXXXX)
# Searchable by others: each vmrouted's dnsmasq reads its hosts (beside the API socket) as nobody.
chmod 755 "$WORK"
SOCK="$WORK/vmrouted.sock"; SOCK2="$WORK/vmrouted2.sock"
LV="$WORK/libvirt"; LV2="$WORK/libvirt2"
VIRSH=(virsh -q -c "qemu:///system?socket=$LV/run/libvirt-sock")
VIRSH2=(virsh -q -c "qemu:///system?socket=$LV2/run/libvirt-sock")
GUEST=demo-guest; GUEST_IP=172.31.16.5; TASK_IP=172.31.16.20

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }
ctl() { node dist/cli/main.js --socket "$SOCK" "$@"; }
ctl2() { node dist/cli/main.js --socket "$SOCK2" "$@"; }
wait_until() { # wait_until SECONDS WHAT COMMAND...: polls every 0.2 s
  local limit=$(( $1 * 5 )) what=$2; shift 2
  for _ in $(seq "$limit"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  echo "demo: timed out waiting for $what" >&2; return 1
}
console() { grep -a '^VMR ' "$WORK/$GUEST.console" 2>/dev/null | tr -d '\r' || true; }

# The demo's own stdout/stderr, kept: Ctrl-C during a function call whose output
# is redirected (wait_until's `ctl status >/dev/null`, `fill > file`) runs the
# traps with that redirection still in force, and the teardown's lines went to
# /dev/null.
exec {DEMO_OUT}>&1 {DEMO_ERR}>&2
CLEANED=""
cleanup() {
  [ -z "$CLEANED" ] || return 0
  CLEANED=1
  trap - EXIT INT TERM
  exec 1>&"$DEMO_OUT" 2>&"$DEMO_ERR"
  say "Tearing the lab down"
  for lv in "$LV" "$LV2"; do
    virsh -q -c "qemu:///system?socket=$lv/run/libvirt-sock" destroy "$GUEST" >/dev/null 2>&1 || true
    virsh -q -c "qemu:///system?socket=$lv/run/libvirt-sock" undefine "$GUEST" >/dev/null 2>&1 || true
  done
  # Every daemon is a job of this shell: stop them by pid, newest first (a host's
  # vmrouted before its libvirtd and gobgpd, BIRD last). The job table, not
  # variables set after each start, so that one started just before Ctrl-C
  # (its pid not yet stored anywhere) is stopped too.
  for pid in $(jobs -p | tac); do
    if kill -0 "$pid" 2>/dev/null; then kill "$pid"; wait "$pid" 2>/dev/null || true; fi
  done
  # A qemu that outlived libvirtd (interrupted mid-start, or libvirtd gone first):
  # stop it by the pid libvirt recorded, if that pid is still our guest's qemu.
  for lv in "$LV" "$LV2"; do
    qpid=$(cat "$lv/run/qemu/$GUEST.pid" 2>/dev/null || true)
    if [ -n "$qpid" ] && grep -qa "guest=$GUEST" "/proc/$qpid/cmdline" 2>/dev/null; then
      kill "$qpid" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$qpid" 2>/dev/null || break; sleep 0.1; done
    fi
  done
  for ns in "$HOST" "$HOST2" "$RR" "$TASK" "$FABRIC"; do ip netns del "$ns" 2>/dev/null || true; done
  rm -rf "$WORK"
  echo "done: domain, daemons, namespaces and files removed"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "1. Two hosts ($HOST 10.99.0.1, $HOST2 10.99.0.3) and a route reflector ($RR, 10.99.0.2) on one fabric, and a task namespace"
for ns in "$FABRIC" "$HOST" "$HOST2" "$RR" "$TASK"; do ip netns add "$ns"; ip -n "$ns" link set lo up; done
ip -n "$FABRIC" link add br0 type bridge; ip -n "$FABRIC" link set br0 up
attach() { # attach NS PORT ADDRESS: a veth made straight into NS and the fabric
  ip link add uplink netns "$1" type veth peer name "$2" netns "$FABRIC"
  ip -n "$FABRIC" link set "$2" master br0 up
  ip -n "$1" addr add "$3/24" dev uplink; ip -n "$1" link set uplink up
}
attach "$HOST" p-host 10.99.0.1; attach "$HOST2" p-host2 10.99.0.3; attach "$RR" p-rr 10.99.0.2

say "2. BIRD 2 as route reflector; on each host gobgpd, libvirtd and vmrouted with its libvirt hook"
# The sessions are authenticated with TCP MD5 (the same BGP_PASSWORD on both ends).
fill() { sed -e "s/\${ASN}/64512/g; s/\${NODE_ADDRESS}/$2/g; s/\${RR_ADDRESS}/10.99.0.2/g; s/\${BGP_PASSWORD}/vmrouted-demo-md5/g" "templates/$1"; }
{ fill bird-rr.conf 10.99.0.1; printf 'protocol bgp host2 from vmrouted_hosts {\n  neighbor 10.99.0.3 as 64512;\n}\n'; cat scripts/lab/bird-kernel.conf; } > "$WORK/bird.conf"
ip netns exec "$RR" bird -f -c "$WORK/bird.conf" -s "$WORK/bird.ctl" -P "$WORK/bird.pid" > "$WORK/bird.log" 2>&1 &
host_up() { # host_up NS ADDRESS NAME SOCKET LIBVIRT_DIR: gobgpd, libvirtd (listening for migrations), vmrouted
  local ns=$1 addr=$2 name=$3 sock=$4 lv=$5
  fill gobgpd.toml "$addr" > "$WORK/$name-gobgpd.toml"
  ip netns exec "$ns" gobgpd -f "$WORK/$name-gobgpd.toml" --api-hosts 127.0.0.1:50051 --pprof-disable -r -l warn > "$WORK/$name-gobgpd.log" 2>&1 &
  cat > "$WORK/$name.yaml" <<YAML
node: { address: $addr, name: $name }
api: { socket: $sock }
stateDir: $WORK/$name-state
bgp: { gobgp: "127.0.0.1:50051", communities: ["64512:100"] }
networks:
  # dhcp is on by default: vmrouted's dnsmasq tells the guest its address, router and MTU.
  service: { gateway: 172.31.16.1/24, mtu: 1450, dns: [10.99.0.2], domain: demo.internal }
libvirt: { uri: "qemu:///system?socket=$lv/run/libvirt-sock" }
migration: { settleSeconds: 10 }
YAML
  bash scripts/lab/libvirtd.sh prepare "$lv" "$addr"
  # The hook is installed before libvirtd starts: libvirtd reads hooks at start.
  node dist/cli/main.js --socket "$sock" install-hook --hooks-dir "$lv/etc/hooks" --config "$WORK/$name.yaml" >/dev/null
  ip netns exec "$ns" unshare -m --propagation private bash scripts/lab/libvirtd.sh run "$lv" "$addr" > "$WORK/$name-libvirtd.log" 2>&1 &
  ip netns exec "$ns" node dist/daemon/main.js --config "$WORK/$name.yaml" > "$WORK/$name-vmrouted.log" 2>&1 &
}
host_up "$HOST" 10.99.0.1 demo-host "$SOCK" "$LV"
host_up "$HOST2" 10.99.0.3 demo-host2 "$SOCK2" "$LV2"
cat "$WORK/demo-host.yaml"
wait_until 20 libvirtd "${VIRSH[@]}" list
wait_until 20 "the second libvirtd" "${VIRSH2[@]}" list
wait_until 15 vmrouted ctl status
wait_until 15 "the second vmrouted" ctl2 status
echo "waiting for the BGP sessions gobgpd -> BIRD ..."
for h in host1 host2; do
  wait_until 40 "the BGP session of $h" sh -c "birdc -s '$WORK/bird.ctl' show protocols $h | grep -q Established"
  birdc -s "$WORK/bird.ctl" show protocols "$h" | tail -n 1
done

say "3. Declare the network and a task namespace on it (a veth pair, routed like a VM)"
cat > "$WORK/spec.yaml" <<YAML
networks:
  service: { gateway: 172.31.16.1/24, mtu: 1450, dns: [10.99.0.2], domain: demo.internal }
endpoints:
  - { kind: netns, network: service, ip: $TASK_IP, netns: $TASK }
YAML
cat "$WORK/spec.yaml"
run ctl apply -f "$WORK/spec.yaml"

say "4. A VM: Debian's cloud kernel + a busybox init (built once, cached in .cache/guest) with no network configuration"
echo "   but a DHCP client (busybox udhcpc); give it a routed interface"
bash scripts/lab/guest-domain.sh "$GUEST" "$WORK/$GUEST.console" dhcp - \
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
echo "(dhcp bound: vmrouted's dnsmasq gave the guest its address, router, MTU and DNS from its endpoint table)"
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

say "9. Live migration to the second host, while the route reflector pings the guest every 10 ms"
ip netns exec "$RR" ping -i 0.01 -q "$GUEST_IP" > "$WORK/ping.txt" 2>&1 &
PING_PID=$!
sleep 1
run ip netns exec "$HOST" "${VIRSH[@]}" migrate --live --persistent --undefinesource "$GUEST" qemu+tcp://10.99.0.3/system --migrateuri tcp://10.99.0.3
sleep 1.5
kill -INT "$PING_PID"; wait "$PING_PID" 2>/dev/null || true
summary=$(grep -E 'packets transmitted' "$WORK/ping.txt")
sent=$(echo "$summary" | sed -E 's/^([0-9]+) packets transmitted, ([0-9]+) received.*/\1/')
got=$(echo "$summary" | sed -E 's/^([0-9]+) packets transmitted, ([0-9]+) received.*/\2/')
echo "ping during the migration: $summary"
echo "replies lost: $((sent - got)) of $sent"
echo "the guest announced itself on host 2 (a RARP on its tap); host 2 routed it and announced it with"
echo "preference; host 1 handed it over. The route reflector now routes the guest via host 2:"
wait_until 20 "the reflector to route via host 2" sh -c "ip -n '$RR' route show '$GUEST_IP/32' | grep -q 10.99.0.3"
run ip -n "$RR" route show "$GUEST_IP/32"
echo "host 2's view of the guest (migration: settling, then normal after 10 s):"
ctl2 endpoints | grep -E 'KIND|demo-guest'
ctl2 -o json endpoints | grep -oE '"migration": "[a-z]+"' | head -n 1
echo "host 1 has nothing of it left:"
wait_until 10 "host 1 to let go" sh -c "! ip -n '$HOST' link show | grep -q tap-"
run ip -n "$HOST" route show "$GUEST_IP/32"

say "10. virsh destroy on host 2: the hook withdraws the /32; the route reflector forgets it"
run "${VIRSH2[@]}" destroy "$GUEST"
wait_until 30 "the withdrawal" sh -c "! ip -n '$RR' route show '$GUEST_IP/32' | grep -q ."
run birdc -s "$WORK/bird.ctl" show route "$GUEST_IP/32" || true  # birdc exits 1 for "Network not found"
run ip -n "$RR" route show "$GUEST_IP/32"
echo "(no route at the reflector any more)"
