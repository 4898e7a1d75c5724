import { spawn } from "node:child_process";
import { chmod, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { execa } from "execa";
import { stringify } from "yaml";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { tapName } from "../../src/model/naming.js";
import { assertLabReady, Daemon, Netns, rootSnapshot, runId, sh, stopChild, waitFor, type StatusJson } from "../helpers/lab.js";
import { startLibvirtWithDaemon } from "../helpers/libvirt-lab.js";

// Never destructive, never silent (issue #22): one bad object, a double fault
// or vmrouted's own failure never takes a host's workloads down. Each case
// runs the real daemon in a namespace of its own, against the real kernel;
// faults come from the outside (a config edit, a fault-injecting `ip` first
// in the daemon's PATH, a full tmpfs), never from switches in vmrouted.

const id = runId();
let rootBefore = "";
const hosts: Netns[] = [];
const daemons: Daemon[] = [];
const cleanups: Array<() => Promise<unknown>> = [];

async function newHost(tag: string): Promise<Netns> {
  const host = await Netns.create(`vmnd-${id}-${tag}`);
  hosts.push(host);
  return host;
}

async function newDaemon(host: Netns, options: Parameters<typeof Daemon.create>[1] = {}): Promise<Daemon> {
  const d = await Daemon.create(host, { resyncSeconds: 3600, ...options });
  daemons.push(d);
  return d;
}

/** ifindex of a device in a namespace (undefined: absent). */
async function ifindex(host: Netns, dev: string): Promise<number | undefined> {
  const links = await host.json<Array<{ ifname: string; ifindex: number }>>(["link", "show"]);
  return links.find((l) => l.ifname === dev)?.ifindex;
}

async function routeDev(host: Netns, dst: string): Promise<string | undefined> {
  const routes = await host.json<Array<{ dst: string; dev?: string; protocol?: string | number }>>(["-4", "route", "show", "exact", dst]);
  return routes.find((r) => String(r.protocol) === "94")?.dev;
}

const endpoint = (s: StatusJson, ip: string) => s.endpoints.find((e) => e.ip === ip);

beforeAll(async () => {
  assertLabReady();
  rootBefore = await rootSnapshot();
});

afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c().catch(() => undefined);
  for (const d of daemons.splice(0)) await d.cleanup();
  for (const h of hosts.splice(0)) await h.destroy();
});

afterAll(async () => {
  expect(await rootSnapshot()).toBe(rootBefore);
});

/**
 * An `ip` first in the daemon's PATH that does what the real one does, except
 * when a file in `dir` arms a fault: `kill-batch` (one-shot) runs only the
 * first two lines of the next change batch and SIGKILLs itself; `garbage`
 * answers every read (-j) with something that is not JSON; `slow-listing`
 * prints the route listing's answer, touches `listed`, then takes 2 s to exit.
 */
async function faultyIp(): Promise<{ dir: string; env: Record<string, string>; arm: (f: string) => Promise<void>; disarm: (f: string) => Promise<void> }> {
  const dir = await mkdtemp(join(tmpdir(), "vmnd-ip-"));
  cleanups.push(() => rm(dir, { recursive: true, force: true }));
  const real = (await sh("sh", ["-c", "command -v ip"])).stdout.trim();
  await writeFile(join(dir, "ip"), `#!/bin/bash
args=" $* "
case "$args" in *" -n "*) exec ${real} "$@" ;; esac
if [[ "$args" == *" -j "* ]]; then
  if [ -f ${dir}/garbage ]; then echo "not json"; exit 0; fi
  if [ -f ${dir}/slow-listing ] && [[ "$args" == *" route show "* ]]; then
    out=$(${real} "$@"); rc=$?; printf '%s\\n' "$out"; touch ${dir}/listed; sleep 2; exit $rc
  fi
elif [[ "$args" == *" -batch "* ]] && [ -f ${dir}/kill-batch ]; then
  rm -f ${dir}/kill-batch
  head -n 2 "\${@: -1}" > ${dir}/half
  ${real} -force -batch ${dir}/half
  kill -9 $$
fi
exec ${real} "$@"
`);
  await chmod(join(dir, "ip"), 0o755);
  return {
    dir, env: { PATH: `${dir}:${process.env.PATH}` },
    arm: (f) => writeFile(join(dir, f), ""),
    disarm: (f) => rm(join(dir, f), { force: true }),
  };
}

