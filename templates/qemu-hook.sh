#!/bin/sh
# vmrouted's libvirt qemu hook, installed by `vmroutectl install-hook`.
# libvirtd runs every executable in /etc/libvirt/hooks/qemu.d/ as
#   NAME OP SUBOP EXTRA   with the domain XML on stdin,
# waits for it with no timeout of its own, and deadlocks if it calls back into
# libvirt. So: never call virsh here, and bound our own wait.
# It talks to vmrouted's API socket with curl: no Node on the path of a VM
# start. Only `prepare begin` and `migrate begin` wait for vmrouted (the taps
# must exist before qemu opens them); every other call returns at once, its
# request sent in the background, and vmrouted applies them in order (each
# call carries a sequence: this boot's id and the monotonic clock, never the
# wall clock, which NTP may step back at boot).
NODE='@NODE@'
CLI='@CLI@'
SOCKET='@SOCKET@'
CONFIG='@CONFIG@'
TIMEOUT='@TIMEOUT@'

# One process (cat): dash's read builtin takes a byte per system call, slower
# than the fork from about 2.5 KB of XML (a libvirt domain is 5-10 KB).
xml=$(cat)
# migrate and restore: libvirt takes the XML printed on stdout; we change nothing.
case "$2" in migrate|restore) printf '%s\n' "$xml" ;; esac
# Domains without vmrouted's metadata are none of our business.
case "$xml" in *'https://vmrouted.dev/xmlns/interfaces/1'*) ;; *) exit 0 ;; esac
case "$2/$3" in
  prepare/begin|migrate/begin) blocking=1 ;;
  started/begin|reconnect/begin|stopped/end|release/end) blocking=0 ;;
  *) exit 0 ;;
esac
# libvirt runs a domain's hooks one after the other: the clock orders them.
# BOOT_ID:NS, read by dash itself (no process): the monotonic clock in ns
# (/proc/timer_list, third line "now at N nsecs", root only; libvirtd runs
# hooks as root), else /proc/uptime in ns. Neither goes back within a boot, and
# both restart at the next one, which the boot id tells vmrouted. Without
# them, no sequence: vmrouted then applies the call as it comes.
seq= boot= ns=
read -r boot 2>/dev/null </proc/sys/kernel/random/boot_id
case "$boot" in ????????-????-????-????-????????????) ;; *) boot= ;; esac
{ read -r w1 && read -r w1 && read -r w1 w2 ns w4; } 2>/dev/null </proc/timer_list
[ "$w1 $w2 $w4" = 'now at nsecs' ] || ns=
case "$ns" in ''|*[!0-9]*)
  ns=
  if read -r up w1 2>/dev/null </proc/uptime; then
    case "$up" in [0-9]*.[0-9][0-9]) ns=${up%.*}${up#*.}0000000 ;; esac
    case "$ns" in *[!0-9]*) ns= ;; esac
  fi ;;
esac
[ -z "$boot" ] || [ -z "$ns" ] || seq="$boot:$ns"

post() {
  printf '%s' "$xml" | curl -sS --max-time "$TIMEOUT" --unix-socket "$SOCKET" -X POST \
    -H 'content-type: application/xml' --data-binary @- \
    --url-query "domain=$1" --url-query "op=$2" --url-query "subop=$3" --url-query "extra=${4:--}" ${seq:+--url-query} ${seq:+"seq=$seq"} \
    -w '\n%{http_code}' http://vmrouted/v1/hook
}
if [ "$blocking" = 0 ]; then
  # libvirt waits for the hook's output to close, not for vmrouted: the call
  # goes on in the background, its output elsewhere, and libvirt goes on at
  # once. Nothing here could stop the domain anyway; vmrouted logs what it
  # refuses, and the sequence keeps a late call from undoing a newer one.
  # A subshell: dash does not apply a backgrounded function call's
  # redirections in the child, which then holds libvirt's pipe until curl ends.
  (post "$@") </dev/null >/dev/null 2>&1 &
  exit 0
fi
answer=$(post "$@" 2>&1)
rc=$?
if [ "$rc" -eq 7 ]; then
  # vmrouted is not running (curl: cannot connect). A start needs its taps
  # now: made directly (the daemon routes and announces the domain when it is
  # back, from its libvirt resync).
  printf '%s' "$xml" | timeout "$TIMEOUT" "$NODE" "$CLI" --socket "$SOCKET" hook --config "$CONFIG" -- "$1" "$2" "$3" "${4:--}" >/dev/null
  exit $?
fi
code=$(printf '%s\n' "$answer" | tail -n 1)
if [ "$rc" -ne 0 ] || [ "$code" != 200 ]; then
  # One line for libvirt's error message: vmrouted's {"error": "..."} or curl's own.
  body=$(printf '%s\n' "$answer" | sed '$d' | sed -n 's/^{"error":"\(.*\)"}$/\1/p')
  echo "vmrouted: ${body:-$(printf '%s\n' "$answer" | head -n 1)}" >&2
  # The domain (or incoming migration) stops here: its tap could not be made.
  exit 1
fi
exit 0
