import { endpointIps, hostPrefix } from "../model/ipv6.js";
import { endpointComplete, type EndpointCheck, type GatewayCheck, type LearnedCheck } from "../dataplane/check.js";
import type { HeldCheck } from "../dataplane/plan.js";
import type { LinkStats } from "../dataplane/observed.js";
import type { EndpointKind } from "../model/types.js";

// The reported state (`vmroutectl status`): conditions in words, derived from
// the same checks the planner used, plus what failed while applying.

export type EndpointState = "ready" | "pending" | "degraded";

export interface EndpointConditions {
  device: boolean;
  up: boolean;
  carrier: boolean;
  route: boolean;
  neighbour: boolean;
  sysctls: boolean;
  /** netns endpoints only: eth0 inside the namespace is configured. */
  inner?: boolean;
  /** Endpoints with an ip6: the guest's IPv6 gateway (the host side's EUI-64 link-local) is on the device. */
  gateway6?: boolean;
  /** Set by the BGP announcer when there is one. */
  announced?: boolean;
}

export interface EndpointStatus {
  id: string;
  kind: EndpointKind;
  network: string;
  ip: string;
  ip6?: string;
  mac: string;
  device: string;
  netns?: string;
  domain?: string;
  /** Preferred over every other host's route and path (a live-migrated VM settling here). */
  elevated?: boolean;
  /** vm endpoints: the live-migration phase on this host (target, settling, source), or normal. */
  migration?: string;
  state: EndpointState;
  reason: string;
  conditions: EndpointConditions;
  counters: LinkStats;
  /** Kept as found (an entry that no longer validates, or a VM while the domains are unknown): nothing is changed. */
  held?: boolean;
  /** Another host announces this IP too, for another workload: its next hop (not a live migration). */
  duplicate?: string;
  /** dnsmasq answers this endpoint's guest (a tap on a DHCP network); lastAck: the last lease it handed out here. */
  dhcp?: { served: boolean; lastAck?: string };
}

export interface NetworkStatus {
  name: string;
  device: string;
  gateway: string;
  /** The network's IPv6 prefix (its endpoints' ip6 lie in it). */
  prefix6?: string;
  kind: string;
  source: "config" | "runtime";
  /** Traffic from it to outside every vmrouted network is masqueraded. */
  natOutgoing: boolean;
  state: EndpointState;
  reason: string;
}

const ZERO: LinkStats = { rxBytes: 0, rxPackets: 0, rxErrors: 0, rxDropped: 0, txBytes: 0, txPackets: 0, txErrors: 0, txDropped: 0 };

export function networkStatus(g: GatewayCheck, plannedKind: string, failures: string[] | undefined): NetworkStatus {
  const base = {
    name: g.network.name, device: g.device, gateway: g.cidr, ...(g.network.prefix6 !== undefined ? { prefix6: g.network.prefix6 } : {}),
    kind: g.link?.kind ?? plannedKind, source: g.network.source,
    natOutgoing: g.network.natOutgoing,
  };
  const problem = g.conflict ?? (!g.link ? `device ${g.device} missing` : !g.link.up ? `device ${g.device} is down`
    : !g.addressOk ? `gateway address ${g.cidr} missing` : !g.address6Ok ? `address ${g.cidr6 ?? ""} missing` : g.connectedRoute ? `connected route ${g.connectedRoute.dst} present` : undefined);
  if (!problem) return { ...base, state: "ready", reason: "" };
  return { ...base, state: "degraded", reason: withFailures(problem, failures) };
}

function withFailures(problem: string, failures: string[] | undefined): string {
  return failures?.length ? `${problem} (last error: ${failures[failures.length - 1]})` : problem;
}

