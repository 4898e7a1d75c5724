#!/usr/bin/env bash
# Prints the lab guest's domain XML (guest-domain.xml filled in), building the
# guest image first if needed (guest.sh). The one place that knows the guest's
# kernel command line (read by guest-init).
#   guest-domain.sh NAME CONSOLE_FILE IP/LEN GATEWAY PING[,PING...] WATCH [vmr.KEY=VALUE...]
set -euo pipefail
[ $# -ge 6 ] || { echo "usage: guest-domain.sh NAME CONSOLE_FILE IP/LEN GATEWAY PING[,PING...] WATCH [vmr.KEY=VALUE...]" >&2; exit 2; }
name=$1 console=$2 ip=$3 gateway=$4 pings=$5 watch=$6
shift 6
for kv in "$@"; do
  case "$kv" in vmr.[a-z]*=*) ;; *) echo "guest-domain.sh: '$kv' is not vmr.KEY=VALUE" >&2; exit 2 ;; esac
done
here=$(cd "$(dirname "$0")" && pwd)
image=$(bash "$here/guest.sh")
cmdline="console=ttyS0 loglevel=4 panic=-1 vmr.ip=$ip vmr.gw=$gateway vmr.ping=$pings vmr.watch=$watch${*:+ $*}"
sed -e "s|@NAME@|$name|; s|@KERNEL@|$image/vmlinuz|; s|@INITRD@|$image/initrd.img|; s|@CMDLINE@|$cmdline|; s|@CONSOLE@|$console|" \
  "$here/guest-domain.xml"