describe("one bad object never stops the daemon", () => {
  it("a network taken out of the config: the daemon starts, the others are ready, the orphans are held as found; config check says so first", async () => {
    const host = await newHost("orphan");
    const networks = { service: { gateway: "172.31.16.1/24" }, dark: { gateway: "172.31.17.1/24" } };
    const d = await newDaemon(host, { networks });
    await d.start();
    const spec = { endpoints: [{ kind: "tap", network: "service", ip: "172.31.16.10" }, { kind: "tap", network: "dark", ip: "172.31.17.10" }] };
    expect((await d.request("PUT", "/v1/spec", JSON.stringify(spec))).status).toBe(200);
    const darkTap = tapName("dark", "172.31.17.10");
    const before = { tap: await ifindex(host, darkTap), gw: await ifindex(host, "virgw-dark") };
    expect(before.tap).toBeDefined();
    expect(await routeDev(host, "172.31.17.10/32")).toBe(darkTap);

    // What a restart with the network gone would do, asked before it is done.
    const next = join(d.dir, "next.yaml");
    const config = (await import("yaml")).parse(await readFile(d.configPath, "utf8")) as { networks: Record<string, unknown> };
    delete config.networks.dark;
    await writeFile(next, stringify(config));
    const check = await d.ctl(["config", "check", "--config", next]);
    expect(check.exitCode, check.stdout + check.stderr).toBe(1);
    expect(check.stdout).toMatch(/network dark: removed/);
    expect(check.stdout).toMatch(/orphaned: endpoint tap 172\.31\.17\.10: unknown network 'dark'/);
    const same = await d.ctl(["-o", "json", "config", "check", "--config", d.configPath]);
    expect(same.exitCode, same.stderr).toBe(0);
    expect(JSON.parse(same.stdout)).toEqual({ networks: { added: [], removed: [], changed: [] }, settings: [], orphaned: [] });
    const bad = await d.ctl(["config", "check", "--config", join(d.dir, "missing.yaml")]);
    expect(bad.exitCode).not.toBe(0);
    expect(bad.stderr.trim().split("\n")).toHaveLength(1);

    await d.stop();
    await writeFile(d.configPath, stringify(config));
    await d.start();
    const s = await d.status();
    expect(endpoint(s, "172.31.16.10")?.state).toBe("ready");
    expect(endpoint(s, "172.31.17.10")).toMatchObject({ state: "degraded", held: true, reason: expect.stringMatching(/unknown network 'dark'/) });
    expect((s as unknown as { problems: string[] }).problems).toEqual([expect.stringMatching(/unknown network 'dark'/)]);
    // Nothing of the orphan was deleted or changed.
    expect({ tap: await ifindex(host, darkTap), gw: await ifindex(host, "virgw-dark") }).toEqual(before);
    expect(await routeDev(host, "172.31.17.10/32")).toBe(darkTap);
    const doctor = await d.doctor();
    expect(doctor.findings.some((f) => f.result === "problem" && /tap:172\.31\.17\.10 is held as found/.test(f.message))).toBe(true);
    // New input that does not resolve is still refused, with one line, and changes nothing.
    const refused = await d.ctl(["tap", "add", "--network", "dark", "--ip", "172.31.17.11"]);
    expect(refused.exitCode).not.toBe(0);
    expect(refused.stderr).toMatch(/unknown network 'dark'/);
    // Unrelated changes still go through while the orphan is held.
    expect((await d.ctl(["tap", "add", "--network", "service", "--ip", "172.31.16.12"])).exitCode).toBe(0);
    expect(await ifindex(host, darkTap)).toBe(before.tap);
    // Removed by its owner: now it goes, with its network's gateway device.
    const removed = await d.ctl(["tap", "remove", "172.31.17.10"]);
    expect(removed.exitCode, removed.stderr).toBe(0);
    await waitFor(async () => (await ifindex(host, darkTap)) === undefined && (await ifindex(host, "virgw-dark")) === undefined, 5000, "the orphan to go");
    expect(endpoint(await d.status(), "172.31.17.10")).toBeUndefined();
  });
});

