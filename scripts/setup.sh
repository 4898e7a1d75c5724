#!/usr/bin/env bash
# Installs everything vmrouted's demo and tests need on a fresh Debian 12 host
# (as root), then builds. Idempotent: installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# Node.js >= 20 (Debian 12 ships 18, Debian 13 ships 20). Where there is none,
# Debian's nodejs and npm are installed; a Node older than 20 stops setup here.
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "setup: installing Debian's nodejs and npm"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(command -v node >/dev/null || echo nodejs) npm >/dev/null
fi
if [ "$(node -p 'process.versions.node.split(".")[0]')" -lt 20 ]; then
  echo "setup: vmrouted needs Node.js >= 20 but this host has $(node --version): install Node.js 20 from NodeSource (https://github.com/nodesource/distributions, nodejs 20.x) or use Debian 13, then run setup again" >&2
  exit 1
fi

# Debian packages: the dataplane tools, curl (the hook shim talks to the API
# socket with it), the real daemons the tests run (FRR and BIRD as reflectors), and the
# kernel + busybox the lab guest is built from (scripts/lab/guest.sh); nftables
# for doctor's firewall check and the egress NAT table, iptables (iptables-nft) for
# the NAT test's "another application's rules", systemd for `systemd-analyze verify` of the unit,
# gnuplot for the benchmark's chart; xmllint and virt-install for the libvirt corpus tests;
# dpkg-dev and lintian to build and check the Debian package (scripts/package.sh);
# tcpdump, which vmrouted runs on an incoming migration's tap to see the guest's RARP.
# exabgp: the hostile BGP speaker of the fleet-trust tests (nobody here wrote it).
PACKAGES=(iproute2 iputils-ping procps util-linux gobgpd bird2
  libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients qemu-system-x86
  linux-image-cloud-amd64 busybox-static cpio nftables iptables systemd gnuplot-nox curl frr libxml2-utils virtinst
  dpkg-dev lintian tcpdump exabgp dnsmasq-base isc-dhcp-client)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# libvirtd resolves its built-in qemu user before reading qemu.conf, and needs
# its directories (the tests mount their own over them, in a private mount
# namespace). Debian's libvirt-daemon-system would create these, with systemd units.
getent group kvm >/dev/null || groupadd --system kvm
getent group libvirt-qemu >/dev/null || groupadd --system libvirt-qemu
id libvirt-qemu >/dev/null 2>&1 || useradd --system --no-create-home --home-dir /var/lib/libvirt \
  --shell /usr/sbin/nologin -g libvirt-qemu -G kvm libvirt-qemu
mkdir -p /etc/libvirt /run/libvirt /var/lib/libvirt /var/cache/libvirt /var/log/libvirt

if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "setup: installing npm packages"
  # npm install, not npm ci: the registry mirror here omits other platforms' optional
  # packages (rollup's) from the lockfile, which npm ci's strict check rejects.
  npm install --no-audit --no-fund --loglevel=error
fi
npm run --silent build
