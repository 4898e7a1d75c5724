import type { Announcer } from "../bgp/announcer.js";
import type { Importer } from "../bgp/importer.js";
import type { Config } from "../config/schema.js";
import type { GatewayKind } from "../dataplane/capabilities.js";
import { groupStats } from "../dataplane/observe.js";
import { InputError } from "../model/errors.js";
import type { DesiredState } from "../model/types.js";
import type { VmEndpoints } from "../libvirt/domains.js";
import { TextBody, type Route } from "./api.js";
import type { Controller } from "./controller.js";
import { Counters } from "./counters.js";
import type { LibvirtService } from "./libvirt.js";
import type { Metrics } from "./metrics.js";
import type { Reconciler } from "./reconciler.js";
import { buildStatus, type BgpStatus, type Status } from "./status.js";
import { storageStatus } from "../state/files.js";
import type { ConfigImpact } from "../config/impact.js";
import type { ImportVerdict } from "../bgp/import-filter.js";
import type { DhcpServer } from "../dataplane/dhcp/dnsmasq.js";

// The HTTP API's routes (DESIGN.md "Interfaces"): each is one call into the
// controller, the libvirt service or the reported state.

export interface RouteDeps {
  config: Config;
  gatewayKind: GatewayKind;
  controller: Controller;
  reconciler: Reconciler;
  metrics: Metrics;
  desired: () => DesiredState;
  rejected: () => VmEndpoints["rejected"];
  /** Stored entries that do not resolve (held). */
  problems: () => string[];
  /** The import filter's refusals, duplicates and limit, as of the newest learned set. */
  imports: () => Omit<ImportVerdict, "install">;
  /** What a restart with this config text would change (`vmroutectl config check`). */
  checkConfig: (text: string, name: string) => ConfigImpact;
  announcer?: Announcer;
  importer?: Importer;
  libvirt?: LibvirtService;
  dhcp?: DhcpServer;
}

const noBgp: BgpStatus = { enabled: false, state: "disabled", peers: [], announced: 0 };

