import { readFileSync } from "node:fs";
import type { Logger } from "pino";
import { z } from "zod";
import {
  addRoutedInterface, domainName, domainUuid, interfaceXml, metadataXml, parseDomainXml, removeRoutedInterface,
  routedInterfaces, serializeDomainXml, type RoutedInterface,
} from "../libvirt/domain-xml.js";
import {
  applyHook, heldByAnother, HOOK_SEQ, hookCallStale, lifecycleAfter, mergeResync, resolveInterface, sameDomains, type DomainRecord,
} from "../libvirt/domains.js";
import { readDomains } from "../libvirt/read.js";
import { Virsh, VirshError } from "../libvirt/virsh.js";
import { InputError } from "../model/errors.js";
import { resolveEndpoint } from "../model/resolve.js";
import { describeZodError } from "../model/spec.js";
import type { Endpoint, Network } from "../model/types.js";
import type { DesiredStore } from "../state/desired.js";
import { Serial } from "../state/serial.js";
import type { EndpointStatus } from "./report.js";

// libvirt domains: hook calls (from the domain XML libvirt hands the hook,
// never calling back into libvirt), a periodic resync from virsh, and
// `iface add/remove`. Every change of the domains goes through the desired
// state's one writer; this service only decides what the change is.

export const hookQuerySchema = z.object({
  domain: z.string().min(1).max(256),
  op: z.string().max(32),
  subop: z.string().max(32),
  extra: z.string().max(256).default("-"),
  /**
   * The shim's sequence for this call: BOOT_ID:NS (the boot id and the monotonic clock in ns), so that an older
   * call never overrides a newer one of the same boot; plain digits from an older shim (its wall clock) are
   * accepted too (hookCallStale).
   */
  seq: z.string().regex(HOOK_SEQ, "must be digits, or BOOT_ID:DIGITS (the boot id and the monotonic clock in ns)").optional(),
}).strict();

/**
 * Whether a tap is held open by a process (its carrier, from sysfs: one read,
 * no process). Anything but a definite "0" (no such device, a name that is
 * not one, a device down) counts as held: a start is refused rather than a
 * running domain's address taken.
 */
export function tapHeldOpen(tap: string): boolean {
  if (!/^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,14}$/.test(tap)) return true;
  try {
    return readFileSync(`/sys/class/net/${tap}/carrier`, "utf8").trim() !== "0";
  } catch {
    return true;
  }
}

export const ifaceBodySchema = z.object({
  network: z.string(),
  ip: z.string(),
  ip6: z.string().optional(),
  mac: z.string().optional(),
}).strict();

export interface LibvirtDeps {
  virsh: Virsh;
  store: DesiredStore;
  log: Logger;
  /** Resolves once everything changed so far has been through a reconcile pass. */
  settled: () => Promise<void>;
  /** An endpoint's reported state, as of the pass that last looked at it. */
  endpoint: (id: string) => EndpointStatus | undefined;
  networks: () => Network[];
  /** Why this host cannot take an incoming migration now (undefined: it can). */
  canTakeMigration: () => string | undefined;
  /** IPs and device names (dev:NAME) taken by tap/netns endpoints. */
  apiClaims: () => Set<string>;
}

export interface HookAnswer {
  domain: string;
  lifecycle: string;
  /** Set when the call was older than one already applied, and so ignored. */
  ignored?: string;
  endpoints: EndpointStatus[];
}

export class LibvirtService {
  state: "unknown" | "up" | "down" = "unknown";
  reason = "not synced with libvirt yet";
  /** Domains whose XML could not be read at the last resync, with why (their records are kept as they were). */
  unreadable: Array<{ uuid: string; error: string }> = [];
  private seq = 0;
  /**
   * Interface changes and resyncs run one at a time: a resync reading libvirt
   * between our record update and the metadata write of a hot-plug would drop
   * the new interface. Hooks are not queued here: libvirt waits on them while
   * it may hold the job a resync's virsh call waits for; their seq orders them.
   */
  private readonly exclusive = new Serial();

  constructor(private readonly deps: LibvirtDeps) {
    for (const d of deps.store.current.domains.values()) this.seq = Math.max(this.seq, d.seq);
  }

  records(): DomainRecord[] {
    return [...this.deps.store.current.domains.values()];
  }

