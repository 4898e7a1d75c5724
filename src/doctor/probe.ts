import { access, constants, readFile, stat } from "node:fs/promises";
import { join } from "node:path";
import { execa } from "execa";
import { connectGobgp } from "../bgp/gobgp.js";
import { call } from "../cli/client.js";
import type { Config } from "../config/schema.js";
import type { StartingStatus, Status } from "../daemon/status.js";
import { runtimeFile, type RuntimeState } from "../state/stored.js";
import { desiredNat, natDifferences } from "../dataplane/nat.js";
import { listNatTable } from "../dataplane/nft.js";
import { resolveNetworks } from "../model/resolve.js";
import { observe } from "../dataplane/observe.js";
import { readDomains } from "../libvirt/read.js";
import { Virsh } from "../libvirt/virsh.js";
import { gatewayDevice, TAP_PREFIX, VETH_PREFIX } from "../model/naming.js";
import type { DoctorFacts } from "./diagnose.js";
import { iptablesForwardDrops, nftForwardDrops, type ForwardDrop } from "./firewall.js";

// Gathers the doctor's facts from their sources: the kernel, the firewall,
// gobgpd, libvirt, the hook file, vmrouted's state file and its API. Each
// source that fails is reported as such; none stops the others.

export interface ProbeOptions {
  socket: string;
  hooksDir: string;
  libvirtdPidFile: string;
}

export async function probe(config: Config, o: ProbeOptions): Promise<DoctorFacts> {
  // Read only: a corrupt file is the daemon's to keep aside and rebuild; the doctor reports what it can.
  const state = (await runtimeFile(config.stateDir).load()).value;
  const [daemon, kernel, firewall, bgp, libvirt] = await Promise.all([
    probeDaemon(o.socket), observe({ netns: [] }), probeFirewall(config.dataplane.netdevGroup),
    config.bgp ? probeGobgp(config.bgp.gobgp) : undefined,
    config.libvirt.enabled ? probeLibvirt(config.libvirt.uri, o) : undefined,
  ]);
  const networks = [...Object.keys(config.networks), ...Object.keys(state.networks)];
  const natFacts = await probeNat(config, state);
  const claims = [
    ...state.endpoints.map((e) => ({ ip: e.ip, owner: e.kind === "netns" ? `netns ${e.netns}` : `tap ${e.ip}` })),
    ...(libvirt?.claims ?? []),
  ];
  return {
    daemon, kernel, routeProtocol: config.dataplane.routeProtocol, firewall, claims, nat: natFacts,
    gateways: networks.map((n) => ({ network: n, device: gatewayDevice(n) })),
    ...(bgp ? { bgp } : {}),
    ...(libvirt ? { libvirt: { running: libvirt.running, hook: libvirt.hook, ...(libvirt.error ? { error: libvirt.error } : {}) } } : {}),
  };
}

async function probeDaemon(socket: string): Promise<DoctorFacts["daemon"]> {
  try {
    const s = await call<Status | StartingStatus>(socket, "GET", "/v1/status", undefined, 3000);
    if (s.state === "starting") return { socket, answering: true, starting: s.reason, degraded: [] };
    return {
      socket, answering: true,
      degraded: s.endpoints.filter((e) => e.state === "degraded").map((e) => ({ id: e.id, reason: e.reason, ...(e.held ? { held: true } : {}) })),
      ...(s.storage.state === "failing" ? { storage: s.storage.reason ?? "failing" } : {}),
      ...(s.reconcile.failing ? { failing: { passes: s.reconcile.failing, error: s.reconcile.lastError?.message ?? "" } } : {}),
      ...(s.bgp.importer ? { imports: { rejected: s.bgp.importer.rejected, limited: s.bgp.importer.limited, maxLearned: s.bgp.importer.maxLearned } } : {}),
      ...(s.dhcp ? { dhcp: { state: s.dhcp.state, hosts: s.dhcp.hosts, restarts: s.dhcp.restarts, ...(s.dhcp.reason ? { reason: s.dhcp.reason } : {}) } } : {}),
    };
  } catch (e) {
    return { socket, answering: false, error: (e as Error).message, degraded: [] };
  }
}

