import { readFile } from "node:fs/promises";
import { join } from "node:path";
import type { Logger } from "pino";
import { z } from "zod";
import {
  addRoutedInterface, interfaceXml, metadataXml, parseDomainXml, removeRoutedInterface, routedInterfaces,
  serializeDomainXml, domainName, type RoutedInterface,
} from "../libvirt/domain-xml.js";
import { applyHook, lifecycleAfter, resolveInterface, type DomainRecord } from "../libvirt/domains.js";
import { Virsh, VirshError } from "../libvirt/virsh.js";
import { InputError } from "../model/errors.js";
import { resolveEndpoint } from "../model/resolve.js";
import { describeZodError } from "../model/spec.js";
import type { Endpoint, Network } from "../model/types.js";
import { writeFileAtomic } from "./atomic-file.js";
import type { ReconcileReport } from "./reconciler.js";

// libvirt domains: hook calls (from the domain XML on stdin, never calling
// back into libvirt), a periodic resync from virsh, and `iface add/remove`.
// The cache is persisted so that a vmrouted restarted while libvirtd is down
// does not tear down running VMs' taps.

const PREPARE_GRACE_MS = 120_000;

const recordSchema = z.object({
  name: z.string(),
  lifecycle: z.enum(["defined", "prepared", "running", "stopped"]),
  interfaces: z.array(z.object({ network: z.string(), ip: z.string(), mac: z.string(), tap: z.string() }).strict()),
  seq: z.number(),
  since: z.number().optional(),
});
const fileSchema = z.object({ version: z.literal(1), domains: z.array(recordSchema) });

export const hookBodySchema = z.object({
  domain: z.string().min(1).max(256),
  op: z.string().max(32),
  subop: z.string().max(32),
  extra: z.string().max(256).default("-"),
  xml: z.string(),
}).strict();

export const ifaceBodySchema = z.object({
  network: z.string(),
  ip: z.string(),
  mac: z.string().optional(),
}).strict();

type Record = DomainRecord & { since?: number };

export interface LibvirtDeps {
  virsh: Virsh;
  stateDir: string;
  log: Logger;
  reconcile: (reason: string) => Promise<ReconcileReport>;
  networks: () => Network[];
  /** IPs and device names taken by tap/netns endpoints. */
  apiClaims: () => Set<string>;
}

export class LibvirtService {
  private domains = new Map<string, Record>();
  private seq = 0;
  state: "unknown" | "up" | "down" = "unknown";
  reason = "not synced with libvirt yet";
  private readonly file: string;

  constructor(private readonly deps: LibvirtDeps) {
    this.file = join(deps.stateDir, "domains.json");
  }

  records(): DomainRecord[] {
    return [...this.domains.values()];
  }

  /** IPs used by any domain's routed interfaces, running or not. */
  claimedIps(): Map<string, string> {
    const ips = new Map<string, string>();
    for (const d of this.domains.values()) for (const i of d.interfaces) ips.set(i.ip, d.name);
    return ips;
  }

