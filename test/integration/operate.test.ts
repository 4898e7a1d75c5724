import { cp, mkdir, mkdtemp, rm, symlink } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { z } from "zod";
import { BgpLab, RR_ADDRESS } from "../helpers/bgp-lab.js";
import { assertLabReady, Daemon, type Finding, Netns, REPO, rootSnapshot, runId, sh, waitFor } from "../helpers/lab.js";

// Operating vmrouted: doctor (each check triggered by breaking that thing in
// the test's host namespace), status against a schema, counters, metrics, and
// the systemd unit.

const id = runId();
let lab: BgpLab;
let daemon: Daemon;
let task: Netns;
let rootBefore = "";
const TAP_IP = "172.31.16.10";
const TASK_IP = "172.31.16.20";

const problems = (findings: Finding[], check: string) => findings.filter((f) => f.check === check && f.result === "problem");
const tapDevice = async () => (await daemon.status()).endpoints.find((e) => e.ip === TAP_IP)!.device;

/** Pauses vmrouted (our child, by pid) so a break it would repair at once stays broken while doctor looks. */
async function whilePaused(fn: () => Promise<void>): Promise<void> {
  daemon.child!.kill("SIGSTOP");
  try {
    await fn();
  } finally {
    daemon.child!.kill("SIGCONT");
  }
}

async function healthy(): Promise<void> {
  await daemon.ctl(["status"]); // wait for the daemon to answer again
  await waitFor(async () => (await daemon.doctor()).exitCode === 0, 30000, "doctor to find nothing wrong");
}

beforeAll(async () => {
  assertLabReady();
  rootBefore = await rootSnapshot();
  // The reflector installs what it learns, so a task can reach it through the host (firewall check).
  lab = await BgpLab.start(id, { reflectorInstallsRoutes: true });
  task = await Netns.create(`vmrt-${id}-task`);
  // A long resync: sysctl breaks stay until the test asks for a repair.
  daemon = await Daemon.create(lab.host, { bgp: { gobgp: "127.0.0.1:50051" }, resyncSeconds: 2, extra: { metrics: { listen: "127.0.0.1:9794" } } });
  await daemon.start();
  await lab.waitForSession();
  expect((await daemon.ctl(["tap", "add", "--network", "service", "--ip", TAP_IP])).exitCode).toBe(0);
  expect((await daemon.ctl(["netns", "add", task.name, "--network", "service", "--ip", TASK_IP])).exitCode).toBe(0);
  await waitFor(async () => (await daemon.status()).endpoints.every((e) => e.state === "ready") && (await daemon.status()).bgp.announced === 2, 15000, "endpoints ready and announced");
});

afterAll(async () => {
  daemon?.child?.kill("SIGCONT");
  await daemon?.cleanup();
  await task?.destroy();
  await lab?.destroy();
  expect(await rootSnapshot()).toBe(rootBefore);
});

