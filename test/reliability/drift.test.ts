import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { tapName, vethName } from "../../src/model/naming.js";
import { assertLabReady, Daemon, Netns, netState, rootSnapshot, runId, waitFor } from "../helpers/lab.js";

// Drift: what vmrouted made, changed by hand, comes back exactly as it was;
// what it does not own (look-alikes included) stays exactly as it was. And a
// workload cannot send with another workload's address (rp_filter).

const id = runId();
let host: Netns;
const tasks: Netns[] = [];
let daemon: Daemon;
let rootBefore = "";
const repairs: Record<string, number> = {};

const TAP = tapName("service", "172.31.16.10");
const TAP2 = tapName("service", "172.31.16.11");
const VETH = vethName("service", "172.31.16.31");
const SQUATTED = tapName("service", "172.31.16.20"); // a desired endpoint's name, taken by someone else
const LOOKALIKE = "tap-0123456789"; // named like our taps, without our alias

/** Every sysctl vmrouted sets, for every device of a namespace, and ip_forward. */
async function sysctls(ns: Netns): Promise<string> {
  const r = await ns.exec(["sh", "-c",
    "cd /proc/sys/net/ipv4 && for d in conf/*; do n=${d#conf/}; echo $n $(cat conf/$n/rp_filter conf/$n/proxy_arp conf/$n/forwarding neigh/$n/proxy_delay 2>/dev/null); done; echo ip_forward $(cat ip_forward)"]);
  return r.stdout;
}

/**
 * Host and task namespaces as vmrouted keeps them. Left aside: device identity
 * (ifindex; a repaired device is a new one), IPv6 link-local addresses (not
 * vmrouted's) and the gateway device's own MAC (random; guests only ever see a
 * tap's or veth's MAC, which vmrouted sets).
 */
async function whole(): Promise<string> {
  const strip = (s: string) => s.split("\n\n").map((section) => section.split("\n")
    .filter((l) => !/ fe80::/.test(l))
    .map((l) => l.replace(/^\d+ /, "").replace(/^(virgw-\S+) \S+/, "$1 (mac)"))
    .sort().join("\n")).join("\n\n");
  const parts = [strip(await netState(host.name)), await sysctls(host)];
  for (const t of tasks) parts.push(strip(await netState(t.name)));
  return parts.join("\n---\n");
}

/** The objects vmrouted does not own, with their identity. */
async function foreign(): Promise<string> {
  const links = await host.json<Array<Record<string, unknown>>>(["-d", "link", "show"]);
  const mine = links.filter((l) => [SQUATTED, LOOKALIKE, "br-foreign"].includes(l.ifname as string))
    .map((l) => JSON.stringify([l.ifindex, l.ifname, l.flags, l.group, l.address, l.ifalias, l.mtu]));
  const routes = await host.json<Array<Record<string, unknown>>>(["-4", "route", "show", "table", "all", "proto", "static"]);
  const conf = await host.exec(["sh", "-c", `for n in ${SQUATTED} ${LOOKALIKE} br-foreign; do echo $n $(cat /proc/sys/net/ipv4/conf/$n/rp_filter /proc/sys/net/ipv4/conf/$n/proxy_arp /proc/sys/net/ipv4/neigh/$n/proxy_delay); done`]);
  return [...mine, ...routes.map((r) => JSON.stringify(r)), conf.stdout].join("\n");
}

beforeAll(async () => {
  assertLabReady();
  rootBefore = await rootSnapshot();
  host = await Netns.create(`vmrt-${id}-host`);
  for (const n of [1, 2, 3]) tasks.push(await Netns.create(`vmrt-${id}-t${n}`));
  // Look-alikes and someone else's objects, made before vmrouted starts.
  await host.ip(["tuntap", "add", "dev", LOOKALIKE, "mode", "tap", "vnet_hdr"]);
  await host.ip(["link", "set", LOOKALIKE, "group", "94", "up"]);
  await host.ip(["tuntap", "add", "dev", SQUATTED, "mode", "tap", "one_queue", "vnet_hdr"]);
  await host.ip(["link", "add", "br-foreign", "type", "bridge"]);
  await host.ip(["link", "set", "br-foreign", "up"]);
  // A route to an IP in our network, and one to a workload's IP (another table), both another protocol.
  await host.ip(["route", "add", "172.31.16.99/32", "dev", LOOKALIKE, "proto", "static"]);
  await host.ip(["route", "add", "172.31.16.10/32", "dev", "br-foreign", "proto", "static", "table", "100"]);
  daemon = await Daemon.create(host);
  await daemon.start();
  const spec = {
    endpoints: [
      { kind: "tap", network: "service", ip: "172.31.16.10" },
      { kind: "tap", network: "service", ip: "172.31.16.11" },
      { kind: "tap", network: "service", ip: "172.31.16.20" },
      ...tasks.map((t, i) => ({ kind: "netns", network: "service", ip: `172.31.16.${31 + i}`, netns: t.name })),
    ],
  };
  const r = await daemon.request("PUT", "/v1/spec", JSON.stringify(spec));
  expect(r.status, r.body).toBe(200);
});

