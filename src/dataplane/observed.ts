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
  /** The device's MTU (every link has one; a link built by hand in a test may leave it out). */
  mtu?: number;
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
  /** The route's priority (0 when the kernel shows none). */
  metric: number;
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
  /** net/ipv6/conf/<dev>/accept_ra and forwarding (absent where the kernel has no IPv6 for the device). */
  acceptRa6?: string;
  forwarding6?: string;
}

/** The inside of a named network namespace holding a netns endpoint. */
export interface ObservedNetns {
  exists: boolean;
  /** It exists but could not be read: its endpoint waits, nothing is concluded from it. */
  error?: string;
  /** The inner interface (eth0), if present. */
  inner?: { alias?: string; mac?: string; mtu?: number; up: boolean; addresses: string[]; ifindex?: number; peerIndex?: number };
  defaultGateway?: string;
  /** The IPv6 default route's gateway (read only for endpoints with an ip6). */
  defaultGateway6?: string;
}

export interface ObservedState {
  links: Map<string, ObservedLink>;
  addresses: ObservedAddress[];
  /** Main table routes, IPv4 and IPv6 (IPv6 host routes written with /128). */
  routes: ObservedRoute[];
  neighbours: ObservedNeighbour[];
  /** Per-interface sysctls, for the devices vmrouted owns. */
  sysctls: Map<string, InterfaceSysctls>;
  ipForward?: string;
  /** net/ipv6/conf/all/forwarding */
  ip6Forward?: string;
  netns: Map<string, ObservedNetns>;
  /** Devices vmrouted created but may not have marked yet (creations.ts): treated as its own. */
  adoptable?: Set<string>;
}

/**
 * The observation indexed for planning: one lookup per endpoint instead of a
 * scan of every route and neighbour (at 10,000 endpoints the scans dominated).
 */
export interface ObservedIndex {
  routesByDst: Map<string, ObservedRoute[]>;
  neighboursByDevice: Map<string, ObservedNeighbour[]>;
  addressesByDevice: Map<string, ObservedAddress[]>;
}

export function indexObserved(observed: ObservedState): ObservedIndex {
  const group = <T, K>(items: T[], key: (t: T) => K) => {
    const map = new Map<K, T[]>();
    for (const item of items) {
      const k = key(item);
      const list = map.get(k);
      if (list) list.push(item);
      else map.set(k, [item]);
    }
    return map;
  };
  return {
    routesByDst: group(observed.routes, (r) => r.dst),
    neighboursByDevice: group(observed.neighbours, (n) => n.device),
    addressesByDevice: group(observed.addresses, (a) => a.device),
  };
}

export function emptyObserved(): ObservedState {
  return { links: new Map(), addresses: [], routes: [], neighbours: [], sysctls: new Map(), netns: new Map() };
}
