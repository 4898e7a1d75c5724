import { InputError } from "../model/errors.js";
import type { Endpoint, Network } from "../model/types.js";
import { endpointId } from "../model/types.js";
import { resolveEndpoint } from "../model/resolve.js";
import type { RoutedInterface } from "./domain-xml.js";
import { afterHook, handedOver, type Migration } from "./migration.js";

// libvirt domains as vmrouted knows them, and how hook calls move them (pure).
// The domain XML (its vmrouted metadata) is the source of truth for VM
// endpoints; this cache is what hooks and the periodic libvirt resync told us.

export type Lifecycle =
  /** defined, not running: no host side */
  | "defined"
  /** prepare/migrate hook: the tap must exist before qemu opens it */
  | "prepared"
  /** started/reconnect: routed and announced */
  | "running"
  /** stopped: withdrawn and unrouted; the tap goes on release */
  | "stopped";

export interface DomainRecord {
  name: string;
  /** libvirt's identity of the domain (from its own XML), when known. */
  uuid?: string;
  lifecycle: Lifecycle;
  interfaces: RoutedInterface[];
  /** Bumped on every hook event: a libvirt resync that started earlier must not overwrite it. */
  seq: number;
  /** When the lifecycle last changed (ms since the epoch). */
  since?: number;
  /** The hook shim's sequence of the last hook call applied (digits; later calls have larger ones). */
  hookSeq?: string;
  /** Live migration in progress on this host (migration.ts); absent when normal. */
  migration?: Migration;
}

export const HOOK_OPS = ["prepare", "start", "started", "stopped", "release", "migrate", "restore", "reconnect", "attach"] as const;
export type HookOp = (typeof HOOK_OPS)[number];

export interface HookEvent {
  domain: string;
  uuid?: string;
  op: string;
  subop: string;
  interfaces: RoutedInterface[];
}

/** The next lifecycle for a hook call, or undefined when the call changes nothing for us. */
export function lifecycleAfter(op: string, subop: string): Lifecycle | "released" | undefined {
  if (!(HOOK_OPS as readonly string[]).includes(op)) throw new InputError(`unknown hook operation '${op}' (known: ${HOOK_OPS.join(", ")})`);
  if (!/^(begin|end|-|[a-z]+)$/.test(subop)) throw new InputError(`unknown hook sub-operation '${subop}'`);
  switch (`${op}/${subop}`) {
    case "prepare/begin":
    case "migrate/begin":
      return "prepared";
    case "started/begin":
    case "reconnect/begin":
      return "running";
    case "stopped/end":
      return "stopped";
    case "release/end":
      return "released";
    default:
      return undefined; // start/begin, restore/begin (XML echoed by the shim), attach, other sub-ops
  }
}

/** The domains after a hook call (a new map; the input is not changed). */
export function applyHook(domains: ReadonlyMap<string, DomainRecord>, event: HookEvent, seq: number, now = Date.now()): ReadonlyMap<string, DomainRecord> {
  const next = lifecycleAfter(event.op, event.subop);
  if (next === undefined) return domains;
  const result = new Map(domains);
  const record = domains.get(event.domain);
  if (next === "released") {
    if (record) {
      const { migration: _, ...rest } = record;
      result.set(event.domain, { ...rest, lifecycle: "defined", seq, since: now });
    }
    return result;
  }
  const uuid = event.uuid ?? record?.uuid;
  const migration = afterHook(record?.migration, event.op, event.subop, now);
  result.set(event.domain, {
    name: event.domain, ...(uuid ? { uuid } : {}), lifecycle: next, interfaces: event.interfaces, seq, since: now,
    ...(record?.hookSeq ? { hookSeq: record.hookSeq } : {}), ...(migration ? { migration } : {}),
  });
  return result;
}

/** A domain as a libvirt listing and its own XML show it. */
export interface ListedDomain {
  name: string;
  uuid: string;
  /** qemu runs (running or paused): its taps are open. */
  active: boolean;
  interfaces: RoutedInterface[];
}

/** Between prepare and started libvirt still lists the domain as shut off: keep its tap for qemu this long. */
export const PREPARE_GRACE_MS = 120_000;

/**
 * The domains after a resync from libvirt (pure). Hook calls that arrived
 * while libvirt was being read (seq above startSeq) win; a domain whose XML
 * could not be read keeps its record (its error is its own: it never shifts
 * or drops another domain); a domain libvirt no longer lists is gone.
 */
