import { formatIpv4 } from "../model/ipv4.js";
import { networkPrefix } from "../model/resolve.js";
import { hostSideMac } from "../model/mac.js";
import { gatewayDevice } from "../model/naming.js";
import type { Endpoint, Network } from "../model/types.js";
import { NETNS_INNER_IFNAME } from "../model/types.js";
import type { ObservedLink, ObservedRoute, ObservedState } from "./observed.js";
import { endpointAlias, endpointSysctls, gatewayAlias } from "./ownership.js";

// Desired vs observed for one gateway or one endpoint. The planner turns a
// check into operations; status turns the same check into conditions, so the
// two can never disagree about what "right" means.

export const KERNEL_PROTOCOL = 2;
export const SCOPE_LINK = 253;

export interface DataplaneSettings {
  routeProtocol: number;
  netdevGroup: number;
  teardownGroup: number;
}

export interface GatewayCheck {
  network: Network;
  device: string;
  alias: string;
  cidr: string;
  /** Something not ours holds the name. */
  conflict?: string;
  link?: ObservedLink;
  addressOk: boolean;
  /** Addresses on our device that are not the gateway's. */
  extraAddresses: string[];
  /** A connected route for the subnet via the gateway device (must not exist). */
  connectedRoute?: ObservedRoute;
}

export function checkGateway(network: Network, observed: ObservedState): GatewayCheck {
  const device = gatewayDevice(network.name);
  const alias = gatewayAlias(network.name);
  const cidr = `${network.gateway}/${network.prefixLength}`;
  const link = observed.links.get(device);
  const base: GatewayCheck = { network, device, alias, cidr, addressOk: false, extraAddresses: [] };
  if (!link) return base;
  if (link.alias !== alias) return { ...base, conflict: `device ${device} exists and is not owned by vmrouted` };
  const addresses = observed.addresses.filter((a) => a.device === device);
  const prefix = networkPrefix(network);
  const subnet = `${formatIpv4(prefix.base)}/${prefix.length}`;
  return {
    ...base,
    link,
    addressOk: addresses.some((a) => `${a.ip}/${a.prefixLength}` === cidr && a.noprefixroute),
    extraAddresses: addresses.map((a) => `${a.ip}/${a.prefixLength}`).filter((c) => c !== cidr),
    connectedRoute: observed.routes.find((r) => r.device === device && r.dst === subnet && r.protocol === KERNEL_PROTOCOL),
  };
}

export interface EndpointCheck {
  endpoint: Endpoint;
  alias: string;
  hostMac: string;
  /** Waiting for something outside vmrouted (its namespace does not exist yet). */
  pending?: string;
  /** Something not ours is in the way; vmrouted will not touch it. */
  conflict?: string;
  link?: ObservedLink;
  /** The device exists but is of the wrong kind (e.g. a tun instead of a tap): recreate. */
  wrongKind: boolean;
  groupOk: boolean;
  macOk: boolean;
  up: boolean;
  carrier: boolean;
  badSysctls: Array<{ key: string; value: string }>;
  routeOk: boolean;
  neighbourOk: boolean;
  /** netns endpoints: the inside (eth0 address, MAC, default route) is right. */
  innerOk: boolean;
}

export function checkEndpoint(endpoint: Endpoint, network: Network, observed: ObservedState, settings: DataplaneSettings): EndpointCheck {
  const alias = endpointAlias(endpoint.id);
  const hostMac = hostSideMac(endpoint.mac);
  const link = observed.links.get(endpoint.device);
  const check: EndpointCheck = {
    endpoint, alias, hostMac, wrongKind: false, groupOk: false, macOk: false, up: false, carrier: false,
    badSysctls: [], routeOk: false, neighbourOk: false, innerOk: endpoint.kind !== "netns",
  };
  const dst = `${endpoint.ip}/32`;
  const foreignRoute = observed.routes.find((r) => r.dst === dst && r.protocol !== settings.routeProtocol);
  if (foreignRoute)
    return { ...check, conflict: `a route to ${dst} with protocol ${foreignRoute.protocol} exists and is not owned by vmrouted` };
  if (endpoint.netns !== undefined) {
    const ns = observed.netns.get(endpoint.netns);
    if (!ns?.exists) return { ...check, pending: `network namespace '${endpoint.netns}' does not exist` };
    if (!link && ns.inner && ns.inner.alias !== alias)
      return { ...check, conflict: `namespace '${endpoint.netns}' already has an ${NETNS_INNER_IFNAME} not owned by vmrouted` };
  }
  if (!link) return check;
  if (link.alias !== alias) {
    // Another of our endpoints may be leaving this name in the same plan; it is deleted first.
    return { ...check, conflict: `device ${endpoint.device} exists and is not owned by this endpoint (alias '${link.alias ?? ""}')` };
  }
  const wrongKind = endpoint.kind === "netns"
    ? link.kind !== "veth" || link.peerInOtherNetns === false
    : link.kind !== "tun" || link.tunType !== "tap" || link.vnetHdr !== true;
  const sysctls = observed.sysctls.get(endpoint.device) ?? {};
  let innerOk = check.innerOk;
  if (endpoint.netns !== undefined) {
    const ns = observed.netns.get(endpoint.netns);
    const inner = ns?.inner;
    innerOk = !!inner && inner.alias === alias && inner.mac === endpoint.mac && inner.up &&
      inner.addresses.includes(`${endpoint.ip}/${network.prefixLength}`) && ns?.defaultGateway === network.gateway;
  }
  return {
    ...check,
    link,
    wrongKind,
    groupOk: link.group === settings.netdevGroup,
    macOk: link.mac === hostMac,
    up: link.up,
    carrier: link.carrier,
    badSysctls: endpointSysctls(endpoint.device).filter((s) => sysctls[s.field] !== s.value).map(({ key, value }) => ({ key, value })),
    routeOk: observed.routes.some((r) => r.dst === dst && r.device === endpoint.device && r.protocol === settings.routeProtocol && r.scope === SCOPE_LINK),
    neighbourOk: observed.neighbours.some((n) => n.device === endpoint.device && n.ip === endpoint.ip && n.permanent && n.mac === endpoint.mac),
    innerOk,
  };
}

/** Everything about the endpoint is in place in the kernel (for a device-only endpoint: the device). */
export function endpointComplete(c: EndpointCheck): boolean {
  const routed = c.endpoint.deviceOnly !== undefined || (c.routeOk && c.neighbourOk);
  return !c.pending && !c.conflict && !!c.link && !c.wrongKind && c.groupOk && c.macOk && c.up &&
    c.badSysctls.length === 0 && routed && c.innerOk;
}
