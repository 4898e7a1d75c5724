import { endpointIps, hostPrefix, routeDst } from "../model/ipv6.js";
import { hostSideMac } from "../model/mac.js";
import { formatIpv4 } from "../model/ipv4.js";
import { networkPrefix } from "../model/resolve.js";
import { gatewayDevice } from "../model/naming.js";
import type { DesiredState, Endpoint, LearnedRoute, Network } from "../model/types.js";
import { deviceMtu, KERNEL_PROTOCOL, routeMetricFor, RTPROT_BOOT, type DataplaneSettings } from "./check.js";
import type { ObservedRoute, ObservedState } from "./observed.js";
import { endpointAlias, gatewayAlias, isOwnedAlias } from "./ownership.js";

// Kernel events (`ip -N -d monitor label link address route neigh`), parsed
// and judged, pure. An event matters when it moves an object vmrouted owns or
// depends on away from what is desired: a deleted /32, a downed tap, a foreign
// route to a workload IP. The echo of vmrouted's own batch moves everything
// towards the desired state and is ignored, so a pass is never followed by a
// second pass caused only by its own changes; neither are traffic's neighbour
// updates or anything about objects that are not ours.

export type KernelEvent =
  | { kind: "link"; deleted: boolean; name: string; up: boolean; carrier: boolean; group: number; alias?: string; mac?: string; mtu?: number }
  | { kind: "route"; deleted: boolean; dst: string; device?: string; via?: string; protocol: number; metric: number; table: number; scope: number; type: string }
  | { kind: "neigh"; deleted: boolean; device: string; ip: string; mac?: string; permanent: boolean }
  | { kind: "addr"; deleted: boolean; device: string; cidr: string };

/** What must be read again: devices and route destinations. */
export interface EventScope {
  devices: Set<string>;
  dsts: Set<string>;
}

const MAIN_TABLE = 254;
/** rtm_type numbers (`-N` prints them) as `ip -json` names them. */
const ROUTE_TYPES: Record<number, string> = { 1: "unicast", 2: "local", 3: "broadcast", 4: "anycast", 5: "multicast", 6: "blackhole", 7: "unreachable", 8: "prohibit", 9: "throw", 10: "nat" };

/** One monitor record: its `[LABEL]` first line and indented continuation lines. */
export function parseMonitorRecord(record: string): KernelEvent | undefined {
  const m = /^\[(LINK|ROUTE|NEIGH|ADDR)\](Deleted )?(.*)$/s.exec(record);
  if (!m) return undefined;
  const [, label, deletedWord, rest] = m;
  const deleted = deletedWord !== undefined;
  const first = rest!.split("\n")[0]!;
  const words = first.trim().split(/\s+/);
  const after = (key: string) => {
    const i = words.indexOf(key);
    return i >= 0 ? words[i + 1] : undefined;
  };
  switch (label) {
    case "LINK": {
      const head = /^\d+:\s+([^:@\s]+)(@\S+)?:\s+<([^>]*)>/.exec(first);
      if (!head) return undefined;
      const alias = /^\s+alias (.*)$/m.exec(rest!)?.[1]?.trimEnd();
      const mac = /^\s+link\/\S+ ([0-9a-f:]{17})/m.exec(rest!)?.[1];
      const group = after("group");
      const mtu = after("mtu");
      const flags = head[3]!.split(",");
      return {
        kind: "link", deleted, name: head[1]!, up: flags.includes("UP"), carrier: flags.includes("LOWER_UP"),
        group: group === undefined || group === "default" ? 0 : Number(group),
        ...(alias ? { alias } : {}), ...(mac ? { mac } : {}), ...(mtu !== undefined ? { mtu: Number(mtu) } : {}),
      };
    }
    case "ROUTE": {
      // With -N: "<type> <dst> [via <gw>] dev <dev> table <n> proto <n> scope <n> [metric <n>] ..."
      const type = /^\d+$/.test(words[0] ?? "") ? ROUTE_TYPES[Number(words[0])] ?? words[0]! : "unicast";
      const typed = /^\d+$/.test(words[0] ?? "") ? words.slice(1) : words;
      const dstWord = typed[0];
      if (!dstWord) return undefined;
      // ip monitor writes the family only through the addresses: a `default` via an IPv6 gateway is IPv6.
      const dst = routeDst(dstWord, dstWord.includes(":") || (after("via") ?? "").includes(":"));
      // Link-local and multicast routes (every device has them) are never ours: not worth judging.
      if (dst.startsWith("fe80:") || dst.startsWith("ff00:")) return undefined;
      const device = after("dev"), via = after("via");
      return {
        kind: "route", deleted, dst, ...(device ? { device } : {}), ...(via ? { via } : {}),
        protocol: Number(after("proto") ?? RTPROT_BOOT), metric: Number(after("metric") ?? 0), table: Number(after("table") ?? MAIN_TABLE),
        scope: Number(after("scope") ?? 0), type,
      };
    }
    case "NEIGH": {
      const ip = words[0];
      const device = after("dev");
      if (!ip || !device || ip === "dev" || ip.startsWith("fe80:")) return undefined;
      const mac = after("lladdr");
      return { kind: "neigh", deleted, device, ip, ...(mac ? { mac } : {}), permanent: words.includes("PERMANENT") };
    }
    case "ADDR": {
      const a = /^\d+:\s+(\S+)\s+inet (\d+\.\d+\.\d+\.\d+\/\d+)/.exec(first);
      if (!a) return undefined;
      return { kind: "addr", deleted, device: a[1]!, cidr: a[2]! };
    }
  }
  return undefined;
}