afterAll(async () => {
  daemon?.child?.kill("SIGCONT"); // in case a test failed while it was paused
  await daemon?.cleanup();
  for (const ns of [host, ...tasks]) await ns?.destroy();
  console.log(`drift repaired after (ms): ${JSON.stringify(repairs)}`);
  expect(await rootSnapshot()).toBe(rootBefore);
});

describe("drift", () => {
  let baseline = "";
  let foreignBaseline = "";

  it("converges with the look-alikes left alone and the squatted endpoint reported", async () => {
    await waitFor(async () => (await daemon.status()).endpoints.filter((e) => e.state === "ready").length === 5, 15000, "5 endpoints ready");
    const squatted = (await daemon.status()).endpoints.find((e) => e.ip === "172.31.16.20")!;
    expect(squatted).toMatchObject({ state: "degraded", reason: expect.stringMatching(/exists and is not owned/) });
    baseline = await whole();
    foreignBaseline = await foreign();
  });

  const inTask = (n: number, args: string[]) => () => tasks[n]!.ip(args);
  const onHost = (args: string[]) => () => host.ip(args);
  const sysctl = (key: string, value: string) => () => host.setSysctl(key, value);
  const drifts: Array<[string, () => Promise<unknown>]> = [
    ["tap deleted", onHost(["link", "del", TAP])],
    ["tap set down", onHost(["link", "set", TAP, "down"])],
    ["tap MAC changed", onHost(["link", "set", TAP, "address", "02:11:22:33:44:55"])],
    ["tap moved out of our group", onHost(["link", "set", TAP, "group", "0"])],
    ["host route deleted", onHost(["route", "del", "172.31.16.10/32", "dev", TAP])],
    ["host route pointed at another tap", onHost(["route", "replace", "172.31.16.10/32", "dev", TAP2, "proto", "94", "scope", "link"])],
    ["stale route of ours added", onHost(["route", "add", "172.31.16.77/32", "dev", TAP, "proto", "94"])],
    ["neighbour entry deleted", onHost(["neigh", "del", "172.31.16.10", "dev", TAP])],
    ["neighbour entry changed", onHost(["neigh", "replace", "172.31.16.10", "lladdr", "02:00:00:00:00:99", "dev", TAP, "nud", "permanent"])],
    ["stale neighbour entry of ours added", onHost(["neigh", "add", "172.31.16.78", "lladdr", "02:00:00:00:00:78", "dev", TAP, "nud", "permanent"])],
    ["rp_filter off on a tap", sysctl(`net/ipv4/conf/${TAP}/rp_filter`, "0")],
    ["proxy_arp off on a tap", sysctl(`net/ipv4/conf/${TAP}/proxy_arp`, "0")],
    ["proxy_delay back to 80", sysctl(`net/ipv4/neigh/${TAP}/proxy_delay`, "80")],
    ["forwarding off on a veth", sysctl(`net/ipv4/conf/${VETH}/forwarding`, "0")],
    ["ip_forward off", sysctl("net/ipv4/ip_forward", "0")],
    ["gateway address deleted", onHost(["addr", "del", "172.31.16.1/24", "dev", "virgw-service"])],
    ["address added to the gateway", onHost(["addr", "add", "10.7.7.7/8", "dev", "virgw-service"])],
    // As the kernel adds it for an address without noprefixroute (one added by hand, proto boot, is someone else's).
    ["connected route back", onHost(["route", "add", "172.31.16.0/24", "dev", "virgw-service", "proto", "kernel", "scope", "link", "src", "172.31.16.1"])],
    ["gateway device set down", onHost(["link", "set", "virgw-service", "down"])],
    ["gateway device deleted", onHost(["link", "del", "virgw-service"])],
    ["veth deleted", onHost(["link", "del", VETH])],
    ["veth set down", onHost(["link", "set", VETH, "down"])],
    ["inside: address deleted", inTask(0, ["addr", "flush", "dev", "eth0"])],
    ["inside: default route deleted", inTask(1, ["route", "del", "default"])],
    ["inside: eth0 set down", inTask(2, ["link", "set", "eth0", "down"])],
  ];

  it.each(drifts)("%s: repaired, nothing else touched", async (what, change) => {
    // vmrouted paused (our child, by pid) while the change is made and seen, or it may repair it first.
    daemon.child!.kill("SIGSTOP");
    try {
      await change();
      expect(await whole()).not.toBe(baseline); // the change was real
    } finally {
      daemon.child!.kill("SIGCONT");
    }
    repairs[what] = await waitFor(async () => (await whole()) === baseline, 20000, `repair of: ${what}`, 100);
    expect(await foreign()).toBe(foreignBaseline);
  });

  it("a route to a workload IP with another protocol: left alone, the endpoint reported, ready again once it is gone", async () => {
    await host.ip(["route", "add", "172.31.16.11/32", "dev", "br-foreign", "proto", "static", "metric", "100"]);
    await waitFor(async () => (await daemon.status()).endpoints.find((e) => e.ip === "172.31.16.11")?.state === "degraded", 10000, "conflict reported");
    const s = (await daemon.status()).endpoints.find((e) => e.ip === "172.31.16.11")!;
    expect(s.reason).toMatch(/route to 172\.31\.16\.11\/32 with protocol 4 exists and is not owned/);
    await new Promise((r) => setTimeout(r, 2500)); // two resyncs
    const routes = await host.json<Array<{ dev: string; protocol: string }>>(["-4", "route", "show", "172.31.16.11/32"]);
    expect(routes.map((r) => `${r.dev} ${r.protocol}`).sort()).toEqual([`${TAP2} 94`, "br-foreign 4"].sort());
    await host.ip(["route", "del", "172.31.16.11/32", "dev", "br-foreign", "proto", "static", "metric", "100"]);
    await waitFor(async () => (await daemon.status()).endpoints.find((e) => e.ip === "172.31.16.11")?.state === "ready", 10000, "ready again");
    expect(await whole()).toBe(baseline);
    expect(await foreign()).toBe(foreignBaseline);
  });

  it("removing every endpoint removes only what vmrouted made", async () => {
    expect((await daemon.request("PUT", "/v1/spec", JSON.stringify({ endpoints: [] }))).status).toBe(200);
    const names = (await host.json<Array<{ ifname: string }>>(["link", "show"])).map((l) => l.ifname).sort();
    expect(names).toEqual(["br-foreign", "lo", LOOKALIKE, SQUATTED, "virgw-service"].sort());
    expect(await foreign()).toBe(foreignBaseline);
    // Put them back for the anti-spoofing test.
    const spec = { endpoints: tasks.map((t, i) => ({ kind: "netns", network: "service", ip: `172.31.16.${31 + i}`, netns: t.name })) };
    expect((await daemon.request("PUT", "/v1/spec", JSON.stringify(spec))).status).toBe(200);
  });
});

