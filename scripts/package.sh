#!/usr/bin/env bash
# Builds the Debian package vmrouted_<version>_all.deb in the checkout (or in
# --out DIR) with dpkg-deb: the daemon and the CLI each bundled into one file
# by esbuild, launchers on PATH, the systemd unit and gobgpd drop-in, the
# example config as a conffile, templates, man pages, maintainer scripts.
# Needs `npm install` (esbuild, typescript) and dpkg-dev; not root.
# The version is package.json's; the build stops if src/version.ts differs.
set -euo pipefail
trap 'echo "package: failed at line $LINENO: $BASH_COMMAND" >&2' ERR
checkout=$(cd "$(dirname "$0")/.." && pwd)

out=$checkout
while [ $# -gt 0 ]; do
  case "$1" in
    --out) mkdir -p "$2"; out=$(cd "$2" && pwd); shift 2 ;;
    *) echo "package: unknown argument '$1' (usage: scripts/package.sh [--out DIR])" >&2; exit 2 ;;
  esac
done
cd "$checkout"

MAINTAINER="vmrouted maintainers <packages@vmrouted.dev>"
LAYOUT='{"proto":"/usr/share/vmrouted/proto/gobgp.proto","hookTemplate":"/usr/share/vmrouted/templates/qemu-hook.sh","cli":"/usr/lib/vmrouted/vmroutectl.mjs"}'

for tool in dpkg-deb gzip node; do
  command -v "$tool" >/dev/null || { echo "package: $tool is missing (apt-get install dpkg-dev)" >&2; exit 1; }
done
[ -x node_modules/.bin/esbuild ] && [ -x node_modules/.bin/tsc ] || { echo "package: run npm install first (esbuild, typescript)" >&2; exit 1; }

version=$(node -p 'require("./package.json").version')
code_version=$(sed -n 's/^export const VERSION = "\(.*\)";$/\1/p' src/version.ts)
if [ "$version" != "$code_version" ]; then
  echo "package: package.json has version $version but src/version.ts has ${code_version:-none}: make them equal" >&2
  exit 1
fi
# Debian orders 1.0.0~rc.1 before 1.0.0 (and a "-" would start a Debian revision).
debversion=${version//-/\~}
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || stat -c %Y package.json)}

# Type errors stop the build; tsc writes nothing (the checkout's dist/ stays as it is).
node_modules/.bin/tsc -p tsconfig.json --noEmit

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
root=$stage/root
lib=$root/usr/lib/vmrouted share=$root/usr/share/vmrouted doc=$root/usr/share/doc/vmrouted
install -d -m 0755 "$root/DEBIAN" "$root/usr/bin" "$lib" "$share/proto" "$share/templates" "$doc" \
  "$root/usr/share/man/man1" "$root/usr/share/man/man8" "$root/lib/systemd/system/gobgpd.service.d" "$root/etc/vmrouted"

# One module per executable, everything but Node's own modules inlined. CommonJS
# dependencies (gRPC, protobufjs) call require(): the banner gives the ES module one.
node_modules/.bin/esbuild src/daemon/main.ts src/cli/main.ts --bundle --platform=node --format=esm --target=node20 \
  --outdir="$stage/bundle" --entry-names='[dir]' --out-extension:.js=.mjs --legal-comments=none \
  --define:VMROUTED_PACKAGE_LAYOUT="$LAYOUT" --metafile="$stage/meta.json" --log-level=warning \
  --banner:js='import { createRequire as vmroutedCreateRequire } from "node:module"; const require = vmroutedCreateRequire(import.meta.url);'
install -m 0644 "$stage/bundle/daemon.mjs" "$lib/vmrouted.mjs"
install -m 0644 "$stage/bundle/cli.mjs" "$lib/vmroutectl.mjs"
# The commands: one Node process each, loading the bundle (a CommonJS script, as
# nothing marks /usr/bin as ES modules, so a dynamic import).
for name in vmrouted vmroutectl; do
  printf '#!/usr/bin/node\nimport("/usr/lib/vmrouted/%s.mjs");\n' "$name" > "$root/usr/bin/$name"
  chmod 0755 "$root/usr/bin/$name"
done
built=$(node "$lib/vmroutectl.mjs" --version)
[ "$built" = "$version" ] || { echo "package: the bundled vmroutectl says $built, package.json $version" >&2; exit 1; }

