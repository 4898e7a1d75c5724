#!/bin/sh
# vmrouted's libvirt qemu hook, installed by `vmroutectl install-hook`.
# libvirtd runs every executable in /etc/libvirt/hooks/qemu.d/ as
#   NAME OP SUBOP EXTRA   with the domain XML on stdin,
# waits for it with no timeout of its own, and deadlocks if it calls back into
# libvirt. So: never call virsh here, and bound our own wait.
NODE='@NODE@'
CLI='@CLI@'
SOCKET='@SOCKET@'
CONFIG='@CONFIG@'
TIMEOUT='@TIMEOUT@'

xml=$(cat)
# migrate and restore: libvirt takes the XML printed on stdout; we change nothing.
case "$2" in migrate|restore) printf '%s\n' "$xml" ;; esac
# Domains without vmrouted's metadata are none of our business.
case "$xml" in *'https://vmrouted.dev/xmlns/interfaces/1'*) ;; *) exit 0 ;; esac
# Only these calls change anything for vmrouted; skip starting Node for the rest.
case "$2/$3" in
  prepare/begin|migrate/begin|started/begin|reconnect/begin|stopped/end|release/end) ;;
  *) exit 0 ;;
esac

printf '%s' "$xml" | timeout "$TIMEOUT" "$NODE" "$CLI" --socket "$SOCKET" hook --config "$CONFIG" -- "$1" "$2" "$3" "${4:--}" >/dev/null
rc=$?
# Only a failed prepare (or incoming migration) may stop a domain: its tap could not be made.
case "$2/$3" in prepare/begin|migrate/begin) exit $rc ;; esac
exit 0
