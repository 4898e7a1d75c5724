import { createServer, type Server } from "node:http";
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from "prom-client";
import type { ReconcileReport } from "./reconciler.js";

/** What the metrics read from the announcer when scraped. */
export interface BgpSource {
  readonly state: string;
  readonly reconnects: number;
  announcedCount(): number;
}

// Prometheus metrics (text format), served on the API socket and optionally on
// a loopback TCP port. Counters are fed by the reconciler and the announcer;
// gauges are set from each reconcile report.

export class Metrics {
  readonly registry = new Registry();
  private readonly endpoints = new Gauge({ name: "vmrouted_endpoints", help: "Endpoints by state", labelNames: ["state"], registers: [this.registry] });
  private readonly networks = new Gauge({ name: "vmrouted_networks", help: "Networks (gateways) by state", labelNames: ["state"], registers: [this.registry] });
  readonly reconciles = new Counter({ name: "vmrouted_reconciles_total", help: "Reconcile passes", labelNames: ["trigger"], registers: [this.registry] });
  readonly reconcileSeconds = new Histogram({
    name: "vmrouted_reconcile_duration_seconds", help: "Duration of a reconcile pass (observe, plan, apply, verify)",
    buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10], registers: [this.registry],
  });
  readonly kernelOperations = new Counter({ name: "vmrouted_kernel_operations_total", help: "Kernel operations applied", registers: [this.registry] });
  readonly errors = new Counter({ name: "vmrouted_errors_total", help: "Errors, by where they happened", labelNames: ["source"], registers: [this.registry] });

  constructor() {
    collectDefaultMetrics({ register: this.registry, prefix: "vmrouted_" });
    for (const state of ["ready", "pending", "degraded"]) {
      this.endpoints.set({ state }, 0);
      this.networks.set({ state }, 0);
    }
    for (const source of ["apply", "reconcile", "bgp", "libvirt"]) this.errors.inc({ source }, 0);
  }

  /** BGP metrics, read from the announcer at each scrape. */
  attachBgp(bgp: BgpSource): void {
    new Gauge({
      name: "vmrouted_announced_paths", help: "Paths announced to gobgpd (and still wanted)", registers: [this.registry],
      collect() { this.set(bgp.announcedCount()); },
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

  recordPass(report: ReconcileReport, trigger: string, failedOperations: number): void {
    this.reconciles.inc({ trigger });
    this.reconcileSeconds.observe(report.durationMs / 1000);
    this.kernelOperations.inc(report.operations);
    if (failedOperations) this.errors.inc({ source: "apply" }, failedOperations);
    for (const [gauge, items] of [[this.endpoints, report.endpoints], [this.networks, report.networks]] as const) {
      const counts: Record<string, number> = { ready: 0, pending: 0, degraded: 0 };
      for (const i of items) counts[i.state] = (counts[i.state] ?? 0) + 1;
      for (const [state, n] of Object.entries(counts)) gauge.set({ state }, n);
    }
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