export function apiRoutes(d: RouteDeps): Route[] {
  const traffic = new Counters(() => groupStats(d.config.dataplane.netdevGroup));
  const status = async (): Promise<Status> => {
    const s = buildStatus(d.config, d.reconciler.report(), {
      bgp: d.announcer ? {
        ...await d.announcer.status(),
        ...(d.importer ? { importer: importerStatus(d.importer, d.imports(), d.config.bgp?.maxLearned ?? 0) } : {}),
      } : noBgp,
      gatewayKind: d.gatewayKind,
      libvirt: d.libvirt
        ? {
          enabled: true, state: d.libvirt.state, ...(d.libvirt.reason ? { reason: d.libvirt.reason } : {}),
          rejected: d.rejected(), unreadable: d.libvirt.unreadable,
        }
        : { enabled: false, state: "disabled", rejected: [], unreadable: [] },
      passes: d.reconciler.passes, operationsApplied: d.reconciler.operationsApplied,
      passesByTrigger: Object.fromEntries(d.reconciler.passesByTrigger),
      problems: d.problems(), storage: storageStatus(),
      failing: d.reconciler.failing, ...(d.reconciler.lastError ? { lastError: d.reconciler.lastError } : {}),
    });
    const counters = (await traffic.get()).stats;
    // New objects: the reported state the reconciler keeps is never changed by a caller.
    const duplicates = d.imports().duplicates;
    if (d.dhcp) s.dhcp = d.dhcp.status();
    const served = new Set(d.dhcp?.served().map((h) => h.id));
    s.endpoints = s.endpoints.map((e) => {
      const other = duplicates.get(e.id);
      const ack = d.dhcp?.acks.get(e.mac);
      return {
        ...e, counters: counters.get(e.device) ?? e.counters,
        // Whether dnsmasq answers this endpoint's guest, and its last lease handed out here.
        ...(served.has(e.id) ? { dhcp: { served: true, ...(ack && ack.ip === e.ip ? { lastAck: ack.at } : {}) } } : {}),
        ...(d.announcer ? { conditions: { ...e.conditions, announced: d.announcer.isAnnounced(e.ip) } } : {}),
        // Another host announces this IP for another workload: works here, but the fabric routes it to one of the two.
        ...(other ? { duplicate: other, state: "degraded" as const, reason: `duplicate: ${e.ip} is also announced by ${other} (not a live migration)` } : {}),
      };
    });
    return s;
  };
  const after = (p: Promise<unknown>) => p.then(status);
  const needLibvirt = (): LibvirtService => {
    if (!d.libvirt) throw new InputError("libvirt integration is disabled in the config (libvirt.enabled: false)");
    return d.libvirt;
  };
  const domainsView = async () => {
    const endpoints = new Map(d.reconciler.report().endpoints.filter((e) => e.kind === "vm").map((e) => [e.ip, e]));
    return needLibvirt().records().sort((a, b) => a.name.localeCompare(b.name)).map((rec) => ({
      domain: rec.name, lifecycle: rec.lifecycle, ...(rec.migration ? { migration: rec.migration.phase } : {}),
      interfaces: rec.interfaces.map((i) => {
        const e = endpoints.get(i.ip);
        return { ...i, state: e?.state ?? "none", reason: e?.reason ?? (rec.lifecycle === "defined" ? "domain is not running" : "") };
      }),
    }));
  };
  const c = d.controller;
  return [
    { method: "GET", path: /^\/v1\/status$/, handler: () => status() },
    { method: "GET", path: /^\/v1\/spec$/, handler: async () => c.spec() },
    { method: "POST", path: /^\/v1\/config\/check$/, raw: true, handler: async (body, q) => d.checkConfig(body as string, q.get("name") ?? "config") },
    { method: "PUT", path: /^\/v1\/spec$/, handler: (body) => after(c.applySpec(body)) },
    { method: "GET", path: /^\/v1\/networks$/, handler: async () => (await status()).networks },
    { method: "POST", path: /^\/v1\/networks$/, handler: (body) => after(c.addNetwork(body)) },
    { method: "DELETE", path: /^\/v1\/networks\/([^/]+)$/, handler: (_b, _q, [name]) => after(c.removeNetwork(name!)) },
    { method: "POST", path: /^\/v1\/endpoints$/, handler: (body) => after(c.addEndpoint(body)) },
    {
      method: "DELETE", path: /^\/v1\/endpoints$/,
      handler: (_b, q) => after(c.removeEndpoint({
        ...(q.get("kind") ? { kind: q.get("kind")! } : {}), ...(q.get("ip") ? { ip: q.get("ip")! } : {}),
        ...(q.get("netns") ? { netns: q.get("netns")! } : {}),
      })),
    },
    // The domain XML as the body, as libvirt handed it to the hook; the call's arguments in the query.
    { method: "POST", path: /^\/v1\/hook$/, raw: true, handler: (body, q) => needLibvirt().hook(Object.fromEntries(q), body as string) },
    { method: "GET", path: /^\/v1\/domains$/, handler: () => domainsView() },
    {
      method: "POST", path: /^\/v1\/domains\/([^/]+)\/interfaces$/,
      handler: async (body, _q, [name]) => ({ added: await needLibvirt().addInterface(name!, body), domains: await domainsView() }),
    },
    {
      method: "DELETE", path: /^\/v1\/domains\/([^/]+)\/interfaces\/([^/]+)$/,
      handler: async (_b, _q, [name, ip]) => ({ removed: await needLibvirt().removeInterface(name!, ip!), domains: await domainsView() }),
    },
    { method: "POST", path: /^\/v1\/reconcile$/, handler: () => after(d.reconciler.full("api")) },
    {
      method: "GET", path: /^\/v1\/routes$/,
      handler: async (_b, q) => (q.has("rejected") ? d.imports().rejected : d.reconciler.report().learned),
    },
    { method: "GET", path: /^\/metrics$/, handler: async () => new TextBody(d.metrics.registry.contentType, await d.metrics.text()) },
  ];
}

function importerStatus(i: Importer, imports: Omit<ImportVerdict, "install">, maxLearned: number): NonNullable<BgpStatus["importer"]> {
  const rejected: Record<string, number> = {};
  for (const r of imports.rejected) rejected[r.reason] = (rejected[r.reason] ?? 0) + 1;
  return {
    state: i.state, ...(i.reason ? { reason: i.reason } : {}), corrections: i.corrections, rejected, maxLearned,
    limited: imports.limited, duplicates: imports.duplicates.size,
  };
}
