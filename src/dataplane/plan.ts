import type { DesiredState, Endpoint, HeldEndpoint } from "../model/types.js";
import { prefixContains } from "../model/ipv4.js";
import { endpointIps, hostPrefix } from "../model/ipv6.js";
import { networkPrefix } from "../model/resolve.js";
import { NETNS_INNER_IFNAME } from "../model/types.js";
import {
  checkEndpoint, checkGateway, checkLearned, routeMetricFor,
  type DataplaneSettings, type EndpointCheck, type GatewayCheck, type LearnedCheck,
} from "./check.js";
import { indexObserved, type ObservedIndex, type ObservedLink, type ObservedState } from "./observed.js";
import type { Operation } from "./operations.js";
import { gatewayDevice } from "../model/naming.js";
import { ALIAS_PREFIX, endpointAlias, endpointSysctls, IP6_FORWARD_KEY, IP_FORWARD_KEY, isGatewayAlias, isOwnedAlias } from "./ownership.js";

// Pure: (desired, observed) → operations, in the order they must run. Planning
// against the state just produced by applying a plan yields no operations.
//
// The observation may be partial (a scoped pass reads only the devices and
// destinations it was told changed): the planner removes only what it sees,
// so it never touches an object of ours it was not shown.

export interface PlanSettings extends DataplaneSettings {
  /** Device kind for new gateway devices: dummy, or bridge where the kernel has no dummy driver. */
  gatewayKind: "dummy" | "bridge";
}

export interface PlanOptions {
  /**
   * The observation lists every link, so the teardown group is known to hold
   * nothing foreign: leaving devices may go in one `ip link del group`.
   * A partial observation deletes them one by one.
   */
  completeLinks?: boolean;
  /** Plan only these networks' gateways (a scoped pass); all of them without it. */
  gateways?: ReadonlySet<string>;
}

export interface Plan {
  operations: Operation[];
  gateways: GatewayCheck[];
  endpoints: EndpointCheck[];
  learned: LearnedCheck[];
  /** Objects kept as found (held entries, and vm-class devices while the domains are unknown), as seen. */
  held: HeldCheck[];
}

/** A held object as the kernel has it (status reports it degraded, the announcer keeps its path as it is). */
export interface HeldCheck {
  held: HeldEndpoint;
  /** Its device, when present and marked as this entry's. */
  link?: ObservedLink;
  /** Its /32 (our protocol) via that device is in the kernel. */
  routed: boolean;
}

const VM_ALIAS_PREFIX = `${ALIAS_PREFIX}vm:`;

const compare = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0);
const byId = (a: Endpoint, b: Endpoint) => compare(a.id, b.id);

/**
 * Operation order: devices leave first (their names may be reused), then are
 * created and set up, addresses, routes and neighbours added, then stale
 * routes, neighbours and addresses removed (after their replacements: a route
 * whose metric changes never has a gap), then sysctls and namespace insides.
 */
interface Buckets {
  leave: Operation[]; creates: Operation[]; sets: Operation[]; addresses: Operation[];
  routes: Operation[]; stale: Operation[]; after: Operation[];
}

export function plan(desired: DesiredState, observed: ObservedState, settings: PlanSettings, options: PlanOptions = {}): Plan {
  const out: Buckets = { leave: [], creates: [], sets: [], addresses: [], routes: [], stale: [], after: [] };
  const index = indexObserved(observed);

  const networks = [...desired.networks].sort((a, b) => compare(a.name, b.name));
  const gateways = networks.filter((n) => !options.gateways || options.gateways.has(n.name)).map((n) => checkGateway(n, observed, index));
  for (const g of gateways) planGateway(g, settings, out);

  if (networks.length > 0 && observed.ipForward !== "1")
    out.after.push({ subject: "host", op: "sysctl.set", key: IP_FORWARD_KEY, value: "1" });
  if (networks.some((n) => n.prefix6 !== undefined) && observed.ip6Forward !== "1")
    out.after.push({ subject: "host", op: "sysctl.set", key: IP6_FORWARD_KEY, value: "1" });

  const networkByName = new Map(networks.map((n) => [n.name, n]));
  const endpoints: EndpointCheck[] = [];
  for (const e of [...desired.endpoints].sort(byId)) {
    const network = networkByName.get(e.network);
    if (!network) continue; // resolve.ts guarantees it; a missing network would be a bug upstream
    const c = checkEndpoint(e, network, observed, index, settings);
    endpoints.push(c);
    planEndpoint(c, network.gateway, network.prefixLength, settings, out);
  }

  const learned = [...desired.learned].sort((a, b) => compare(a.prefix, b.prefix)).map((r) => checkLearned(r, index, settings));
  for (const c of learned)
    if (!c.ok && !c.conflict)
      out.routes.push({ subject: `learned:${c.route.prefix}`, op: "route.replace", dst: c.route.prefix, via: c.route.nextHop, protocol: settings.learnedProtocol, metric: c.metric });

  const held = heldObjects(desired, observed, index, settings);
  planRemovals(desired, observed, settings, options, out, keptDevices(held));
  const operations = [...out.leave, ...out.creates, ...out.sets, ...out.addresses, ...out.routes, ...out.stale, ...out.after];
  return { operations, gateways, endpoints, learned, held };
}

