import { dirname, join } from "node:path";
import { Command } from "commander";
import { pino, type Logger } from "pino";
import type { Config } from "../config/schema.js";
import { Announcer } from "../bgp/announcer.js";
import { connectGobgp } from "../bgp/gobgp.js";
import { Importer } from "../bgp/importer.js";
import { markHandedOver } from "../libvirt/domains.js";
import { connectedPrefixes, sameHostFacts, type HostFacts } from "../bgp/import-filter.js";
import { ImportRefusals } from "./refusals.js";
import { ClaimWatch } from "../bgp/claims.js";
import { MigrationWatch } from "./migrations.js";
import { encodeCommunity } from "../bgp/paths.js";
import { announcedFile } from "../bgp/record.js";
import { loadConfig, parseConfig } from "../config/load.js";
import { configImpact } from "../config/impact.js";
import { applyPlan } from "../dataplane/apply.js";
import { detectGatewayKind } from "../dataplane/capabilities.js";
import { applyNft, listNatTable } from "../dataplane/nft.js";
import { DhcpServer } from "../dataplane/dhcp/dnsmasq.js";
import { ResolvConfWriter } from "../dataplane/resolv-conf.js";
import { groupMembers, observe } from "../dataplane/observe.js";
import { changedScope } from "../dataplane/scope.js";
import { InputError } from "../model/errors.js";
import { DesiredStore } from "../state/desired.js";
import { onStateWriteFailure, removeStaleTemporaries } from "../state/files.js";
import { DesiredResolver } from "../state/resolve.js";
import { endpointIps, hostPrefix } from "../model/ipv6.js";
import { announcedLeft, announcements } from "./announce.js";
import { persistence } from "../state/stored.js";
import { Virsh } from "../libvirt/virsh.js";
import { VERSION } from "../version.js";
import { ApiRouter, checkSocketPath, startApi } from "./api.js";
import { lockStateDir } from "./lock.js";
import { startingStatus } from "./status.js";
import { Controller } from "./controller.js";
import { CreationJournal } from "./creation-journal.js";
import { KernelWatch } from "./kernel-watch.js";
import { LibvirtService } from "./libvirt.js";
import { BurstCollector } from "./memory.js";
import { Metrics, startMetricsListener } from "./metrics.js";
import { Reconciler, type ReconcileReport } from "./reconciler.js";
import { loadDesired } from "./recover.js";
import { startCpuProfile } from "./profile.js";
import { apiRoutes } from "./routes.js";

// vmrouted: the daemon. Wires config, the desired state and its one writer,
// the reconciler, libvirt, BGP and the API, then runs until SIGTERM/SIGINT.
// Stopping leaves the kernel as it is: workloads keep their network while the
// daemon restarts.