export function endpointStatus(c: EndpointCheck, failures: string[] | undefined): EndpointStatus {
  const e = c.endpoint;
  const conditions: EndpointConditions = {
    device: !!c.link && !c.wrongKind, up: c.up, carrier: c.carrier, route: c.routeOk, neighbour: c.neighbourOk,
    sysctls: !!c.link && c.badSysctls.length === 0,
    ...(e.kind === "netns" ? { inner: c.innerOk } : {}),
    ...(e.ip6 !== undefined ? { gateway6: c.linkLocalOk } : {}),
  };
  const base = {
    id: e.id, kind: e.kind, network: e.network, ip: e.ip, ...(e.ip6 !== undefined ? { ip6: e.ip6 } : {}), mac: e.mac, device: e.device,
    ...(e.netns !== undefined ? { netns: e.netns } : {}), ...(e.domain !== undefined ? { domain: e.domain } : {}),
    ...(e.elevated ? { elevated: true } : {}), ...(e.kind === "vm" ? { migration: e.migration ?? "normal" } : {}),
    conditions, counters: c.link?.stats ?? ZERO,
  };
  if (c.pending) return { ...base, state: "pending", reason: c.pending };
  if (c.conflict) return { ...base, state: "degraded", reason: c.conflict };
  if (endpointComplete(c)) return e.deviceOnly !== undefined ? { ...base, state: "pending", reason: e.deviceOnly } : { ...base, state: "ready", reason: "" };
  const problem = !c.link ? `device ${e.device} missing`
    : c.wrongKind ? `device ${e.device} is not a ${e.kind === "netns" ? "veth" : "tap with vnet_hdr"}`
    : !c.up ? `device ${e.device} is down`
    : !c.routeOk ? `route ${endpointIps(e).map(hostPrefix).join(" or ")} missing`
    : !c.neighbourOk ? `neighbour entry ${endpointIps(e).join(" or ")} → ${e.mac} missing`
    : !c.linkLocalOk ? `IPv6 gateway ${c.linkLocal6 ?? ""}/64 missing on ${e.device}`
    : c.badSysctls.length ? `sysctl ${c.badSysctls[0]!.key} is not ${c.badSysctls[0]!.value}`
    : !c.mtuOk ? `device ${e.device} has MTU ${c.link.mtu ?? "unknown"}, not ${c.mtu}`
    : !c.innerOk ? `${e.netns ? `inside namespace '${e.netns}': ` : ""}eth0 not configured`
    : `device ${e.device} not in group or wrong MAC`;
  return { ...base, state: "degraded", reason: withFailures(problem, failures) };
}

/** An object kept as found: degraded with its reason; its conditions say what the kernel still has. */
export function heldStatus(h: HeldCheck): EndpointStatus {
  const e = h.held;
  const link = h.link;
  return {
    id: e.id, kind: e.kind, network: e.network, ip: e.ip, ...(e.ip6 !== undefined ? { ip6: e.ip6 } : {}), mac: "", device: e.device ?? "", ...(e.domain !== undefined ? { domain: e.domain } : {}),
    state: "degraded", reason: e.reason, held: true,
    conditions: { device: !!link, up: !!link?.up, carrier: !!link?.carrier, route: h.routed, neighbour: false, sysctls: false },
    counters: link?.stats ?? ZERO,
  };
}

/** A route learned from another host, as installed (or why not). */
export interface LearnedStatus {
  prefix: string;
  nextHop: string;
  metric: number;
  elevated: boolean;
  state: "installed" | "pending" | "conflict";
  reason: string;
}

export function learnedStatus(c: LearnedCheck, failures: string[] | undefined): LearnedStatus {
  const base = { prefix: c.route.prefix, nextHop: c.route.nextHop, metric: c.metric, elevated: c.route.elevated };
  if (c.conflict) return { ...base, state: "conflict", reason: c.conflict };
  if (c.ok) return { ...base, state: "installed", reason: "" };
  return { ...base, state: "pending", reason: withFailures(`route ${c.route.prefix} via ${c.route.nextHop} missing`, failures) };
}
