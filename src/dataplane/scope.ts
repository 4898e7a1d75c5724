import { endpointIps, hostPrefix } from "../model/ipv6.js";
import { formatIpv4 } from "../model/ipv4.js";
import { gatewayDevice } from "../model/naming.js";
import { networkPrefix } from "../model/resolve.js";
import type { DesiredState, Endpoint } from "../model/types.js";
import { deviceMtu } from "./check.js";
import type { ObservedState } from "./observed.js";
import type { Plan } from "./plan.js";

// Pure: what a scoped pass looks at. Felix's route table keeps a dirty set and
// resyncs everything only on a long timer; so does vmrouted. A scope names
// devices, route destinations and namespaces; closing it over the desired
// state adds what belongs with them (an endpoint's device brings its /32 and
// its namespace, a gateway device its subnet), so a pass sees each object whole.

export interface Scope {
  /** Everything: observe all, plan all (startup, resync, or too much for a scoped read). */
  full: boolean;
  devices: Set<string>;
  dsts: Set<string>;
  netns: Set<string>;
  /** Some of it was named by kernel events (or the namespace watch): it must be read, never taken from the cache. */
  fromKernel?: boolean;
  /**
   * The resync's sweep: only what raises no kernel event is read (sysctls,
   * namespace insides, ip_forward); links, addresses, routes and neighbours
   * come from the cache, which events keep current.
   */
  sweep?: boolean;
}

export function emptyScope(): Scope {
  return { full: false, devices: new Set(), dsts: new Set(), netns: new Set() };
}

export function scopeSize(s: Scope): number {
  return s.devices.size + s.dsts.size + s.netns.size;
}

export function isEmptyScope(s: Scope): boolean {
  return !s.full && scopeSize(s) === 0;
}

export function mergeScope(into: Scope, from: Partial<Scope>): void {
  if (from.full) into.full = true;
  if (from.fromKernel) into.fromKernel = true;
  if (from.sweep) into.sweep = true;
  for (const d of from.devices ?? []) into.devices.add(d);
  for (const d of from.dsts ?? []) into.dsts.add(d);
  for (const n of from.netns ?? []) into.netns.add(n);
}

function subnetOf(network: DesiredState["networks"][number]): string {
  const p = networkPrefix(network);
  return `${formatIpv4(p.base)}/${p.length}`;
}

/** Everything that differs between two desired states, as a scope (for the dirty set). */
export function changedScope(before: DesiredState, after: DesiredState): Scope {
  const scope = emptyScope();
  // Resolution reuses the objects of unchanged inputs, so identity settles most comparisons.
  const same = <T>(x: T | undefined, y: T | undefined) => x === y || (x !== undefined && y !== undefined && JSON.stringify(x) === JSON.stringify(y));
  const diff = <T>(a: T[], b: T[], key: (t: T) => string, add: (t: T) => void) => {
    if (a === b) return;
    const old = new Map(a.map((t) => [key(t), t]));
    const now = new Map(b.map((t) => [key(t), t]));
    for (const t of a) if (!same(t, now.get(key(t)))) add(t);
    for (const t of b) if (!same(old.get(key(t)), t)) add(t);
  };
  const endpoint = (e: Endpoint) => {
    scope.devices.add(e.device);
    for (const ip of endpointIps(e)) scope.dsts.add(hostPrefix(ip));
    if (e.netns !== undefined) scope.netns.add(e.netns);
  };
  diff(before.endpoints, after.endpoints, (e) => e.id, endpoint);
  diff(before.networks, after.networks, (n) => n.name, (n) => {
    scope.devices.add(gatewayDevice(n.name));
    scope.dsts.add(subnetOf(n));
  });
  // An endpoint's devices take their MTU from its network, so the endpoint itself did not change: its network's MTU did.
  for (const e of endpointsWhoseMtuChanged(before, after)) endpoint(e);
  diff(before.learned, after.learned, (r) => r.prefix, (r) => scope.dsts.add(r.prefix));
  // A held entry that comes or goes (fixed, removed): its device, route and network's gateway are looked at again.
  diff(before.held ?? [], after.held ?? [], (h) => h.id, (h) => {
    if (h.device !== undefined) scope.devices.add(h.device);
    for (const ip of endpointIps(h)) scope.dsts.add(hostPrefix(ip));
    if (h.network) scope.devices.add(gatewayDevice(h.network));
  });
  // Learned routes or the domains become known: everything in the kernel is looked at (the unwanted go).
  if ((before.learnedKnown === false && after.learnedKnown !== false) || (before.domainsKnown === false && after.domainsKnown !== false))
    scope.full = true;
  return scope;
}

/** The endpoints (as they are now) of the networks, in both states, whose device MTU differs between them. */
function endpointsWhoseMtuChanged(before: DesiredState, after: DesiredState): Endpoint[] {
  if (before.networks === after.networks) return [];
  const old = new Map(before.networks.map((n) => [n.name, deviceMtu(n)]));
  const changed = new Set(after.networks.filter((n) => old.has(n.name) && old.get(n.name) !== deviceMtu(n)).map((n) => n.name));
  return changed.size ? after.endpoints.filter((e) => changed.has(e.network)) : [];
}

