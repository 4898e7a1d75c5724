import { spawn, type ChildProcess } from "node:child_process";
import { chmod, mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { desiredNat, natDifferences, planNat, type NatTable } from "../../src/dataplane/nat.js";
import { applyNft, listNatTable } from "../../src/dataplane/nft.js";
import type { DesiredState, LearnedRoute, Network } from "../../src/model/types.js";
import { Netns, rootSnapshot, runId, sh, stopChild, waitFor } from "../helpers/lab.js";

// Egress NAT on the real kernel and nftables, without the daemon: the table
// that desiredNat/planNat/applyNft write in a "host" namespace, and what
// traffic does through it. All in namespaces this suite creates.
//
//   task1 172.31.16.31 ─┐                              ┌─ outside 198.51.100.2 (no route back to 172.31.16.0/24)
//   task2 172.31.16.32 ─┤ host (gateway 172.31.16.1) ──┤
//                       │  198.51.100.1, 10.99.0.1     └─ remote 10.99.0.2, workload 10.250.0.5 (a learned /32;
//                                                          routes 172.31.16.0/24 back via the host)
//
// The host side is built by hand the way vmrouted builds it (gateway on a
// bridge with noprefixroute, a /32 and proxy ARP per veth). The receivers
// record every source address they see in an nft set; the HTTP servers
// (busybox httpd) answer with the client address they saw.

const id = runId();
let host: Netns, task1: Netns, task2: Netns, outside: Netns, remote: Netns;
let www = "";
const servers: ChildProcess[] = [];
let rootBefore = "";
let rootTablesBefore = "";
let foreignBefore = "";

const network = (natOutgoing: boolean): Network => ({ name: "service", gateway: "172.31.16.1", prefixLength: 24, source: "config", natOutgoing, guest: { dhcp: true, dns: [], leaseSeconds: 3600 } });
const REMOTE_WORKLOAD: LearnedRoute = { prefix: "10.250.0.5/32", nextHop: "10.99.0.2", elevated: false };
const state = (nat: boolean, learned: LearnedRoute[] = [REMOTE_WORKLOAD]): DesiredState => ({ networks: [network(nat)], endpoints: [], learned });

const HOST_OUT = "198.51.100.1";
const HOST_FABRIC = "10.99.0.1";

/** Plans against the kernel's table and applies; then the kernel's table must plan to nothing (idempotence with real nft). */
async function converge(desired: NatTable | undefined): Promise<string | undefined> {
  const script = planNat(desired, await listNatTable(host.name));
  if (script) await applyNft(script, host.name);
  const after = await listNatTable(host.name);
  expect(natDifferences(desired, after)).toEqual([]);
  expect(planNat(desired, after)).toBeUndefined();
  return script;
}

const ping = async (from: Netns, to: string) => (await from.exec(["ping", "-c", "1", "-W", "1", "-q", to], false)).exitCode === 0;
const fetchClientAddress = async (from: Netns, to: string) =>
  (await from.exec(["curl", "-sS", "--max-time", "3", `http://${to}:8080/cgi-bin/ip`])).stdout.trim();

/** The source addresses `ns` sees while `action` runs (its nft set of sources, emptied first). */
async function seenBy(ns: Netns, action: () => Promise<unknown>): Promise<string[]> {
  await ns.exec(["nft", "flush", "set", "ip", "seen", "src"]);
  await action();
  const { stdout } = await ns.exec(["nft", "-j", "list", "set", "ip", "seen", "src"]);
  const set = (JSON.parse(stdout) as { nftables: Array<{ set?: { elem?: string[] } }> }).nftables.find((i) => i.set)?.set;
  return [...(set?.elem ?? [])].sort();
}

/** The host's whole nftables ruleset except table ip vmrouted, and its iptables-nft rules: must never change. */
async function foreignRules(): Promise<string> {
  const { stdout } = await host.exec(["nft", "-j", "list", "ruleset"]);
  const items = (JSON.parse(stdout) as { nftables: Array<Record<string, Record<string, unknown>>> }).nftables;
  const ours = (item: Record<string, Record<string, unknown>>) => Object.entries(item).some(([kind, o]) =>
    o.family === "ip" && (kind === "table" ? o.name === "vmrouted" : o.table === "vmrouted"));
  const save = await host.exec(["iptables-nft-save"]);
  const rules = save.stdout.split("\n").filter((l) => !l.startsWith("#")).join("\n");
  return `${JSON.stringify(items.filter((i) => !ours(i)), null, 1)}\n${rules}`;
}

async function veth(hostIf: string, peer: Netns, hostCidr?: string): Promise<void> {
  await host.ip(["link", "add", hostIf, "type", "veth", "peer", "name", "eth0", "netns", peer.name]);
  await host.ip(["link", "set", hostIf, "up"]);
  await peer.ip(["link", "set", "eth0", "up"]);
  if (hostCidr) await host.ip(["addr", "add", hostCidr, "dev", hostIf]);
}

async function task(ns: Netns, hostIf: string, ip: string): Promise<void> {
  await veth(hostIf, ns);
  await host.setSysctl(`net/ipv4/conf/${hostIf}/proxy_arp`, "1");
  await host.setSysctl(`net/ipv4/neigh/${hostIf}/proxy_delay`, "0");
  await host.ip(["route", "add", `${ip}/32`, "dev", hostIf, "scope", "link"]);
  await ns.ip(["addr", "add", `${ip}/24`, "dev", "eth0"]);
  await ns.ip(["route", "add", "default", "via", "172.31.16.1", "dev", "eth0", "onlink"]);
}

async function recordSources(ns: Netns): Promise<void> {
  await sh("ip", ["netns", "exec", ns.name, "nft", "-f", "-"], {
    input: "table ip seen {\n\tset src { type ipv4_addr; size 65535; flags dynamic; }\n" +
      "\tchain input { type filter hook input priority 0; policy accept; add @src { ip saddr }; }\n}\n",
  });
}

async function httpServer(ns: Netns, address: string): Promise<void> {
  const child = spawn("ip", ["netns", "exec", ns.name, "busybox", "httpd", "-f", "-p", `${address}:8080`, "-h", www], { stdio: "ignore" });
  servers.push(child);
  await waitFor(async () => (await ns.exec(["curl", "-s", "-o", "/dev/null", "--max-time", "1", `http://${address}:8080/`], false)).exitCode !== 7,
    5000, `httpd in ${ns.name}`);
}

beforeAll(async () => {
  if (process.getuid?.() !== 0) throw new Error("integration tests need root (they create network namespaces)");
  rootBefore = await rootSnapshot();
  rootTablesBefore = (await sh("nft", ["list", "tables"])).stdout;
  www = await mkdtemp(join(tmpdir(), "vmrouted-nat-www-"));
  await mkdir(join(www, "cgi-bin"));
  await writeFile(join(www, "cgi-bin", "ip"), '#!/bin/sh\nprintf "Content-Type: text/plain\\r\\n\\r\\n%s\\n" "$REMOTE_ADDR"\n');
  await chmod(join(www, "cgi-bin", "ip"), 0o755);
  await chmod(www, 0o755);

  host = await Netns.create(`vmrt-${id}-nhost`);
  task1 = await Netns.create(`vmrt-${id}-nt1`);
  task2 = await Netns.create(`vmrt-${id}-nt2`);
  outside = await Netns.create(`vmrt-${id}-nout`);
  remote = await Netns.create(`vmrt-${id}-nrem`);

  await host.setSysctl("net/ipv4/ip_forward", "1");
  await host.ip(["link", "add", "virgw-service", "type", "bridge"]);
  await host.ip(["addr", "add", "172.31.16.1/24", "dev", "virgw-service", "noprefixroute"]);
  await host.ip(["link", "set", "virgw-service", "up"]);
  await task(task1, "h-t1", "172.31.16.31");
  await task(task2, "h-t2", "172.31.16.32");
  // The outside: a network the host routes, with no route back to the workloads.
  await veth("h-out", outside, `${HOST_OUT}/24`);
  await outside.ip(["addr", "add", "198.51.100.2/24", "dev", "eth0"]);
  // Another host's workload, learned over BGP: the fabric routes the workload network back through this host.
  await veth("h-fab", remote, `${HOST_FABRIC}/24`);
  await remote.ip(["addr", "add", "10.99.0.2/24", "dev", "eth0"]);
  await remote.ip(["addr", "add", "10.250.0.5/32", "dev", "lo"]);
  await remote.ip(["route", "add", "172.31.16.0/24", "via", HOST_FABRIC]);
  await host.ip(["route", "add", "10.250.0.5/32", "via", "10.99.0.2", "proto", "96"]);

  for (const ns of [task2, outside, remote]) await recordSources(ns);
  await httpServer(outside, "198.51.100.2");
  await httpServer(remote, "10.250.0.5");

  // Other applications' rules on the host, some of them look-alikes: none may ever change.
  await sh("ip", ["netns", "exec", host.name, "nft", "-f", "-"], {
    input: [
      "table inet filter {",
      "\tset blocked { type ipv4_addr; flags interval; elements = { 203.0.113.0/24, 192.0.2.7 } }",
      "\tchain input { type filter hook input priority filter; policy accept; ip saddr @blocked drop; }",
      "\tchain forward { type filter hook forward priority filter; policy accept; ip saddr @blocked counter drop; }",
      "}",
      "table inet vmrouted {",
      "\tchain postrouting { type nat hook postrouting priority srcnat; policy accept; ip saddr 192.0.2.0/24 masquerade; }",
      "}",
      "table ip vmrouted2 {",
      "\tset all_prefixes { type ipv4_addr; flags interval; elements = { 10.0.0.0/8 } }",
      "}",
      "",
    ].join("\n"),
  });
  for (const rule of [
    ["-t", "filter", "-A", "FORWARD", "-s", "192.0.2.0/24", "-j", "DROP"],
    ["-t", "nat", "-N", "APP"],
    ["-t", "nat", "-A", "PREROUTING", "-d", "192.0.2.1", "-j", "APP"],
    ["-t", "nat", "-A", "POSTROUTING", "-s", "192.0.2.0/24", "-o", "h-out", "-j", "MASQUERADE", "--random-fully"],
  ]) await host.exec(["iptables-nft", ...rule]);
  foreignBefore = await foreignRules();
  expect(foreignBefore).toContain("table");
  expect(foreignBefore).toContain("-A POSTROUTING -s 192.0.2.0/24 -o h-out -j MASQUERADE --random-fully");
});

afterAll(async () => {
  for (const s of servers) await stopChild(s, "SIGKILL");
  for (const ns of [host, task1, task2, outside, remote]) await ns?.destroy();
  if (www) await rm(www, { recursive: true, force: true });
  expect(await rootSnapshot()).toBe(rootBefore);
  expect((await sh("nft", ["list", "tables"])).stdout).toBe(rootTablesBefore);
});

describe("egress NAT on the real kernel and nftables", () => {
  it("without the table, the outside is unreachable (it has no route back); workloads reach each other", async () => {
    expect(await listNatTable(host.name)).toBeUndefined();
    expect(planNat(desiredNat(state(false)), undefined)).toBeUndefined();
    expect(await ping(task1, "198.51.100.2")).toBe(false);
    expect(await seenBy(task2, () => ping(task1, "172.31.16.32"))).toEqual(["172.31.16.31"]);
    expect(await seenBy(remote, () => ping(task1, "10.250.0.5"))).toEqual(["172.31.16.31"]);
  });

  it("with natOutgoing, the task pings the outside and fetches from it; the outside sees the host's address", async () => {
    const script = await converge(desiredNat(state(true)));
    expect(script).toContain("masquerade fully-random");
    expect(await seenBy(outside, () => expect(ping(task1, "198.51.100.2")).resolves.toBe(true))).toEqual([HOST_OUT]);
    expect(await fetchClientAddress(task1, "198.51.100.2")).toBe(HOST_OUT);
    expect(await foreignRules()).toBe(foreignBefore);
  });

  it("never masquerades workload to workload: same host, and another host's learned workload", async () => {
    expect(await seenBy(task2, () => expect(ping(task1, "172.31.16.32")).resolves.toBe(true))).toEqual(["172.31.16.31"]);
    expect(await seenBy(remote, () => expect(ping(task1, "10.250.0.5")).resolves.toBe(true))).toEqual(["172.31.16.31"]);
    expect(await fetchClientAddress(task1, "10.250.0.5")).toBe("172.31.16.31");
    // The learned prefix is what keeps it so: without it, that traffic is masqueraded like any other.
    await converge(desiredNat(state(true, [])));
    expect(await fetchClientAddress(task1, "10.250.0.5")).toBe(HOST_FABRIC);
    await converge(desiredNat(state(true)));
    expect(await fetchClientAddress(task1, "10.250.0.5")).toBe("172.31.16.31");
    expect(await foreignRules()).toBe(foreignBefore);
  });

  it("restores the table deleted by hand", async () => {
    await host.exec(["nft", "delete", "table", "ip", "vmrouted"]);
    expect(await listNatTable(host.name)).toBeUndefined();
    expect(await ping(task1, "198.51.100.2")).toBe(false);
    const script = await converge(desiredNat(state(true)));
    expect(script).toMatch(/^add table ip vmrouted\ndelete table ip vmrouted\ntable ip vmrouted \{/);
    expect(await fetchClientAddress(task1, "198.51.100.2")).toBe(HOST_OUT);
    expect(await foreignRules()).toBe(foreignBefore);
  });

  it("detects and repairs a rule added by hand", async () => {
    const desired = desiredNat(state(true));
    await host.exec(["nft", "insert", "rule", "ip", "vmrouted", "postrouting", "ip", "daddr", "10.250.0.5", "masquerade"]);
    expect(await fetchClientAddress(task1, "10.250.0.5")).toBe(HOST_FABRIC);
    expect(natDifferences(desired, await listNatTable(host.name))).toEqual(["table ip vmrouted: chain postrouting has 2 rule(s) that differ from the 1 wanted"]);
    await converge(desired);
    expect(await fetchClientAddress(task1, "10.250.0.5")).toBe("172.31.16.31");
    expect(await foreignRules()).toBe(foreignBefore);
  });

  it("detects and repairs set elements changed by hand", async () => {
    const desired = desiredNat(state(true));
    await host.exec(["nft", "delete", "element", "ip", "vmrouted", "all_prefixes", "{ 10.250.0.5 }"]);
    await host.exec(["nft", "add", "element", "ip", "vmrouted", "all_prefixes", "{ 198.51.100.0/24 }"]);
    expect(natDifferences(desired, await listNatTable(host.name))).toEqual([
      "table ip vmrouted: set all_prefixes lacks 10.250.0.5/32",
      "table ip vmrouted: set all_prefixes has unexpected 198.51.100.0/24",
    ]);
    expect(await fetchClientAddress(task1, "10.250.0.5")).toBe(HOST_FABRIC);
    expect(await ping(task1, "198.51.100.2")).toBe(false);
    await converge(desired);
    expect(await fetchClientAddress(task1, "10.250.0.5")).toBe("172.31.16.31");
    expect(await fetchClientAddress(task1, "198.51.100.2")).toBe(HOST_OUT);
    expect(await foreignRules()).toBe(foreignBefore);
  });

  it("detects and repairs a table made dormant by hand", async () => {
    await host.exec(["nft", "add", "table", "ip", "vmrouted", "{ flags dormant; }"]);
    expect(await ping(task1, "198.51.100.2")).toBe(false);
    expect(natDifferences(desiredNat(state(true)), await listNatTable(host.name))).toEqual([
      expect.stringMatching(/^table ip vmrouted: attributes \{"flags":.*\}, want none$/),
    ]);
    await converge(desiredNat(state(true)));
    expect((await host.exec(["nft", "list", "table", "ip", "vmrouted"])).stdout).not.toContain("dormant");
    expect(await fetchClientAddress(task1, "198.51.100.2")).toBe(HOST_OUT);
  });

  it("a failed script changes nothing (one transaction) and is reported in one line", async () => {
    const before = await listNatTable(host.name);
    const script = planNat(desiredNat(state(true, [])), undefined)!;
    const error = await applyNft(`${script}add rule ip vmrouted postrouting masquerade random-fully\n`, host.name).catch((e: Error) => e);
    expect(error).toBeInstanceOf(Error);
    expect((error as Error).message).toMatch(/^nft -f: syntax error, .* \(line \d+: add rule ip vmrouted postrouting masquerade random-fully\)$/);
    expect((error as Error).message).not.toContain("\n");
    expect(await listNatTable(host.name)).toEqual(before);
    await expect(listNatTable(`vmrt-${id}-nonexistent`)).rejects.toThrow(/^nft list table ip vmrouted: .+$/);
  });

  it("deletes the table when no network wants NAT: the same ping fails again, nothing else changes", async () => {
    const script = await converge(desiredNat(state(false)));
    expect(script).toBe("add table ip vmrouted\ndelete table ip vmrouted\n");
    expect(await listNatTable(host.name)).toBeUndefined();
    expect(await ping(task1, "198.51.100.2")).toBe(false);
    expect(await seenBy(remote, () => ping(task1, "10.250.0.5"))).toEqual(["172.31.16.31"]);
    // Nothing to do, twice over.
    expect(await converge(desiredNat(state(false)))).toBeUndefined();
    const tables = (await host.exec(["nft", "list", "tables"])).stdout;
    expect(tables).toContain("table inet vmrouted");
    expect(tables).toContain("table ip vmrouted2");
    expect(tables).not.toMatch(/^table ip vmrouted$/m);
    expect(await foreignRules()).toBe(foreignBefore);
  });
});