function planGateway(g: GatewayCheck, settings: PlanSettings, out: Buckets): void {
  const subject = `gateway:${g.network.name}`;
  if (g.conflict) return;
  if (!g.link) {
    out.creates.push({ subject, op: "gateway.create", device: g.device, kind: settings.gatewayKind });
    out.sets.push({ subject, op: "link.set", device: g.device, alias: g.alias, up: true });
  } else if (!g.link.up || !g.aliasOk) {
    out.sets.push({ subject, op: "link.set", device: g.device, ...(g.aliasOk ? {} : { alias: g.alias }), up: true });
  }
  for (const cidr of g.extraAddresses) out.stale.push({ subject, op: "address.delete", device: g.device, cidr });
  if (!g.addressOk) out.addresses.push({ subject, op: "address.replace", device: g.device, cidr: g.cidr });
  if (!g.address6Ok && g.cidr6 !== undefined) out.addresses.push({ subject, op: "address.replace", device: g.device, cidr: g.cidr6 });
  // dnsmasq's router advertisements loop back onto the gateway device: it must not take them (their MTU, a default route).
  if (!g.acceptRaOk) out.after.push({ subject, op: "sysctl.set", key: `net/ipv6/conf/${g.device}/accept_ra`, value: "0" });
  if (g.connectedRoute)
    out.stale.push({ subject, op: "route.delete", dst: g.connectedRoute.dst, device: g.device, protocol: g.connectedRoute.protocol });
}

function planEndpoint(c: EndpointCheck, gateway: string, prefixLength: number, settings: PlanSettings, out: Buckets): void {
  const e = c.endpoint;
  const subject = e.id;
  if (c.pending || c.conflict) return;
  const fresh = !c.link || c.wrongKind;
  if (c.link && c.wrongKind) out.leave.push({ subject, op: "link.delete", device: e.device });
  if (fresh) {
    out.creates.push(e.kind === "netns"
      ? { subject, op: "veth.create", device: e.device, netns: e.netns!, inner: NETNS_INNER_IFNAME }
      : { subject, op: "tap.create", device: e.device });
    // `tuntap add` takes no MTU: it is set with the rest, in the same batch (the veth's host end the same way, one path for both).
    out.sets.push({
      subject, op: "link.set", device: e.device, group: settings.netdevGroup, alias: c.alias, mac: c.hostMac, mtu: c.mtu,
      ...(e.ip6 !== undefined ? { addrGenNone: true } : {}), up: true,
    });
  } else if (!c.groupOk || !c.macOk || !c.mtuOk || !c.up || !c.aliasOk) {
    out.sets.push({
      subject, op: "link.set", device: e.device,
      ...(c.groupOk ? {} : { group: settings.netdevGroup }),
      ...(c.aliasOk ? {} : { alias: c.alias }),
      ...(c.macOk ? {} : { mac: c.hostMac }),
      ...(c.mtuOk ? {} : { mtu: c.mtu }),
      ...(c.up ? {} : { up: true }),
    });
  }
  // A fresh device starts with the kernel's defaults: set every sysctl.
  const sysctls = fresh ? endpointSysctls(e.device, e.ip6 !== undefined) : c.badSysctls;
  for (const s of sysctls) out.after.push({ subject, op: "sysctl.set", key: s.key, value: s.value });
  // The guest's IPv6 gateway is there from the start, device-only or not (a guest may ask before its route exists).
  if (c.linkLocal6 !== undefined && (fresh || !c.linkLocalOk))
    out.addresses.push({ subject, op: "address.replace", device: e.device, cidr: `${c.linkLocal6}/64`, linkLocal: true });
  if (e.deviceOnly !== undefined) return;
  for (const ip of endpointIps(e)) {
    if (fresh || !c.routeOk)
      out.routes.push({
        subject, op: "route.replace", dst: hostPrefix(ip), device: e.device, protocol: settings.routeProtocol, metric: routeMetricFor(e.elevated, settings),
      });
    if (fresh || !c.neighbourOk) out.routes.push({ subject, op: "neighbour.replace", device: e.device, ip, mac: e.mac });
  }
  if (e.kind === "netns" && (fresh || !c.innerOk))
    out.after.push({
      subject, op: "netns.configure", netns: e.netns!, device: NETNS_INNER_IFNAME, alias: c.alias, mac: e.mac, mtu: c.mtu,
      cidr: `${e.ip}/${prefixLength}`, gateway,
      ...(e.ip6 !== undefined && c.linkLocal6 !== undefined ? { cidr6: hostPrefix(e.ip6), gateway6: c.linkLocal6 } : {}),
    });
}