async function main(argv: string[]): Promise<void> {
  const program = new Command("vmrouted")
    .version(VERSION)
    .option("--config <path>", "config file", "/etc/vmrouted/config.yaml")
    .exitOverride()
    .configureOutput({ writeErr: (s) => process.stderr.write(s.split("\n")[0] + "\n") });
  program.parse(argv);
  const stopProfile = startCpuProfile(process.env.VMROUTED_CPU_PROFILE);
  const config = await loadConfig(program.opts<{ config: string }>().config);
  const log = pino({ level: config.log.level, base: { node: config.node.name } });
  const metrics = new Metrics();
  // Nothing that fails later may end the daemon: one line, counted; the failed work is retried where it lives.
  process.on("unhandledRejection", (e) => {
    metrics.errors.inc({ source: "internal" });
    log.error({ err: e }, "unexpected failure (kept running)");
  });
  onStateWriteFailure((path, err) => {
    metrics.errors.inc({ source: "state" });
    log.error({ path, err: err.message }, "cannot write to stateDir; the write is retried and everything else keeps running");
  });
  // One daemon per stateDir, before anything else is touched (lock.ts).
  const lock = await lockStateDir(config.stateDir);
  await checkSocketPath(config.api.socket);
  // The API answers from the first moment: status says "starting", every other call waits for the first pass.
  let startingReason = "reading the state";
  const router = new ApiRouter(() => startingStatus(config, startingReason));
  const server = await startApi(config.api.socket, router, log);

  const gatewayKind = await detectGatewayKind();
  if (gatewayKind.reason) log.warn({ gatewayKind: gatewayKind.kind }, gatewayKind.reason);
  await removeStaleTemporaries(config.stateDir);
  const resolver = new DesiredResolver({
    configNetworks: config.networks, nodeAddress: config.node.address, ...(config.node.address6 ? { nodeAddress6: config.node.address6 } : {}),
    ...(config.bgp ? { importPrefixes: config.bgp.importPrefixes, maxLearned: config.bgp.maxLearned } : {}),
  });
  const imports = config.bgp?.importRoutes === true;
  const store = new DesiredStore(await loadDesired(config.stateDir, config.networks, imports, config.libvirt.enabled, log, config.dataplane.routeProtocol),
    persistence(config.stateDir), (next, previous) => resolver.refuseNewProblems(next.runtime, previous.runtime));
  // What no longer resolves (a network taken out of the config) is held and reported, never fatal.
  for (const problem of resolver.resolve(store.current).problems) log.error({ problem }, "stored entry does not resolve; its objects are kept as found");
  const desired = () => resolver.resolve(store.current).state;

  const settings = { ...config.dataplane, gatewayKind: gatewayKind.kind };
  const announcer = config.bgp
    ? await createAnnouncer(config.bgp, config.node.address, config.node.address6, config.stateDir, log, () => metrics.errors.inc({ source: "bgp" }))
    : undefined;
  if (announcer) metrics.attachBgp(announcer);
  const journal = new CreationJournal(config.stateDir);
  const journalProblem = await journal.load();
  if (journalProblem) log.error(journalProblem);
  const memory = new BurstCollector();
  // Which endpoints are announced (announce.ts): the last pass's ready ones still in the desired state.
  let lastReport: ReconcileReport | undefined;
  const announce = () => {
    if (!announcer || !lastReport) return;
    const { announce: paths, keep } = announcements(lastReport.endpoints, desired());
    announcer.setDesired(paths, keep);
  };
  const reconciler = new Reconciler({
    desired, observe, apply: applyPlan, groupMembers, settings, log, journal,
    nat: { list: () => listNatTable(), apply: (script) => applyNft(script) },
    onReport: (report) => {
      lastReport = report;
      announce();
    },
    onPass: (pass) => {
      metrics.recordPass(pass);
      memory.afterPass(pass.operations);
    },
    onError: () => metrics.errors.inc({ source: "reconcile" }),
    onAddresses: (addresses) => void setHostFacts({
      addresses: new Set([config.node.address, ...(config.node.address6 ? [config.node.address6] : []), ...addresses.map((a) => a.ip)]),
      connected: connectedPrefixes(addresses),
    }),
  });
  /** The import filter's facts about this host (its addresses, connected prefixes, BGP peers), through the writer. */
  const setHostFacts = (change: Partial<HostFacts>) => store.change("import: host facts", (d) => {
    const next = { ...d.hostFacts, ...change };
    return { next: sameHostFacts(next, d.hostFacts) ? {} : { hostFacts: next }, result: undefined };
  }).catch((e: Error) => log.error({ err: e.message }, "cannot update the import filter's host facts"));
  metrics.attachReconciler(reconciler);
  // Each refused path counted and logged once, by reason (until it is withdrawn or accepted).
  const refusals = new ImportRefusals(log, metrics);
  // DHCP for the taps: its own dataplane manager (dataplane/dhcp), fed the desired state; it starts
  // after the first pass, once the gateway device it answers as exists. Its files sit beside the API
  // socket (a directory nobody, as whom dnsmasq reads them, can search: /run/vmrouted); leases in stateDir.
  const dhcp = new DhcpServer({
    paths: { dir: join(dirname(config.api.socket), "dhcp"), leases: join(config.stateDir, "dnsmasq.leases") }, log,
    onMessage: (type) => metrics.dhcpMessages.inc({ type }),
  });
  metrics.attachDhcp(dhcp);
  const resolvConf = new ResolvConfWriter(log);
  let dhcpFollowing = false;
  // Every published change marks what it changed dirty; the pass that follows covers just that.
  store.subscribe((next, previous, reason) => {
    const trigger = reason.split(":")[0]!;
    const [before, after] = [resolver.resolve(previous), resolver.resolve(next)];
    void reconciler.mark(changedScope(before.state, after.state), trigger);
    // What left the desired state is withdrawn now, beside the pass that removes it (stop attracting
    // traffic before the route goes, and 2,000 withdrawals overlap the kernel's teardown).
    if (announcer && lastReport && announcedLeft(lastReport.endpoints, after.state)) announce();
    if (before.imports !== after.imports) refusals.note(after.imports);
    if (dhcpFollowing) void dhcp.update(after.state);
    void resolvConf.update(after.state);
  });
  const settled = () => reconciler.flush();

  const libvirt = config.libvirt.enabled ? new LibvirtService({
    virsh: new Virsh(config.libvirt.uri), store, log, settled,
    endpoint: (id) => reconciler.endpoint(id),
    // An incoming migration is refused when the guest could not be announced here (libvirt then aborts it).
    canTakeMigration: () => (!announcer || announcer.state === "up" ? undefined : `gobgpd is not reachable (${announcer.reason}): the guest could not be announced from this host`),
    networks: () => desired().networks,
    apiClaims: () => new Set(desired().endpoints.filter((e) => e.kind !== "vm").flatMap((e) => [...endpointIps(e), `dev:${e.device}`])),
  }) : undefined;
  const libvirtResync = () => libvirt?.refresh().catch((e) => {
    metrics.errors.inc({ source: "libvirt" });
    log.error({ err: e }, "libvirt resync failed");
  });

  // The kernel's events are followed from before the first listing: a change between the
  // listing and the monitor's start would otherwise go unseen until a resync.
  const kernel = new KernelWatch({ desired, settings, busy: () => reconciler.applying, mark: (s, t) => void reconciler.mark(s, t),
    note: (events, at) => reconciler.noteKernelEvents(events, at), log });
  metrics.attachKernelWatch(kernel);
  startingReason = "subscribing to kernel events";
  if (!(await kernel.subscribed())) log.warn("ip monitor did not subscribe within 2 s; the resync covers what it misses");
  // libvirt first: a domain started while vmrouted was down has taps (the hook
  // made them) that the cached domains.json does not know, and a first pass
  // without them would delete taps qemu holds. If libvirtd is down, the cache it is
  // (and without a usable cache, every VM's objects are kept as found: recover.ts).
  startingReason = "reading libvirt";
  await libvirtResync();
  startingReason = "first reconcile pass";
  // A first pass that fails is retried (with backoff) like any other; the API opens once one has run.
  for (let attempt = 1; ; attempt++) {
    try {
      await reconciler.full("startup");
      break;
    } catch (e) {
      startingReason = `first reconcile pass failed (${attempt}×): ${(e as Error).message.split("\n")[0]}; retrying`;
    }
  }
  announcer?.start();
  const importer = config.bgp && imports ? new Importer({
    address: config.bgp.gobgp, connect: connectGobgp, log, migrationCommunity: encodeCommunity(config.bgp.migrationCommunity),
    onFailure: () => metrics.errors.inc({ source: "bgp" }),
    onPeers: (peers) => setHostFacts({ peers: new Set(peers) }),
    // Complete once gobgpd's RIB is known whole; until then kernel routes that the set lacks are kept.
    // A running VM whose IP another host now announces elevated was migrated away: it stops announcing (migration.ts).
    publish: (learned, complete) => store.change("bgp: import", (d) => {
      const elevated = new Set([...learned.values()].filter((r) => r.elevated).map((r) => r.prefix));
      return { next: { learned, learnedKnown: complete || d.learnedKnown, domains: markHandedOver(d.domains, elevated, Date.now()) }, result: undefined };
    }),
  }) : undefined;
  importer?.start();
  const othersClient = config.bgp ? connectGobgp(config.bgp.gobgp) : undefined;
  // Duplicates: other hosts' paths to our ready /32s, which the best-path stream does not show.
  const claims = othersClient && imports ? new ClaimWatch({
    client: othersClient, log, migrationCommunity: encodeCommunity(config.bgp!.migrationCommunity), nodeAddress: config.node.address,
    ...(config.node.address6 ? { nodeAddress6: config.node.address6 } : {}),
    prefixes: () => reconciler.report().endpoints.filter((e) => e.state === "ready" && !e.held).flatMap((e) => endpointIps(e).map(hostPrefix)),
    publish: (remoteClaims) => store.change("import: claims", () => ({ next: { remoteClaims }, result: undefined })),
  }) : undefined;
  claims?.start();
  const migrations = libvirt ? new MigrationWatch({
    store, log, metrics, libvirtUri: config.libvirt.uri, settleSeconds: config.migration.settleSeconds, settledPass: settled,
    othersAnnounce: async (prefixes) => !!othersClient && (await othersClient.listPathsOf(prefixes)).some((p) => !p.isFromLocal && !p.isWithdraw),
  }) : undefined;
  const libvirtTimer = libvirt ? setInterval(libvirtResync, config.libvirt.resyncSeconds * 1000) : undefined;

  const controller = new Controller(config, store, resolver, settled);
  router.ready(apiRoutes({
    config, gatewayKind, controller, reconciler, metrics, desired, ...(announcer ? { announcer } : {}), ...(libvirt ? { libvirt } : {}),
    ...(importer ? { importer } : {}), dhcp,
    rejected: () => resolver.resolve(store.current).rejected,
    problems: () => resolver.resolve(store.current).problems,
    imports: () => resolver.resolve(store.current).imports,
    checkConfig: (text, name) => configImpact(config, parseConfig(text, `config ${name}`), store.current),
  }));
  const metricsServer = config.metrics.listen ? await startMetricsListener(config.metrics.listen, metrics) : undefined;

  const resync = setInterval(() => {
    // gobgpd's RIB is compared whenever the kernel is listed whole: the same guard against a lost
    // event, at the same cadence (a listing of 10,000 own paths every 30 s was a third of the idle cost).
    if (reconciler.resync().listed) void importer?.compare();
  }, config.dataplane.resyncSeconds * 1000);

  log.info({ socket: config.api.socket, version: VERSION, endpoints: desired().endpoints.length }, "vmrouted started");
  const stop = (signal: string) => {
    log.info({ signal }, "vmrouted stopping; kernel state is left in place");
    clearInterval(resync);
    if (libvirtTimer) clearInterval(libvirtTimer);
    kernel.stop();
    metricsServer?.close();
    announcer?.stop();
    importer?.stop();
    migrations?.stop();
    memory.stop();
    claims?.stop();
    dhcp.stop();
    othersClient?.close();
    stopProfile();
    server.close(() => process.exit(0));
    setTimeout(() => process.exit(0), 2000).unref();
  };
  process.once("SIGTERM", () => stop("SIGTERM"));
  process.once("SIGINT", () => stop("SIGINT"));
  // The lock's descriptor lives as long as the process (lock.ts); dnsmasq, our child, does not outlive it
  // when it ends by itself (a SIGKILL leaves it: the next start stops it, dhcp/dnsmasq.ts).
  process.once("exit", () => {
    dhcp.stop();
    void lock.handle.close();
  });
  // dnsmasq starts once the signals stop it with us (a child started before the handlers would be left behind).
  dhcpFollowing = true;
  void dhcp.update(desired());
  void resolvConf.update(desired());
}

