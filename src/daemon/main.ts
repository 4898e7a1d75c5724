import { Command } from "commander";
import { pino, type Logger } from "pino";
import type { Config } from "../config/schema.js";
import { join } from "node:path";
import { Announcer } from "../bgp/announcer.js";
import { connectGobgp } from "../bgp/gobgp.js";
import { loadRecord, serializeRecord } from "../bgp/record.js";
import { loadConfig } from "../config/load.js";
import { applyPlan } from "../dataplane/apply.js";
import { detectGatewayKind } from "../dataplane/capabilities.js";
import { startMonitor } from "../dataplane/monitor.js";
import { observe } from "../dataplane/observe.js";
import { InputError } from "../model/errors.js";
import { checkSocketPath, startApi, TextBody, type Route } from "./api.js";
import { Metrics, startMetricsListener } from "./metrics.js";
import { Controller } from "./controller.js";
import { LibvirtService } from "./libvirt.js";
import { Virsh } from "../libvirt/virsh.js";
import { Reconciler } from "./reconciler.js";
import { removeStaleTemporaries, writeFileAtomic } from "./atomic-file.js";
import { loadRuntimeState } from "./recover.js";
import { CreationJournal } from "./creation-journal.js";
import { buildStatus, type BgpStatus } from "./status.js";
import { StateStore } from "./store.js";

// vmrouted: the daemon. Wires config, state, the reconciler and the API, then
// runs until SIGTERM/SIGINT. Stopping leaves the kernel as it is: workloads keep
// their network while the daemon restarts.

