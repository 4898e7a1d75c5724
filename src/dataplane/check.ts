import { formatIpv4 } from "../model/ipv4.js";
import { endpointIps, hostPrefix, linkLocalFromMac } from "../model/ipv6.js";
import { networkPrefix } from "../model/resolve.js";
import { hostSideMac } from "../model/mac.js";
import { gatewayDevice } from "../model/naming.js";
import type { Endpoint, Network } from "../model/types.js";
import { NETNS_INNER_IFNAME } from "../model/types.js";
import type { LearnedRoute } from "../model/types.js";
import type { ObservedIndex, ObservedLink, ObservedNetns, ObservedRoute, ObservedState } from "./observed.js";
import { endpointAlias, endpointSysctls, gatewayAlias, isOwnedAlias } from "./ownership.js";

// Desired vs observed for one gateway or one endpoint. The planner turns a
// check into operations; status turns the same check into conditions, so the
// two can never disagree about what "right" means.

export const KERNEL_PROTOCOL = 2;
/** The protocol of a route added without `proto`, which iproute2 leaves unsaid (in `-json` even with `-N`). */
export const RTPROT_BOOT = 3;
export const SCOPE_LINK = 253;

export interface DataplaneSettings {
  routeProtocol: number;
  /** Protocol of the routes learned from other hosts (BGP import). */
  learnedProtocol: number;
  /** Metric of endpoint and learned routes; an elevated route (live migration) has half of it. */
  routeMetric: number;
  netdevGroup: number;
  teardownGroup: number;
}

/** The metric of a route that must win over the normal ones (Calico uses 512 against 1024). */
export function routeMetricFor(elevated: boolean | undefined, settings: Pick<DataplaneSettings, "routeMetric">): number {
  return elevated ? Math.floor(settings.routeMetric / 2) : settings.routeMetric;
}

/** The MTU the kernel gives a new tap or veth: what a network without `mtu` wants (removing the setting puts devices back). */
export const DEFAULT_MTU = 1500;

/** The MTU of every device vmrouted owns for the network's endpoints (tap, veth host end, the task's eth0). */
export function deviceMtu(network: Network): number {
  return network.guest.mtu ?? DEFAULT_MTU;
}

const isOurs = (protocol: number, settings: DataplaneSettings) => protocol === settings.routeProtocol || protocol === settings.learnedProtocol;

export interface GatewayCheck {
  network: Network;
  device: string;
  alias: string;
  cidr: string;
  /** Something not ours holds the name. */
  conflict?: string;
  link?: ObservedLink;
  /** Our mark is on the device (false for a device adopted from the creation record). */
  aliasOk?: boolean;
  addressOk: boolean;
  /**
   * With a prefix6: `<prefix6 base>/<len>` (nodad, noprefixroute) on the device. No guest uses it (their
   * gateway is the tap's link-local); dnsmasq answers DHCPv6 and router solicitations arriving on the taps
   * for the prefix an address of this device lies in (bridge-interface). The base address is no
   * endpoint's (resolve.ts refuses it), and noprefixroute adds no connected route.
   */
  cidr6?: string;
  address6Ok: boolean;
  /** With a prefix6: accept_ra is 0 on the device (true when not read: a scoped pass leaves it to the resync). */
  acceptRaOk: boolean;
  /** Addresses on our device that are not the gateway's (IPv6 link-local ones are the kernel's, not counted). */
  extraAddresses: string[];
  /** A connected route for the subnet via the gateway device (must not exist). */
  connectedRoute?: ObservedRoute;
}

export function checkGateway(network: Network, observed: ObservedState, index: ObservedIndex): GatewayCheck {
  const device = gatewayDevice(network.name);
  const alias = gatewayAlias(network.name);
  const cidr = `${network.gateway}/${network.prefixLength}`;
  const link = observed.links.get(device);
  const cidr6 = network.prefix6;
  const base: GatewayCheck = { network, device, alias, cidr, ...(cidr6 ? { cidr6 } : {}), addressOk: false, address6Ok: cidr6 === undefined, acceptRaOk: true, extraAddresses: [] };
  if (!link) return base;
  if (!ownedAs(link, alias, observed)) return { ...base, conflict: `device ${device} exists and is not owned by vmrouted` };
  const all = index.addressesByDevice.get(device) ?? [];
  const addresses = all.filter((a) => !a.ip.startsWith("fe80:"));
  const prefix = networkPrefix(network);
  const subnet = `${formatIpv4(prefix.base)}/${prefix.length}`;
  return {
    ...base,
    link,
    aliasOk: link.alias === alias,
    addressOk: addresses.some((a) => `${a.ip}/${a.prefixLength}` === cidr && a.noprefixroute),
    address6Ok: cidr6 === undefined || addresses.some((a) => `${a.ip}/${a.prefixLength}` === cidr6 && a.noprefixroute),
    acceptRaOk: cidr6 === undefined || [undefined, "0"].includes(observed.sysctls.get(device)?.acceptRa6),
    extraAddresses: addresses.map((a) => `${a.ip}/${a.prefixLength}`).filter((c) => c !== cidr && c !== cidr6).sort(),
    connectedRoute: index.routesByDst.get(subnet)?.find((r) => r.device === device && r.protocol === KERNEL_PROTOCOL),
  };
}