async function createAnnouncer(
  bgp: NonNullable<Config["bgp"]>, nodeAddress: string, nodeAddress6: string | undefined, stateDir: string, log: Logger, onFailure: () => void,
): Promise<Announcer> {
  const file = announcedFile(stateDir);
  const record = await file.load();
  if (record.state === "corrupt") {
    const kept = await file.keepAside();
    log.error({ kept }, `${record.problem}; kept it as ${kept}: paths announced before this start may stay in gobgpd until it restarts`);
  }
  return new Announcer({
    address: bgp.gobgp, connect: connectGobgp, log, onFailure,
    policy: {
      nextHop: nodeAddress, ...(nodeAddress6 ? { nextHop6: nodeAddress6 } : {}), communities: bgp.communities, migrationCommunity: bgp.migrationCommunity,
      ...(bgp.localPref !== undefined ? { localPref: bgp.localPref } : {}),
    },
    record: record.value,
    persist: (paths) => file.save(paths),
  });
}

main(process.argv).catch((e: unknown) => {
  const err = e as Error & { code?: string };
  if (err.code?.startsWith("commander.")) process.exit(err.code === "commander.helpDisplayed" || err.code === "commander.version" ? 0 : 2);
  // One line for the operator; the stack only for bugs, where it helps.
  process.stderr.write(`vmrouted: ${(err.message ?? String(e)).split("\n")[0]}\n`);
  if (!(err instanceof InputError) && process.env.VMROUTED_DEBUG) process.stderr.write(`${err.stack}\n`);
  process.exit(1);
});