describe("vmroutectl doctor", () => {
  it("finds nothing wrong on a healthy host, and says what it checked", async () => {
    await healthy();
    const d = await daemon.doctor();
    expect(d.exitCode).toBe(0);
    const checks = new Set(d.findings.filter((f) => f.result === "ok").map((f) => f.check));
    for (const c of ["vmrouted", "ip-forward", "gateway-device", "connected-route", "endpoint-sysctls", "firewall", "gobgpd", "bgp-peer", "peer-paths", "ip-claims"])
      expect(checks, c).toContain(c);
    const human = await daemon.ctlOnHost(["doctor", "--config", daemon.configPath]);
    expect(human.exitCode).toBe(0);
    expect(human.stdout).toMatch(/no problems found$/);
  });

  it("ip_forward off", async () => {
    await whilePaused(async () => {
      await lab.host.setSysctl("net/ipv4/ip_forward", "0");
      const d = await daemon.doctor();
      expect(d.exitCode).toBe(1);
      expect(problems(d.findings, "ip-forward")[0]?.message).toMatch(/ip_forward is 0/);
      expect(problems(d.findings, "vmrouted")[0]?.message).toMatch(/not answering/); // paused: it cannot answer
    });
    await healthy();
  });

  it("rp_filter and proxy_arp reset on a tap", async () => {
    const tap = await tapDevice();
    await whilePaused(async () => {
      await lab.host.setSysctl(`net/ipv4/conf/${tap}/rp_filter`, "0");
      await lab.host.setSysctl(`net/ipv4/conf/${tap}/proxy_arp`, "0");
      const d = await daemon.doctor();
      expect(d.exitCode).toBe(1);
      const messages = problems(d.findings, "endpoint-sysctls").map((f) => f.message);
      expect(messages).toContainEqual(expect.stringContaining(`net.ipv4.conf.${tap}.rp_filter is 0`));
      expect(messages).toContainEqual(expect.stringContaining(`net.ipv4.conf.${tap}.proxy_arp is 0`));
    });
    await healthy();
  });

  it("the connected route of a gateway back", async () => {
    await whilePaused(async () => {
      await lab.host.ip(["route", "add", "172.31.16.0/24", "dev", "virgw-service", "proto", "kernel", "scope", "link", "src", "172.31.16.1"]);
      const d = await daemon.doctor();
      expect(d.exitCode).toBe(1);
      expect(problems(d.findings, "connected-route")[0]?.message).toMatch(/connected route 172\.31\.16\.0\/24 on virgw-service/);
    });
    await healthy();
  });

  it("a gateway device missing", async () => {
    await whilePaused(async () => {
      await lab.host.ip(["link", "del", "virgw-service"]);
      const d = await daemon.doctor();
      expect(d.exitCode).toBe(1);
      expect(problems(d.findings, "gateway-device")[0]?.message).toMatch(/virgw-service of network service is missing/);
    });
    await healthy();
  });

  it("a FORWARD policy that drops workload traffic (nftables), and not once our devices are accepted first", async () => {
    const nft = (script: string) => sh("ip", ["netns", "exec", lab.host.name, "nft", "-f", "-"], { input: script });
    const taskReachesRr = async () => (await task.exec(["ping", "-c", "1", "-W", "1", RR_ADDRESS], false)).exitCode === 0;
    expect(await taskReachesRr()).toBe(true);
    await nft("table inet vmrt_test { chain fwdfilter { type filter hook forward priority 0; policy drop; }; }");
    try {
      // The finding is real: the task's traffic through the host is dropped.
      expect(await taskReachesRr()).toBe(false);
      const d = await daemon.doctor();
      expect(d.exitCode).toBe(1);
      expect(problems(d.findings, "firewall")[0]?.message).toMatch(/table inet vmrt_test chain fwdfilter: policy drop/);
      await nft("add rule inet vmrt_test fwdfilter iifgroup 94 accept\nadd rule inet vmrt_test fwdfilter oifgroup 94 accept");
      expect(await taskReachesRr()).toBe(true);
      expect(problems((await daemon.doctor()).findings, "firewall")).toEqual([]);
    } finally {
      await nft("delete table inet vmrt_test");
    }
    await healthy();
  });

  it("gobgpd unreachable", async () => {
    await lab.gobgpd.stop();
    try {
      const d = await daemon.doctor();
      expect(d.exitCode).toBe(1);
      expect(problems(d.findings, "gobgpd")[0]?.message).toMatch(/gobgpd is not reachable at 127\.0\.0\.1:50051/);
    } finally {
      await lab.startGobgpd();
    }
    await lab.waitForSession();
    await healthy();
  });

  it("a peer not Established", async () => {
    await lab.bird.stop();
    try {
      await waitFor(async () => problems((await daemon.doctor()).findings, "bgp-peer").length > 0, 30000, "doctor to see the peer down");
      const d = await daemon.doctor();
      expect(d.exitCode).toBe(1);
      expect(problems(d.findings, "bgp-peer")[0]?.message).toMatch(/peer 10\.99\.0\.2 is \w+, not established/);
    } finally {
      await lab.startBird();
    }
    await lab.waitForSession();
    await healthy();
  });

  it("a route reflector without our paths (gobgpd restarted while vmrouted is down)", async () => {
    await daemon.stop(); // the kernel keeps the routes
    try {
      await lab.gobgpd.stop();
      await lab.startGobgpd();
      await lab.waitForSession();
      const d = await daemon.doctor();
      expect(d.exitCode).toBe(1);
      expect(problems(d.findings, "peer-paths")[0]?.message).toMatch(/peer 10\.99\.0\.2 was sent 0 of this host's 2 workload \/32s/);
      expect(problems(d.findings, "vmrouted")[0]?.message).toMatch(/not answering/);
    } finally {
      await daemon.start();
    }
    await healthy();
  });

  it("bad options get one line and exit non-zero", async () => {
    const r = await daemon.ctlOnHost(["doctor", "--config", "/nonexistent/config.yaml"]);
    expect(r.exitCode).not.toBe(0);
    expect(r.stderr.trim().split("\n")).toHaveLength(1);
  });
});

const linkStats = z.object({
  rxBytes: z.number().int().nonnegative(), rxPackets: z.number().int().nonnegative(), rxErrors: z.number().int().nonnegative(), rxDropped: z.number().int().nonnegative(),
  txBytes: z.number().int().nonnegative(), txPackets: z.number().int().nonnegative(), txErrors: z.number().int().nonnegative(), txDropped: z.number().int().nonnegative(),
}).strict();
const state = z.enum(["ready", "pending", "degraded"]);
const statusSchema = z.object({
  version: z.string().regex(/^\d+\.\d+\.\d+/),
  state: z.literal("running"),
  node: z.object({ name: z.string(), address: z.string().ip({ version: "v4" }), address6: z.string().ip({ version: "v6" }).optional() }).strict(),
  problems: z.array(z.string()),
  storage: z.object({ state: z.enum(["ok", "failing"]), reason: z.string().optional(), since: z.string().datetime().optional() }).strict(),
  networks: z.array(z.object({
    name: z.string(), device: z.string().regex(/^virgw-/), gateway: z.string().regex(/^\d+\.\d+\.\d+\.\d+\/\d+$/), prefix6: z.string().optional(),
    kind: z.enum(["dummy", "bridge"]), source: z.enum(["config", "runtime"]), natOutgoing: z.boolean(), state, reason: z.string(),
  }).strict()),
  endpoints: z.array(z.object({
    id: z.string(), kind: z.enum(["tap", "netns", "vm"]), network: z.string(), ip: z.string().ip({ version: "v4" }), ip6: z.string().ip({ version: "v6" }).optional(),
    // A held entry (kept as found) may not know its guest's MAC.
    mac: z.string().regex(/^([0-9a-f]{2}:){5}[0-9a-f]{2}$/).or(z.literal("")), device: z.string().max(15), netns: z.string().optional(), domain: z.string().optional(),
    held: z.boolean().optional(), duplicate: z.string().ip().optional(),
    dhcp: z.object({ served: z.boolean(), lastAck: z.string().datetime().optional() }).strict().optional(),
    elevated: z.boolean().optional(), migration: z.enum(["normal", "target", "settling", "source"]).optional(), state, reason: z.string(),
    conditions: z.object({
      device: z.boolean(), up: z.boolean(), carrier: z.boolean(), route: z.boolean(), neighbour: z.boolean(), sysctls: z.boolean(),
      inner: z.boolean().optional(), gateway6: z.boolean().optional(), announced: z.boolean().optional(),
    }).strict(),
    counters: linkStats,
  }).strict()),
  bgp: z.object({
    enabled: z.boolean(), state: z.enum(["disabled", "connecting", "up", "down"]), reason: z.string().optional(),
    peers: z.array(z.object({
      address: z.string(), state: z.string(), uptimeSeconds: z.number().optional(), prefixesSent: z.number().optional(), prefixesSent6: z.number().optional(),
      endOfRib: z.object({ negotiated: z.boolean(), received: z.boolean() }).strict().optional(),
    }).strict()),
    announced: z.number().int().nonnegative(), learned: z.number().int().nonnegative(),
    importer: z.object({
      state: z.enum(["connecting", "up", "down"]), reason: z.string().optional(), corrections: z.number().int().nonnegative(),
      rejected: z.record(z.number().int().positive()), maxLearned: z.number().int().nonnegative(), limited: z.boolean(),
      duplicates: z.number().int().nonnegative(),
    }).strict(),
  }).strict(),
  libvirt: z.object({
    enabled: z.boolean(), state: z.string(), reason: z.string().optional(),
    rejected: z.array(z.object({ domain: z.string(), ip: z.string(), reason: z.string() }).strict()),
    unreadable: z.array(z.object({ uuid: z.string(), error: z.string() }).strict()),
  }).strict(),
  dataplane: z.object({
    gatewayKind: z.string(), gatewayKindReason: z.string().optional(), routeProtocol: z.number(), learnedProtocol: z.number(), netdevGroup: z.number(),
    nat: z.object({ wanted: z.boolean(), state: z.enum(["ready", "absent", "degraded"]), reason: z.string() }).strict(),
  }).strict(),
  dhcp: z.object({
    state: z.enum(["off", "starting", "running", "failing"]), reason: z.string().optional(), pid: z.number().int().positive().optional(),
    hosts: z.number().int().nonnegative(), loaded: z.number().int().nonnegative(), restarts: z.number().int().nonnegative(),
    messages: z.record(z.number().int().nonnegative()),
  }).strict().optional(),
  reconcile: z.object({
    at: z.string().datetime().optional(), durationMs: z.number().optional(), passes: z.number(), operationsApplied: z.number(),
    passesByTrigger: z.record(z.number().int().positive()),
    failing: z.number().int().nonnegative(), lastError: z.object({ at: z.string().datetime(), message: z.string() }).strict().optional(),
  }).strict(),
}).strict();

describe("status", () => {
  it("status -o json matches the schema, with peers, uptime and prefixes sent", async () => {
    await healthy();
    const r = await daemon.ctl(["status", "-o", "json"]);
    const s = statusSchema.parse(JSON.parse(r.stdout));
    expect(s.bgp.peers).toEqual([expect.objectContaining({ address: "10.99.0.2", state: "established", prefixesSent: 2 })]);
    expect(s.bgp.peers[0]!.uptimeSeconds).toBeGreaterThanOrEqual(0);
    const yaml = await daemon.ctl(["status", "-o", "yaml"]);
    expect(yaml.stdout).toMatch(/^version: \S+\nstate: running\nnode:\n/);
  });

  it("counters move when a netns endpoint sends traffic", async () => {
    const before = (await daemon.status()).endpoints.find((e) => e.ip === TASK_IP)!.counters;
    expect((await task.exec(["ping", "-c", "5", "-i", "0.2", "-W", "1", "172.31.16.1"], false)).exitCode).toBe(0);
    // Counters are as of the last reconcile pass (at most dataplane.resyncSeconds old).
    let after = before;
    await waitFor(async () => {
      after = (await daemon.status()).endpoints.find((e) => e.ip === TASK_IP)!.counters;
      return after.rxPackets - before.rxPackets >= 5;
    }, 10000, "the counters to move");
    // The host side of the veth receives what the task sends.
    expect(after.rxPackets - before.rxPackets).toBeGreaterThanOrEqual(5);
    expect(after.rxBytes - before.rxBytes).toBeGreaterThanOrEqual(5 * 84);
    expect(after.txPackets - before.txPackets).toBeGreaterThanOrEqual(5);
  });

  it("the human view fits a terminal and shows peers, conditions and counters", async () => {
    const r = await daemon.ctl(["status"]);
    expect(r.exitCode).toBe(0);
    expect(r.stdout).toMatch(/peer 10\.99\.0\.2\s+established\s+up \d+s\s+2 prefixes sent/);
    for (const line of r.stdout.split("\n")) expect(line.length, line).toBeLessThanOrEqual(160);
    expect(r.stdout).toMatch(new RegExp(`netns\\s+${task.name}\\s+service\\s+${TASK_IP.replaceAll(".", "\\.")}\\s`));
  });
});

/**
 * A line of the Prometheus text exposition format (version 0.0.4). Values are
 * parsed with Go's ParseFloat, for which NaN and Inf are case-insensitive:
 * prom-client writes "Nan" for the event-loop lag's mean when a scrape's
 * window held no sample (scrapes closer together than its 100 ms resolution).
 */
const PROM_LINE = /^(# HELP [a-zA-Z_:][a-zA-Z0-9_:]* .*|# TYPE [a-zA-Z_:][a-zA-Z0-9_:]* (counter|gauge|histogram|summary|untyped)|[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="(\\.|[^"\\])*",?)*\})? -?([0-9.e+-]+|[Nn][Aa][Nn]|\+Inf|-Inf)( -?\d+)?)$/;

function parseProm(text: string): Map<string, number> {
  const samples = new Map<string, number>();
  for (const line of text.split("\n")) {
    if (line === "") continue;
    expect(line, "a Prometheus text line").toMatch(PROM_LINE);
    if (line.startsWith("#")) continue;
    const i = line.lastIndexOf(" ");
    samples.set(line.slice(0, i), Number(line.slice(i + 1)));
  }
  return samples;
}

/** GET from inside the host namespace (the metrics port is on its loopback). */
async function getInHost(url: string): Promise<{ status: number; body: string }> {
  const script = `fetch(${JSON.stringify(url)}).then(async (r) => process.stdout.write(JSON.stringify({ status: r.status, body: await r.text() })))`;
  return JSON.parse((await lab.host.exec([process.execPath, "-e", script])).stdout) as { status: number; body: string };
}

describe("metrics", () => {
  it("GET /metrics on the API socket and on the loopback port parses as Prometheus text, and moves", async () => {
    const scrape = async () => (await daemon.request("GET", "/metrics")).body;
    // A gobgpd restart, to be counted as a reconnect.
    await lab.gobgpd.stop();
    await lab.startGobgpd();
    await waitFor(async () => (await daemon.status()).bgp.announced === 2, 30000, "re-announcement");
    const m1 = parseProm(await scrape());
    expect(m1.get('vmrouted_endpoints{state="ready"}')).toBe(2);
    expect(m1.get('vmrouted_announced_paths{family="ipv4"}')).toBe(2);
    expect(m1.get('vmrouted_announced_paths{family="ipv6"}')).toBe(0);
    expect(m1.get("vmrouted_gobgp_connected")).toBe(1);
    expect(m1.get("vmrouted_reconcile_duration_seconds_count")).toBeGreaterThan(0);
    expect(m1.get("vmrouted_process_resident_memory_bytes")).toBeGreaterThan(0);
    expect(m1.get("vmrouted_gobgp_reconnects_total")).toBeGreaterThanOrEqual(1);
    const ops = m1.get("vmrouted_kernel_operations_total")!;
    await lab.host.ip(["route", "del", `${TAP_IP}/32`]);
    await waitFor(async () => (parseProm(await scrape()).get("vmrouted_kernel_operations_total") ?? 0) > ops, 10000, "the repair to be counted");
    const tcp = await getInHost("http://127.0.0.1:9794/metrics");
    expect(tcp.status).toBe(200);
    expect(parseProm(tcp.body).get('vmrouted_endpoints{state="ready"}')).toBe(2);
    expect((await getInHost("http://127.0.0.1:9794/v1/status")).status).toBe(404); // only metrics on TCP, never the API
  });
});

describe("systemd", () => {
  it("systemd-analyze verify accepts the unit and the gobgpd drop-in, without a warning", async () => {
    // verify checks that every Exec* command exists: a throwaway root with the unit and what it runs
    // (ExecStart is the package's /usr/bin/vmrouted; test/package/ verifies the installed package too).
    const root = await mkdtemp(join(tmpdir(), "vmrouted-systemd-"));
    try {
      for (const d of ["usr/bin", "usr/sbin", "usr/lib/systemd", "etc/systemd/system/gobgpd.service.d"]) await mkdir(join(root, d), { recursive: true });
      for (const [link, target] of [["lib", "usr/lib"], ["bin", "usr/bin"], ["sbin", "usr/sbin"]]) await symlink(target!, join(root, link!));
      await cp("/usr/lib/systemd/system", join(root, "usr/lib/systemd/system"), { recursive: true });
      await cp(join(REPO, "bin/vmrouted"), join(root, "usr/bin/vmrouted"));
      await cp("/bin/sh", join(root, "usr/bin/sh"), { dereference: true }); // the unit's ExecCondition
      await cp(join(REPO, "systemd/vmrouted.service"), join(root, "etc/systemd/system/vmrouted.service"));
      await cp(join(REPO, "systemd/gobgpd.service.d/vmrouted.conf"), join(root, "etc/systemd/system/gobgpd.service.d/vmrouted.conf"));
      await cp("/usr/bin/gobgpd", join(root, "usr/bin/gobgpd"));
      await cp("/usr/sbin/modprobe", join(root, "usr/sbin/modprobe"));
      await cp("/usr/bin/kill", join(root, "usr/bin/kill")); // the drop-in's ExecReload
      const r = await sh("systemd-analyze", [`--root=${root}`, "verify", "vmrouted.service", "gobgpd.service"], { reject: false });
      expect(r.exitCode, r.stderr).toBe(0);
      expect(r.stderr + r.stdout).toBe(""); // verify exits 0 on unknown keys and bad values: only silence is a pass
      const shown = await sh("systemd-analyze", [`--root=${root}`, "cat-config", "systemd/system/gobgpd.service.d/vmrouted.conf"], { reject: false });
      expect(shown.stdout).toContain("--api-hosts=127.0.0.1:50051");
    } finally {
      await rm(root, { recursive: true, force: true });
    }
  });
});
