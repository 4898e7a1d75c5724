import { InputError } from "../model/errors.js";
import type { Endpoint, Network } from "../model/types.js";
import { endpointId } from "../model/types.js";
import { resolveEndpoint } from "../model/resolve.js";
import type { RoutedInterface } from "./domain-xml.js";

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
  lifecycle: Lifecycle;
  interfaces: RoutedInterface[];
  /** Bumped on every hook event: a libvirt resync that started earlier must not overwrite it. */
  seq: number;
}

export const HOOK_OPS = ["prepare", "start", "started", "stopped", "release", "migrate", "restore", "reconnect", "attach"] as const;
export type HookOp = (typeof HOOK_OPS)[number];

export interface HookEvent {
  domain: string;
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

export function applyHook(domains: Map<string, DomainRecord>, event: HookEvent, seq: number): void {
  const next = lifecycleAfter(event.op, event.subop);
  if (next === undefined) return;
  if (next === "released") {
    const record = domains.get(event.domain);
    if (record) domains.set(event.domain, { ...record, lifecycle: "defined", seq });
    return;
  }
  domains.set(event.domain, { name: event.domain, lifecycle: next, interfaces: event.interfaces, seq });
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
      const deviceOnly = d.lifecycle === "prepared" ? `domain ${d.name} is starting` : d.lifecycle === "stopped" ? `domain ${d.name} is stopped` : undefined;
      endpoints.push({
        ...r.value, id: endpointId("vm", i.ip), kind: "vm", domain: d.name, ...(deviceOnly ? { deviceOnly } : {}),
      });
    }
  }
  return { endpoints, rejected };
}
