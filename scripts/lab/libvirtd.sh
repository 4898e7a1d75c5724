#!/usr/bin/env bash
# A libvirtd (qemu driver, TCG) isolated from the machine, for tests and the
# demo: its config, run, state, cache, log and hooks directories are DIR's own.
#   libvirtd.sh prepare DIR [ADDR]   creates DIR's layout and config (idempotent)
#   libvirtd.sh run DIR [ADDR]       prepares, bind-mounts DIR over libvirt's paths, execs libvirtd
# With ADDR, libvirtd also listens on ADDR over TCP (no TLS, no auth: a lab on a
# private fabric, never a host) and qemu migrates over ADDR: two such hosts can
# live-migrate to each other (LAB.md).
# `run` must be started inside a private mount namespace (and the network
# namespace it should serve):
#   ip netns exec NS unshare -m --propagation private bash libvirtd.sh run DIR
# The virsh URI is qemu:///system?socket=DIR/run/libvirt-sock
set -euo pipefail
mode=${1:-}; dir=${2:-}; addr=${3:-}
if [ -z "$dir" ] || { [ "$mode" != prepare ] && [ "$mode" != run ]; }; then
  echo "usage: libvirtd.sh prepare|run DIR" >&2; exit 2
fi

# libvirt's own paths, and the subdirectory of DIR that replaces each.
declare -A MOUNTS=([/etc/libvirt]=etc [/run/libvirt]=run [/var/lib/libvirt]=lib [/var/cache/libvirt]=cache [/var/log/libvirt]=log)

for m in "${!MOUNTS[@]}"; do
  [ -d "$m" ] || { echo "libvirtd.sh: $m is missing: run scripts/setup.sh (it creates libvirt's directories and user)" >&2; exit 1; }
  mkdir -p "$dir/${MOUNTS[$m]}"
done
mkdir -p "$dir/etc/hooks/qemu.d"
if [ ! -f "$dir/etc/libvirtd.conf" ]; then
  printf '%s\n' 'unix_sock_rw_perms = "0700"' 'auth_unix_rw = "none"' 'auth_unix_ro = "none"' > "$dir/etc/libvirtd.conf"
  # A host uuid of its own: libvirt refuses to migrate to a host with its own uuid.
  [ -z "$addr" ] || printf '%s\n' 'listen_tls = 0' 'listen_tcp = 1' "listen_addr = \"$addr\"" 'auth_tcp = "none"' \
    "host_uuid = \"$(cat /proc/sys/kernel/random/uuid)\"" >> "$dir/etc/libvirtd.conf"
fi
# qemu as root without a security driver, logs to files (no virtlogd): a lab, not a production host.
if [ ! -f "$dir/etc/qemu.conf" ]; then
  printf '%s\n' 'user = "root"' 'group = "root"' 'dynamic_ownership = 0' \
    'security_driver = "none"' 'stdio_handler = "file"' > "$dir/etc/qemu.conf"
  [ -z "$addr" ] || printf '%s\n' 'cgroup_controllers = [ ]' "migration_address = \"$addr\"" "migration_host = \"$addr\"" >> "$dir/etc/qemu.conf"
fi
[ "$mode" = run ] || exit 0

if [ "$(findmnt -n -o PROPAGATION / 2>/dev/null)" = shared ]; then
  echo "libvirtd.sh: / has shared mount propagation: run me under 'unshare -m --propagation private'" >&2; exit 1
fi
for m in "${!MOUNTS[@]}"; do mount --bind "$dir/${MOUNTS[$m]}" "$m"; done
# Its pid file too: by default libvirtd writes /run/libvirtd.pid, outside the bind mounts.
exec libvirtd --config /etc/libvirt/libvirtd.conf --pid-file /run/libvirt/libvirtd.pid ${addr:+--listen}