describe("a double fault never deletes a running VM's tap", () => {
  it("domains.json gone and libvirtd down at start: the guest's tap and route are kept as found, and reconciled once libvirtd answers", async () => {
    const host = await newHost("double");
    const { libvirt, daemon } = await startLibvirtWithDaemon(host, { resyncSeconds: 1 });
    cleanups.push(() => libvirt.destroy());
    daemons.push(daemon);
    await libvirt.define("vm1");
    expect((await daemon.ctl(["iface", "add", "vm1", "--network", "service", "--ip", "172.31.16.5"])).exitCode).toBe(0);
    await libvirt.virsh(["start", "vm1"]);
    await waitFor(async () => endpoint(await daemon.status(), "172.31.16.5")?.state === "ready", 20000, "the VM to be routed");
    const tap = tapName("service", "172.31.16.5");
    const index = await ifindex(host, tap);
    await daemon.stop();
    await libvirt.stop(); // qemu keeps running
    await rm(join(daemon.dir, "state", "domains.json"));
    await daemon.start();
    // Several resyncs (1 s) and libvirt retries (2 s) with the domains unknown.
    await new Promise((r) => setTimeout(r, 5000));
    expect(await ifindex(host, tap)).toBe(index);
    expect(await routeDev(host, "172.31.16.5/32")).toBe(tap);
    expect(endpoint(await daemon.status(), "172.31.16.5")).toMatchObject({ state: "degraded", held: true, reason: expect.stringMatching(/domains is unknown/) });
    await libvirt.start();
    await waitFor(async () => {
      const e = endpoint(await daemon.status(), "172.31.16.5");
      return e?.state === "ready" && e.domain === "vm1";
    }, 20000, "the VM to be reconciled once libvirtd answers");
    expect(await ifindex(host, tap)).toBe(index);
    expect(await routeDev(host, "172.31.16.5/32")).toBe(tap);
  });
});

describe("one daemon per stateDir", () => {
  it("two daemons started in the same moment, 20 times: exactly one runs, the other names it, the socket always answers", async () => {
    const host = await newHost("twice");
    const d = await newDaemon(host);
    for (let round = 0; round < 20; round++) {
      const start = () => {
        const child = spawn("ip", ["netns", "exec", host.name, ...d.command.daemon, "--config", d.configPath], { stdio: ["ignore", "ignore", "pipe"] });
        let stderr = "";
        child.stderr!.on("data", (c: Buffer) => (stderr += c.toString()));
        return { child, stderr: () => stderr };
      };
      const both = [start(), start()];
      try {
        const exited = await Promise.race(both.map((b, i) => new Promise<number>((r) => b.child.once("exit", () => r(i)))));
        const loser = both[exited]!, winner = both[1 - exited]!;
        expect(loser.child.exitCode, `round ${round}: ${loser.stderr()}`).toBe(1);
        const line = loser.stderr().trim();
        expect(line.split("\n"), line).toHaveLength(1);
        expect(line).toMatch(new RegExp(`another vmrouted \\(pid \\d+\\) is running with stateDir|another vmrouted is already serving`));
        await waitFor(async () => {
          const r = await d.ctl(["status", "-o", "json"]);
          return r.exitCode === 0 && JSON.parse(r.stdout).state === "running";
        }, 15000, `round ${round}: the winner to answer`);
        expect(winner.child.exitCode).toBeNull();
      } finally {
        for (const b of both) await stopChild(b.child);
      }
    }
  });
});

describe("startup without a blind window", () => {
  it("the socket answers while the first pass runs (status says starting), and a change between the first listing and the monitor is still repaired", async () => {
    const host = await newHost("blind");
    const ip = await faultyIp();
    const d = await newDaemon(host, { env: ip.env });
    await d.start();
    expect((await d.ctl(["tap", "add", "--network", "service", "--ip", "172.31.16.10"])).exitCode).toBe(0);
    const tap = tapName("service", "172.31.16.10");
    await d.stop();
    // Restart with a first listing that takes 2 s after it has read the kernel.
    await ip.arm("slow-listing");
    const child = spawn("ip", ["netns", "exec", host.name, ...d.command.daemon, "--config", d.configPath], { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, ...ip.env } });
    cleanups.push(() => stopChild(child));
    await waitFor(async () => (await readFile(join(ip.dir, "listed")).then(() => true, () => false)), 15000, "the first listing");
    await ip.disarm("slow-listing");
    // The socket answers now, before the first pass has ended.
    const starting = await d.ctl(["status", "-o", "json"]);
    expect(starting.exitCode, starting.stderr).toBe(0);
    expect(JSON.parse(starting.stdout)).toMatchObject({ state: "starting" });
    // A route of ours removed after the listing read the kernel: only the event monitor can tell.
    await host.ip(["route", "del", "172.31.16.10/32", "dev", tap]);
    await waitFor(async () => (await routeDev(host, "172.31.16.10/32")) === tap, 10000, "the route deleted during startup to come back");
    expect(endpoint(await d.status(), "172.31.16.10")?.state).toBe("ready");
    await stopChild(child);
  });
});

