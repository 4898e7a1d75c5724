#!/usr/bin/env bash
# Fetches libvirt 9.0's own test-suite domain XMLs (tests/qemuxml2argvdata and
# tests/qemuxml2xmloutdata, the *.xml files only) from Debian's `libvirt`
# source package into .cache/libvirt-corpus/ and prints that directory.
# apt runs with a private configuration under .cache/libvirt-source/ (deb-src
# copy of the machine's sources, lists, cache): nothing outside it changes.
# Idempotent: a complete corpus is reused, a downloaded tarball too.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/../.." && pwd)"
CORPUS="$REPO/.cache/libvirt-corpus"
APTDIR="$REPO/.cache/libvirt-source"
DIRS=(qemuxml2argvdata qemuxml2xmloutdata)

if [ -f "$CORPUS/.complete" ]; then echo "$CORPUS"; exit 0; fi

orig() { ls "$APTDIR"/src/libvirt_*.orig.tar.* 2>/dev/null | grep -v '\.asc$' | head -n1 || true; }

if [ -z "$(orig)" ]; then
  mkdir -p "$APTDIR/sources.list.d" "$APTDIR/lists/partial" "$APTDIR/cache/archives/partial" "$APTDIR/src"
  sed 's/^Types:.*/Types: deb-src/' /etc/apt/sources.list.d/debian.sources > "$APTDIR/sources.list.d/debian.sources"
  # The machine's apt.conf.d stays in effect (proxies, mirrors) except its
  # update hooks, which would act outside this directory.
  cat > "$APTDIR/apt.conf" <<CONF
#clear APT::Update::Pre-Invoke;
#clear APT::Update::Post-Invoke;
#clear APT::Update::Post-Invoke-Success;
CONF
  # No binary caches (pkgcache) at all; downloads as the caller, since apt's
  # _apt user may not be able to write under the repository.
  APT=(-q -c "$APTDIR/apt.conf"
    -o Dir::Etc::sourcelist=/dev/null -o Dir::Etc::sourceparts="$APTDIR/sources.list.d"
    -o Dir::State::Lists="$APTDIR/lists" -o Dir::Cache="$APTDIR/cache"
    -o Dir::Cache::pkgcache= -o Dir::Cache::srcpkgcache=
    -o APT::Sandbox::User="$(id -un)")
  echo "libvirt-corpus: fetching Debian's libvirt source package into $APTDIR" >&2
  apt-get "${APT[@]}" update >&2
  (cd "$APTDIR/src" && apt-get "${APT[@]}" source --download-only libvirt >&2)
fi
TARBALL="$(orig)"
[ -n "$TARBALL" ] || { echo "libvirt-corpus: no .orig tarball in $APTDIR/src" >&2; exit 1; }

rm -rf "$CORPUS.tmp" && mkdir -p "$CORPUS.tmp"
# Members are libvirt-<version>/tests/<dir>/...; keep <dir>/... (tar's '*' matches '/').
PATTERNS=()
for d in "${DIRS[@]}"; do PATTERNS+=("*/tests/$d/*.xml"); done
tar -xf "$TARBALL" -C "$CORPUS.tmp" --strip-components=2 --wildcards "${PATTERNS[@]}"
basename "$TARBALL" > "$CORPUS.tmp/.complete"
rm -rf "$CORPUS" && mv "$CORPUS.tmp" "$CORPUS"
echo "$CORPUS"
