import { spawn, type ChildProcess } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, readdir, readFile, rm, rmdir, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { assertLabReady, Daemon, Netns, rootSnapshot, runId, stopChild, waitFor } from "../helpers/lab.js";
import { type LibvirtLab, startLibvirtWithDaemon } from "../helpers/libvirt-lab.js";

// DHCP on vmrouted's taps (dataplane/dhcp): real guests whose only network
// configuration is busybox's udhcpc, a real libvirtd and qemu, vmrouted's own
// dnsmasq. Beside it, a dnsmasq the test starts on a bridge of its own
// (standing for libvirt's `default` network), with a client whose MAC
// vmrouted knows: each server answers only its own interfaces.

const GATEWAY = "172.31.16.1";
const GUEST_IP = "172.31.16.50";
const TASK_IP = "172.31.16.20";
const UNKNOWN_MAC = "52:54:00:ab:cd:ef";
const OTHER_TAP = { name: "guestx0", ip: "172.31.16.60", mac: "52:54:00:12:34:56" };
const NETWORK = { gateway: `${GATEWAY}/24`, mtu: 1400, dns: ["10.1.0.53", "10.1.0.54"], domain: "lab.internal", leaseSeconds: 120 };
const id = runId();
let host: Netns, task: Netns, client: Netns;
let libvirt: LibvirtLab;
let daemon: Daemon;
let foreign: ChildProcess | undefined;
let foreignDir = "";
let rootBefore = "";
const timings: Record<string, number> = {};

const reports = (name: string) => libvirt.consoleReports(name);
const ackLines = () => daemon.log.split("\n").filter((l) => l.includes('"msg":"dhcp ack"'));
/** dnsmasq processes whose command line names this daemon's files (one per host, never two). */
async function ourDnsmasqs(): Promise<number[]> {
  const pids: number[] = [];
  for (const p of await readdir("/proc")) {
    if (!/^\d+$/.test(p)) continue;
    const cmd = await readFile(`/proc/${p}/cmdline`, "utf8").catch(() => "");
    if (cmd.startsWith("dnsmasq") && cmd.includes(join(daemon.dir, "dhcp"))) pids.push(Number(p));
  }
  return pids;
}
const alive = async (pid: number) => (await readFile(`/proc/${pid}/cmdline`, "utf8").catch(() => "")) !== "";
/** Renewals the guest reported as answered (udhcpc's "renew" event). */
const renewals = async () => (await reports("guest1")).filter((l) => l.startsWith(`dhcp renew ${GUEST_IP}/24`)).length;

/** /etc/netns was there before the test (resolvConf may make it): removed at the end otherwise, if empty. */
const hadNetnsEtc = existsSync("/etc/netns");

beforeAll(async () => {
  assertLabReady();
  rootBefore = await rootSnapshot();
  host = await Netns.create(`vmrt-${id}-dh`);
  task = await Netns.create(`vmrt-${id}-task`);
  client = await Netns.create(`vmrt-${id}-cl`);
  // The other DHCP server: its own bridge and range, started before vmrouted.
  await host.ip(["link", "add", "fbr0", "type", "bridge"]);
  await host.ip(["addr", "add", "192.168.250.1/24", "dev", "fbr0"]);
  await host.ip(["link", "set", "fbr0", "up"]);
  await host.ip(["link", "add", "fv0", "type", "veth", "peer", "name", "eth0", "netns", client.name]);
  await host.ip(["link", "set", "fv0", "master", "fbr0", "up"]);
  foreignDir = await mkdtemp(join(tmpdir(), "vmrouted-foreign-dnsmasq-"));
  foreign = spawn("ip", ["netns", "exec", host.name, "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--port=0", "--bind-dynamic",
    "--interface=fbr0", "--dhcp-range=192.168.250.10,192.168.250.20,120", `--dhcp-leasefile=${join(foreignDir, "leases")}`,
    `--pid-file=${join(foreignDir, "pid")}`, "--log-facility=-"], { stdio: "ignore" });
  ({ libvirt, daemon } = await startLibvirtWithDaemon(host, { networks: { service: NETWORK } }));
}, 120_000);

afterAll(async () => {
  await libvirt?.destroy();
  await daemon?.cleanup();
  await stopChild(foreign);
  if (foreignDir) await rm(foreignDir, { recursive: true, force: true });
  for (const ns of [task, client, host]) await ns?.destroy();
  if (task) await rm(join("/etc/netns", task.name), { recursive: true, force: true });
  if (!hadNetnsEtc) await rmdir("/etc/netns").catch(() => undefined);
  console.log(`dhcp timings (ms): ${JSON.stringify(timings)}`);
  expect(await rootSnapshot()).toBe(rootBefore);
});