/** The scope with what belongs to its objects (see above). */
export function closeScope(scope: Scope, desired: DesiredState): Scope {
  const closed: Scope = {
    full: scope.full, devices: new Set(scope.devices), dsts: new Set(scope.dsts), netns: new Set(scope.netns),
    ...(scope.fromKernel ? { fromKernel: true } : {}), ...(scope.sweep ? { sweep: true } : {}),
  };
  for (const e of desired.endpoints) {
    const dsts = endpointIps(e).map(hostPrefix);
    if (closed.devices.has(e.device) || dsts.some((d) => closed.dsts.has(d)) || (e.netns !== undefined && closed.netns.has(e.netns))) {
      closed.devices.add(e.device);
      for (const d of dsts) closed.dsts.add(d);
      if (e.netns !== undefined) closed.netns.add(e.netns);
    }
  }
  for (const n of desired.networks)
    if (closed.devices.has(gatewayDevice(n.name)) || closed.dsts.has(subnetOf(n))) {
      closed.devices.add(gatewayDevice(n.name));
      closed.dsts.add(subnetOf(n));
    }
  return closed;
}

/** The desired state restricted to a closed scope: what a scoped pass plans. Networks stay whole (endpoints need them). */
export function restrictDesired(desired: DesiredState, scope: Scope): { desired: DesiredState; gateways: Set<string> } {
  return {
    desired: {
      networks: desired.networks,
      endpoints: desired.endpoints.filter((e) => scope.devices.has(e.device)),
      learned: desired.learned.filter((r) => scope.dsts.has(r.prefix)),
      ...(desired.learnedKnown !== undefined ? { learnedKnown: desired.learnedKnown } : {}),
      ...(desired.domainsKnown !== undefined ? { domainsKnown: desired.domainsKnown } : {}),
      ...(desired.held ? { held: desired.held } : {}),
    },
    gateways: new Set(desired.networks.filter((n) => scope.devices.has(gatewayDevice(n.name))).map((n) => n.name)),
  };
}

/** The cached picture of the kernel with a scoped observation laid over it. */
export function mergeObserved(base: ObservedState, part: ObservedState, scope: Scope): ObservedState {
  const links = new Map(base.links);
  const sysctls = new Map(base.sysctls);
  for (const d of scope.devices) {
    links.delete(d);
    sysctls.delete(d);
  }
  for (const [name, link] of part.links) links.set(name, link);
  for (const [name, s] of part.sysctls) sysctls.set(name, s);
  const netns = new Map(base.netns);
  for (const [name, ns] of part.netns) netns.set(name, ns);
  return {
    links, sysctls, netns,
    addresses: [...base.addresses.filter((a) => !scope.devices.has(a.device)), ...part.addresses],
    neighbours: [...base.neighbours.filter((n) => !scope.devices.has(n.device)), ...part.neighbours],
    routes: [...base.routes.filter((r) => !scope.dsts.has(r.dst)), ...part.routes],
    ...(part.ipForward !== undefined ? { ipForward: part.ipForward } : base.ipForward !== undefined ? { ipForward: base.ipForward } : {}),
  };
}

/** The cached picture of the kernel cut down to a closed scope: what a pass over just those objects may see. */
export function restrictObserved(observed: ObservedState, scope: Scope): ObservedState {
  const has = (device: string | undefined) => device !== undefined && scope.devices.has(device);
  return {
    links: new Map([...scope.devices].flatMap((d) => {
      const l = observed.links.get(d);
      return l ? [[d, l] as const] : [];
    })),
    sysctls: new Map([...scope.devices].flatMap((d) => {
      const s = observed.sysctls.get(d);
      return s ? [[d, s] as const] : [];
    })),
    netns: new Map([...scope.netns].flatMap((n) => {
      const ns = observed.netns.get(n);
      return ns ? [[n, ns] as const] : [];
    })),
    addresses: observed.addresses.filter((a) => has(a.device)),
    neighbours: observed.neighbours.filter((n) => has(n.device)),
    routes: observed.routes.filter((r) => scope.dsts.has(r.dst)),
    ...(observed.ipForward !== undefined ? { ipForward: observed.ipForward } : {}),
    ...(observed.adoptable ? { adoptable: observed.adoptable } : {}),
  };
}

/** The objects of a plan's conflicts (something not ours in the way), closed: what must be read to confirm them. */
export function conflictScope(plan: Pick<Plan, "endpoints" | "gateways" | "learned">, desired: DesiredState): Scope | undefined {
  const scope = emptyScope();
  for (const c of plan.endpoints) {
    if (!c.conflict) continue;
    scope.devices.add(c.endpoint.device);
    for (const ip of endpointIps(c.endpoint)) scope.dsts.add(hostPrefix(ip));
  }
  for (const g of plan.gateways) if (g.conflict) scope.devices.add(g.device);
  for (const l of plan.learned) if (l.conflict) scope.dsts.add(l.route.prefix);
  return scopeSize(scope) ? closeScope(scope, desired) : undefined;
}