export interface EndpointCheck {
  endpoint: Endpoint;
  alias: string;
  hostMac: string;
  /** The MTU its devices must have (both ends of a veth). */
  mtu: number;
  /** Waiting for something outside vmrouted (its namespace does not exist yet). */
  pending?: string;
  /** Something not ours is in the way; vmrouted will not touch it. */
  conflict?: string;
  link?: ObservedLink;
  /** The device exists but is of the wrong kind (e.g. a tun instead of a tap): recreate. */
  wrongKind: boolean;
  /** Our mark is on the device (false for a device adopted from the creation record). */
  aliasOk?: boolean;
  groupOk: boolean;
  macOk: boolean;
  mtuOk: boolean;
  up: boolean;
  carrier: boolean;
  badSysctls: Array<{ key: string; value: string }>;
  /** Every host route of the endpoint (its /32, and its /128 with an ip6) is ours, via its device, with its metric. */
  routeOk: boolean;
  /** A permanent neighbour entry per address. */
  neighbourOk: boolean;
  /** Endpoints with an ip6: the guest's IPv6 gateway, `linkLocal6`, is on the host-side device (true without an ip6). */
  linkLocalOk: boolean;
  /** The EUI-64 link-local address of the host-side MAC: the guest's IPv6 gateway, the same on every host. */
  linkLocal6?: string;
  /** netns endpoints: the inside (eth0 addresses, MAC, MTU, default routes) is right. */
  innerOk: boolean;
}

export function checkEndpoint(
  endpoint: Endpoint, network: Network, observed: ObservedState, index: ObservedIndex, settings: DataplaneSettings,
): EndpointCheck {
  const alias = endpointAlias(endpoint.id);
  const hostMac = hostSideMac(endpoint.mac);
  const mtu = deviceMtu(network);
  const link = observed.links.get(endpoint.device);
  const linkLocal6 = endpoint.ip6 !== undefined ? linkLocalFromMac(hostMac) : undefined;
  const check: EndpointCheck = {
    endpoint, alias, hostMac, mtu, wrongKind: false, groupOk: false, macOk: false, mtuOk: false, up: false, carrier: false,
    badSysctls: [], routeOk: false, neighbourOk: false, linkLocalOk: linkLocal6 === undefined, ...(linkLocal6 ? { linkLocal6 } : {}),
    innerOk: endpoint.kind !== "netns",
  };
  const ips = endpointIps(endpoint);
  for (const ip of ips) {
    const dst = hostPrefix(ip);
    // A learned route to a local workload's IP is ours too (the elevated path of a VM that just moved away).
    const foreignRoute = (index.routesByDst.get(dst) ?? []).find((r) => !isOurs(r.protocol, settings));
    if (foreignRoute)
      return { ...check, conflict: `a route to ${dst} with protocol ${foreignRoute.protocol} exists and is not owned by vmrouted` };
  }
  if (endpoint.netns !== undefined) {
    const ns = observed.netns.get(endpoint.netns);
    if (!ns?.exists) return { ...check, pending: `network namespace '${endpoint.netns}' does not exist` };
    if (ns.error) return { ...check, pending: `network namespace '${endpoint.netns}' cannot be read: ${ns.error}` };
    if (ns.inner && !isOwnedAlias(ns.inner.alias) && !isPeer(link, ns.inner))
      return { ...check, conflict: `namespace '${endpoint.netns}' already has an ${NETNS_INNER_IFNAME} not owned by vmrouted` };
  }
  if (!link) return check;
  if (!ownedAs(link, alias, observed)) {
    // Another of our endpoints may be leaving this name in the same plan; it is deleted first.
    return { ...check, conflict: `device ${endpoint.device} exists and is not owned by this endpoint (alias '${link.alias ?? ""}')` };
  }
  // A veth of ours whose other end is not the eth0 in the endpoint's namespace
  // (the endpoint moved to another namespace) is remade. An eth0 there of
  // another of our endpoints leaves in the same plan (that endpoint is gone or
  // moved: one endpoint per namespace), before anything is created.
  const inner = endpoint.netns !== undefined ? observed.netns.get(endpoint.netns)?.inner : undefined;
  const wrongKind = endpoint.kind === "netns"
    ? link.kind !== "veth" || link.peerInOtherNetns === false || !inner || !isPeer(link, inner)
    : link.kind !== "tun" || link.tunType !== "tap" || link.vnetHdr !== true;
  const sysctls = observed.sysctls.get(endpoint.device) ?? {};
  const ns = endpoint.netns !== undefined ? observed.netns.get(endpoint.netns) : undefined;
  const innerOk = endpoint.netns === undefined ? check.innerOk
    : !!inner && inner.alias === alias && inner.mac === endpoint.mac && inner.mtu === mtu && inner.up &&
      inner.addresses.includes(`${endpoint.ip}/${network.prefixLength}`) && ns?.defaultGateway === network.gateway &&
      (endpoint.ip6 === undefined || (inner.addresses.includes(hostPrefix(endpoint.ip6)) && ns?.defaultGateway6 === linkLocal6));
  const neighbours = index.neighboursByDevice.get(endpoint.device) ?? [];
  return {
    ...check,
    link,
    wrongKind,
    aliasOk: link.alias === alias,
    groupOk: link.group === settings.netdevGroup,
    macOk: link.mac === hostMac,
    mtuOk: link.mtu === mtu,
    up: link.up,
    carrier: link.carrier,
    badSysctls: endpointSysctls(endpoint.device, endpoint.ip6 !== undefined).filter((s) => sysctls[s.field] !== s.value)
      .map(({ key, value }) => ({ key, value })),
    // IPv6 routes have no scope (the kernel shows none).
    routeOk: ips.every((ip) => (index.routesByDst.get(hostPrefix(ip)) ?? []).some((r) => r.device === endpoint.device &&
      r.protocol === settings.routeProtocol && (ip.includes(":") || r.scope === SCOPE_LINK) && r.metric === routeMetricFor(endpoint.elevated, settings))),
    neighbourOk: ips.every((ip) => neighbours.some((n) => n.ip === ip && n.permanent && n.mac === endpoint.mac)),
    linkLocalOk: linkLocal6 === undefined ||
      (index.addressesByDevice.get(endpoint.device) ?? []).some((a) => a.ip === linkLocal6 && a.prefixLength === 64),
    innerOk,
  };
}

