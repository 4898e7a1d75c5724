/** A routed network: a gateway address shared by every host, and the subnet workloads believe they are on. */
export interface Network {
  name: string;
  /** Gateway address, the same on every host. */
  gateway: string;
  prefixLength: number;
  /** Networks from the config file always stay; runtime ones come and go through the API. */
  source: "config" | "runtime";
  /** Traffic from the network to anything outside every vmrouted network is masqueraded. */
  natOutgoing: boolean;
  /** What a guest on this network is told, and its devices' MTU (dataplane/dhcp). */
  guest: GuestSettings;
  /** The network's IPv6 prefix ("fd31:16::/64", RFC 5952): its endpoints may have an `ip6` in it (DESIGN.md "IPv6"). */
  prefix6?: string;
}

/** A network's guest-facing settings: DHCP (dnsmasq), MTU, DNS. */
export interface GuestSettings {
  /** dnsmasq answers DHCP on the network's taps. */
  dhcp: boolean;
  /** Taps, veths (both ends) and DHCP option 26; undefined: left at the kernel's default and not announced. */
  mtu?: number;
  /** DHCP option 6 (none: not sent). */
  dns: string[];
  /** DHCP option 15. */
  domain?: string;
  leaseSeconds: number;
}

export const DEFAULT_LEASE_SECONDS = 3600;

export type EndpointKind = "tap" | "netns" | "vm";

/** A workload interface, fully resolved: every name and MAC chosen. */
export interface Endpoint {
  /** Stable key, recorded in the device's ifalias as `vmrouted:<id>`. */
  id: string;
  kind: EndpointKind;
  network: string;
  ip: string;
  /** The workload's IPv6 address (RFC 5952), inside its network's prefix6: a /128 beside the /32. */
  ip6?: string;
  /** The guest's MAC (inside the VM / namespace). */
  mac: string;
  /** Host-side device: the tap, or the host end of the veth pair. */
  device: string;
  /** netns endpoints: the named network namespace the inner end lives in. */
  netns?: string;
  /** netns endpoints: the namespace's resolver file is written from the network's DNS settings (dataplane/resolv-conf.ts). */
  resolvConf?: boolean;
  /** vm endpoints: the libvirt domain. */
  domain?: string;
  /**
   * Set when only the device must exist, not the route, neighbour entry or
   * announcement (a VM's tap between libvirt's prepare and started hooks, and
   * between stopped and release). The text says why, for status.
   */
  deviceOnly?: string;
  /**
   * The /32 and the announcement are preferred over every other host's (a
   * live-migrated VM's destination while it settles): lower route metric,
   * higher local-pref and the migration community.
   */
  elevated?: boolean;
  /** vm endpoints in a live migration: the phase on this host (libvirt/migration.ts). */
  migration?: "target" | "settling" | "source";
}

/** A best path another host announces, as the BGP importer saw it. */
export interface LearnedRoute {
  /** "a.b.c.d/32" or "<ipv6>/128" (RFC 5952): the next hop is of the same family. */
  prefix: string;
  nextHop: string;
  /** Carries the migration community: the fabric prefers it to a local /32 (a VM that just moved away). */
  elevated: boolean;
}

/**
 * An object whose kernel state is kept as found: an entry that no longer
 * validates (its network left the config, its domain's metadata is wrong).
 * Its devices, routes, neighbours and announcement are neither changed nor
 * removed; it is reported degraded with the reason until it is valid again
 * or removed. One bad object never stops the daemon (DESIGN.md, core loop).
 */
export interface HeldEndpoint {
  /** The endpoint id its devices carry in their ifalias (`vmrouted:<id>`). */
  id: string;
  kind: EndpointKind;
  network: string;
  ip: string;
  ip6?: string;
  /** The device it would have (when that can be told from the entry). */
  device?: string;
  domain?: string;
  reason: string;
}

export interface DesiredState {
  networks: Network[];
  endpoints: Endpoint[];
  /** Entries kept as found, with why (above); their networks' gateway devices stay too. */
  held?: HeldEndpoint[];
  /**
   * false while the set of libvirt domains is unknown (no usable domains cache
   * and libvirtd not answering): every vm-class object in the kernel (and its
   * announcement) is then kept as found, as learned routes are before the
   * importer knows the fabric.
   */
  domainsKnown?: boolean;
  /** Kernel routes for other hosts' workloads (`<prefix> via <next hop>`), already filtered (state/resolve.ts). */
  learned: LearnedRoute[];
  /** false until the importer has given a complete set: learned routes in the kernel are then left as they are. */
  learnedKnown?: boolean;
}

export function endpointId(kind: EndpointKind, ip: string): string {
  return `${kind}:${ip}`;
}

export const NETNS_INNER_IFNAME = "eth0";
