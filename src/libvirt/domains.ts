import { InputError } from "../model/errors.js";
import type { Endpoint, Network } from "../model/types.js";
import { endpointId } from "../model/types.js";
import { EndpointClaims, resolveEndpoint } from "../model/resolve.js";
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
  /** The hook shim's sequence of the last hook call applied (`BOOT_ID:NS`, or an older shim's digits; see hookCallStale). */
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

/**
 * A hook call's sequence, as the shim sends it: `BOOT_ID:NS`, the host's boot
 * id and its monotonic clock in ns (never goes back within a boot, restarts
 * at the next), or plain digits from a shim before it (the wall clock in ns).
 */
export const HOOK_SEQ = /^(?:([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}):)?(\d{1,24})$/;

type HookSeq = { boot: string; ns: bigint } | { wallNs: bigint };

function parseHookSeq(seq: string): HookSeq | undefined {
  const m = HOOK_SEQ.exec(seq);
  if (!m) return undefined;
  return m[1] !== undefined ? { boot: m[1], ns: BigInt(m[2]!) } : { wallNs: BigInt(m[2]!) };
}

/**
 * Why a hook call must be ignored (undefined: apply it), given `last`, the
 * sequence of the call last applied to its domain (pure). Calls are ordered
 * only within one boot: a call from another boot id is newer (calls of a boot
 * end with it) and its sequence replaces the record's. An older shim's
 * wall-clock digits are ordered among themselves only while the last one is
 * not ahead of the clock now: after the clock steps back, they would hold off
 * the domain's calls until it caught up. A call without a sequence, or one of
 * each kind, cannot be compared: applied as it comes.
 */
export function hookCallStale(last: string | undefined, seq: string | undefined, nowMs: number): string | undefined {
  if (last === undefined || seq === undefined) return undefined;
  const a = parseHookSeq(last);
  const b = parseHookSeq(seq);
  if (!a || !b) return undefined;
  const later = `a later hook call (${last}) was already applied`;
  if ("boot" in a && "boot" in b) return a.boot === b.boot && b.ns < a.ns ? later : undefined;
  if ("wallNs" in a && "wallNs" in b) return a.wallNs <= BigInt(nowMs) * 1_000_000n && b.wallNs < a.wallNs ? later : undefined;
  return undefined;
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
  const r = resolveEndpoint({ kind: "tap", network: i.network, ip: i.ip, ...(i.ip6 ? { ip6: i.ip6 } : {}), mac: i.mac, name: i.tap }, networks);
  return r.ok ? r : { ok: false, reason: r.error.replace(/^endpoint tap \S+: /, "") };
}

/** Which domain keeps an IP or tap that two claim: the one whose qemu holds it, then the one about to open it. */
const CLAIM_RANK: Record<Lifecycle, number> = { running: 0, prepared: 1, stopped: 2, defined: 3 };

/**
 * Why a domain may not start with these interfaces (undefined: it may): an
 * IP or tap of theirs is held by another domain that is starting, or running
 * with its tap held open (`tapOpen`: the tap's carrier, i.e. its qemu has it).
 * The original of a virt-clone'd domain (whose metadata the clone carries) is
 * such a holder: the clone must not start. A running holder whose tap is no
 * longer open has stopped and its `stopped` call is still on its way (a
 * `virsh destroy a; virsh start b` swap): it holds nothing (pure).
 */
export function heldByAnother(domains: Iterable<DomainRecord>, name: string, interfaces: RoutedInterface[],
  tapOpen: (tap: string) => boolean): string | undefined {
  const holders = [...domains].filter((d) => d.name !== name && (d.lifecycle === "running" || d.lifecycle === "prepared"))
    .sort((a, b) => CLAIM_RANK[a.lifecycle] - CLAIM_RANK[b.lifecycle] || a.name.localeCompare(b.name));
  for (const i of interfaces)
    for (const d of holders) {
      const theirs = d.interfaces.find((o) => o.ip === i.ip) ?? d.interfaces.find((o) => o.tap === i.tap);
      if (!theirs || (d.lifecycle === "running" && !tapOpen(theirs.tap))) continue;
      const how = `${d.lifecycle === "running" ? "running" : "starting"} domain '${d.name}'`;
      return theirs.ip === i.ip ? `ip ${i.ip} is held by ${how}` : `tap ${i.tap} (for ip ${i.ip}) is held by ${how}`;
    }
  return undefined;
}

/**
 * Endpoints for domains that need a host side. An interface that does not
 * resolve (unknown network, IP taken by another endpoint) is rejected, not
 * fatal: one bad domain must not take the others' network away. Of two
 * domains claiming one IP or tap, a running one keeps it over a starting or
 * stopped one (a clone that got this far never demotes its original), then
 * the first by name. The result is in domain name order.
 */
export function vmEndpoints(domains: Iterable<DomainRecord>, networks: Network[], claims: EndpointClaims): VmEndpoints {
  const endpoints: Endpoint[] = [];
  const rejected: VmEndpoints["rejected"] = [];
  const claimOrder = [...domains].filter((d) => d.lifecycle !== "defined")
    .sort((a, b) => CLAIM_RANK[a.lifecycle] - CLAIM_RANK[b.lifecycle] || a.name.localeCompare(b.name));
  for (const d of claimOrder) {
    for (const i of d.interfaces) {
      const r = resolveInterface(i, networks);
      if (!r.ok) {
        rejected.push({ domain: d.name, ip: i.ip, reason: r.reason });
        continue;
      }
      const taken = claims.claim(r.value);
      if (taken) {
        rejected.push({ domain: d.name, ip: i.ip, reason: taken.replace(/^endpoint tap \S+: /, "") });
        continue;
      }
      const phase = d.migration?.phase;
      const deviceOnly = phase === "target" ? `incoming migration of ${d.name}: the guest still runs on the source`
        : d.lifecycle === "prepared" ? `domain ${d.name} is starting` : d.lifecycle === "stopped" ? `domain ${d.name} is stopped` : undefined;
      endpoints.push({
        ...r.value, id: endpointId("vm", i.ip), kind: "vm", domain: d.name, ...(deviceOnly ? { deviceOnly } : {}),
        ...(phase ? { migration: phase } : {}), ...(phase === "settling" ? { elevated: true } : {}),
      });
    }
  }
  // Stable sorts: each domain's interfaces stay in their order.
  const byDomain = (a: { domain?: string }, b: { domain?: string }) => (a.domain ?? "").localeCompare(b.domain ?? "");
  return { endpoints: endpoints.sort(byDomain), rejected: rejected.sort(byDomain) };
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
