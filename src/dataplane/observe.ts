import { access } from "node:fs/promises";
import { NETNS_INNER_IFNAME } from "../model/types.js";
import { ipJson } from "./iproute.js";
import type { InterfaceSysctls, LinkStats, ObservedLink, ObservedNetns, ObservedRoute, ObservedState } from "./observed.js";
import { endpointSysctls, IP_FORWARD_KEY, isOwnedAlias } from "./ownership.js";
import { readSysctl } from "./sysctl.js";

// Reads the kernel through `ip -N -json` (numeric protocols, scopes and groups,
// so a name in rt_protos.d never changes what we compare).

interface IpLink {
  ifname: string; ifindex?: number; link_index?: number; flags?: string[]; group?: string; ifalias?: string; address?: string;
  link_netnsid?: number; linkinfo?: { info_kind?: string; info_data?: { type?: string; vnet_hdr?: boolean } };
  stats64?: { rx?: Record<string, number>; tx?: Record<string, number> };
}
interface IpAddr { ifname: string; addr_info?: Array<{ family: string; local: string; prefixlen: number; noprefixroute?: boolean }> }
interface IpRoute { dst: string; dev?: string; protocol?: string; scope?: string; type?: string; gateway?: string }
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
    up: flags.includes("UP"),
    carrier: flags.includes("LOWER_UP"),
    ...(l.ifindex !== undefined ? { ifindex: l.ifindex } : {}),
    ...(l.linkinfo?.info_kind === "veth" ? { peerInOtherNetns: l.link_netnsid !== undefined } : {}),
    ...(l.linkinfo?.info_kind === "veth" && l.link_index !== undefined ? { peerIndex: l.link_index } : {}),
    ...(stats ? { stats } : {}),
  };
}

export function toRoute(r: IpRoute): ObservedRoute {
  const dst = r.dst === "default" ? "0.0.0.0/0" : r.dst.includes("/") ? r.dst : `${r.dst}/32`;
  return {
    dst,
    ...(r.dev ? { device: r.dev } : {}),
    protocol: Number(r.protocol ?? 0),
    scope: Number(r.scope ?? 0),
    type: r.type ?? "unicast",
    ...(r.gateway ? { gateway: r.gateway } : {}),
  };
}

export interface ObserveRequest {
  /** Named namespaces holding netns endpoints, to be looked into. */
  netns: string[];
}

export async function observe(request: ObserveRequest): Promise<ObservedState> {
  const [links, addrs, routes, neighs, ipForward] = await Promise.all([
    ipJson<IpLink[]>(["-d", "-s", "link", "show"]),
    ipJson<IpAddr[]>(["-4", "address", "show"]),
    ipJson<IpRoute[]>(["-4", "route", "show", "table", "main"]),
    ipJson<IpNeigh[]>(["-4", "neigh", "show", "nud", "permanent"]),
    readSysctl(IP_FORWARD_KEY),
  ]);
  const linkMap = new Map(links.map((l) => [l.ifname, toLink(l)]));
  const owned = [...linkMap.values()].filter((l) => isOwnedAlias(l.alias) && l.kind !== "bridge" && l.kind !== "dummy");
  const sysctlEntries = await Promise.all(owned.map(async (l) => [l.name, await readInterfaceSysctls(l.name)] as const));
  const netnsEntries = await Promise.all(request.netns.map(async (ns) => [ns, await observeNetns(ns)] as const));
  return {
    links: linkMap,
    addresses: addrs.flatMap((a) => (a.addr_info ?? []).filter((i) => i.family === "inet").map((i) => ({
      device: a.ifname, ip: i.local, prefixLength: i.prefixlen, noprefixroute: i.noprefixroute === true,
    }))),
    routes: routes.map(toRoute),
    neighbours: neighs.map((n) => ({
      device: n.dev, ip: n.dst, ...(n.lladdr ? { mac: n.lladdr } : {}), permanent: (n.state ?? []).includes("PERMANENT"),
    })),
    sysctls: new Map(sysctlEntries),
    ...(ipForward !== undefined ? { ipForward } : {}),
    netns: new Map(netnsEntries),
  };
}

async function readInterfaceSysctls(device: string): Promise<InterfaceSysctls> {
  const result: InterfaceSysctls = {};
  for (const s of endpointSysctls(device)) {
    const value = await readSysctl(s.key);
    if (value !== undefined) result[s.field] = value;
  }
  return result;
}

async function observeNetns(name: string): Promise<ObservedNetns> {
  try {
    await access(`/run/netns/${name}`);
  } catch {
    return { exists: false };
  }
  try {
    const [links, addrs, routes] = await Promise.all([
      ipJson<IpLink[]>(["link", "show", "dev", NETNS_INNER_IFNAME], name).catch(() => [] as IpLink[]),
      ipJson<IpAddr[]>(["-4", "address", "show", "dev", NETNS_INNER_IFNAME], name).catch(() => [] as IpAddr[]),
      ipJson<IpRoute[]>(["-4", "route", "show", "default"], name),
    ]);
    const link = links[0];
    const def = routes.find((r) => r.dst === "default" && r.dev === NETNS_INNER_IFNAME);
    return {
      exists: true,
      ...(link ? {
        inner: {
          ...(link.ifalias ? { alias: link.ifalias } : {}),
          ...(link.address ? { mac: link.address } : {}),
          up: (link.flags ?? []).includes("UP"),
          ...(link.ifindex !== undefined ? { ifindex: link.ifindex } : {}),
          ...(link.link_index !== undefined ? { peerIndex: link.link_index } : {}),
          addresses: (addrs[0]?.addr_info ?? []).filter((i) => i.family === "inet").map((i) => `${i.local}/${i.prefixlen}`),
        },
      } : {}),
      ...(def?.gateway ? { defaultGateway: def.gateway } : {}),
    };
  } catch {
    // The namespace file exists but cannot be entered (being torn down).
    return { exists: false };
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