describe("failures are seen and retried, never trusted", () => {
  it("an ip batch killed half-way is read back and finished, not believed", async () => {
    const host = await newHost("killed");
    const ip = await faultyIp();
    const d = await newDaemon(host, { env: ip.env });
    await d.start();
    await ip.arm("kill-batch");
    const ips = ["172.31.16.10", "172.31.16.11", "172.31.16.12"];
    const r = await d.request("PUT", "/v1/spec", JSON.stringify({ endpoints: ips.map((x) => ({ kind: "tap", network: "service", ip: x })) }));
    expect(r.status, r.body).toBe(200);
    // Armed files are one-shot: it did fire.
    await expect(readFile(join(ip.dir, "kill-batch"))).rejects.toThrow();
    const s = await d.status();
    for (const x of ips) {
      expect(endpoint(s, x)?.state, x).toBe("ready");
      expect(await routeDev(host, `${x}/32`), x).toBe(tapName("service", x));
    }
  });

  it("a pass that throws: the waiting call gets the error, the counter moves, the scope stays dirty and converges on the retry", async () => {
    const host = await newHost("throw");
    const ip = await faultyIp();
    const d = await newDaemon(host, { env: ip.env });
    await d.start();
    const errors = async () => Number(/vmrouted_errors_total\{source="reconcile"\} (\d+)/.exec((await d.request("GET", "/metrics")).body)?.[1]);
    expect(await errors()).toBe(0);
    await ip.arm("garbage");
    const full = await d.request("POST", "/v1/reconcile");
    expect(full.status, full.body).toBe(500);
    expect(JSON.parse(full.body).error).toMatch(/JSON/);
    // A change made meanwhile is stored, and its waiter hears that its pass failed.
    const add = await d.request("POST", "/v1/endpoints", JSON.stringify({ kind: "tap", network: "service", ip: "172.31.16.10" }));
    expect(add.status, add.body).toBe(500);
    expect(await errors()).toBeGreaterThanOrEqual(2);
    const failing = await d.status() as unknown as { reconcile: { failing: number; lastError?: { message: string } } };
    expect(failing.reconcile.failing).toBeGreaterThanOrEqual(1);
    await ip.disarm("garbage");
    // No further call: the retry converges by itself.
    await waitFor(async () => endpoint(await d.status(), "172.31.16.10")?.state === "ready", 20000, "the endpoint after the retry");
    expect(await routeDev(host, "172.31.16.10/32")).toBe(tapName("service", "172.31.16.10"));
    expect((await d.status() as unknown as { reconcile: { failing: number } }).reconcile.failing).toBe(0);
  });

  it("stateDir on a full tmpfs: the daemon lives and repairs, status shows the write error, and it recovers when space returns", async () => {
    const host = await newHost("full");
    const d = await newDaemon(host);
    const state = join(d.dir, "state");
    await sh("mkdir", ["-p", state]);
    await sh("mount", ["-t", "tmpfs", "-o", "size=256k", "vmnd-full", state]);
    cleanups.push(() => sh("umount", ["-l", state], { reject: false }));
    await d.start();
    expect((await d.ctl(["tap", "add", "--network", "service", "--ip", "172.31.16.10"])).exitCode).toBe(0);
    const tap = tapName("service", "172.31.16.10");
    // Fill it.
    await sh("sh", ["-c", `dd if=/dev/zero of=${state}/filler bs=4k 2>/dev/null; true`]);
    const refused = await d.ctl(["tap", "add", "--network", "service", "--ip", "172.31.16.11"]);
    expect(refused.exitCode).not.toBe(0);
    expect(refused.stderr.trim().split("\n")).toHaveLength(1);
    expect(refused.stderr).toMatch(/ENOSPC/);
    const s = await d.status() as unknown as StatusJson & { storage: { state: string; reason?: string } };
    expect(s.storage).toMatchObject({ state: "failing", reason: expect.stringMatching(/ENOSPC/) });
    expect(s.endpoints.map((e) => e.ip)).toEqual(["172.31.16.10"]);
    // Still repairing: a tap deleted by hand comes back (its creation record cannot be written).
    await host.ip(["link", "del", tap]);
    await waitFor(async () => (await routeDev(host, "172.31.16.10/32")) === tap, 10000, "the tap to be repaired on a full disk");
    expect(d.child?.exitCode).toBeNull();
    // Space back: the next change is stored and the failure clears.
    await rm(join(state, "filler"));
    expect((await d.ctl(["tap", "add", "--network", "service", "--ip", "172.31.16.11"])).exitCode).toBe(0);
    const after = await d.status() as unknown as StatusJson & { storage: { state: string } };
    expect(after.storage.state).toBe("ok");
    expect(endpoint(after, "172.31.16.11")?.state).toBe("ready");
  });
});