  async load(): Promise<void> {
    try {
      const parsed = fileSchema.safeParse(JSON.parse(await readFile(this.file, "utf8")));
      if (!parsed.success) throw new Error("not a vmrouted domain cache");
      for (const d of parsed.data.domains) this.domains.set(d.name, d);
      this.seq = Math.max(0, ...parsed.data.domains.map((d) => d.seq));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "ENOENT")
        this.deps.log.error({ file: this.file, err: (e as Error).message }, "domain cache unreadable; waiting for libvirt");
    }
  }

  private persist(): Promise<void> {
    return writeFileAtomic(this.file, JSON.stringify({ version: 1, domains: this.records() }) + "\n");
  }

  /** A hook call. Uses only the XML libvirt handed the hook. */
  async hook(body: unknown): Promise<{ domain: string; lifecycle: string; endpoints: ReconcileReport["endpoints"] }> {
    const parsed = hookBodySchema.safeParse(body);
    if (!parsed.success) throw new InputError(describeZodError(parsed.error, "hook"));
    const { domain, op, subop, xml } = parsed.data;
    const next = lifecycleAfter(op, subop); // throws on an unknown operation
    const doc = parseDomainXml(xml, "hook domain XML");
    const named = domainName(doc);
    if (named !== undefined && named !== domain) throw new InputError(`hook: domain XML is for '${named}', not '${domain}'`);
    const interfaces = routedInterfaces(doc);
    if (next === undefined) return { domain, lifecycle: this.domains.get(domain)?.lifecycle ?? "unknown", endpoints: [] };
    // A start whose interfaces cannot be served is refused before anything is recorded.
    if (next === "prepared")
      for (const i of interfaces) {
        const r = resolveInterface(i, this.deps.networks());
        if (!r.ok) throw new InputError(`hook: domain '${domain}': interface ${i.ip}: ${r.reason}`);
      }
    applyHook(this.domains, { domain, op, subop, interfaces }, ++this.seq);
    const record = this.domains.get(domain);
    if (record) record.since = Date.now();
    await this.persist();
    const report = await this.deps.reconcile(`hook ${domain} ${op} ${subop}`);
    const mine = report.endpoints.filter((e) => e.domain === domain);
    if (next === "prepared") {
      // Fail the start only when the tap cannot exist: qemu could not open it.
      for (const i of interfaces) {
        const e = mine.find((x) => x.ip === i.ip);
        if (!e || !e.conditions.device) throw new Error(`tap ${i.tap} for ${i.ip} could not be created: ${e?.reason ?? "interface rejected (see vmroutectl status)"}`);
      }
    }
    return { domain, lifecycle: record?.lifecycle ?? "defined", endpoints: mine };
  }

  /**
   * Interface changes and refreshes run one at a time: a refresh reading
   * libvirt between our record update and the metadata write of a hot-plug
   * would drop the new interface (and the next pass its tap, as libvirt opens
   * it). Hooks are not queued here: libvirt waits on them while it may hold
   * the job a refresh's virsh call waits for; their sequence numbers order them.
   */
  private exclusive<T>(task: () => Promise<T>): Promise<T> {
    const run = this.lock.then(task, task);
    this.lock = run.catch(() => undefined);
    return run;
  }
  private lock: Promise<unknown> = Promise.resolve();

  /** Rebuilds the cache from libvirt; hook events that arrived meanwhile win. */
  refresh(): Promise<void> {
    return this.exclusive(() => this.refreshNow());
  }

  private async refreshNow(): Promise<void> {
    const startSeq = this.seq;
    let fresh: Map<string, Record>;
    try {
      const listing = await this.deps.virsh.list();
      const xmls = await this.deps.virsh.dumpAll(listing);
      const running = new Set<string>();
      fresh = new Map();
      for (const [i, text] of xmls.entries()) {
        try {
          const doc = parseDomainXml(text, "libvirt domain XML");
          const name = domainName(doc);
          if (!name) continue;
          if (listing[i]?.running) running.add(name);
          fresh.set(name, { name, lifecycle: running.has(name) ? "running" : "defined", interfaces: routedInterfaces(doc), seq: 0 });
        } catch (e) {
          this.deps.log.warn({ err: (e as Error).message }, "skipping a domain whose XML cannot be read");
        }
      }
    } catch (e) {
      if (this.state !== "down") this.deps.log.warn({ err: (e as Error).message }, "libvirt unreachable; keeping the last known domains");
      this.state = "down";
      this.reason = (e as Error).message;
      return;
    }
    const now = Date.now();
    for (const [name, old] of this.domains) {
      const f = fresh.get(name);
      if (old.seq > startSeq) fresh.set(name, old);
      // Between prepare and started libvirt still says "shut off": keep the tap for qemu.
      else if (old.lifecycle === "prepared" && f?.lifecycle !== "running" && now - (old.since ?? 0) < PREPARE_GRACE_MS) fresh.set(name, old);
      else if (f) Object.assign(f, { seq: old.seq, ...(old.since !== undefined ? { since: old.since } : {}) });
    }
    // What matters is lifecycle and interfaces; seq/since are bookkeeping.
    const essence = (m: Map<string, Record>) => JSON.stringify([...m.values()].map((d) => [d.name, d.lifecycle, d.interfaces]).sort());
    const changed = essence(this.domains) !== essence(fresh);
    this.domains = fresh;
    this.state = "up";
    this.reason = "";
    if (changed) {
      await this.persist();
      await this.deps.reconcile("libvirt resync");
    }
  }

  private async domainState(name: string): Promise<string> {
    try {
      return await this.deps.virsh.state(name);
    } catch (e) {
      if (e instanceof VirshError && /failed to get domain|not found/i.test(e.message)) throw new InputError(`unknown domain '${name}'`);
      throw e;
    }
  }

  async addInterface(domain: string, body: unknown): Promise<RoutedInterface> {
    const parsed = ifaceBodySchema.safeParse(body);
    if (!parsed.success) throw new InputError(describeZodError(parsed.error, "iface"));
    const r = resolveEndpoint({ kind: "tap", ...parsed.data }, this.deps.networks());
    if (!r.ok) throw new InputError(r.error.replace(/^endpoint tap/, "iface"));
    return this.exclusive(() => this.addInterfaceNow(domain, r.value));
  }

  private async addInterfaceNow(domain: string, endpoint: Endpoint): Promise<RoutedInterface> {
    const state = await this.domainState(domain);
    await this.refreshNow();
    const owner = this.claimedIps().get(endpoint.ip);
    if (owner) throw new InputError(`iface ${endpoint.ip}: ip is already used by domain '${owner}'`);
    if (this.deps.apiClaims().has(endpoint.ip)) throw new InputError(`iface ${endpoint.ip}: ip is already used by another endpoint`);
    const iface: RoutedInterface = { network: endpoint.network, ip: endpoint.ip, mac: endpoint.mac, tap: endpoint.device };
    const live = state === "running" || state === "paused";
    if (!live) {
      const doc = parseDomainXml(await this.deps.virsh.dumpXml(domain, true));
      addRoutedInterface(doc, iface);
      await this.deps.virsh.define(serializeDomainXml(doc));
      this.upsert(domain, "defined", [...this.interfacesOf(domain), iface]);
      await this.persist();
      return iface;
    }
    // Running: the tap must exist before libvirt opens it for the hot-plug.
    const before = this.interfacesOf(domain);
    this.upsert(domain, "running", [...before, iface]);
    await this.persist();
    await this.deps.reconcile(`iface add ${domain} ${iface.ip}`);
    let attached = false;
    try {
      await this.deps.virsh.attachDevice(domain, interfaceXml(iface), true);
      attached = true;
      await this.deps.virsh.setMetadata(domain, metadataXml([...before, iface]), true);
    } catch (e) {
      // Undo in reverse: the domain must not keep an interface whose tap goes away.
      if (attached) await this.deps.virsh.detachDevice(domain, interfaceXml(iface), true).catch((d: Error) =>
        this.deps.log.error({ domain, ip: iface.ip, err: d.message }, "rollback: detaching the interface failed"));
      this.upsert(domain, "running", before);
      await this.persist();
      await this.deps.reconcile(`iface add ${domain} ${iface.ip} rolled back`);
      throw new InputError(`iface add: ${(e as Error).message}`);
    }
    return iface;
  }

  removeInterface(domain: string, ip: string): Promise<RoutedInterface> {
    return this.exclusive(() => this.removeInterfaceNow(domain, ip));
  }

  private async removeInterfaceNow(domain: string, ip: string): Promise<RoutedInterface> {
    const state = await this.domainState(domain);
    const live = state === "running" || state === "paused";
    if (!live) {
      const doc = parseDomainXml(await this.deps.virsh.dumpXml(domain, true));
      const iface = removeRoutedInterface(doc, ip);
      await this.deps.virsh.define(serializeDomainXml(doc));
      this.upsert(domain, "defined", this.interfacesOf(domain).filter((i) => i.ip !== ip));
      await this.persist();
      return iface;
    }
    const current = routedInterfaces(parseDomainXml(await this.deps.virsh.dumpXml(domain, false)));
    const iface = current.find((i) => i.ip === ip);
    if (!iface) throw new InputError(`domain '${domain}' has no routed interface with ip ${ip}`);
    const rest = current.filter((i) => i.ip !== ip);
    await this.deps.virsh.detachDevice(domain, interfaceXml(iface), true);
    await this.deps.virsh.setMetadata(domain, rest.length ? metadataXml(rest) : undefined, true);
    this.upsert(domain, "running", rest);
    await this.persist();
    await this.deps.reconcile(`iface remove ${domain} ${ip}`);
    return iface;
  }

  private interfacesOf(domain: string): RoutedInterface[] {
    return this.domains.get(domain)?.interfaces ?? [];
  }

  private upsert(name: string, lifecycle: DomainRecord["lifecycle"], interfaces: RoutedInterface[]): void {
    this.domains.set(name, { name, lifecycle, interfaces, seq: ++this.seq, since: Date.now() });
  }
}
