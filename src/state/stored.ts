import { z } from "zod";
import { endpointInputSchema, networkInputSchema, type EndpointInput, type NetworkInput } from "../model/spec.js";
import type { DomainRecord } from "../libvirt/domains.js";
import { StateFile } from "./files.js";
import type { DesiredPersistence } from "./desired.js";

// The desired state's files in stateDir: state.json (runtime networks and
// tap/netns endpoints) and domains.json (the libvirt cache, so VMs keep their
// taps while libvirtd is down).

export interface RuntimeState {
  networks: Record<string, NetworkInput>;
  endpoints: EndpointInput[];
}

export function emptyRuntimeState(): RuntimeState {
  return { networks: {}, endpoints: [] };
}

const runtimeFileSchema = z.object({
  version: z.literal(1),
  networks: z.record(networkInputSchema),
  endpoints: z.array(endpointInputSchema),
}).strict().transform(({ networks, endpoints }): RuntimeState => ({ networks, endpoints }));

const interfaceSchema = z.object({ network: z.string(), ip: z.string(), mac: z.string(), tap: z.string() }).strict();
const domainSchema = z.object({
  name: z.string(),
  uuid: z.string().optional(),
  lifecycle: z.enum(["defined", "prepared", "running", "stopped"]),
  interfaces: z.array(interfaceSchema),
  seq: z.number(),
  since: z.number().optional(),
  hookSeq: z.string().optional(),
  migration: z.object({
    phase: z.enum(["target", "settling", "source"]), since: z.number(), liveBy: z.enum(["garp", "rarp", "resume"]).optional(),
  }).strict().optional(),
}).strict();
/** The libvirt cache: the domains, and whether they are libvirt's whole set (false: written while libvirt was never read). */
export interface DomainsCache {
  domains: ReadonlyMap<string, DomainRecord>;
  complete: boolean;
}

const domainsFileSchema = z.object({ version: z.literal(1), domains: z.array(domainSchema), complete: z.boolean().optional() })
  .transform((f): DomainsCache => ({ domains: new Map(f.domains.map((d) => [d.name, d as DomainRecord])), complete: f.complete !== false }));

export function runtimeFile(stateDir: string): StateFile<RuntimeState> {
  // Durable: the operator's intent must survive the host losing power (files.ts).
  return new StateFile(stateDir, "state.json", runtimeFileSchema, emptyRuntimeState,
    (s) => JSON.stringify({ version: 1, ...s }, null, 2) + "\n", true);
}

export function domainsFile(stateDir: string): StateFile<DomainsCache> {
  // Empty when missing or corrupt: not the whole set (recover.ts keeps vm-class objects until libvirt answers).
  return new StateFile(stateDir, "domains.json", domainsFileSchema, () => ({ domains: new Map(), complete: false }),
    (c) => JSON.stringify({ version: 1, domains: [...c.domains.values()], ...(c.complete ? {} : { complete: false }) }) + "\n");
}

export function persistence(stateDir: string): DesiredPersistence {
  const runtime = runtimeFile(stateDir);
  const domains = domainsFile(stateDir);
  return { saveRuntime: (s) => runtime.save(s), saveDomains: (d, complete) => domains.save({ domains: d, complete }) };
}