describe("kernel events are judged within a bound", () => {
  it("10,000 foreign route events a second for 10 s: a /32 of ours deleted meanwhile is repaired at once, RSS bounded", async () => {
    const host = await newHost("flood");
    const d = await newDaemon(host);
    await d.start();
    expect((await d.ctl(["tap", "add", "--network", "service", "--ip", "172.31.16.10"])).exitCode).toBe(0);
    const tap = tapName("service", "172.31.16.10");
    await host.ip(["link", "add", "flood0", "type", "bridge"]);
    await host.ip(["link", "set", "flood0", "up"]);
    await host.ip(["address", "add", "10.201.0.1/16", "dev", "flood0"]);
    const pid = Number((await sh("sh", ["-c", `pgrep -f -- '--config ${d.configPath}' | head -n 1`])).stdout.trim());
    const rss = async () => Number(/VmRSS:\s+(\d+)/.exec(await readFile(`/proc/${pid}/status`, "utf8"))?.[1]) / 1024;
    const rssBefore = await rss();
    // 500 routes of another protocol added and deleted in each round (1,000 events), ~10 rounds a second.
    const lines = (verb: string) => Array.from({ length: 500 }, (_, i) => `route ${verb} 10.202.${i >> 8}.${i & 255}/32 dev flood0 proto 200`).join("\n");
    const batches = await mkdtemp(join(tmpdir(), "vmnd-flood-"));
    cleanups.push(() => rm(batches, { recursive: true, force: true }));
    await writeFile(join(batches, "add"), lines("add") + "\n");
    await writeFile(join(batches, "del"), lines("del") + "\n");
    const flood = execa("ip", ["netns", "exec", host.name, "timeout", "10", "sh", "-c",
      `while :; do ip -force -batch ${batches}/add; ip -force -batch ${batches}/del; sleep 0.05; done`], { reject: false });
    cleanups.push(async () => flood.kill());
    await new Promise((r) => setTimeout(r, 3000));
    // Count what the flood makes, to show it is a flood.
    const counted = await execa("ip", ["netns", "exec", host.name, "timeout", "1", "ip", "monitor", "route"], { reject: false });
    const perSecond = counted.stdout.split("\n").filter((l) => l.includes("proto 200")).length;
    await host.ip(["route", "del", "172.31.16.10/32", "dev", tap]);
    const deleted = Date.now();
    await waitFor(async () => (await routeDev(host, "172.31.16.10/32")) === tap, 5000, "the /32 to be repaired during the flood", 10);
    const repairMs = Date.now() - deleted;
    const floodStillRunning = flood.exitCode === null;
    const rssDuring = await rss();
    await flood;
    console.log(`flood: ${perSecond} foreign route events/s; repaired in ${repairMs} ms; RSS ${rssBefore.toFixed(0)} → ${rssDuring.toFixed(0)} MiB`);
    expect(perSecond).toBeGreaterThan(5000);
    expect(floodStillRunning).toBe(true);
    // Within a bound, not "after the flood ends" (the buffer's timer used to wait for quiet).
    expect(repairMs).toBeLessThan(1000);
    expect(rssDuring - rssBefore).toBeLessThan(100);
  });
});
