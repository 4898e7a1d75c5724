// What the kernel has, reduced to the facts the planner compares. Built by
// observe.ts from `ip -json`; built by hand in unit tests.

export interface ObservedLink {
  name: string;
  /** linkinfo.info_kind: tun, veth, bridge, dummy, ... (undefined for plain devices). */
  kind?: string;
  /** For tun devices: "tap" or "tun", and whether vnet_hdr is on. */
  tunType?: string;
  vnetHdr?: boolean;
  group: number;
  alias?: string;
  mac?: string;
  up: boolean;
  carrier: boolean;
  /** veth only: the peer lives in another namespace. */
  peerInOtherNetns?: boolean;
  ifindex?: number;
  /** veth only: the peer's ifindex (in the peer's namespace). */
  peerIndex?: number;
  stats?: LinkStats;
}

export interface LinkStats {
  rxBytes: number; rxPackets: number; rxErrors: number; rxDropped: number;
  txBytes: number; txPackets: number; txErrors: number; txDropped: number;
}

export interface ObservedAddress {
  device: string;
  ip: string;
  prefixLength: number;
  noprefixroute: boolean;
}

export interface ObservedRoute {
  /** "a.b.c.d/len" (a host route is always written with /32). */
  dst: string;
  device?: string;
  protocol: number;
  scope: number;
  /** Route type: unicast unless stated. */
  type: string;
  gateway?: string;
}

export interface ObservedNeighbour {
  device: string;
  ip: string;
  mac?: string;
  permanent: boolean;
}

export interface InterfaceSysctls {
  proxyArp?: string;
  proxyDelay?: string;
  rpFilter?: string;
  forwarding?: string;
}

/** The inside of a named network namespace holding a netns endpoint. */
export interface ObservedNetns {
  exists: boolean;
  /** The inner interface (eth0), if present. */
  inner?: { alias?: string; mac?: string; up: boolean; addresses: string[]; ifindex?: number; peerIndex?: number };
  defaultGateway?: string;
}

export interface ObservedState {
  links: Map<string, ObservedLink>;
  addresses: ObservedAddress[];
  /** Main table IPv4 routes. */
  routes: ObservedRoute[];
  neighbours: ObservedNeighbour[];
  /** Per-interface sysctls, for the devices vmrouted owns. */
  sysctls: Map<string, InterfaceSysctls>;
  ipForward?: string;
  netns: Map<string, ObservedNetns>;
  /** Devices vmrouted created but may not have marked yet (creations.ts): treated as its own. */
  adoptable?: Set<string>;
}

export function emptyObserved(): ObservedState {
  return { links: new Map(), addresses: [], routes: [], neighbours: [], sysctls: new Map(), netns: new Map() };
}
