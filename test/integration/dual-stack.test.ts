import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { assertLabReady, Daemon, Netns, rootSnapshot, runId, sh, waitFor } from "../helpers/lab.js";
import { linkLocalFromMac } from "../../src/model/ipv6.js";

// Dual stack on the real kernel, in namespaces this suite creates (issue #25,
// host side): vmrouted runs in `host`; task namespaces hold netns endpoints
// with an ip6 beside their IPv4 address; an IPv4-only endpoint stays as it was.

interface Route { dst: string; dev?: string; protocol?: string; metric?: number; gateway?: string }
interface Neigh { dst: string; dev: string; lladdr?: string; state?: string[] }
interface Addr { ifname: string; addr_info: Array<{ family: string; local: string; prefixlen: number; nodad?: boolean }> }

const id = runId();
let host: Netns, task1: Netns, task2: Netns, task3: Netns;
let daemon: Daemon;
let rootBefore = "";

const spec = () => `
networks:
  service: { gateway: 172.31.16.1/24, prefix6: "fd31:16::/64" }
  extra: { gateway: 172.31.17.1/24, prefix6: "fd31:17::/64" }
endpoints:
  - { kind: tap, network: service, ip: 172.31.16.10, ip6: "fd31:16::10" }
  - { kind: tap, network: service, ip: 172.31.16.11 }
  - { kind: netns, network: service, ip: 172.31.16.31, ip6: "fd31:16:0::31", netns: ${task1.name} }
  - { kind: netns, network: extra, ip: 172.31.17.32, ip6: "fd31:17::32", netns: ${task2.name} }
  - { kind: netns, network: service, ip: 172.31.16.33, netns: ${task3.name} }
`;

const routes6 = () => host.json<Route[]>(["-6", "route", "show", "table", "main"]);

beforeAll(async () => {
  assertLabReady();
  rootBefore = await rootSnapshot();
  host = await Netns.create(`vmr6-${id}-host`);
  task1 = await Netns.create(`vmr6-${id}-t1`);
  task2 = await Netns.create(`vmr6-${id}-t2`);
  task3 = await Netns.create(`vmr6-${id}-t3`);
  // Not ours: a foreign IPv6 route and address vmrouted must leave alone.
  await host.ip(["link", "add", "br-foreign6", "type", "bridge"]);
  await host.ip(["link", "set", "br-foreign6", "up"]);
  await host.ip(["-6", "addr", "add", "fd99::1/64", "dev", "br-foreign6", "nodad"]);
  await host.ip(["-6", "route", "add", "fd31:16::99/128", "dev", "br-foreign6", "proto", "static"]);
  daemon = await Daemon.create(host, { networks: { service: { gateway: "172.31.16.1/24", prefix6: "fd31:16::/64" } } });
  await daemon.start();
});

afterAll(async () => {
  await daemon?.cleanup();
  for (const ns of [host, task1, task2, task3]) await ns?.destroy();
  expect(await rootSnapshot()).toBe(rootBefore);
});

