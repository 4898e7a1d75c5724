// Where the files that are not code are. In a checkout (tsc's dist/, which
// every test runs) each module finds proto/ and templates/ relative to itself,
// as it always has. The Debian package bundles each executable into one file
// with esbuild, and scripts/package.sh defines VMROUTED_PACKAGE_LAYOUT there
// (esbuild `define`) with the installed paths; tsc leaves it undefined.

declare const VMROUTED_PACKAGE_LAYOUT: PackageLayout | undefined;

export interface PackageLayout {
  /** proto/gobgp.proto, e.g. /usr/share/vmrouted/proto/gobgp.proto */
  proto: string;
  /** templates/qemu-hook.sh, e.g. /usr/share/vmrouted/templates/qemu-hook.sh */
  hookTemplate: string;
  /** The CLI that the libvirt hook shim runs when the daemon is down, e.g. /usr/lib/vmrouted/vmroutectl.mjs */
  cli: string;
}

/** The installed layout in the package's bundles; undefined in a checkout. */
export const packaged: PackageLayout | undefined =
  typeof VMROUTED_PACKAGE_LAYOUT === "undefined" ? undefined : VMROUTED_PACKAGE_LAYOUT;