export function mergeResync(
  current: ReadonlyMap<string, DomainRecord>, listed: ListedDomain[], unreadable: ReadonlySet<string>, startSeq: number, now: number,
): ReadonlyMap<string, DomainRecord> {
  const result = new Map<string, DomainRecord>();
  for (const d of listed)
    result.set(d.name, { name: d.name, uuid: d.uuid, lifecycle: d.active ? "running" : "defined", interfaces: d.interfaces, seq: 0 });
  for (const [name, old] of current) {
    const fresh = result.get(name);
    if (old.seq > startSeq) result.set(name, old);
    else if (old.uuid !== undefined && unreadable.has(old.uuid)) result.set(name, old);
    else if (old.lifecycle === "prepared" && fresh?.lifecycle !== "running" && now - (old.since ?? 0) < PREPARE_GRACE_MS) result.set(name, old);
    else if (fresh) {
      const keep: DomainRecord = { ...fresh, seq: old.seq, ...(old.hookSeq ? { hookSeq: old.hookSeq } : {}), ...(old.migration ? { migration: old.migration } : {}) };
      // A lifecycle libvirt confirms keeps its time; a new one starts now.
      result.set(name, old.lifecycle === fresh.lifecycle && old.since !== undefined ? { ...keep, since: old.since } : { ...keep, since: now });
    }
  }
  return result;
}

/** What a resync compares: lifecycle and interfaces (seq and times are bookkeeping). */
export function sameDomains(a: ReadonlyMap<string, DomainRecord>, b: ReadonlyMap<string, DomainRecord>): boolean {
  const essence = (m: ReadonlyMap<string, DomainRecord>) =>
    JSON.stringify([...m.values()].map((d) => [d.name, d.uuid, d.lifecycle, d.interfaces, d.migration?.phase]).sort());
  return essence(a) === essence(b);
}

export interface VmEndpoints {
  endpoints: Endpoint[];
  /** Interfaces that cannot be served, with why (shown in status and logs). */
  rejected: Array<{ domain: string; ip: string; reason: string }>;
}

/** A routed interface from domain XML as a tap endpoint, or why it cannot be one (the reason alone, without the endpoint prefix). */
export function resolveInterface(i: RoutedInterface, networks: Network[]): { ok: true; value: Endpoint } | { ok: false; reason: string } {
  const r = resolveEndpoint({ kind: "tap", network: i.network, ip: i.ip, mac: i.mac, name: i.tap }, networks);
  return r.ok ? r : { ok: false, reason: r.error.replace(/^endpoint tap \S+: /, "") };
}

/**
 * Endpoints for domains that need a host side. An interface that does not
 * resolve (unknown network, IP taken by another endpoint) is rejected, not
 * fatal: one bad domain must not take the others' network away.
 */
export function vmEndpoints(domains: Iterable<DomainRecord>, networks: Network[], taken: Set<string>): VmEndpoints {
  const endpoints: Endpoint[] = [];
  const rejected: VmEndpoints["rejected"] = [];
  const used = new Set(taken);
  const sorted = [...domains].sort((a, b) => a.name.localeCompare(b.name));
  for (const d of sorted) {
    if (d.lifecycle === "defined") continue;
    for (const i of d.interfaces) {
      const r = resolveInterface(i, networks);
      if (!r.ok) {
        rejected.push({ domain: d.name, ip: i.ip, reason: r.reason });
        continue;
      }
      if (used.has(i.ip) || used.has(`dev:${i.tap}`)) {
        rejected.push({ domain: d.name, ip: i.ip, reason: `ip ${i.ip} or device ${i.tap} is already used by another endpoint` });
        continue;
      }
      used.add(i.ip).add(`dev:${i.tap}`);
      const phase = d.migration?.phase;
      const deviceOnly = phase === "target" ? `incoming migration of ${d.name}: the guest still runs on the source`
        : d.lifecycle === "prepared" ? `domain ${d.name} is starting` : d.lifecycle === "stopped" ? `domain ${d.name} is stopped` : undefined;
      endpoints.push({
        ...r.value, id: endpointId("vm", i.ip), kind: "vm", domain: d.name, ...(deviceOnly ? { deviceOnly } : {}),
        ...(phase ? { migration: phase } : {}), ...(phase === "settling" ? { elevated: true } : {}),
      });
    }
  }
  return { endpoints, rejected };
}

/**
 * The domains after the learned routes changed: a running VM whose IP another
 * host now announces elevated was migrated away (migration.ts, "source").
 */
export function markHandedOver(domains: ReadonlyMap<string, DomainRecord>, elevated: ReadonlySet<string>, now: number): ReadonlyMap<string, DomainRecord> {
  let result: Map<string, DomainRecord> | undefined;
  for (const d of domains.values()) {
    const remote = d.interfaces.some((i) => elevated.has(`${i.ip}/32`));
    const m = handedOver(d.migration, d.lifecycle, remote, now);
    if (m === d.migration) continue;
    result ??= new Map(domains);
    result.set(d.name, { ...d, ...(m ? { migration: m } : {}) });
  }
  return result ?? domains;
}
