import { spawn, type ChildProcess } from "node:child_process";
import { chmod, mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Daemon, Netns, rootSnapshot, runId, sh, stopChild, waitFor } from "../helpers/lab.js";

// Egress NAT driven by vmrouted: a runtime network with natOutgoing, turned on
// and off with `apply -f` and `network add`, repaired when changed by hand, and
// never touching another application's nftables or iptables-nft rules.
//
//   t1 172.31.20.31 (pool, NAT)  ─┐
//   t2 172.31.20.32 (pool, NAT)  ─┤ host: vmrouted ── 198.51.100.1 ── outside 198.51.100.2 (no route back)
//   t3 172.31.16.33 (service)    ─┘

const id = runId();
const HOST_OUT = "198.51.100.1", OUTSIDE = "198.51.100.2";
let host: Netns, outside: Netns;
const tasks: Netns[] = [];
let daemon: Daemon;
let www = "";
let server: ChildProcess | undefined;
let rootBefore = "";
let foreignBefore = "";

const spec = (nat: boolean) => [
  "networks:",
  `  pool: { gateway: 172.31.20.1/24, natOutgoing: ${nat} }`,
  "endpoints:",
  `  - { kind: netns, network: pool, ip: 172.31.20.31, netns: ${tasks[0]!.name} }`,
  `  - { kind: netns, network: pool, ip: 172.31.20.32, netns: ${tasks[1]!.name} }`,
  `  - { kind: netns, network: service, ip: 172.31.16.33, netns: ${tasks[2]!.name} }`,
].join("\n") + "\n";
const ping = async (from: Netns, to: string) => (await from.exec(["ping", "-c", "1", "-W", "1", "-q", to], false)).exitCode === 0;
const fetchClientAddress = async (from: Netns) => (await from.exec(["curl", "-sS", "--max-time", "3", `http://${OUTSIDE}:8080/cgi-bin/ip`])).stdout.trim();
const ourTable = async () => (await host.exec(["nft", "list", "table", "ip", "vmrouted"], false)).exitCode === 0;

/** The source addresses `ns` sees while `action` runs. */
async function seenBy(ns: Netns, action: () => Promise<unknown>): Promise<string[]> {
  await ns.exec(["nft", "flush", "set", "ip", "seen", "src"]);
  await action();
  const set = (JSON.parse((await ns.exec(["nft", "-j", "list", "set", "ip", "seen", "src"])).stdout) as { nftables: Array<{ set?: { elem?: string[] } }> })
    .nftables.find((i) => i.set)?.set;
  return [...(set?.elem ?? [])].sort();
}

/** Everything in the host's nftables ruleset but table ip vmrouted, and its iptables-nft rules. */
async function foreignRules(): Promise<string> {
  const items = (JSON.parse((await host.exec(["nft", "-j", "list", "ruleset"])).stdout) as { nftables: Array<Record<string, Record<string, unknown>>> }).nftables;
  const ours = (item: Record<string, Record<string, unknown>>) => Object.entries(item).some(([kind, o]) =>
    o.family === "ip" && (kind === "table" ? o.name === "vmrouted" : o.table === "vmrouted"));
  const rules = (await host.exec(["iptables-nft-save"])).stdout.split("\n").filter((l) => !l.startsWith("#")).join("\n");
  return `${JSON.stringify(items.filter((i) => !ours(i)))}\n${rules}`;
}

beforeAll(async () => {
  rootBefore = await rootSnapshot();
  host = await Netns.create(`vmrt-${id}-nh`);
  outside = await Netns.create(`vmrt-${id}-no`);
  for (let i = 1; i <= 3; i++) tasks.push(await Netns.create(`vmrt-${id}-nt${i}`));
  await host.ip(["link", "add", "h-out", "type", "veth", "peer", "name", "eth0", "netns", outside.name]);
  await host.ip(["addr", "add", `${HOST_OUT}/24`, "dev", "h-out"]);
  await host.ip(["link", "set", "h-out", "up"]);
  await outside.ip(["addr", "add", `${OUTSIDE}/24`, "dev", "eth0"]);
  await outside.ip(["link", "set", "eth0", "up"]);
  for (const ns of [outside, tasks[1]!, tasks[2]!])
    await sh("ip", ["netns", "exec", ns.name, "nft", "-f", "-"], {
      input: "table ip seen {\n\tset src { type ipv4_addr; size 65535; flags dynamic; }\n\tchain input { type filter hook input priority 0; policy accept; add @src { ip saddr }; }\n}\n",
    });
  www = await mkdtemp(join(tmpdir(), "vmrouted-natd-www-"));
  await mkdir(join(www, "cgi-bin"));
  await writeFile(join(www, "cgi-bin", "ip"), '#!/bin/sh\nprintf "Content-Type: text/plain\\r\\n\\r\\n%s\\n" "$REMOTE_ADDR"\n');
  await chmod(join(www, "cgi-bin", "ip"), 0o755);
  await chmod(www, 0o755);
  server = spawn("ip", ["netns", "exec", outside.name, "busybox", "httpd", "-f", "-p", `${OUTSIDE}:8080`, "-h", www], { stdio: "ignore" });
  // Another application's rules on the host: they must never change.
  await sh("ip", ["netns", "exec", host.name, "nft", "-f", "-"], {
    input: "table inet filter {\n\tchain forward { type filter hook forward priority filter; policy accept; ip saddr 192.0.2.0/24 counter drop; }\n}\n",
  });
  await host.exec(["iptables-nft", "-t", "nat", "-A", "POSTROUTING", "-s", "192.0.2.0/24", "-o", "h-out", "-j", "MASQUERADE"]);
  foreignBefore = await foreignRules();
  daemon = await Daemon.create(host, { resyncSeconds: 1 });
  await daemon.start();
});

