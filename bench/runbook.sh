#!/usr/bin/env bash
# The baseline: the manual runbook vmrouted replaces, one VM at a time, as an
# operator (or a shell script around the runbook) would run it.
#   runbook.sh up   FIRST COUNT NEXTHOP   taps, routes and announcements for COUNT VMs
#   runbook.sh down FIRST COUNT NEXTHOP   the inverse
# VM i gets 172.31.X.Y (FIRST + i within 172.31.0.0/16) and tap rb<i>.
# Run it inside the host's network namespace, with gobgpd's API on 127.0.0.1:50051.
set -euo pipefail
mode=$1; first=$2; count=$3; nexthop=$4
for ((i = first; i < first + count; i++)); do
  ip="172.31.$(( 16 + i / 250 )).$(( 2 + i % 250 ))"
  tap="rb$i"
  if [ "$mode" = up ]; then
    ip tuntap add dev "$tap" mode tap one_queue vnet_hdr
    ip link set "$tap" up
    ip route add "$ip/32" dev "$tap"
    gobgp global rib add "$ip/32" nexthop "$nexthop" -a ipv4
  else
    gobgp global rib del "$ip/32" -a ipv4
    ip tuntap del dev "$tap" mode tap
  fi
done