async function probeFirewall(group: number): Promise<DoctorFacts["firewall"]> {
  const marks = { group, prefixes: [TAP_PREFIX, VETH_PREFIX] };
  const inspected: string[] = [];
  const drops: ForwardDrop[] = [];
  const nft = await execa("nft", ["-j", "list", "ruleset"], { reject: false }).catch(() => undefined);
  if (nft && nft.exitCode === 0) {
    inspected.push("nftables");
    drops.push(...nftForwardDrops(JSON.parse(nft.stdout || "{}"), marks));
  }
  // iptables-nft rules are in the nftables ruleset already; only the legacy backend is separate.
  const legacy = await execa("iptables-legacy-save", [], { reject: false }).catch(() => undefined);
  if (legacy && legacy.exitCode === 0) {
    inspected.push("iptables-legacy");
    drops.push(...iptablesForwardDrops(legacy.stdout, marks));
  }
  return { inspected, drops };
}

/** The NAT table against the networks' wishes; the all-workloads set's learned /32s are the daemon's to know, so not compared. */
async function probeNat(config: Config, state: RuntimeState): Promise<DoctorFacts["nat"]> {
  const networks = resolveNetworks(config.networks, state.networks);
  const want = networks.ok ? desiredNat({ networks: networks.value, endpoints: [], learned: [] }) : undefined;
  try {
    const seen = await listNatTable();
    return { wanted: !!want, differences: natDifferences(want, seen).filter((d) => !/set all_prefixes (lacks|has unexpected)/.test(d)) };
  } catch (e) {
    return { wanted: !!want, differences: [], error: (e as Error).message };
  }
}

async function probeGobgp(address: string): Promise<NonNullable<DoctorFacts["bgp"]>> {
  const gobgp = connectGobgp(address);
  try {
    await gobgp.getBgp();
    return { address, peers: await gobgp.listPeers() };
  } catch (e) {
    return { address, error: (e as Error).message.split("\n")[0]!, peers: [] };
  } finally {
    gobgp.close();
  }
}

async function probeLibvirt(uri: string, o: ProbeOptions) {
  const hook = await probeHook(o);
  try {
    const { listed: domains } = await readDomains(new Virsh(uri));
    return {
      hook,
      running: domains.filter((d) => d.active && d.interfaces.length).map((d) => ({ domain: d.name, taps: d.interfaces.map((i) => i.tap) })),
      claims: domains.flatMap((d) => d.interfaces.map((i) => ({ ip: i.ip, owner: `domain ${d.name}` }))),
    };
  } catch (e) {
    return { hook, running: [], claims: [], error: (e as Error).message };
  }
}

async function probeHook(o: ProbeOptions): Promise<NonNullable<DoctorFacts["libvirt"]>["hook"]> {
  const path = join(o.hooksDir, "qemu.d", "vmrouted");
  const installed = await access(path, constants.X_OK).then(() => true, () => false);
  const started = await libvirtdStart(o.libvirtdPidFile);
  if (!installed || started === undefined) return { path, installed };
  const changed = (await stat(path)).mtimeMs / 1000;
  // A start time from /proc is precise to about a second (btime is whole seconds).
  return { path, installed, changedAfterLibvirtdStart: changed > started + 1, libvirtdStart: new Date(started * 1000).toISOString() };
}

/** libvirtd's start time (seconds since the epoch) from its pid file and /proc; undefined if not running. */
async function libvirtdStart(pidFile: string): Promise<number | undefined> {
  try {
    const pid = (await readFile(pidFile, "utf8")).trim();
    const stat = await readFile(`/proc/${pid}/stat`, "utf8");
    // Field 22 (starttime, in clock ticks since boot) counts from after the ")" that ends the command name.
    const ticks = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[19]);
    const btime = Number(/^btime (\d+)$/m.exec(await readFile("/proc/stat", "utf8"))?.[1]);
    const hz = 100; // USER_HZ: 100 on every Linux ABI that matters here
    return Number.isFinite(ticks) && Number.isFinite(btime) ? btime + ticks / hz : undefined;
  } catch {
    return undefined;
  }
}