describe("DHCP on vmrouted's taps", () => {
  it("a guest with no static configuration gets exactly its address, prefix, router, MTU and DNS, then reaches its gateway and a task; a guest whose MAC vmrouted does not know gets nothing", async () => {
    await libvirt.defineGuest("guest1", { ip: "dhcp", ping: [GATEWAY, TASK_IP], watch: GATEWAY, renewSeconds: 2 });
    for (const args of [["netns", "add", task.name, "--network", "service", "--ip", TASK_IP, "--resolv-conf"], ["iface", "add", "guest1", "--network", "service", "--ip", GUEST_IP]]) {
      const r = await daemon.ctl(args);
      expect(r.exitCode, r.stderr).toBe(0);
    }
    // The second guest's NIC is a tap endpoint vmrouted made for another MAC.
    const tap = await daemon.ctl(["tap", "add", "--network", "service", "--ip", OTHER_TAP.ip, "--name", OTHER_TAP.name, "--mac", OTHER_TAP.mac]);
    expect(tap.exitCode, tap.stderr).toBe(0);
    await libvirt.defineGuest("guest2", { ip: "dhcp", ping: [], watch: "", nic: { mac: UNKNOWN_MAC, tap: OTHER_TAP.name } });
    const started = Date.now();
    await libvirt.virsh(["start", "guest1"]);
    await libvirt.virsh(["start", "guest2"]);
    await waitFor(async () => (await reports("guest1")).includes("boot checks done"), 150_000, "guest1's boot checks");
    timings.startToBootChecksMs = Date.now() - started;
    const lines = await reports("guest1");
    expect(lines.find((l) => l.startsWith("dhcp bound"))).toBe(
      `dhcp bound ${GUEST_IP}/24 router ${GATEWAY} mtu 1400 dns ${NETWORK.dns.join(" ")} domain lab.internal server ${GATEWAY} lease 120`);
    expect(lines).toContain(`ping ${GATEWAY} ok`);
    expect(lines).toContain(`ping ${TASK_IP} ok`);
    const s = await daemon.status() as Awaited<ReturnType<Daemon["status"]>> & { dhcp: { state: string; hosts: number; pid: number } };
    expect(s.dhcp).toMatchObject({ state: "running", hosts: 2 });
    expect(s.endpoints.find((e) => e.ip === GUEST_IP)).toMatchObject({ dhcp: { served: true, lastAck: expect.any(String) } });
    // The unknown MAC: udhcpc gives up (leasefail) and never binds; dnsmasq answered nothing for it.
    await waitFor(async () => (await reports("guest2")).includes("dhcp leasefail"), 120_000, "guest2's DHCP client to time out");
    expect((await reports("guest2")).filter((l) => l.startsWith("dhcp bound"))).toEqual([]);
    expect(daemon.log).not.toContain(UNKNOWN_MAC);
    const metrics = (await daemon.request("GET", "/metrics")).body;
    expect(Number(/^vmrouted_dhcp_messages_total\{type="ACK"\} (\d+)/m.exec(metrics)?.[1])).toBeGreaterThanOrEqual(1);
    expect(metrics).toMatch(/^vmrouted_dhcp_running 1$/m);
    expect((await daemon.doctor()).findings.find((f) => f.check === "dhcp")).toMatchObject({ result: "ok", message: expect.stringContaining("answering 2 endpoint(s)") });
  }, 300_000);

  it("a task namespace that asks for it gets the network's DNS in its resolv.conf (what `ip netns exec` shows); someone else's is left alone; removed with the endpoint", async () => {
    const shown = async (ns: Netns) => (await ns.exec(["cat", "/etc/resolv.conf"])).stdout;
    await waitFor(async () => (await shown(task)).includes("nameserver 10.1.0.53"), 5000, "the task's resolv.conf");
    expect((await shown(task)).split("\n").slice(1)).toEqual(["search lab.internal", "nameserver 10.1.0.53", "nameserver 10.1.0.54"]);
    // A namespace whose resolv.conf someone else wrote: vmrouted does not overwrite it, and says so.
    const other = await Netns.create(`vmrt-${id}-other`);
    try {
      await mkdir(join("/etc/netns", other.name), { recursive: true });
      await writeFile(join("/etc/netns", other.name, "resolv.conf"), "nameserver 192.0.2.53\n");
      const r = await daemon.ctl(["netns", "add", other.name, "--network", "service", "--ip", "172.31.16.21", "--resolv-conf"]);
      expect(r.exitCode, r.stderr).toBe(0);
      await waitFor(async () => daemon.log.includes("not writing a resolv.conf that vmrouted did not write"), 5000, "the refusal in the log");
      expect(await shown(other)).toBe("nameserver 192.0.2.53"); // (execa drops the last newline)
      expect((await daemon.ctl(["netns", "remove", other.name])).exitCode).toBe(0);
      expect(await readFile(join("/etc/netns", other.name, "resolv.conf"), "utf8")).toBe("nameserver 192.0.2.53\n");
    } finally {
      await rm(join("/etc/netns", other.name), { recursive: true, force: true });
      await other.destroy();
    }
    // Ours goes with the endpoint (the namespace itself stays: it is the task's).
    expect((await daemon.ctl(["netns", "remove", task.name])).exitCode).toBe(0);
    await waitFor(async () => !existsSync(join("/etc/netns", task.name)), 5000, "the task's resolv.conf and its directory to go");
  });

  it("the guest's renewals are answered (vmrouted's dnsmasq, every 2 s)", async () => {
    const before = await renewals();
    await waitFor(async () => (await renewals()) >= before + 2, 20_000, "two more renewals");
  });

  it("dnsmasq SIGKILLed: another runs within 1 s, and the next renewal is answered", async () => {
    const pid = (await ourDnsmasqs())[0]!;
    expect(pid).toBeGreaterThan(0);
    const before = await renewals();
    const killed = Date.now();
    process.kill(pid, "SIGKILL"); // started by this test's daemon
    await waitFor(async () => (await ourDnsmasqs()).some((p) => p !== pid), 5000, "a new dnsmasq");
    timings.dnsmasqBackMs = Date.now() - killed;
    expect(timings.dnsmasqBackMs).toBeLessThan(1000);
    await waitFor(async () => (await renewals()) > before, 20_000, "a renewal answered by the new dnsmasq");
    expect((await daemon.status() as unknown as { dhcp: { restarts: number } }).dhcp.restarts).toBeGreaterThanOrEqual(1);
  });

  it("vmrouted restarted (SIGTERM, then SIGKILL): one dnsmasq, the lease kept, renewals answered", async () => {
    for (const signal of ["SIGTERM", "SIGKILL"] as const) {
      await daemon.stop(signal);
      await daemon.start();
      await waitFor(async () => (await ourDnsmasqs()).length === 1 && (await daemon.status() as unknown as { dhcp: { state: string } }).dhcp.state === "running",
        10_000, `one dnsmasq after vmrouted's ${signal}`);
      await new Promise((r) => setTimeout(r, 1000));
      expect(await ourDnsmasqs(), `after ${signal}`).toHaveLength(1);
      const leases = await readFile(join(daemon.dir, "state", "dnsmasq.leases"), "utf8");
      expect(leases).toMatch(new RegExp(` ${GUEST_IP} `));
      const before = await renewals();
      await waitFor(async () => (await renewals()) > before, 20_000, `a renewal answered after vmrouted's ${signal}`);
    }
  }, 120_000);

  it("another dnsmasq on another interface keeps running untouched and answers its own client; vmrouted's never answers there", async () => {
    const foreignPid = Number((await readFile(join(foreignDir, "pid"), "utf8")).trim());
    expect(await alive(foreignPid)).toBe(true);
    // The client has the MAC of vmrouted's own guest: vmrouted's dnsmasq knows it, and must still stay silent on fbr0.
    const guestMac = (await daemon.status()).endpoints.find((e) => e.ip === GUEST_IP)!.mac;
    await client.ip(["link", "set", "eth0", "address", guestMac]);
    await client.ip(["link", "set", "eth0", "up"]);
    const script = join(foreignDir, "event");
    await writeFile(script, '#!/bin/sh\n[ "$1" = bound ] && echo "bound $ip server $serverid"\nexit 0\n', { mode: 0o755 });
    const acksBefore = ackLines().length;
    const r = await client.exec(["busybox", "udhcpc", "-i", "eth0", "-f", "-q", "-n", "-t", "5", "-T", "1", "-s", script], false);
    expect(r.stdout).toMatch(/bound 192\.168\.250\.\d+ server 192\.168\.250\.1/);
    expect(ackLines().slice(acksBefore).filter((l) => l.includes("192.168.250"))).toEqual([]);
    expect(await alive(foreignPid)).toBe(true);
  });

  it("bad network settings: one line each, a non-zero answer, nothing changed", async () => {
    const before = JSON.stringify((await daemon.status()).networks);
    for (const [body, text] of [
      [{ mtu: 40 }, "mtu: must be between 68 and 65535"],
      [{ mtu: 70000 }, "mtu: must be between 68 and 65535"],
      [{ dns: ["10.1.0.53", "not-an-address"] }, "dns.1: must be an IPv4 address"],
      [{ leaseSeconds: 0 }, "leaseSeconds: must be at least 120"],
    ] as const) {
      const r = await daemon.request("POST", "/v1/networks", JSON.stringify({ name: "extra", gateway: "172.31.40.1/24", ...body }));
      expect(r.status, JSON.stringify(body)).toBe(400);
      const error = (JSON.parse(r.body) as { error: string }).error;
      expect(error).toContain(text);
      expect(error).not.toContain("\n");
    }
    // The same through the CLI: one line on stderr, exit non-zero.
    for (const [flags, text] of [[["--mtu", "40"], "mtu: must be between 68 and 65535"], [["--dns", "10.1.0.53,dns.example"], "dns.1: must be an IPv4 address"],
      [["--lease-seconds", "0"], "leaseSeconds: must be at least 120"], [["--mtu", "big"], "mtu: must be a number"]] as const) {
      const r = await daemon.ctl(["network", "add", "extra", "172.31.40.1/24", ...flags]);
      expect(r.exitCode, flags.join(" ")).not.toBe(0);
      expect(r.stderr.trim().split("\n")).toHaveLength(1);
      expect(r.stderr).toContain(text);
    }
    expect(JSON.stringify((await daemon.status()).networks)).toBe(before);
  });
});
