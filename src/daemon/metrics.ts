import { createServer, type Server } from "node:http";
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from "prom-client";
import type { PassSummary, ReconcileReport } from "./reconciler.js";
import { REJECT_REASONS } from "../bgp/import-filter.js";
import { DHCP_MESSAGES } from "../dataplane/dhcp/dnsmasq.js";

/** What the metrics read from the announcer when scraped. */
export interface BgpSource {
  readonly state: string;
  readonly reconnects: number;
  announcedCount(family?: "ipv4" | "ipv6"): number;
}

const FAMILIES = ["ipv4", "ipv6"] as const;
const familyOf = (prefix: string) => (prefix.includes(":") ? "ipv6" : "ipv4");

// Prometheus metrics (text format), served on the API socket and optionally on
// a loopback TCP port. Counters are fed by the reconciler and the announcer;
// gauges are set from each reconcile report.

export class Metrics {
  readonly registry = new Registry();
  readonly reconciles = new Counter({
    name: "vmrouted_reconciles_total", help: "Reconcile passes, by what triggered them and whether they looked at everything",
    labelNames: ["trigger", "scope"], registers: [this.registry],
  });
  readonly reconcileSeconds = new Histogram({
    name: "vmrouted_reconcile_duration_seconds", help: "Duration of a reconcile pass (observe, plan, apply, verify)",
    buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10], registers: [this.registry],
  });
  readonly kernelOperations = new Counter({ name: "vmrouted_kernel_operations_total", help: "Kernel operations applied", registers: [this.registry] });
  readonly migrations = new Counter({
    name: "vmrouted_migrations_total", help: "Incoming live migrations, by how they ended (completed: settled here; failed: cancelled or failed before the guest ran here)",
    labelNames: ["result"], registers: [this.registry],
  });
  readonly switchover = new Histogram({
    name: "vmrouted_migration_switchover_seconds",
    help: "From the migrated guest's first announcement (or libvirt's resume event) to its elevated route and path on this host",
    buckets: [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5], registers: [this.registry],
  });
  readonly errors = new Counter({ name: "vmrouted_errors_total", help: "Errors, by where they happened", labelNames: ["source"], registers: [this.registry] });
  readonly pathsRejected = new Counter({
    name: "vmrouted_bgp_paths_rejected_total", help: "Learned best paths the import filter refused, each counted once per refusal, by reason",
    labelNames: ["reason"], registers: [this.registry],
  });
  readonly pathsRefusedNow = new Gauge({
    name: "vmrouted_bgp_paths_rejected", help: "Learned best paths refused now, by reason", labelNames: ["reason"], registers: [this.registry],
  });
  readonly learnedLimited = new Gauge({
    name: "vmrouted_bgp_learned_limited", help: "1 while bgp.maxLearned keeps new learned prefixes out", registers: [this.registry],
  });
  readonly duplicates = new Gauge({
    name: "vmrouted_duplicate_endpoints", help: "Local endpoints whose IP another host announces too (not a live migration)", registers: [this.registry],
  });

  readonly dhcpMessages = new Counter({
    name: "vmrouted_dhcp_messages_total", help: "DHCP messages dnsmasq logged on vmrouted's taps, by type (DISCOVER, OFFER, REQUEST, ACK, NAK, ...)",
    labelNames: ["type"], registers: [this.registry],
  });

  constructor() {
    // The event-loop lag histogram samples with a timer: prom-client's default of 10 ms wakes the
    // daemon 100 times a second, 0.7% of a core on an idle host. Every 100 ms still sees a stall.
    collectDefaultMetrics({ register: this.registry, prefix: "vmrouted_", eventLoopMonitoringPrecision: 100 });
    for (const source of ["apply", "reconcile", "bgp", "libvirt", "state", "internal"]) this.errors.inc({ source }, 0);
    for (const result of ["completed", "failed"]) this.migrations.inc({ result }, 0);
    for (const reason of REJECT_REASONS) {
      this.pathsRejected.inc({ reason }, 0);
      this.pathsRefusedNow.set({ reason }, 0);
    }
    this.learnedLimited.set(0);
    this.duplicates.set(0);
  }

  /** BGP metrics, read from the announcer at each scrape. */
  attachBgp(bgp: BgpSource): void {
    new Gauge({
      name: "vmrouted_announced_paths", help: "Paths announced to gobgpd (and still wanted), by family (ipv4: /32s, ipv6: /128s)",
      labelNames: ["family"], registers: [this.registry],
      collect() { for (const family of FAMILIES) this.set({ family }, bgp.announcedCount(family)); },
    });
    new Gauge({
      name: "vmrouted_gobgp_connected", help: "1 while the gobgpd API connection is up", registers: [this.registry],
      collect() { this.set(bgp.state === "up" ? 1 : 0); },
    });
    new Counter({
      name: "vmrouted_gobgp_reconnects_total", help: "Connections to gobgpd re-established after a loss", registers: [this.registry],
      collect() { this.reset(); this.inc(bgp.reconnects); },
    });
  }

  recordPass(pass: PassSummary): void {
    this.reconciles.inc({ trigger: pass.trigger, scope: pass.full ? "full" : "scoped" });
    this.reconcileSeconds.observe(pass.durationMs / 1000);
    this.kernelOperations.inc(pass.operations);
    if (pass.failedOperations) this.errors.inc({ source: "apply" }, pass.failedOperations);
  }

  /** Endpoint, network and learned-route gauges, read from the reported state at each scrape. */
  attachReconciler(reconciler: { report(): ReconcileReport }): void {
    const count = <T extends { state: string }>(items: T[], states: string[]) => {
      const counts = Object.fromEntries(states.map((s) => [s, 0]));
      for (const i of items) counts[i.state] = (counts[i.state] ?? 0) + 1;
      return counts;
    };
    new Gauge({
      name: "vmrouted_endpoints", help: "Endpoints by state", labelNames: ["state"], registers: [this.registry],
      collect() { for (const [state, n] of Object.entries(count(reconciler.report().endpoints, ["ready", "pending", "degraded"]))) this.set({ state }, n); },
    });
    new Gauge({
      name: "vmrouted_networks", help: "Networks (gateways) by state", labelNames: ["state"], registers: [this.registry],
      collect() { for (const [state, n] of Object.entries(count(reconciler.report().networks, ["ready", "pending", "degraded"]))) this.set({ state }, n); },
    });
    new Gauge({
      name: "vmrouted_learned_routes", help: "Routes learned from other hosts, by state and family", labelNames: ["state", "family"], registers: [this.registry],
      collect() {
        const learned = reconciler.report().learned;
        for (const family of FAMILIES)
          for (const [state, n] of Object.entries(count(learned.filter((r) => familyOf(r.prefix) === family), ["installed", "pending", "conflict"])))
            this.set({ state, family }, n);
      },
    });
  }

  /** Kernel events judged, and how many objects they showed had drifted. */
  /** dnsmasq's state, hosts answered for and restarts, read when scraped. */
  attachDhcp(dhcp: { status(): { state: string; hosts: number; restarts: number } }): void {
    for (const type of DHCP_MESSAGES) this.dhcpMessages.inc({ type }, 0);
    new Gauge({ name: "vmrouted_dhcp_hosts", help: "Endpoints dnsmasq answers for (static leases)", registers: [this.registry], collect() { this.set(dhcp.status().hosts); } });
    new Gauge({ name: "vmrouted_dhcp_running", help: "1 while vmrouted's dnsmasq runs and answers", registers: [this.registry], collect() { this.set(dhcp.status().state === "running" ? 1 : 0); } });
    new Gauge({ name: "vmrouted_dhcp_restarts", help: "Times dnsmasq ended by itself and was started again", registers: [this.registry], collect() { this.set(dhcp.status().restarts); } });
  }

  attachKernelWatch(watch: { judged: number; drifted: number }): void {
    new Counter({
      name: "vmrouted_kernel_events_total", help: "Kernel events about links, addresses, routes and neighbours judged", registers: [this.registry],
      collect() { this.reset(); this.inc(watch.judged); },
    });
    new Counter({
      name: "vmrouted_kernel_drift_total", help: "Objects found moved away from the desired state by kernel events", registers: [this.registry],
      collect() { this.reset(); this.inc(watch.drifted); },
    });
  }

  text(): Promise<string> {
    return this.registry.metrics();
  }
}

/** GET /metrics only, on a loopback TCP port. */
export async function startMetricsListener(listen: string, metrics: Metrics): Promise<Server> {
  const i = listen.lastIndexOf(":");
  const host = listen.slice(0, i).replace(/^\[|\]$/g, "");
  const server = createServer((req, res) => {
    if (req.method !== "GET" || req.url !== "/metrics") {
      res.writeHead(404).end("only GET /metrics here\n");
      return;
    }
    metrics.text().then(
      (text) => res.writeHead(200, { "content-type": metrics.registry.contentType }).end(text),
      () => res.writeHead(500).end("metrics failed\n"),
    );
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(Number(listen.slice(i + 1)), host, () => resolve());
  });
  return server;
}