async function main(argv: string[]): Promise<void> {
  const program = new Command("vmrouted")
    .option("--config <path>", "config file", "/etc/vmrouted/config.yaml")
    .exitOverride()
    .configureOutput({ writeErr: (s) => process.stderr.write(s.split("\n")[0] + "\n") });
  program.parse(argv);
  const config = await loadConfig(program.opts<{ config: string }>().config);
  const log = pino({ level: config.log.level, base: { node: config.node.name } });
  await checkSocketPath(config.api.socket);

  const gatewayKind = await detectGatewayKind();
  if (gatewayKind.reason) log.warn({ gatewayKind: gatewayKind.kind }, gatewayKind.reason);
  await removeStaleTemporaries(config.stateDir);
  const store = new StateStore(config.stateDir);
  const controller = new Controller(config, store, await loadRuntimeState(store, config.networks, log));
  controller.desired(); // a stored state that no longer fits the config stops us here, before any change

  const settings = { ...config.dataplane, gatewayKind: gatewayKind.kind };
  const metrics = new Metrics();
  const announcer = config.bgp
    ? await createAnnouncer(config.bgp, config.node.address, config.stateDir, log, () => metrics.errors.inc({ source: "bgp" }))
    : undefined;
  if (announcer) metrics.attachBgp(announcer);
  const journal = new CreationJournal(join(config.stateDir, "creating.json"));
  const journalProblem = await journal.load();
  if (journalProblem) log.warn(journalProblem);
  const reconciler = new Reconciler({
    desired: () => controller.desired(), observe, apply: applyPlan, settings, log, journal,
    // Only ready endpoints are announced: a VM is announced once its host side works.
    onReport: (report) => announcer?.setDesired(report.endpoints.filter((e) => e.state === "ready").map((e) => e.ip)),
    onPass: (report, trigger, failed) => metrics.recordPass(report, trigger, failed),
  });
  const libvirt = config.libvirt.enabled ? new LibvirtService({
    virsh: new Virsh(config.libvirt.uri), stateDir: config.stateDir, log,
    reconcile: (reason) => reconciler.request(reason),
    networks: () => controller.networks(), apiClaims: () => controller.apiClaims(),
  }) : undefined;
  await libvirt?.load();
  controller.attach(reconciler, libvirt);
  const libvirtResync = () => libvirt?.refresh().catch((e) => {
    metrics.errors.inc({ source: "libvirt" });
    log.error({ err: e }, "libvirt resync failed");
  });
  // libvirt first: a domain started while vmrouted was down has taps (the hook
  // made them) that the cached domains.json does not know, and a first pass
  // without them would delete taps qemu holds. If libvirtd is down, the cache it is.
  await libvirtResync();
  await reconciler.request("startup");
  announcer?.start();
  const libvirtTimer = libvirt ? setInterval(libvirtResync, config.libvirt.resyncSeconds * 1000) : undefined;

  const noBgp: BgpStatus = { enabled: false, state: "disabled", peers: [], announced: 0 };
  const status = async () => {
    const s = buildStatus(config, reconciler.last, {
      bgp: announcer ? await announcer.status() : noBgp, gatewayKind,
      libvirt: libvirt
        ? { enabled: true, state: libvirt.state, ...(libvirt.reason ? { reason: libvirt.reason } : {}), rejected: controller.rejected }
        : { enabled: false, state: "disabled", rejected: [] }, passes: reconciler.passes, operationsApplied: reconciler.operationsApplied,
    });
    if (announcer) for (const e of s.endpoints) e.conditions = { ...e.conditions, announced: announcer.isAnnounced(e.ip) };
    return s;
  };
  const after = (p: Promise<unknown>) => p.then(status);
  const routes: Route[] = [
    { method: "GET", path: /^\/v1\/status$/, handler: () => status() },
    { method: "GET", path: /^\/v1\/spec$/, handler: async () => controller.spec() },
    { method: "PUT", path: /^\/v1\/spec$/, handler: (body) => after(controller.applySpec(body)) },
    { method: "GET", path: /^\/v1\/networks$/, handler: async () => (await status()).networks },
    { method: "POST", path: /^\/v1\/networks$/, handler: (body) => after(controller.addNetwork(body)) },
    { method: "DELETE", path: /^\/v1\/networks\/([^/]+)$/, handler: (_b, _q, [name]) => after(controller.removeNetwork(name!)) },
    { method: "POST", path: /^\/v1\/endpoints$/, handler: (body) => after(controller.addEndpoint(body)) },
    {
      method: "DELETE", path: /^\/v1\/endpoints$/,
      handler: (_b, q) => after(controller.removeEndpoint({
        ...(q.get("kind") ? { kind: q.get("kind")! } : {}), ...(q.get("ip") ? { ip: q.get("ip")! } : {}),
        ...(q.get("netns") ? { netns: q.get("netns")! } : {}),
      })),
    },
    { method: "POST", path: /^\/v1\/hook$/, handler: (body) => needLibvirt().hook(body) },
    { method: "GET", path: /^\/v1\/domains$/, handler: async () => domainsView() },
    {
      method: "POST", path: /^\/v1\/domains\/([^/]+)\/interfaces$/,
      handler: async (body, _q, [name]) => ({ added: await needLibvirt().addInterface(name!, body), domains: await domainsView() }),
    },
    {
      method: "DELETE", path: /^\/v1\/domains\/([^/]+)\/interfaces\/([^/]+)$/,
      handler: async (_b, _q, [name, ip]) => ({ removed: await needLibvirt().removeInterface(name!, ip!), domains: await domainsView() }),
    },
    { method: "POST", path: /^\/v1\/reconcile$/, handler: () => after(reconciler.request("api")) },
    { method: "GET", path: /^\/metrics$/, handler: async () => new TextBody(metrics.registry.contentType, await metrics.text()) },
  ];
  function needLibvirt(): LibvirtService {
    if (!libvirt) throw new InputError("libvirt integration is disabled in the config (libvirt.enabled: false)");
    return libvirt;
  }
  async function domainsView() {
    const endpoints = (await status()).endpoints;
    return needLibvirt().records().sort((a, b) => a.name.localeCompare(b.name)).map((d) => ({
      domain: d.name, lifecycle: d.lifecycle,
      interfaces: d.interfaces.map((i) => {
        const e = endpoints.find((x) => x.kind === "vm" && x.ip === i.ip);
        return { ...i, state: e?.state ?? "none", reason: e?.reason ?? (d.lifecycle === "defined" ? "domain is not running" : "") };
      }),
    }));
  }
  const server = await startApi(config.api.socket, routes, log);
  const metricsServer = config.metrics.listen ? await startMetricsListener(config.metrics.listen, metrics) : undefined;

  const reconcileFailed = (e: unknown) => {
    metrics.errors.inc({ source: "reconcile" });
    log.error({ err: e }, "reconcile failed");
  };
  let debounce: NodeJS.Timeout | undefined;
  const monitor = startMonitor(() => {
    debounce ??= setTimeout(() => {
      debounce = undefined;
      reconciler.request("kernel event").catch(reconcileFailed);
    }, 100);
  }, (message) => log.warn(message));
  const resync = setInterval(() => {
    reconciler.request("resync").catch(reconcileFailed);
  }, config.dataplane.resyncSeconds * 1000);

  log.info({ socket: config.api.socket, endpoints: reconciler.last?.endpoints.length ?? 0 }, "vmrouted started");
  const stop = (signal: string) => {
    log.info({ signal }, "vmrouted stopping; kernel state is left in place");
    clearInterval(resync);
    if (libvirtTimer) clearInterval(libvirtTimer);
    if (debounce) clearTimeout(debounce);
    monitor.stop();
    metricsServer?.close();
    announcer?.stop();
    server.close(() => process.exit(0));
    setTimeout(() => process.exit(0), 2000).unref();
  };
  process.once("SIGTERM", () => stop("SIGTERM"));
  process.once("SIGINT", () => stop("SIGINT"));
}

async function createAnnouncer(
  bgp: NonNullable<Config["bgp"]>, nodeAddress: string, stateDir: string, log: Logger, onFailure: () => void,
): Promise<Announcer> {
  const recordPath = join(stateDir, "announced.json");
  const record = await loadRecord(recordPath);
  if (record.problem) log.error({ problem: record.problem }, "announcement record unusable; paths announced before this start may stay in gobgpd until it restarts");
  return new Announcer({
    address: bgp.gobgp, connect: connectGobgp, log, onFailure,
    policy: { nextHop: nodeAddress, communities: bgp.communities, ...(bgp.localPref !== undefined ? { localPref: bgp.localPref } : {}) },
    record: record.paths,
    persist: (paths) => writeFileAtomic(recordPath, serializeRecord(paths)),
  });
}

main(process.argv).catch((e: unknown) => {
  const err = e as Error & { code?: string };
  if (err.code?.startsWith("commander.")) process.exit(err.code === "commander.helpDisplayed" ? 0 : 2);
  // One line for the operator; the stack only for bugs, where it helps.
  process.stderr.write(`vmrouted: ${(err.message ?? String(e)).split("\n")[0]}\n`);
  if (!(err instanceof InputError) && process.env.VMROUTED_DEBUG) process.stderr.write(`${err.stack}\n`);
  process.exit(1);
});
