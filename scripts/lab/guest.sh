#!/usr/bin/env bash
# Builds the lab guest from Debian packages (linux-image-cloud-amd64,
# busybox-static): the cloud kernel and a busybox initramfs whose init is
# guest-init. Cached in DIR (default: the repository's .cache/guest, outside
# git), rebuilt only when the kernel, busybox or guest-init change.
#   guest.sh [DIR]   prints DIR; DIR/vmlinuz and DIR/initrd.img are the guest
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/../../.cache/guest}
mkdir -p "$out"
out=$(cd "$out" && pwd)

kernel=$(ls /boot/vmlinuz-*-cloud-amd64 2>/dev/null | sort -V | tail -n 1 || true)
[ -n "$kernel" ] || { echo "guest.sh: no /boot/vmlinuz-*-cloud-amd64: run scripts/setup.sh (installs linux-image-cloud-amd64)" >&2; exit 1; }
version=${kernel#/boot/vmlinuz-}
modules=/lib/modules/$version/kernel
[ -x /bin/busybox ] || { echo "guest.sh: /bin/busybox is missing: run scripts/setup.sh (installs busybox-static)" >&2; exit 1; }
# The DHCPv6 client (busybox-static has no udhcpc6): ISC dhclient, with the shared libraries it links.
dhclient=/sbin/dhclient
[ -x "$dhclient" ] || { echo "guest.sh: $dhclient is missing: run scripts/setup.sh (installs isc-dhcp-client)" >&2; exit 1; }

stamp="$version $(sha256sum /bin/busybox "$dhclient" "$here/guest-init" "$here/guest-dhcp-event" "$here/guest-dhcp6-event" | cut -c1-16 | tr '\n' ' ')"
if [ -f "$out/stamp" ] && [ "$(cat "$out/stamp")" = "$stamp" ] && [ -f "$out/initrd.img" ] && [ -f "$out/vmlinuz" ]; then
  echo "$out"; exit 0
fi

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,dev,proc,sys,lib/modules}
cp /bin/busybox "$root/bin/busybox"
for applet in sh mount insmod ip ping cat tr sleep echo nc wget head udhcpc kill grep sed; do ln -s busybox "$root/bin/$applet"; done
cp "$dhclient" "$root/bin/dhclient"
for lib in $(ldd "$dhclient" | sed -n 's/.*=> \(\/[^ ]*\) .*/\1/p; s/^[[:space:]]*\(\/[^ ]*\) .*/\1/p'); do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done
for m in drivers/virtio/virtio_ring drivers/virtio/virtio drivers/virtio/virtio_pci_modern_dev \
  drivers/virtio/virtio_pci_legacy_dev drivers/virtio/virtio_pci net/core/failover drivers/net/net_failover drivers/net/virtio_net; do
  f=$(ls "$modules/$m.ko"* | head -n 1)
  case "$f" in
    *.ko) cp "$f" "$root/lib/modules/" ;;
    *.ko.xz) xz -dc "$f" > "$root/lib/modules/$(basename "$m").ko" ;;
    *.ko.zst) zstd -qdc "$f" > "$root/lib/modules/$(basename "$m").ko" ;;
    *) echo "guest.sh: module $m not found under $modules" >&2; exit 1 ;;
  esac
done
install -m 0755 "$here/guest-init" "$root/init"
install -m 0755 "$here/guest-dhcp-event" "$root/bin/dhcp-event"
install -m 0755 "$here/guest-dhcp6-event" "$root/bin/dhcp6-event"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) > "$out/initrd.img.tmp"
cp "$kernel" "$out/vmlinuz.tmp"
mv "$out/initrd.img.tmp" "$out/initrd.img"
mv "$out/vmlinuz.tmp" "$out/vmlinuz"
echo "$stamp" > "$out/stamp"
echo "$out"