  /** A hook call: the domain XML libvirt handed the hook is all it uses. */
  async hook(query: unknown, xml: string): Promise<HookAnswer> {
    const parsed = hookQuerySchema.safeParse(query);
    if (!parsed.success) throw new InputError(describeZodError(parsed.error, "hook"));
    const { domain, op, subop, seq } = parsed.data;
    const next = lifecycleAfter(op, subop); // throws on an unknown operation
    if (next !== undefined) this.deps.log.info({ domain, op, subop, extra: parsed.data.extra }, `hook ${op} ${subop}`);
    const doc = parseDomainXml(xml, "hook domain XML");
    const named = domainName(doc);
    if (named !== undefined && named !== domain) throw new InputError(`hook: domain XML is for '${named}', not '${domain}'`);
    const interfaces = routedInterfaces(doc);
    const uuid = domainUuid(doc);
    if (next === undefined) return { domain, lifecycle: this.deps.store.current.domains.get(domain)?.lifecycle ?? "unknown", endpoints: [] };
    // An incoming migration this host could not announce is refused, so that libvirt aborts it and the guest stays.
    if (op === "migrate" && subop === "begin") {
      const why = this.deps.canTakeMigration();
      if (why) throw new InputError(`hook: refusing the incoming migration of '${domain}': ${why}`);
    }
    // A start whose interfaces cannot be served is refused before anything is recorded.
    if (next === "prepared")
      for (const i of interfaces) {
        const r = resolveInterface(i, this.deps.networks());
        if (!r.ok) throw new InputError(`hook: domain '${domain}': interface ${i.ip}: ${r.reason}`);
      }
    const outcome = await this.deps.store.change<{ ignored?: string; refused?: string }>(`hook: ${domain} ${op} ${subop}`, (d) => {
      const record = d.domains.get(domain);
      const stale = hookCallStale(record?.hookSeq, seq, Date.now());
      if (stale) return { next: {}, result: { ignored: stale } };
      // A domain whose IP or tap another one holds (a virt-clone of a running domain carries its metadata) does not
      // start, and the holder is not touched. Decided here, in the writer: two starts at once see each other.
      const held = next === "prepared" ? heldByAnother(d.domains.values(), domain, interfaces, tapHeldOpen) : undefined;
      if (held) return { next: {}, result: { refused: held } };
      const domains = applyHook(d.domains, { domain, ...(uuid ? { uuid } : {}), op, subop, interfaces }, ++this.seq);
      const after = domains.get(domain);
      if (seq !== undefined && after) (domains as Map<string, DomainRecord>).set(domain, { ...after, hookSeq: seq });
      return { next: { domains }, result: {} };
    });
    if (outcome.refused) {
      this.deps.log.warn({ domain, op, subop }, `hook call refused: ${outcome.refused}`);
      throw new InputError(`hook: domain '${domain}': ${outcome.refused}`);
    }
    const lifecycle = this.deps.store.current.domains.get(domain)?.lifecycle ?? "defined";
    if (outcome.ignored !== undefined) {
      this.deps.log.warn({ domain, op, subop, seq }, `hook call ignored: ${outcome.ignored}`);
      return { domain, lifecycle, ignored: outcome.ignored, endpoints: [] };
    }
    // Only a start (or an incoming migration) waits: qemu opens the taps next.
    if (next !== "prepared") return { domain, lifecycle, endpoints: [] };
    await this.deps.settled();
    const endpoints = interfaces.map((i) => this.deps.endpoint(`vm:${i.ip}`));
    interfaces.forEach((i, n) => {
      const e = endpoints[n];
      // Fail the start only when the tap cannot exist: qemu could not open it.
      if (!e || !e.conditions.device) throw new Error(`tap ${i.tap} for ${i.ip} could not be created: ${e?.reason ?? "interface rejected (see vmroutectl status)"}`);
    });
    return { domain, lifecycle, endpoints: endpoints.filter((e): e is EndpointStatus => !!e) };
  }

  /** Re-reads every domain from libvirt; hook calls that arrived meanwhile win. */
  refresh(): Promise<void> {
    return this.exclusive.run(() => this.refreshNow());
  }

  private async refreshNow(): Promise<void> {
    const startSeq = this.seq;
    let read: Awaited<ReturnType<typeof readDomains>>;
    try {
      read = await readDomains(this.deps.virsh);
    } catch (e) {
      if (this.state !== "down") this.deps.log.warn({ err: (e as Error).message }, "libvirt unreachable; keeping the last known domains");
      this.state = "down";
      this.reason = (e as Error).message;
      return;
    }
    if (read.unreadable.length) this.deps.log.warn({ unreadable: read.unreadable }, "domains whose XML could not be read keep their last known state");
    this.unreadable = read.unreadable;
    this.state = "up";
    this.reason = "";
    const bad = new Set(read.unreadable.map((u) => u.uuid));
    await this.deps.store.change("libvirt: resync", (d) => {
      const domains = mergeResync(d.domains, read.listed, bad, startSeq, Date.now());
      // libvirt answered: the domains are its whole set from now on (vm-class objects nobody explains may go).
      return { next: { ...(sameDomains(domains, d.domains) ? {} : { domains }), ...(d.domainsKnown ? {} : { domainsKnown: true }) }, result: undefined };
    });
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
    return this.exclusive.run(() => this.addInterfaceNow(domain, r.value));
  }

