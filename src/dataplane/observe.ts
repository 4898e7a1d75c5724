import { access } from "node:fs/promises";
import { NETNS_INNER_IFNAME } from "../model/types.js";
import { routeDst } from "../model/ipv6.js";
import { RTPROT_BOOT } from "./check.js";
import { ipBatchJson, ipJson } from "./iproute.js";
import type { InterfaceSysctls, LinkStats, ObservedLink, ObservedNetns, ObservedRoute, ObservedState } from "./observed.js";
import { endpointSysctls, IP6_FORWARD_KEY, IP_FORWARD_KEY, isOwnedAlias } from "./ownership.js";
import { readSysctl } from "./sysctl.js";

// Reads the kernel through `ip -N -json` (numeric protocols, scopes and groups,
// so a name in rt_protos.d never changes what we compare).

interface IpLink {
  ifname: string; ifindex?: number; link_index?: number; flags?: string[]; group?: string; ifalias?: string; address?: string; mtu?: number;
  link_netnsid?: number; linkinfo?: { info_kind?: string; info_data?: { type?: string; vnet_hdr?: boolean } };
  stats64?: { rx?: Record<string, number>; tx?: Record<string, number> };
}
interface IpAddr { ifname: string; addr_info?: Array<{ family: string; local: string; prefixlen: number; noprefixroute?: boolean }> }
interface IpRoute { dst: string; dev?: string; protocol?: string; scope?: string; type?: string; gateway?: string; metric?: number }
interface IpNeigh { dst: string; dev: string; lladdr?: string; state?: string[] }

export function toLink(l: IpLink): ObservedLink {
  const flags = l.flags ?? [];
  const rx = l.stats64?.rx ?? {}, tx = l.stats64?.tx ?? {};
  const stats: LinkStats | undefined = l.stats64 ? {
    rxBytes: rx.bytes ?? 0, rxPackets: rx.packets ?? 0, rxErrors: rx.errors ?? 0, rxDropped: rx.dropped ?? 0,
    txBytes: tx.bytes ?? 0, txPackets: tx.packets ?? 0, txErrors: tx.errors ?? 0, txDropped: tx.dropped ?? 0,
  } : undefined;
  return {
    name: l.ifname,
    ...(l.linkinfo?.info_kind ? { kind: l.linkinfo.info_kind } : {}),
    ...(l.linkinfo?.info_data?.type ? { tunType: l.linkinfo.info_data.type } : {}),
    ...(l.linkinfo?.info_data?.vnet_hdr !== undefined ? { vnetHdr: l.linkinfo.info_data.vnet_hdr } : {}),
    group: l.group === "default" || l.group === undefined ? 0 : Number(l.group),
    ...(l.ifalias ? { alias: l.ifalias } : {}),
    ...(l.address ? { mac: l.address } : {}),
    ...(l.mtu !== undefined ? { mtu: l.mtu } : {}),
    up: flags.includes("UP"),
    carrier: flags.includes("LOWER_UP"),
    ...(l.ifindex !== undefined ? { ifindex: l.ifindex } : {}),
    ...(l.linkinfo?.info_kind === "veth" ? { peerInOtherNetns: l.link_netnsid !== undefined } : {}),
    ...(l.linkinfo?.info_kind === "veth" && l.link_index !== undefined ? { peerIndex: l.link_index } : {}),
    ...(stats ? { stats } : {}),
  };
}

/** ipv6: the listing was of IPv6 routes (`default` and host routes are written without their family). */
export function toRoute(r: IpRoute, ipv6 = false): ObservedRoute {
  return {
    dst: routeDst(r.dst, ipv6),
    ...(r.dev ? { device: r.dev } : {}),
    // `ip -json` leaves the default protocol (boot) unsaid, even with -N.
    protocol: Number(r.protocol ?? RTPROT_BOOT),
    scope: Number(r.scope ?? 0),
    type: r.type ?? "unicast",
    ...(r.gateway ? { gateway: r.gateway } : {}),
    metric: r.metric ?? 0,
  };
}

export interface ObserveRequest {
  /** Named namespaces holding netns endpoints, to be looked into. */
  netns: string[];
  /** Of those, the ones whose endpoint has an ip6 (their IPv6 default route is read too). */
  netnsIpv6?: ReadonlySet<string>;
  /**
   * A scoped observation: only these devices (link, IPv4 addresses, permanent
   * neighbours) and route destinations (main table). Without it, everything.
   */
  scope?: { devices: string[]; dsts: string[] };
  /**
   * Whose sysctls to read (4 /proc reads per device, half a second for
   * 10,000): endpoint devices, whether this observation lists them or not.
   * Without it: every endpoint device vmrouted owns among the links listed.
   */
  sysctlsOf?: ReadonlySet<string>;
}