/**
 * What is kept as found (DesiredState.held, domainsKnown): each held entry as
 * the kernel has it, and, while the set of libvirt domains is unknown, every
 * vm-class device no domain explains. Nothing of theirs is removed or changed.
 */
function heldObjects(desired: DesiredState, observed: ObservedState, index: ObservedIndex, settings: PlanSettings): HeldCheck[] {
  const wanted = new Set(desired.endpoints.map((e) => e.device));
  const routed = (ip: string, device: string | undefined) =>
    !!device && (index.routesByDst.get(`${ip}/32`) ?? []).some((r) => r.device === device && r.protocol === settings.routeProtocol);
  const result: HeldCheck[] = [];
  const seen = new Set<string>();
  for (const h of [...(desired.held ?? [])].sort((a, b) => compare(a.id, b.id))) {
    const link = h.device !== undefined && !wanted.has(h.device) ? observed.links.get(h.device) : undefined;
    // A device of that name that is not ours (alias) is not this entry's to keep.
    const ours = link && link.alias === endpointAlias(h.id) ? link : undefined;
    seen.add(h.id);
    result.push({ held: h, ...(ours ? { link: ours } : {}), routed: routed(h.ip, ours?.name) });
  }
  if (desired.domainsKnown === false)
    for (const link of [...observed.links.values()].sort((a, b) => compare(a.name, b.name))) {
      if (!link.alias?.startsWith(VM_ALIAS_PREFIX) || wanted.has(link.name)) continue;
      const id = link.alias.slice(ALIAS_PREFIX.length);
      if (seen.has(id)) continue;
      const ip = id.slice("vm:".length);
      const network = desired.networks.find((n) => prefixContains(networkPrefix(n), ip))?.name ?? "";
      result.push({ held: { id, kind: "vm", network, ip, device: link.name, reason: DOMAINS_UNKNOWN }, link, routed: routed(ip, link.name) });
    }
  return result;
}

export const DOMAINS_UNKNOWN = "kept as found: the set of libvirt domains is unknown (no usable domains cache and libvirt has not answered yet)";

/** The devices held objects keep: their own, and their networks' gateway devices (the guests' gateway stays). */
function keptDevices(held: HeldCheck[]): Set<string> {
  const kept = new Set<string>();
  for (const h of held) {
    if (h.link) kept.add(h.link.name);
    if (h.held.network) kept.add(gatewayDevice(h.held.network));
  }
  return kept;
}