  private async addInterfaceNow(domain: string, endpoint: Endpoint): Promise<RoutedInterface> {
    const state = await this.domainState(domain);
    await this.refreshNow();
    const ips = [endpoint.ip, ...(endpoint.ip6 ? [endpoint.ip6] : [])];
    const owner = this.records().find((d) => d.interfaces.some((i) => ips.includes(i.ip) || (i.ip6 !== undefined && ips.includes(i.ip6))));
    if (owner) throw new InputError(`iface ${endpoint.ip}: ip is already used by domain '${owner.name}'`);
    if (ips.some((ip) => this.deps.apiClaims().has(ip))) throw new InputError(`iface ${endpoint.ip}: ip is already used by another endpoint`);
    const iface: RoutedInterface = {
      network: endpoint.network, ip: endpoint.ip, ...(endpoint.ip6 ? { ip6: endpoint.ip6 } : {}), mac: endpoint.mac, tap: endpoint.device,
    };
    const live = state === "running" || state === "paused";
    if (!live) {
      const doc = parseDomainXml(await this.deps.virsh.dumpXml(domain, true));
      addRoutedInterface(doc, iface);
      await this.deps.virsh.define(serializeDomainXml(doc));
      await this.setInterfaces(domain, "defined", [...this.interfacesOf(domain), iface], `iface add ${domain} ${iface.ip}`);
      return iface;
    }
    // Running: the tap must exist before libvirt opens it for the hot-plug.
    const before = this.interfacesOf(domain);
    // Checked first, so that a foreign interface with our tap name is refused before anything changes.
    addRoutedInterface(parseDomainXml(await this.deps.virsh.dumpXml(domain, false)), iface);
    await this.setInterfaces(domain, "running", [...before, iface], `iface add ${domain} ${iface.ip}`);
    await this.deps.settled();
    let attached = false;
    try {
      await this.deps.virsh.attachDevice(domain, interfaceXml(iface), true);
      attached = true;
      await this.deps.virsh.setMetadata(domain, metadataXml([...before, iface]), true);
    } catch (e) {
      // Undo in reverse: the domain must not keep an interface whose tap goes away.
      if (attached) await this.deps.virsh.detachDevice(domain, interfaceXml(iface), true).catch((d: Error) =>
        this.deps.log.error({ domain, ip: iface.ip, err: d.message }, "rollback: detaching the interface failed"));
      await this.setInterfaces(domain, "running", before, `iface add ${domain} ${iface.ip} rolled back`);
      throw new InputError(`iface add: ${(e as Error).message}`);
    }
    return iface;
  }

  removeInterface(domain: string, ip: string): Promise<RoutedInterface> {
    return this.exclusive.run(() => this.removeInterfaceNow(domain, ip));
  }

  private async removeInterfaceNow(domain: string, ip: string): Promise<RoutedInterface> {
    const state = await this.domainState(domain);
    const live = state === "running" || state === "paused";
    if (!live) {
      const doc = parseDomainXml(await this.deps.virsh.dumpXml(domain, true));
      const iface = removeRoutedInterface(doc, ip);
      await this.deps.virsh.define(serializeDomainXml(doc));
      await this.setInterfaces(domain, "defined", this.interfacesOf(domain).filter((i) => i.ip !== ip), `iface remove ${domain} ${ip}`);
      return iface;
    }
    const current = routedInterfaces(parseDomainXml(await this.deps.virsh.dumpXml(domain, false)));
    const iface = current.find((i) => i.ip === ip);
    if (!iface) throw new InputError(`domain '${domain}' has no routed interface with ip ${ip}`);
    const rest = current.filter((i) => i.ip !== ip);
    await this.deps.virsh.detachDevice(domain, interfaceXml(iface), true);
    await this.deps.virsh.setMetadata(domain, rest.length ? metadataXml(rest) : undefined, true);
    await this.setInterfaces(domain, "running", rest, `iface remove ${domain} ${ip}`);
    await this.deps.settled();
    return iface;
  }

  private interfacesOf(domain: string): RoutedInterface[] {
    return this.deps.store.current.domains.get(domain)?.interfaces ?? [];
  }

  private setInterfaces(name: string, lifecycle: DomainRecord["lifecycle"], interfaces: RoutedInterface[], why: string): Promise<void> {
    return this.deps.store.change(`api: ${why}`, (d) => {
      const domains = new Map(d.domains);
      const old = d.domains.get(name);
      domains.set(name, { ...old, name, lifecycle, interfaces, seq: ++this.seq, since: Date.now() });
      return { next: { domains }, result: undefined };
    });
  }
}