install -m 0644 proto/gobgp.proto "$share/proto/"
install -m 0644 templates/* "$share/templates/"
install -m 0644 systemd/vmrouted.service "$root/lib/systemd/system/"
install -m 0644 systemd/gobgpd.service.d/vmrouted.conf "$root/lib/systemd/system/gobgpd.service.d/"
install -m 0644 packaging/deb/config.yaml "$root/etc/vmrouted/config.yaml"
sed "s/@VERSION@/$version/" packaging/deb/vmroutectl.1 | gzip -9n > "$root/usr/share/man/man1/vmroutectl.1.gz"
sed "s/@VERSION@/$version/" packaging/deb/vmrouted.8 | gzip -9n > "$root/usr/share/man/man8/vmrouted.8.gz"
gzip -9n < README.md > "$doc/README.md.gz"

# changelog (a native package) and copyright, with every npm package the bundles contain.
{
  echo "vmrouted ($debversion) unstable; urgency=medium"
  echo
  echo "  * Release $version."
  echo
  echo " -- $MAINTAINER  $(date -u -R -d "@$SOURCE_DATE_EPOCH")"
} | gzip -9n > "$doc/changelog.gz"
first_year=$(git log --format=%cd --date=format:%Y 2>/dev/null | tail -n 1 || true)
last_year=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y)
years=${first_year:-$last_year}
[ "$years" = "$last_year" ] || years="$years-$last_year"
node --input-type=module - "$stage/meta.json" "$doc/copyright" "$stage/third-party-licenses" "$years" <<'EOF'
import { readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
const [meta, copyright, licenses, years] = process.argv.slice(2);
const dirs = new Set();
for (const input of Object.keys(JSON.parse(readFileSync(meta, "utf8")).inputs)) {
  const m = /^(.*node_modules\/(?:@[^/]+\/)?[^/]+)\//.exec(input);
  if (m) dirs.add(m[1]);
}
const packages = [...dirs].map((dir) => {
  const p = JSON.parse(readFileSync(join(dir, "package.json"), "utf8"));
  const file = readdirSync(dir).find((f) => /^licen[cs]e/i.test(f));
  return { name: p.name, version: p.version, license: String(p.license ?? "UNKNOWN"), text: file ? readFileSync(join(dir, file), "utf8") : undefined };
}).sort((a, b) => a.name.localeCompare(b.name));
const unknown = packages.filter((p) => p.license === "UNKNOWN");
if (unknown.length) throw new Error(`package: no license field in ${unknown.map((p) => p.name).join(", ")}`);
const ids = [...new Set(packages.map((p) => p.license))].filter((l) => l !== "Apache-2.0").sort();
const list = packages.map((p) => ` ${p.name} ${p.version} (${p.license})`).join("\n");
writeFileSync(copyright, `Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: vmrouted
Source: https://vmrouted.dev/
Comment: /usr/lib/vmrouted/vmrouted.mjs and /usr/lib/vmrouted/vmroutectl.mjs
 are esbuild bundles of vmrouted and of these npm packages (name, version,
 license); the license text each of them ships is in
 /usr/share/doc/vmrouted/third-party-licenses.gz.
 .
${list}

Files: *
Copyright: ${years} vmrouted contributors
License: Apache-2.0

Files: usr/lib/vmrouted/*
Copyright: ${years} vmrouted contributors, and the authors of the npm packages listed above
License: Apache-2.0 and ${ids.join(" and ")}

License: Apache-2.0
 On Debian systems, the complete text of the Apache License, Version 2.0
 can be found in "/usr/share/common-licenses/Apache-2.0".
${ids.map((id) => `
License: ${id}
 The text, with each package's copyright notice, is in
 /usr/share/doc/vmrouted/third-party-licenses.gz.
`).join("")}`);
writeFileSync(licenses, packages.map((p) => `${"=".repeat(78)}\n${p.name} ${p.version} (${p.license})\n${"=".repeat(78)}\n\n${p.text ?? `(no license file; package.json says ${p.license})\n`}\n`).join("\n"));
EOF
gzip -9n < "$stage/third-party-licenses" > "$doc/third-party-licenses.gz"
chmod 0644 "$doc"/*
install -d -m 0755 "$root/usr/share/lintian/overrides"
install -m 0644 packaging/deb/lintian-overrides "$root/usr/share/lintian/overrides/vmrouted"

install -m 0755 packaging/deb/postinst packaging/deb/prerm packaging/deb/postrm "$root/DEBIAN/"
echo /etc/vmrouted/config.yaml > "$root/DEBIAN/conffiles"
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
cat > "$root/DEBIAN/control" <<EOF
Package: vmrouted
Version: $debversion
Architecture: all
Maintainer: $MAINTAINER
Installed-Size: $size
Depends: nodejs (>= 20), iproute2, gobgpd, nftables, curl, dnsmasq-base
Recommends: libvirt-daemon, tcpdump
Section: net
Priority: optional
Homepage: https://vmrouted.dev/
Description: routed network interfaces for libvirt VMs, announced over BGP
 vmrouted gives virtual machines and container/task namespaces routed
 network interfaces, the way Calico does: no shared L2 segment. Every
 workload address is a /32 host route to its tap, the gateway address is
 the same on every host, and the local gobgpd announces the /32s to BGP
 route reflectors, so a VM can move between hosts and keep its address.
 .
 This package contains the daemon (vmrouted), its admin CLI (vmroutectl),
 the libvirt qemu hook, a systemd unit and a drop-in for gobgpd. The
 daemon does not start until /etc/vmrouted/config.yaml is filled in.
EOF
(cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | LC_ALL=C sort -z | xargs -0 md5sum) > "$root/DEBIAN/md5sums"
chmod 0644 "$root/DEBIAN/control" "$root/DEBIAN/conffiles" "$root/DEBIAN/md5sums"
find "$root" -newermt "@$SOURCE_DATE_EPOCH" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +

deb="$out/vmrouted_${debversion}_all.deb"
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
echo "$deb ($(du -k "$deb" | cut -f1) KiB, installed $size KiB)"