export async function observe(request: ObserveRequest): Promise<ObservedState> {
  const [kernel, ipForward, ip6Forward, netnsEntries] = await Promise.all([
    request.scope ? readScope(request.scope) : readAll(),
    readSysctl(IP_FORWARD_KEY),
    readSysctl(IP6_FORWARD_KEY),
    Promise.all(request.netns.map(async (ns) => [ns, await observeNetns(ns, request.netnsIpv6?.has(ns) === true)] as const)),
  ]);
  const linkMap = new Map(kernel.links.map((l) => [l.ifname, toLink(l)]));
  const isGateway = (name: string) => ["bridge", "dummy"].includes(linkMap.get(name)?.kind ?? "");
  const sysctlDevices = request.sysctlsOf
    ? [...request.sysctlsOf].filter((name) => !isGateway(name))
    : [...linkMap.values()].filter((l) => isOwnedAlias(l.alias) && !isGateway(l.name)).map((l) => l.name);
  return {
    links: linkMap,
    addresses: kernel.addrs.flatMap((a) => (a.addr_info ?? []).filter((i) => i.family === "inet" || i.family === "inet6").map((i) => ({
      device: a.ifname, ip: i.local, prefixLength: i.prefixlen, noprefixroute: i.noprefixroute === true,
    }))),
    routes: [...kernel.routes.map((r) => toRoute(r)), ...kernel.routes6.map((r) => toRoute(r, true))],
    neighbours: kernel.neighs.map((n) => ({
      device: n.dev, ip: n.dst, ...(n.lladdr ? { mac: n.lladdr } : {}), permanent: (n.state ?? []).includes("PERMANENT"),
    })),
    sysctls: new Map([
      ...sysctlDevices.map((name) => [name, readInterfaceSysctls(name)] as const),
      // Gateway devices: only accept_ra, and only in a full listing (check.ts leaves an unread one alone).
      ...(request.sysctlsOf ? [] : [...linkMap.values()].filter((l) => isGateway(l.name) && isOwnedAlias(l.alias))
        .map((l) => [l.name, readGatewaySysctls(l.name)] as const)),
    ]),
    ...(ipForward !== undefined ? { ipForward } : {}),
    ...(ip6Forward !== undefined ? { ip6Forward } : {}),
    netns: new Map(netnsEntries),
  };
}

interface KernelLists { links: IpLink[]; addrs: IpAddr[]; routes: IpRoute[]; routes6: IpRoute[]; neighs: IpNeigh[] }

async function readAll(): Promise<KernelLists> {
  const [links, addrs, routes, routes6, neighs] = await Promise.all([
    ipJson<IpLink[]>(["-d", "-s", "link", "show"]),
    ipJson<IpAddr[]>(["address", "show"]),
    ipJson<IpRoute[]>(["-4", "route", "show", "table", "main"]),
    ipJson<IpRoute[]>(["-6", "route", "show", "table", "main"]),
    ipJson<IpNeigh[]>(["neigh", "show", "nud", "permanent"]),
  ]);
  return { links, addrs, routes, routes6, neighs };
}

/**
 * One ip process for the lot: a VM start reads its taps in a few milliseconds,
 * whatever else the host has. The addresses come first: in a batch, an
 * `address show` after a `link show` prints no addresses (iproute2 6.1).
 */
async function readScope(scope: { devices: string[]; dsts: string[] }): Promise<KernelLists> {
  const n = scope.devices.length;
  const dsts6 = scope.dsts.filter((d) => d.includes(":"));
  const [answers, answers6] = await Promise.all([
    ipBatchJson([
      ...scope.devices.map((d) => `address show dev ${d}`),
      ...scope.devices.map((d) => `link show dev ${d}`),
      ...scope.devices.map((d) => `neigh show dev ${d} nud permanent`),
      ...scope.dsts.filter((d) => !d.includes(":")).map((dst) => `route list table main exact ${dst}`),
    ]),
    ipBatchJson(dsts6.map((dst) => `route list table main exact ${dst}`), undefined, true),
  ]);
  const slice = <T>(from: number, to: number) => answers.slice(from, to).flatMap((a) => (a ?? []) as T[]);
  return {
    addrs: slice<IpAddr>(0, n),
    links: slice<IpLink>(n, 2 * n),
    // Filtered by device, ip leaves the device out of each entry.
    neighs: scope.devices.flatMap((device, i) => ((answers[2 * n + i] ?? []) as unknown as IpNeigh[]).map((e) => ({ ...e, dev: device }))),
    routes: slice<IpRoute>(3 * n, answers.length),
    routes6: answers6.flatMap((a) => (a ?? []) as unknown as IpRoute[]),
  };
}