/** The last event per object: a batch's intermediate states (a tap created down, then set up) collapse into its final one. */
export function lastPerObject(events: KernelEvent[]): KernelEvent[] {
  const byKey = new Map<string, KernelEvent>();
  for (const e of events) {
    const key = e.kind === "link" ? `link ${e.name}`
      : e.kind === "route" ? `route ${e.table} ${e.dst} ${e.metric} ${e.protocol}`
      : e.kind === "neigh" ? `neigh ${e.device} ${e.ip}`
      : `addr ${e.device} ${e.cidr}`;
    byKey.delete(key); // keeps arrival order of the final states
    byKey.set(key, e);
  }
  return [...byKey.values()];
}

/** Desired state indexed the way events name things. */
export interface DesiredIndex {
  endpointsByDevice: Map<string, Endpoint>;
  endpointsByDst: Map<string, Endpoint>;
  /** By name: an endpoint's devices take their MTU from its network. */
  networks: Map<string, Network>;
  gatewaysByDevice: Map<string, Network>;
  subnets: Map<string, Network>;
  learned: Map<string, LearnedRoute>;
}

export function indexDesired(desired: DesiredState): DesiredIndex {
  return {
    endpointsByDevice: new Map(desired.endpoints.map((e) => [e.device, e])),
    endpointsByDst: new Map(desired.endpoints.flatMap((e) => endpointIps(e).map((ip) => [hostPrefix(ip), e] as const))),
    networks: new Map(desired.networks.map((n) => [n.name, n])),
    gatewaysByDevice: new Map(desired.networks.map((n) => [gatewayDevice(n.name), n])),
    subnets: new Map(desired.networks.map((n) => {
      const p = networkPrefix(n);
      return [`${formatIpv4(p.base)}/${p.length}`, n];
    })),
    learned: new Map(desired.learned.map((r) => [r.prefix, r])),
  };
}

/** The objects that events moved away from the desired state (empty: nothing to do). */
export function driftScope(events: KernelEvent[], index: DesiredIndex, settings: DataplaneSettings): EventScope {
  const scope: EventScope = { devices: new Set(), dsts: new Set() };
  for (const e of lastPerObject(events)) {
    const away = judge(e, index, settings);
    if (!away) continue;
    if (e.kind === "route") scope.dsts.add(e.dst);
    else if (e.kind === "link") scope.devices.add(e.name);
    else scope.devices.add(e.device);
  }
  return scope;
}

/** True when the event leaves the kernel further from desired than before it (drift, or a conflict that came or went). */
function judge(e: KernelEvent, index: DesiredIndex, settings: DataplaneSettings): boolean {
  switch (e.kind) {
    case "link": {
      const endpoint = index.endpointsByDevice.get(e.name);
      if (endpoint) {
        const right = e.up && e.group === settings.netdevGroup && e.alias === endpointAlias(endpoint.id) && e.mac === hostSideMac(endpoint.mac) &&
          mtuRight(e.mtu, index.networks.get(endpoint.network));
        return e.deleted || !right;
      }
      const network = index.gatewaysByDevice.get(e.name);
      if (network) return e.deleted || !e.up || e.alias !== gatewayAlias(network.name);
      // One of ours that is not desired appeared or changed (its deletion is the echo of ours).
      return !e.deleted && isOwnedAlias(e.alias) && e.group !== settings.teardownGroup;
    }
    case "route": {
      if (e.table !== MAIN_TABLE) return false;
      const endpoint = index.endpointsByDst.get(e.dst);
      const learned = index.learned.get(e.dst);
      const ours = e.protocol === settings.routeProtocol || e.protocol === settings.learnedProtocol;
      if (!ours) {
        // A foreign route to a workload IP is a conflict (it came or went); a connected route on a gateway must go.
        if (endpoint || learned) return true;
        const network = index.subnets.get(e.dst);
        return !!network && e.protocol === KERNEL_PROTOCOL && e.device === gatewayDevice(network.name) && !e.deleted;
      }
      const desired = e.protocol === settings.routeProtocol
        ? endpoint && endpoint.deviceOnly === undefined && e.device === endpoint.device && e.metric === routeMetricFor(endpoint.elevated, settings)
        : learned && e.via === learned.nextHop && e.metric === routeMetricFor(learned.elevated, settings);
      return e.deleted ? !!desired : !desired;
    }
    case "neigh": {
      const endpoint = index.endpointsByDevice.get(e.device);
      if (!endpoint) return false;
      // Another address on our device matters only as a stale permanent entry of ours; traffic's entries do not.
      if ((e.ip !== endpoint.ip && e.ip !== endpoint.ip6) || endpoint.deviceOnly !== undefined) return !e.deleted && e.permanent;
      // A permanent entry deleted by hand shows as FAILED, then Deleted, neither with PERMANENT or a MAC.
      return e.deleted || !e.permanent || e.mac !== endpoint.mac;
    }
    case "addr": {
      const network = index.gatewaysByDevice.get(e.device);
      if (!network) return false;
      const desired = e.cidr === `${network.gateway}/${network.prefixLength}`;
      return e.deleted ? desired : !desired;
    }
  }
}