/** Owned objects that are no longer desired. Devices leave in one bulk group delete when that is safe. */
function planRemovals(
  desired: DesiredState, observed: ObservedState, settings: PlanSettings, options: PlanOptions, out: Buckets, kept: ReadonlySet<string>,
): void {
  const wantedEndpointDevices = new Map(desired.endpoints.map((e) => [e.device, e]));
  const wantedGatewayDevices = new Set(desired.networks.map((n) => gatewayDevice(n.name)));
  const leaving: string[] = [];
  // Sorted throughout: the kernel lists things in no promised order, and the
  // same desired and observed state must always give the same operations.
  for (const link of [...observed.links.values()].sort((a, b) => compare(a.name, b.name))) {
    if (kept.has(link.name) && !wantedEndpointDevices.has(link.name)) continue;
    if (!isOwnedAlias(link.alias)) {
      // Created by us but never marked (a crash between the two): ours to remove when not wanted.
      if (observed.adoptable?.has(link.name) && !wantedEndpointDevices.has(link.name) && !wantedGatewayDevices.has(link.name)) leaving.push(link.name);
      continue;
    }
    if (isGatewayAlias(link.alias)) {
      if (!wantedGatewayDevices.has(link.name))
        out.leave.push({ subject: link.alias.slice(ALIAS_PREFIX.length), op: "link.delete", device: link.name });
      continue;
    }
    const wanted = wantedEndpointDevices.get(link.name);
    if (!wanted || endpointAlias(wanted.id) !== link.alias) leaving.push(link.name);
    // A wanted device left in the teardown group (by a crash between the two
    // steps of a bulk delete) must leave that group before the group goes.
    else if (link.group === settings.teardownGroup)
      out.leave.push({ subject: wanted.id, op: "link.set", device: link.name, group: settings.netdevGroup });
  }
  const leavingSet = new Set(leaving);
  // Routes of ours that no desired endpoint or learned route explains (and whose device is not leaving anyway).
  const wantedRoutes = new Set([
    ...desired.endpoints.filter((e) => e.deviceOnly === undefined)
      .flatMap((e) => endpointIps(e).map((ip) => `${settings.routeProtocol} ${hostPrefix(ip)} dev ${e.device} ${routeMetricFor(e.elevated, settings)}`)),
    ...desired.learned.map((r) => `${settings.learnedProtocol} ${r.prefix} via ${r.nextHop} ${routeMetricFor(r.elevated, settings)}`),
  ]);
  const routeKey = (r: ObservedState["routes"][number]) =>
    `${r.protocol} ${r.dst} ${r.protocol === settings.learnedProtocol ? `via ${r.gateway}` : `dev ${r.device}`} ${r.metric}`;
  // A replacement with the same destination and metric overwrites the old route in place (the kernel's key).
  const replaced = new Set(out.routes.flatMap((op) => (op.op === "route.replace" ? [`${op.dst} ${op.metric}`] : [])));
  // Each key built once, and only the stale routes sorted (50,000 learned routes are mostly wanted).
  const stale: Array<{ key: string; r: ObservedState["routes"][number] }> = [];
  for (const r of observed.routes) {
    if (r.protocol !== settings.routeProtocol && r.protocol !== settings.learnedProtocol) continue;
    if (r.device && (leavingSet.has(r.device) || (kept.has(r.device) && !wantedEndpointDevices.has(r.device)))) continue;
    // Until the importer has a complete set, learned routes stay as they are (a restart flushes nothing).
    if (r.protocol === settings.learnedProtocol && desired.learnedKnown === false) continue;
    const key = routeKey(r);
    if (wantedRoutes.has(key) || replaced.has(`${r.dst} ${r.metric}`)) continue;
    stale.push({ key, r });
  }
  for (const { r } of stale.sort((a, b) => compare(a.key, b.key))) {
    out.stale.push({
      subject: r.protocol === settings.learnedProtocol ? `learned:${r.dst}` : "host", op: "route.delete", dst: r.dst,
      ...(r.gateway ? { via: r.gateway } : {}), ...(r.device ? { device: r.device } : {}), protocol: r.protocol, metric: r.metric,
    });
  }
  // Stale permanent neighbour entries on our endpoint devices.
  for (const n of [...observed.neighbours].sort((a, b) => compare(a.device, b.device) || compare(a.ip, b.ip))) {
    const wanted = wantedEndpointDevices.get(n.device);
    if (!wanted || !n.permanent || leavingSet.has(n.device)) continue;
    if (!isOwnedAlias(observed.links.get(n.device)?.alias)) continue;
    if ((n.ip !== wanted.ip && n.ip !== wanted.ip6) || wanted.deviceOnly !== undefined) out.stale.push({ subject: wanted.id, op: "neighbour.delete", device: n.device, ip: n.ip });
  }
  if (leaving.length === 0) return;
  // `ip link del group N` unregisters all devices with one RCU wait instead of
  // one per device (~80x faster for 1000 taps). Only safe while nothing we do
  // not own sits in the teardown group, which only a complete listing shows.
  const groupIsOurs = options.completeLinks === true && [...observed.links.values()].every((l) =>
    l.group !== settings.teardownGroup || isOwnedAlias(l.alias) || observed.adoptable?.has(l.name));
  if (groupIsOurs && leaving.length > 1) {
    for (const device of leaving.sort()) out.leave.push({ subject: "host", op: "link.set", device, group: settings.teardownGroup });
    out.leave.push({ subject: "host", op: "link.delete-group", group: settings.teardownGroup });
  } else {
    for (const device of leaving.sort()) out.leave.push({ subject: "host", op: "link.delete", device });
  }
}