afterAll(async () => {
  await daemon?.cleanup();
  await stopChild(server, "SIGKILL");
  for (const ns of [host, outside, ...tasks]) await ns?.destroy();
  if (www) await rm(www, { recursive: true, force: true });
  expect(await rootSnapshot()).toBe(rootBefore);
});

describe("egress NAT, through vmrouted", () => {
  it("a natOutgoing network's workloads reach the outside, which sees the host's address; a network without it does not", async () => {
    const r = await daemon.ctl(["apply", "-f", "-"], spec(true));
    expect(r.exitCode, r.stderr).toBe(0);
    expect(await ourTable()).toBe(true);
    expect(await seenBy(outside, () => expect(ping(tasks[0]!, OUTSIDE)).resolves.toBe(true))).toEqual([HOST_OUT]);
    expect(await fetchClientAddress(tasks[0]!)).toBe(HOST_OUT);
    expect(await ping(tasks[2]!, OUTSIDE)).toBe(false); // service has no natOutgoing, and the outside no route back
    const s = await daemon.status();
    expect((s as unknown as { dataplane: { nat: { state: string } } }).dataplane.nat.state).toBe("ready");
    expect((s.networks as Array<{ name: string; natOutgoing?: boolean }>).map((n) => [n.name, n.natOutgoing])).toEqual([["pool", true], ["service", false]]);
  });

  it("never masquerades workload to workload (same network, and another network on the host)", async () => {
    expect(await seenBy(tasks[1]!, () => expect(ping(tasks[0]!, "172.31.20.32")).resolves.toBe(true))).toEqual(["172.31.20.31"]);
    expect(await seenBy(tasks[2]!, () => expect(ping(tasks[0]!, "172.31.16.33")).resolves.toBe(true))).toEqual(["172.31.20.31"]);
  });

  it("turned off and on at runtime (network add, apply -f): only vmrouted's table changes", async () => {
    expect((await daemon.ctl(["network", "add", "pool", "172.31.20.1/24"])).exitCode).toBe(0);
    expect(await ourTable()).toBe(false); // no network wants NAT: the table is gone
    expect(await ping(tasks[0]!, OUTSIDE)).toBe(false);
    expect((await daemon.ctl(["network", "add", "pool", "172.31.20.1/24", "--nat-outgoing"])).exitCode).toBe(0);
    expect(await ping(tasks[0]!, OUTSIDE)).toBe(true);
    expect((await daemon.ctl(["apply", "-f", "-"], spec(false))).exitCode).toBe(0);
    expect(await ourTable()).toBe(false);
    expect((await daemon.ctl(["apply", "-f", "-"], spec(true))).exitCode).toBe(0);
    expect(await ping(tasks[0]!, OUTSIDE)).toBe(true);
    expect(await foreignRules()).toBe(foreignBefore);
  });

  it("repairs its table when deleted or changed by hand (at the resync), and leaves the other rules byte for byte; doctor sees it meanwhile", async () => {
    const natFindings = async () => (await daemon.doctor()).findings.filter((f) => f.check === "nat");
    expect((await natFindings()).map((f) => f.result)).toEqual(["ok"]);
    daemon.child!.kill("SIGSTOP"); // ours, by pid: the change stays while we look
    try {
      await host.exec(["nft", "delete", "table", "ip", "vmrouted"]);
      expect(await ping(tasks[0]!, OUTSIDE)).toBe(false);
      expect((await natFindings())).toEqual([expect.objectContaining({ result: "problem", message: "table ip vmrouted is missing" })]);
    } finally {
      daemon.child!.kill("SIGCONT");
    }
    await waitFor(ourTable, 5000, "the table back");
    expect(await ping(tasks[0]!, OUTSIDE)).toBe(true);
    // A rule slipped in before ours: not masqueraded while it stays.
    await host.exec(["nft", "insert", "rule", "ip", "vmrouted", "postrouting", "ip", "saddr", "172.31.20.0/24", "accept"]);
    // ("policy accept" stays: that is the chain's own.)
    await waitFor(async () => !(await host.exec(["nft", "list", "chain", "ip", "vmrouted", "postrouting"])).stdout.includes("172.31.20.0/24 accept"), 5000, "the extra rule gone");
    expect(await seenBy(outside, () => expect(ping(tasks[0]!, OUTSIDE)).resolves.toBe(true))).toEqual([HOST_OUT]);
    expect(await foreignRules()).toBe(foreignBefore);
  });

  it("removing the NAT network removes the table and nothing else", async () => {
    expect((await daemon.ctl(["apply", "-f", "-"], "networks: {}\nendpoints: []\n")).exitCode).toBe(0);
    expect(await ourTable()).toBe(false);
    expect(await foreignRules()).toBe(foreignBefore);
  });
});