/** An event that says no MTU (ip always prints one) or an endpoint without its network (resolve.ts rules it out) is no MTU drift. */
function mtuRight(mtu: number | undefined, network: Network | undefined): boolean {
  return mtu === undefined || network === undefined || mtu === deviceMtu(network);
}

const routeKey = (dst: string, metric: number) => `${dst} ${metric}`;

/**
 * The kernel picture kept current by events between listings (the cache a
 * pass plans against): main-table routes added and deleted, links changed or
 * gone. Every event counts, not only vmrouted's objects: a foreign route to
 * an IP that becomes a workload's later is a conflict then, and one that went
 * away is none. The kernel flushes a device's IPv4 routes without any route
 * event when the device goes down or away (fib_sync_down_dev), so those
 * follow from the link event. Folded in arrival order, an event older than
 * the listing it is folded into only restates what the listing shows.
 */
export function foldEvents(observed: ObservedState, events: KernelEvent[]): ObservedState {
  if (events.length === 0) return observed;
  const routes = new Map(observed.routes.map((r) => [routeKey(r.dst, r.metric), r]));
  let byDevice: Map<string, Set<string>> | undefined;
  const devicesRoutes = (device: string) => {
    if (!byDevice) {
      byDevice = new Map();
      for (const [key, r] of routes) if (r.device !== undefined) (byDevice.get(r.device) ?? byDevice.set(r.device, new Set()).get(r.device)!).add(key);
    }
    return byDevice.get(device) ?? byDevice.set(device, new Set()).get(device)!;
  };
  const links = new Map(observed.links);
  const sysctls = new Map(observed.sysctls);
  const gone = new Set<string>();
  for (const e of events) {
    if (e.kind === "route") {
      if (e.table !== MAIN_TABLE) continue;
      const key = routeKey(e.dst, e.metric);
      const old = routes.get(key);
      if (old?.device !== undefined && byDevice) devicesRoutes(old.device).delete(key);
      if (e.deleted) {
        routes.delete(key);
        continue;
      }
      const r: ObservedRoute = {
        dst: e.dst, ...(e.device ? { device: e.device } : {}), protocol: e.protocol, scope: e.scope, type: e.type,
        ...(e.via ? { gateway: e.via } : {}), metric: e.metric,
      };
      routes.set(key, r);
      if (r.device !== undefined && byDevice) devicesRoutes(r.device).add(key);
    } else if (e.kind === "link") {
      if (e.deleted || !e.up) {
        for (const key of devicesRoutes(e.name)) routes.delete(key);
        devicesRoutes(e.name).clear();
      }
      if (e.deleted) {
        links.delete(e.name);
        sysctls.delete(e.name);
        gone.add(e.name);
        continue;
      }
      gone.delete(e.name);
      // A device the picture never listed stays unknown (an event lacks its kind and index): creating one fails and is read then.
      const link = links.get(e.name);
      if (link) {
        const { alias: _a, mac: _m, ...rest } = link;
        links.set(e.name, {
          ...rest, up: e.up, carrier: e.carrier, group: e.group, ...(e.alias ? { alias: e.alias } : {}), ...(e.mac ? { mac: e.mac } : {}),
          ...(e.mtu !== undefined ? { mtu: e.mtu } : {}),
        });
      }
    }
  }
  return {
    ...observed, links, sysctls, routes: [...routes.values()],
    ...(gone.size ? {
      addresses: observed.addresses.filter((a) => !gone.has(a.device)),
      neighbours: observed.neighbours.filter((n) => !gone.has(n.device)),
    } : {}),
  };
}
