import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { assertLabReady, Daemon, Netns, rootSnapshot, runId, waitFor } from "../helpers/lab.js";

// The host dataplane on the real kernel, in namespaces this suite creates:
// vmrouted runs in `host`; two task namespaces hold netns endpoints.

interface Link { ifname: string; ifindex: number; group?: string; ifalias?: string; address?: string; flags?: string[]; mtu?: number;
  linkinfo?: { info_kind?: string; info_data?: { type?: string; vnet_hdr?: boolean } } }
interface Route { dst: string; dev?: string; protocol?: string; scope?: string }
interface Neigh { dst: string; dev: string; lladdr?: string; state?: string[] }

const id = runId();
let host: Netns, task1: Netns, task2: Netns;
let daemon: Daemon;
let rootBefore = "";

const spec = (ns1: string, ns2: string) => `
networks:
  service: { gateway: 172.31.16.1/24 }
  extra: { gateway: 172.31.17.1/24 }
endpoints:
  - { kind: tap, network: service, ip: 172.31.16.10 }
  - { kind: tap, network: service, ip: 172.31.16.11, mac: "52:54:00:00:16:11" }
  - { kind: tap, network: extra, ip: 172.31.17.10, name: tap-custom1 }
  - { kind: netns, network: service, ip: 172.31.16.31, netns: ${ns1} }
  - { kind: netns, network: extra, ip: 172.31.17.32, netns: ${ns2} }
`;

/** The spec with the runtime network `extra` given an MTU (or none). */
const specWithExtraMtu = (mtu: number | undefined) => spec(task1.name, task2.name)
  .replace("extra: { gateway: 172.31.17.1/24 }", `extra: { gateway: 172.31.17.1/24${mtu !== undefined ? `, mtu: ${mtu}` : ""} }`);

const links = () => host.json<Link[]>(["-d", "link", "show"]);
const routes = () => host.json<Route[]>(["-4", "route", "show", "table", "main"]);
const ours = (l: Link) => l.ifalias?.startsWith("vmrouted:") ?? false;

beforeAll(async () => {
  assertLabReady();
  rootBefore = await rootSnapshot();
  host = await Netns.create(`vmrt-${id}-host`);
  task1 = await Netns.create(`vmrt-${id}-t1`);
  task2 = await Netns.create(`vmrt-${id}-t2`);
  // Things vmrouted does not own and must never touch, some of them look-alikes.
  await host.ip(["tuntap", "add", "dev", "tap-lookalike", "mode", "tap"]);
  await host.ip(["link", "set", "tap-lookalike", "group", "94", "up"]);
  // A foreign device in the teardown group: a bulk `ip link del group 95` would take it along.
  await host.ip(["tuntap", "add", "dev", "tap-teardown", "mode", "tap"]);
  await host.ip(["link", "set", "tap-teardown", "group", "95"]);
  await host.ip(["link", "add", "br-foreign", "type", "bridge"]);
  await host.ip(["link", "set", "br-foreign", "up"]);
  await host.ip(["addr", "add", "192.168.77.1/24", "dev", "br-foreign"]);
  await host.ip(["route", "add", "172.31.16.99/32", "dev", "tap-lookalike", "proto", "static"]);
  daemon = await Daemon.create(host);
  await daemon.start();
});

afterAll(async () => {
  await daemon?.cleanup();
  for (const ns of [host, task1, task2]) await ns?.destroy();
  expect(await rootSnapshot()).toBe(rootBefore);
});