describe("anti-spoofing", () => {
  /** Echo requests that reached task 3, by source address (an nftables counter in task 3's own namespace). */
  async function arrivedFrom(source: string): Promise<number> {
    const r = await tasks[2]!.exec(["nft", "-j", "list", "chain", "ip", "spy", "input"]);
    const rules = (JSON.parse(r.stdout) as { nftables: Array<{ rule?: { comment?: string; expr: Array<{ counter?: { packets: number } }> } }> }).nftables;
    const rule = rules.find((x) => x.rule?.comment === source)?.rule;
    return rule?.expr.find((e) => e.counter)?.counter?.packets ?? -1;
  }
  const rpFilterDrops = async () => {
    const r = await host.exec(["nstat", "-asz", "TcpExtIPReversePathFilter"]);
    return Number(/TcpExtIPReversePathFilter\s+(\d+)/.exec(r.stdout)?.[1] ?? "NaN");
  };

  beforeAll(async () => {
    await waitFor(async () => (await daemon.status()).endpoints.filter((e) => e.state === "ready").length === 3, 15000, "3 netns endpoints ready");
    const sources = ["172.31.16.31", "172.31.16.32", "172.31.16.99", "198.51.100.7"];
    const rules = sources.map((s) => `add rule ip spy input ip saddr ${s} icmp type echo-request counter comment "${s}"`).join("\n");
    await tasks[2]!.exec(["sh", "-c", `nft -f - <<'EOF'\nadd table ip spy\nadd chain ip spy input { type filter hook input priority 0; }\n${rules}\nEOF`]);
  });

  it("task 1 reaches task 3 with its own address (the control)", async () => {
    const r = await tasks[0]!.exec(["ping", "-c", "2", "-W", "2", "-I", "172.31.16.31", "172.31.16.33"], false);
    expect(r.exitCode, r.stdout).toBe(0);
    expect(await arrivedFrom("172.31.16.31")).toBeGreaterThanOrEqual(2);
  });

  it.each([
    ["another endpoint's address", "172.31.16.32"],
    ["an unused address of the network", "172.31.16.99"],
    ["an address from outside", "198.51.100.7"],
  ])("task 1 sending with %s is dropped by the host", async (_what, source) => {
    const drops = await rpFilterDrops();
    await tasks[0]!.ip(["addr", "add", `${source}/32`, "dev", "eth0"]);
    try {
      const r = await tasks[0]!.exec(["ping", "-c", "3", "-i", "0.2", "-W", "1", "-I", source, "172.31.16.33"], false);
      expect(r.exitCode).not.toBe(0);
      expect(await arrivedFrom(source)).toBe(0);
      expect(await rpFilterDrops()).toBeGreaterThanOrEqual(drops + 3);
    } finally {
      await tasks[0]!.ip(["addr", "del", `${source}/32`, "dev", "eth0"], false);
    }
  });
});