describe("dual stack on the real kernel", () => {
  it("gives each endpoint with an ip6 its /128, neighbour entry, IPv6 sysctls and link-local gateway; IPv4-only ones stay IPv4", async () => {
    const r = await daemon.ctl(["apply", "-f", "-", "-o", "json"], spec());
    expect(r.stderr).toBe("");
    expect(r.exitCode).toBe(0);
    const status = await daemon.status();
    expect(status.endpoints.map((e) => [e.ip, e.ip6, e.state, e.reason]).sort()).toEqual([
      ["172.31.16.10", "fd31:16::10", "ready", ""], ["172.31.16.11", undefined, "ready", ""],
      // Written with a zero group, stored in RFC 5952 form.
      ["172.31.16.31", "fd31:16::31", "ready", ""], ["172.31.16.33", undefined, "ready", ""], ["172.31.17.32", "fd31:17::32", "ready", ""],
    ]);
    expect(status.networks.map((n) => [n.name, n.prefix6])).toEqual([["extra", "fd31:17::/64"], ["service", "fd31:16::/64"]]);
    const rt = await routes6();
    for (const e of status.endpoints) {
      const mine = rt.filter((x) => x.dev === e.device && x.protocol === "94");
      if (!e.ip6) {
        expect(mine, e.device).toEqual([]);
        expect(await host.sysctl(`net/ipv6/conf/${e.device}/accept_ra`)).toBe("1"); // the kernel's default: untouched
        continue;
      }
      expect(mine).toEqual([expect.objectContaining({ dst: e.ip6, metric: 1024 })]);
      const neigh = await host.json<Neigh[]>(["-6", "neigh", "show", "dev", e.device]);
      expect(neigh).toContainEqual(expect.objectContaining({ dst: e.ip6, lladdr: e.mac, state: ["PERMANENT"] }));
      expect(await host.sysctl(`net/ipv6/conf/${e.device}/accept_ra`)).toBe("0");
      expect(await host.sysctl(`net/ipv6/conf/${e.device}/forwarding`)).toBe("1");
      // The guest's gateway: the EUI-64 link-local of the host side's MAC, the same on every host, usable at once.
      const addrs = await host.json<Addr[]>(["-6", "addr", "show", "dev", e.device]);
      const hostMac = "fe" + e.mac.slice(2);
      expect(addrs[0]!.addr_info.map((a) => [a.local, a.prefixlen, a.nodad])).toEqual([[linkLocalFromMac(hostMac), 64, true]]);
      expect(e.conditions.gateway6).toBe(true);
    }
    expect(await host.sysctl("net/ipv6/conf/all/forwarding")).toBe("1");
    // The gateway device carries the prefix's base address for dnsmasq (no connected route), and takes no RA.
    for (const [device, prefix] of [["virgw-service", "fd31:16::"], ["virgw-extra", "fd31:17::"]] as const) {
      const a = await host.json<Addr[]>(["-6", "addr", "show", "dev", device, "scope", "global"]);
      expect(a[0]!.addr_info.filter((x) => x.local).map((x) => `${x.local}/${x.prefixlen}`)).toEqual([`${prefix}/64`]);
      expect(await host.sysctl(`net/ipv6/conf/${device}/accept_ra`)).toBe("0");
      expect(rt.filter((x) => x.dev === device && x.dst !== "fe80::/64")).toEqual([]);
    }
    // The foreign route and address are as they were.
    expect(rt).toContainEqual(expect.objectContaining({ dst: "fd31:16::99", dev: "br-foreign6", protocol: "4" }));
  });

  it("configures the namespace's /128 and IPv6 default route, and routes IPv6 between workloads across networks", async () => {
    const e = (await daemon.status()).endpoints.find((x) => x.ip === "172.31.16.31")!;
    const inner = await task1.json<Addr[]>(["-6", "addr", "show", "dev", "eth0", "scope", "global"]);
    expect(inner[0]!.addr_info.filter((a) => a.local).map((a) => `${a.local}/${a.prefixlen}`), JSON.stringify(inner)).toEqual(["fd31:16::31/128"]);
    const def = await task1.json<Route[]>(["-6", "route", "show", "default"]);
    expect(def[0]?.gateway).toBe(linkLocalFromMac("fe" + e.mac.slice(2)));
    // task1 (service) → task2 (extra): only through the host's /128 routes; the IPv4 path still works beside it.
    const across = await task1.exec(["ping", "-6", "-c", "3", "-i", "0.2", "-W", "2", "fd31:17::32"], false);
    expect(across.exitCode, across.stdout + across.stderr).toBe(0);
    const across4 = await task1.exec(["ping", "-c", "2", "-W", "2", "172.31.17.32"], false);
    expect(across4.exitCode, across4.stdout).toBe(0);
    // An IPv4-only namespace has no IPv6 route to reach anyone.
    const none = await task3.json<Route[]>(["-6", "route", "show", "default"]);
    expect(none).toEqual([]);
  });

  it("repairs a /128 and an IPv6 neighbour entry deleted by hand, and an accept_ra reset", async () => {
    const e = (await daemon.status()).endpoints.find((x) => x.ip === "172.31.16.10")!;
    await host.ip(["-6", "route", "del", "fd31:16::10/128", "dev", e.device, "proto", "94"]);
    await host.ip(["-6", "neigh", "del", "fd31:16::10", "dev", e.device]);
    await waitFor(async () => {
      const rt = await routes6();
      const neigh = await host.json<Neigh[]>(["-6", "neigh", "show", "dev", e.device]);
      return rt.some((x) => x.dst === "fd31:16::10" && x.protocol === "94") && neigh.some((n) => n.dst === "fd31:16::10" && n.state?.includes("PERMANENT"));
    }, 5000, "the /128 and its neighbour entry are repaired");
    await host.setSysctl(`net/ipv6/conf/${e.device}/accept_ra`, "1");
    // No kernel event says so: the periodic resync (1 s here) repairs it.
    await waitFor(async () => (await host.sysctl(`net/ipv6/conf/${e.device}/accept_ra`)) === "0", 5000, "accept_ra is 0 again");
  });

  it("doctor: IPv6 forwarding, the IPv6 sysctls of dual-stack devices and an ip6 FORWARD drop, each found while broken", async () => {
    const d0 = await daemon.doctor();
    expect(d0.findings.filter((f) => f.result === "problem"), JSON.stringify(d0.findings)).toEqual([]);
    expect(d0.findings.filter((f) => f.check === "ip-forward").map((f) => f.message)).toEqual(["IPv4 forwarding is on", "IPv6 forwarding is on"]);
    const e = (await daemon.status()).endpoints.find((x) => x.ip === "172.31.16.10")!;
    const nft = (script: string, reject = true) => sh("ip", ["netns", "exec", host.name, "nft", "-f", "-"], { input: script, reject });
    // Paused (our child, by pid): vmrouted would repair the sysctls at its next resync.
    daemon.child!.kill("SIGSTOP");
    try {
      await host.setSysctl("net/ipv6/conf/all/forwarding", "0");
      await host.setSysctl(`net/ipv6/conf/${e.device}/accept_ra`, "1");
      await nft("table ip6 vmrt6_test { chain fwdfilter { type filter hook forward priority 0; policy drop; }; }");
      // The drop is real: task1 no longer reaches task2 over IPv6, while IPv4 still does.
      expect((await task1.exec(["ping", "-6", "-c", "1", "-W", "1", "fd31:17::32"], false)).exitCode).not.toBe(0);
      const d = await daemon.doctor();
      const problem = (check: string) => d.findings.filter((f) => f.check === check && f.result === "problem").map((f) => f.message).join("; ");
      expect(d.exitCode).toBe(1);
      expect(problem("ip-forward")).toMatch(/net\.ipv6\.conf\.all\.forwarding is 0/);
      expect(problem("endpoint-sysctls")).toContain(`net.ipv6.conf.${e.device}.accept_ra is 1, not 0`);
      expect(problem("firewall")).toMatch(/table ip6 vmrt6_test chain fwdfilter: policy drop/);
    } finally {
      daemon.child!.kill("SIGCONT");
      await nft("delete table ip6 vmrt6_test", false);
    }
    await waitFor(async () => (await daemon.doctor()).exitCode === 0, 15000, "doctor to find nothing wrong once vmrouted runs again");
    expect(await host.sysctl("net/ipv6/conf/all/forwarding")).toBe("1");
  });

  it("refuses an ip6 outside the prefix, on a network without one, or taken, with one line and no change", async () => {
    const before = await routes6();
    const cases: Array<[string[], RegExp]> = [
      [["tap", "add", "--network", "service", "--ip", "172.31.16.40", "--ip6", "fd31:99::40"], /ip6 fd31:99::40 is outside network 'service' \(fd31:16::\/64\)/],
      [["tap", "add", "--network", "service", "--ip", "172.31.16.41", "--ip6", "fd31:16::10"], /ip fd31:16::10 is already used/],
      [["tap", "add", "--network", "service", "--ip", "172.31.16.42", "--ip6", "not-an-address"], /ip6 'not-an-address' is not an IPv6 address/],
      [["network", "add", "third", "172.31.18.1/24", "--prefix6", "fd31:16::/80"], /overlaps network 'service'/],
      [["network", "add", "third", "172.31.18.1/24", "--prefix6", "fd31:18::1/64"], /prefix6 'fd31:18::1\/64' is not an IPv6 prefix with its base address/],
    ];
    for (const [args, message] of cases) {
      const r = await daemon.ctl(args);
      expect(r.exitCode, args.join(" ")).not.toBe(0);
      expect(r.stderr.trim().split("\n")).toHaveLength(1);
      expect(r.stderr).toMatch(message);
    }
    expect(await routes6()).toEqual(before);
  });

  it("restarts without flushing anything, then removes /128s with their endpoints", async () => {
    const before = (await routes6()).filter((x) => x.protocol === "94");
    await daemon.stop();
    await daemon.start();
    expect((await routes6()).filter((x) => x.protocol === "94")).toEqual(before);
    const r = await daemon.ctl(["apply", "-f", "-"], `
networks:
  service: { gateway: 172.31.16.1/24, prefix6: "fd31:16::/64" }
endpoints:
  - { kind: tap, network: service, ip: 172.31.16.11 }
`);
    expect(r.exitCode, r.stderr).toBe(0);
    await waitFor(async () => (await routes6()).every((x) => x.protocol !== "94"), 5000, "every /128 of ours is gone");
    expect(await routes6()).toContainEqual(expect.objectContaining({ dst: "fd31:16::99", dev: "br-foreign6", protocol: "4" }));
  });
});