function readGatewaySysctls(device: string): InterfaceSysctls {
  const value = readSysctl(`net/ipv6/conf/${device}/accept_ra`);
  return value !== undefined ? { acceptRa6: value } : {};
}

function readInterfaceSysctls(device: string): InterfaceSysctls {
  const result: InterfaceSysctls = {};
  // The IPv6 ones too: an endpoint may gain an ip6 (a missing file, without IPv6, reads as undefined).
  for (const s of endpointSysctls(device, true)) {
    const value = readSysctl(s.key);
    if (value !== undefined) result[s.field] = value;
  }
  return result;
}

async function observeNetns(name: string, ipv6: boolean): Promise<ObservedNetns> {
  try {
    await access(`/run/netns/${name}`);
  } catch {
    return { exists: false };
  }
  try {
    const [addrs, links, routes] = await ipBatchJson([
      `address show dev ${NETNS_INNER_IFNAME}`, `link show dev ${NETNS_INNER_IFNAME}`, "route show table main default",
    ], name) as [IpAddr[] | undefined, IpLink[] | undefined, IpRoute[] | undefined];
    if (routes === undefined) return { exists: true, error: "ip cannot enter it" };
    const routes6 = ipv6 ? (await ipBatchJson<IpRoute>(["route show table main default"], name, true))[0] : undefined;
    const def6 = routes6?.find((r) => r.dst === "default" && r.dev === NETNS_INNER_IFNAME);
    const link = links?.[0];
    const def = routes.find((r) => r.dst === "default" && r.dev === NETNS_INNER_IFNAME);
    return {
      exists: true,
      ...(link ? {
        inner: {
          ...(link.ifalias ? { alias: link.ifalias } : {}),
          ...(link.address ? { mac: link.address } : {}),
          ...(link.mtu !== undefined ? { mtu: link.mtu } : {}),
          up: (link.flags ?? []).includes("UP"),
          ...(link.ifindex !== undefined ? { ifindex: link.ifindex } : {}),
          ...(link.link_index !== undefined ? { peerIndex: link.link_index } : {}),
          addresses: (addrs?.[0]?.addr_info ?? []).filter((i) => i.family === "inet" || (i.family === "inet6" && !i.local.startsWith("fe80:")))
            .map((i) => `${i.local}/${i.prefixlen}`),
        },
      } : {}),
      ...(def?.gateway ? { defaultGateway: def.gateway } : {}),
      ...(def6?.gateway ? { defaultGateway6: def6.gateway } : {}),
    };
  } catch (e) {
    // The namespace file exists but cannot be read (being torn down?): not "absent", which would look like a removal.
    return { exists: true, error: (e as Error).message.split("\n")[0] ?? "unreadable" };
  }
}

/** Host-side veth → the named namespace its peer lives in (for rebuilding state from the kernel). */
export async function observeVethNetns(): Promise<Map<string, string>> {
  const [links, namespaces] = await Promise.all([
    ipJson<IpLink[]>(["-d", "link", "show", "type", "veth"]),
    ipJson<Array<{ name: string; id?: number }>>(["netns", "list"]),
  ]);
  const byId = new Map(namespaces.flatMap((n) => (n.id !== undefined ? [[n.id, n.name] as const] : [])));
  const result = new Map<string, string>();
  for (const l of links) {
    const name = l.link_netnsid !== undefined ? byId.get(l.link_netnsid) : undefined;
    if (name) result.set(l.ifname, name);
  }
  return result;
}

/** The devices in a netdev group (the kernel filters; iproute2 6.1 prints an empty object for every other link). */
export async function groupMembers(group: number): Promise<string[]> {
  const links = await ipJson<Array<{ ifname?: string }>>(["link", "show", "group", String(group)]);
  return links.flatMap((l) => (l.ifname ? [l.ifname] : []));
}

/** Traffic counters of the devices in a netdev group, now (status reads them on demand: events keep nothing else of them fresh). */
export async function groupStats(group: number): Promise<Map<string, LinkStats>> {
  const links = await ipJson<IpLink[]>(["-s", "link", "show", "group", String(group)]);
  const stats = new Map<string, LinkStats>();
  for (const l of links) {
    const s = l.ifname ? toLink(l).stats : undefined;
    if (s) stats.set(l.ifname, s);
  }
  return stats;
}