export interface LearnedCheck {
  route: LearnedRoute;
  metric: number;
  /** A route to the prefix that is not ours: left alone, reported, ours not installed. */
  conflict?: string;
  ok: boolean;
}

export function checkLearned(route: LearnedRoute, index: ObservedIndex, settings: DataplaneSettings): LearnedCheck {
  const metric = routeMetricFor(route.elevated, settings);
  const routes = index.routesByDst.get(route.prefix) ?? [];
  const foreign = routes.find((r) => !isOurs(r.protocol, settings));
  if (foreign) return { route, metric, ok: false, conflict: `a route to ${route.prefix} with protocol ${foreign.protocol} exists and is not owned by vmrouted` };
  return {
    route, metric,
    ok: routes.some((r) => r.protocol === settings.learnedProtocol && r.gateway === route.nextHop && r.metric === metric),
  };
}

/** The device carries this alias, or is one vmrouted created and has not marked yet (creations.ts). */
function ownedAs(link: ObservedLink, alias: string, observed: ObservedState): boolean {
  return link.alias === alias || (link.alias === undefined && observed.adoptable?.has(link.name) === true);
}

/**
 * The namespace's eth0 is the other end of our veth (by ifindex, both ways):
 * the only proof of ownership between creating the pair and naming the inside
 * (a crash there leaves an eth0 without our alias; `ip link add` cannot set one).
 */
function isPeer(link: ObservedLink | undefined, inner: NonNullable<ObservedNetns["inner"]>): boolean {
  return link?.peerIndex !== undefined && link.ifindex !== undefined && inner.ifindex === link.peerIndex && inner.peerIndex === link.ifindex;
}

/** Everything about the endpoint is in place in the kernel (for a device-only endpoint: the device). */
export function endpointComplete(c: EndpointCheck): boolean {
  const routed = c.endpoint.deviceOnly !== undefined || (c.routeOk && c.neighbourOk);
  return !c.pending && !c.conflict && !!c.link && !c.wrongKind && c.groupOk && c.macOk && c.mtuOk && c.up &&
    c.badSysctls.length === 0 && routed && c.linkLocalOk && c.innerOk;
}
