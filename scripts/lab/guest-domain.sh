#!/usr/bin/env bash
# Prints the lab guest's domain XML (guest-domain.xml filled in), building the
# guest image first if needed (guest.sh). The one place that knows the guest's
# kernel command line (read by guest-init).
#   guest-domain.sh NAME CONSOLE_FILE IP/LEN GATEWAY PING[,PING...] WATCH [ECHO_PORT]
set -euo pipefail
[ $# -eq 6 ] || [ $# -eq 7 ] || { echo "usage: guest-domain.sh NAME CONSOLE_FILE IP/LEN GATEWAY PING[,PING...] WATCH [ECHO_PORT]" >&2; exit 2; }
name=$1 console=$2 ip=$3 gateway=$4 pings=$5 watch=$6 echo=${7:-}
here=$(cd "$(dirname "$0")" && pwd)
image=$(bash "$here/guest.sh")
cmdline="console=ttyS0 loglevel=4 panic=-1 vmr.ip=$ip vmr.gw=$gateway vmr.ping=$pings vmr.watch=$watch${echo:+ vmr.echo=$echo}"
sed -e "s|@NAME@|$name|; s|@KERNEL@|$image/vmlinuz|; s|@INITRD@|$image/initrd.img|; s|@CMDLINE@|$cmdline|; s|@CONSOLE@|$console|" \
  "$here/guest-domain.xml"