describe("host dataplane on the real kernel", () => {
  it("applies a spec: gateways, taps, veths, routes, neighbours, sysctls", async () => {
    const r = await daemon.ctl(["apply", "-f", "-", "-o", "json"], spec(task1.name, task2.name));
    expect(r.stderr).toBe("");
    expect(r.exitCode).toBe(0);
    const status = await daemon.status();
    expect(status.endpoints.map((e) => [e.ip, e.state, e.reason])).toEqual(expect.arrayContaining([
      ["172.31.16.10", "ready", ""], ["172.31.16.11", "ready", ""], ["172.31.17.10", "ready", ""],
      ["172.31.16.31", "ready", ""], ["172.31.17.32", "ready", ""],
    ]));
    expect(status.networks.map((n) => [n.name, n.kind, n.state])).toEqual([["extra", "bridge", "ready"], ["service", "bridge", "ready"]]);

    const all = await links();
    const gw = all.find((l) => l.ifname === "virgw-service")!;
    // This lab's kernel has no dummy driver: the bridge fallback is what runs here.
    expect(gw.linkinfo?.info_kind).toBe("bridge");
    expect(gw.ifalias).toBe("vmrouted:gateway:service");
    const addrs = await host.json<Array<{ ifname: string; addr_info: Array<{ local: string; prefixlen: number }> }>>(["-4", "addr", "show", "dev", "virgw-service"]);
    expect(addrs[0]!.addr_info.map((a) => `${a.local}/${a.prefixlen}`)).toEqual(["172.31.16.1/24"]);
    const rt = await routes();
    expect(rt.some((r) => r.dst === "172.31.16.0/24")).toBe(false); // connected route gone
    expect(rt.some((r) => r.dst === "172.31.17.0/24")).toBe(false);

    for (const e of status.endpoints) {
      const link = all.find((l) => l.ifname === e.device)!;
      expect(link, e.device).toBeDefined();
      expect(link.ifalias).toBe(`vmrouted:${e.id}`);
      expect(link.group).toBe("94");
      expect(link.flags).toContain("UP");
      expect(link.address).toBe("fe" + e.mac.slice(2));
      if (e.kind === "tap") expect(link.linkinfo?.info_data).toMatchObject({ type: "tap", vnet_hdr: true });
      else expect(link.linkinfo?.info_kind).toBe("veth");
      expect(rt).toContainEqual(expect.objectContaining({ dst: e.ip, dev: e.device, protocol: "94", scope: "253" }));
      const neigh = await host.json<Neigh[]>(["neigh", "show", "dev", e.device]);
      expect(neigh).toContainEqual(expect.objectContaining({ dst: e.ip, lladdr: e.mac, state: ["PERMANENT"] }));
      expect(await host.sysctl(`net/ipv4/conf/${e.device}/proxy_arp`)).toBe("1");
      expect(await host.sysctl(`net/ipv4/neigh/${e.device}/proxy_delay`)).toBe("0");
      expect(await host.sysctl(`net/ipv4/conf/${e.device}/rp_filter`)).toBe("1");
    }
    expect(all.find((l) => l.ifname === "tap-custom1")).toBeDefined();
    expect(await host.sysctl("net/ipv4/ip_forward")).toBe("1");
  });

  it("configures the inside of a task namespace and routes between workloads", async () => {
    const inner = await task1.json<Array<{ addr_info: Array<{ local: string; prefixlen: number }> }>>(["-4", "addr", "show", "dev", "eth0"]);
    expect(inner[0]!.addr_info).toContainEqual(expect.objectContaining({ local: "172.31.16.31", prefixlen: 24 }));
    const def = await task1.json<Array<{ gateway?: string }>>(["route", "show", "default"]);
    expect(def[0]?.gateway).toBe("172.31.16.1");
    const toGateway = await task1.exec(["ping", "-c", "2", "-W", "2", "172.31.16.1"], false);
    expect(toGateway.exitCode, toGateway.stdout).toBe(0);
    // Across networks, only through the host's /32 routes.
    const across = await task1.exec(["ping", "-c", "2", "-W", "2", "172.31.17.32"], false);
    expect(across.exitCode, across.stdout).toBe(0);
  });

  it("counts traffic per endpoint", async () => {
    const e = (await daemon.status()).endpoints.find((x) => x.ip === "172.31.16.31")!;
    expect(e.counters.rxPackets).toBeGreaterThan(0);
    expect(e.counters.txBytes).toBeGreaterThan(0);
  });

  it("gives a network's tap and both ends of its veth the network's MTU, follows a change, and repairs one made by hand", async () => {
    const status = await daemon.status();
    const device = (ip: string) => status.endpoints.find((e) => e.ip === ip)!.device;
    // extra: a named tap and a veth into task2; service (no MTU) keeps the kernel's 1500 throughout.
    const mtus = async () => {
      const all = await links();
      const mtuOf = (name: string) => all.find((l) => l.ifname === name)?.mtu;
      const [inner] = await task2.json<Link[]>(["link", "show", "dev", "eth0"]);
      return {
        extra: [mtuOf("tap-custom1"), mtuOf(device("172.31.17.32")), inner?.mtu],
        service: [mtuOf(device("172.31.16.10")), mtuOf(device("172.31.16.31"))],
      };
    };
    expect(await mtus()).toEqual({ extra: [1500, 1500, 1500], service: [1500, 1500] });
    // Set, changed, removed (back to 1500), set again: the restart below must find nothing to change with it set.
    for (const mtu of [9000, 1400, undefined, 9000]) {
      const r = await daemon.ctl(["apply", "-f", "-"], specWithExtraMtu(mtu));
      expect(r.exitCode, r.stderr).toBe(0);
      const want = mtu ?? 1500;
      expect(await mtus(), `mtu ${mtu}`).toEqual({ extra: [want, want, want], service: [1500, 1500] });
      // The largest packet that fits crosses the veth unfragmented both ways (to the gateway and back).
      const big = await task2.exec(["ping", "-c", "1", "-W", "2", "-M", "do", "-s", String(want - 28), "172.31.17.1"], false);
      expect(big.exitCode, big.stdout + big.stderr).toBe(0);
    }
    expect((await daemon.status()).endpoints.filter((e) => e.state !== "ready")).toEqual([]);
    // By hand: the tap's raises a kernel event (repaired at once); eth0's inside the namespace is found by the resync.
    await host.ip(["link", "set", "dev", "tap-custom1", "mtu", "1280"]);
    await task2.ip(["link", "set", "dev", "eth0", "mtu", "1280"]);
    await waitFor(async () => JSON.stringify((await mtus()).extra) === JSON.stringify([9000, 9000, 9000]), 10000, "MTUs repaired");
  });

  it("repairs a route and a tap deleted by hand, a reset sysctl and a re-added connected route", async () => {
    const status = await daemon.status();
    const tap = status.endpoints.find((e) => e.ip === "172.31.16.10")!;
    const victim = status.endpoints.find((e) => e.ip === "172.31.16.11")!;
    const veth = status.endpoints.find((e) => e.ip === "172.31.16.31")!;
    await host.ip(["route", "del", "172.31.16.10/32"]);
    await host.ip(["link", "del", victim.device]);
    await host.setSysctl(`net/ipv4/conf/${veth.device}/rp_filter`, "0");
    await host.ip(["route", "add", "172.31.16.0/24", "dev", "virgw-service", "proto", "kernel", "scope", "link"]);
    await waitFor(async () => {
      const rt = await routes();
      return rt.some((r) => r.dst === "172.31.16.10" && r.dev === tap.device && r.protocol === "94") &&
        rt.some((r) => r.dst === "172.31.16.11" && r.dev === victim.device) && !rt.some((r) => r.dst === "172.31.16.0/24");
    }, 10000, "routes, tap and connected route repaired");
    await waitFor(async () => (await host.sysctl(`net/ipv4/conf/${veth.device}/rp_filter`)) === "1", 10000, "rp_filter repaired");
    const link = (await links()).find((l) => l.ifname === victim.device);
    expect(link?.linkinfo?.info_data).toMatchObject({ type: "tap", vnet_hdr: true });
  });

  it("restarts without flushing or duplicating anything", async () => {
    const before = await links();
    const routesBefore = await routes();
    await daemon.stop();
    const mark = daemon.log.length;
    // Stopped: workloads keep their network.
    expect((await routes()).filter((r) => r.protocol === "94")).toHaveLength(5);
    await daemon.start();
    await daemon.ctl(["status"]);
    await new Promise((r) => setTimeout(r, 1500)); // a resync or two
    const after = await links();
    for (const l of before.filter(ours)) expect(after.find((a) => a.ifname === l.ifname)?.ifindex, l.ifname).toBe(l.ifindex);
    expect(after.filter(ours)).toHaveLength(before.filter(ours).length);
    expect((await routes()).sort((a, b) => a.dst.localeCompare(b.dst))).toEqual(routesBefore.sort((a, b) => a.dst.localeCompare(b.dst)));
    expect(daemon.log.slice(mark)).toContain("vmrouted started");
    expect(daemon.log.slice(mark)).not.toMatch(/"operations":[1-9]/); // the restart applied nothing
  });

  it("removes endpoints and runtime networks, and nothing of vmrouted is left", async () => {
    const r = await daemon.ctl(["apply", "-f", "-"], "networks: {}\nendpoints: []\n");
    expect(r.exitCode, r.stderr).toBe(0);
    const left = (await links()).filter(ours).map((l) => l.ifname);
    expect(left).toEqual(["virgw-service"]); // config networks always stay
    expect((await routes()).filter((x) => x.protocol === "94")).toEqual([]);
    expect(await task1.json(["link", "show", "dev", "eth0"]).catch(() => [])).toEqual([]);
    // Without the network in the config, its gateway goes too.
    await daemon.stop();
    await daemon.writeConfig({ networks: {} });
    await daemon.start();
    expect((await links()).filter(ours)).toEqual([]);
    expect((await host.json<Neigh[]>(["neigh", "show", "nud", "permanent"]))).toEqual([]);
  });

  it("never touched what it does not own", async () => {
    const all = await links();
    const look = all.find((l) => l.ifname === "tap-lookalike");
    expect(look).toMatchObject({ group: "94" });
    expect(look?.ifalias).toBeUndefined();
    expect(all.find((l) => l.ifname === "br-foreign")).toBeDefined();
    expect(all.find((l) => l.ifname === "tap-teardown")).toMatchObject({ group: "95" });
    expect(await routes()).toContainEqual(expect.objectContaining({ dst: "172.31.16.99", dev: "tap-lookalike", protocol: "4" }));
    const addrs = await host.json<Array<{ addr_info: Array<{ local: string }> }>>(["-4", "addr", "show", "dev", "br-foreign"]);
    expect(addrs[0]!.addr_info[0]!.local).toBe("192.168.77.1");
  });
});
