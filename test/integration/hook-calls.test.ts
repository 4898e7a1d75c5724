import { spawn, type ChildProcess } from "node:child_process";
import { chmod, mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { execa } from "execa";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { addRoutedInterface, parseDomainXml, serializeDomainXml } from "../../src/libvirt/domain-xml.js";
import { tapName } from "../../src/model/naming.js";
import { BgpLab } from "../helpers/bgp-lab.js";
import { assertLabReady, Daemon, type Netns, rootSnapshot, runId, stopChild, waitFor } from "../helpers/lab.js";
import { LibvirtLab } from "../helpers/libvirt-lab.js";

// Issue #22, on the real kernel with the real daemon and the installed shim:
// (A) a domain's hook calls are ordered by the boot id and the monotonic
// clock, so a wall clock stepped back (NTP at boot correcting an RTC that ran
// ahead) cannot make vmrouted ignore them; (B) a virt-clone'd domain, which
// carries its original's vmrouted metadata, is refused at prepare while the
// original runs, and the original is not touched.
// A real libvirtd serves B, with gobgpd and a BIRD route reflector to see the
// announcements; the shim is also called directly, as libvirt would, with
// domain XML on stdin (A). libvirt's resync runs only at the daemon's start
// here, so what the hook calls did stays to be seen.

interface Link { ifname: string; ifindex: number; flags?: string[]; ifalias?: string }
interface Route { dst: string; dev?: string }

const id = runId();
let lab: BgpLab;
let host: Netns;
let libvirt: LibvirtLab;
let daemon: Daemon;
let fake: string;
let rootBefore = "";

const links = () => host.json<Link[]>(["link", "show"]);
const routes = () => host.json<Route[]>(["-4", "route", "show", "proto", "94"]);
const tapOf = async (ip: string) => (await links()).find((l) => l.ifalias === `vmrouted:vm:${ip}`);
const routed = async (ip: string) => (await routes()).some((r) => r.dst === ip);
const shim = () => join(libvirt.hooksDir, "qemu.d", "vmrouted");

beforeAll(async () => {
  assertLabReady();
  rootBefore = await rootSnapshot();
  lab = await BgpLab.start(id);
  host = lab.host;
  libvirt = await LibvirtLab.create(host);
  daemon = await Daemon.create(host, {
    libvirtUri: libvirt.uri, bgp: { gobgp: "127.0.0.1:50051" },
    extra: { libvirt: { enabled: true, uri: libvirt.uri, resyncSeconds: 3600 } },
  });
  // A host that ran vmrouted before: an (empty) domains cache, so that the set of domains is known from the start.
  await mkdir(join(daemon.dir, "state"), { recursive: true });
  await writeFile(join(daemon.dir, "state", "domains.json"), `${JSON.stringify({ version: 1, domains: [] })}\n`);
  const inst = await daemon.ctl(["install-hook", "--hooks-dir", libvirt.hooksDir, "--config", daemon.configPath]);
  if (inst.exitCode !== 0) throw new Error(`install-hook failed: ${inst.stderr}`);
  await libvirt.start();
  await daemon.start();
  await lab.waitForSession();
  // A `date` first in the shim's PATH: the wall clock as the test sets it (each call 1 µs later), every call logged.
  fake = await mkdtemp(join(tmpdir(), "vmrouted-clock-"));
  await writeFile(join(fake, "clock"), "0\n");
  await writeFile(join(fake, "date"), `#!/bin/sh
echo "date $*" >> '${join(fake, "log")}'
read -r t < '${join(fake, "clock")}'
t=$((t + 1000))
echo "$t" > '${join(fake, "clock")}'
echo "$t"
`, { mode: 0o755 });
}, 120_000);

afterAll(async () => {
  await libvirt?.destroy();
  await daemon?.cleanup();
  await lab?.destroy();
  if (fake) await rm(fake, { recursive: true, force: true });
  expect(await rootSnapshot()).toBe(rootBefore);
});

describe("hook calls are ordered by the boot id and the monotonic clock, not the wall clock", () => {
  const ip = "172.31.16.21";
  const tap = tapName("service", ip);
  const xml = (() => {
    const doc = parseDomainXml(`<domain type='qemu'>
  <name>hookvm</name>
  <uuid>6c3a4f0e-2b1d-4e8f-9a7b-1c2d3e4f5a6b</uuid>
  <memory unit='MiB'>64</memory>
  <devices>
  </devices>
</domain>
`);
    addRoutedInterface(doc, { network: "service", ip, mac: "52:54:00:16:00:21", tap });
    return serializeDomainXml(doc);
  })();
  /** The wall clock the shim's PATH reports from now on (ns since the epoch). */
  const setClock = (ns: bigint) => writeFile(join(fake, "clock"), `${ns}\n`);
  const AHEAD = BigInt(Date.UTC(2100, 0, 1)) * 1_000_000n; // an RTC far ahead, before NTP corrects it
  const BACK = BigInt(Date.now()) * 1_000_000n;
  const call = async (op: string, subop: string) => {
    const r = await execa(shim(), ["hookvm", op, subop, "-"], { input: xml, reject: false, env: { PATH: `${fake}:${process.env.PATH}` } });
    expect(r.exitCode, `${op} ${subop}: ${r.stderr}`).toBe(0);
  };
  const prepare = async () => {
    await call("prepare", "begin");
    expect((await links()).find((l) => l.ifname === tap)?.ifalias, "prepare begin made the tap").toBe(`vmrouted:vm:${ip}`);
  };
  const started = async () => {
    await call("started", "begin");
    await waitFor(() => routed(ip), 10000, "started begin: the /32 routed");
  };
  const stopped = async () => {
    await call("stopped", "end");
    await waitFor(async () => !(await routed(ip)), 10000, "stopped end: the /32 unrouted");
    expect(await tapOf(ip), "the tap stays until release").toBeDefined();
  };
  const release = async () => {
    await call("release", "end");
    await waitFor(async () => !(await tapOf(ip)), 10000, "release end: the tap removed");
  };

  it("a cycle while the wall clock is far ahead, then one after it stepped back: every call of the second takes effect", async () => {
    await setClock(AHEAD);
    await prepare();
    await started();
    await stopped();
    await release();
    await setClock(BACK);
    await prepare();
    await started();
    await stopped();
    await release();
  });

  it("a domain started while the wall clock was ahead is unrouted and loses its tap when it stops after the step back", async () => {
    await setClock(AHEAD + 10_000_000_000n);
    await prepare();
    await started();
    await setClock(BACK + 10_000_000_000n);
    await stopped();
    await release();
  });

  it("the shim's sequence: the monotonic clock from /proc/timer_list, or /proc/uptime where that cannot be read (not root)", async () => {
    // The shim as installed, in a directory anyone may read, with a `curl` first in its PATH that records its arguments.
    const dir = await mkdtemp(join(tmpdir(), "vmrouted-seq-"));
    try {
      await chmod(dir, 0o777);
      await writeFile(join(dir, "vmrouted"), await readFile(shim(), "utf8"), { mode: 0o755 });
      await writeFile(join(dir, "curl"), `#!/bin/sh\nprintf '%s\\n' "$@" > '${dir}/args'\nprintf '\\n200'\n`, { mode: 0o755 });
      const seqOf = async (...prefix: string[]) => {
        await rm(join(dir, "args"), { force: true }); // the next one is written by whoever runs the shim
        const cmd = [...prefix, join(dir, "vmrouted"), "hookvm", "prepare", "begin", "-"];
        const r = await execa(cmd[0]!, cmd.slice(1), { input: xml, reject: false, env: { PATH: `${dir}:${process.env.PATH}` } });
        expect(r.exitCode, r.stderr).toBe(0);
        const args = (await readFile(join(dir, "args"), "utf8")).split("\n");
        return args.find((a) => a.startsWith("seq="))?.slice(4);
      };
      const boot = (await readFile("/proc/sys/kernel/random/boot_id", "utf8")).trim();
      const monotonic = async () => BigInt(/now at (\d+) nsecs/.exec(await readFile("/proc/timer_list", "utf8"))![1]!);
      const t0 = await monotonic();
      const asRoot = await seqOf();
      const t1 = await monotonic();
      expect(asRoot).toMatch(new RegExp(`^${boot}:\\d+$`));
      const ns = BigInt(asRoot!.split(":")[1]!);
      expect(ns >= t0 && ns <= t1, `${t0} <= ${ns} <= ${t1}`).toBe(true);
      // Not root: /proc/timer_list is 0400, so /proc/uptime (centiseconds) scaled to ns.
      const asNobody = await seqOf("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups");
      expect(asNobody).toMatch(new RegExp(`^${boot}:\\d+0000000$`));
      const up = BigInt(asNobody!.split(":")[1]!);
      expect(up >= t1 - 20_000_000n && up <= (await monotonic()) + 20_000_000n, `${up} near ${t1}`).toBe(true);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it("the shim runs no `date`: its sequence is this boot's id and the monotonic clock, read by dash itself", async () => {
    expect(await readFile(join(fake, "log"), "utf8").catch(() => ""), "the shim ran date").toBe("");
    const boot = (await readFile("/proc/sys/kernel/random/boot_id", "utf8")).trim();
    const stored = await readFile(join(daemon.dir, "state", "domains.json"), "utf8");
    const seq = /"hookSeq":"([^"]*)"/.exec(stored)?.[1];
    expect(seq).toMatch(new RegExp(`^${boot}:\\d+$`));
    const [, ns] = seq!.split(":");
    // The monotonic clock in ns: between this boot's start and now.
    const uptimeNs = BigInt(Math.round(Number((await readFile("/proc/uptime", "utf8")).split(" ")[0]) * 1e9));
    expect(BigInt(ns!) > 0n && BigInt(ns!) <= uptimeNs + 1_000_000_000n).toBe(true);
  });
});

describe("a virt-clone'd domain is refused at prepare while its original runs", () => {
  const ip = "172.31.16.5";
  // The clone's name sorts before the original's: ordered by name, the clone's claim came first.
  const orig = "vmorig";
  const clone = "clone-of-vmorig";
  let monitor: ChildProcess | undefined;
  let events = "";
  const watch = () => {
    events = "";
    monitor = spawn("ip", ["-n", host.name, "-o", "monitor", "route", "link"], { stdio: ["ignore", "pipe", "ignore"] });
    monitor.stdout!.on("data", (c: Buffer) => (events += c.toString()));
  };
  const unwatch = async () => {
    await new Promise((r) => setTimeout(r, 1000)); // a late change would show by now
    await stopChild(monitor);
    monitor = undefined;
  };
  const endpointOf = async () => (await daemon.status()).endpoints.find((e) => e.ip === ip);
  const announced = async () => (await lab.birdRoutes()).has(`${ip}/32`);

  beforeAll(async () => {
    await libvirt.define(orig);
    const r = await daemon.ctl(["iface", "add", orig, "--network", "service", "--ip", ip]);
    expect(r.exitCode, r.stderr).toBe(0);
    const c = await execa("virt-clone", ["--connect", libvirt.uri, "--original", orig, "--name", clone, "--auto-clone"], { reject: false });
    expect(c.exitCode, c.stderr).toBe(0);
    expect((await libvirt.virsh(["dumpxml", "--inactive", clone])).stdout).toContain(`ip="${ip}"`); // the original's metadata
    await libvirt.virsh(["start", orig]);
    await waitFor(async () => (await endpointOf())?.state === "ready", 15000, "the original routed");
    await waitFor(announced, 15000, "the original's /32 at the route reflector");
  }, 120_000);

  afterAll(async () => {
    await stopChild(monitor);
  });

  it("virsh start of the clone fails with one line naming the running original; the original's tap and route stay", async () => {
    const before = await tapOf(ip);
    expect(before?.flags).toContain("LOWER_UP");
    const withdraws = await lab.importWithdraws();
    watch();
    const r = await libvirt.virsh(["start", clone], false);
    await unwatch();
    expect(r.exitCode).not.toBe(0);
    expect(r.stderr).toContain(`vmrouted: hook: domain '${clone}': ip ${ip} is held by running domain '${orig}'`);
    expect(r.stderr.match(/vmrouted: /g)).toHaveLength(1);
    expect((await libvirt.virsh(["domstate", clone])).stdout.trim()).toBe("shut off");
    // The original: the same tap (same ifindex, still held by its qemu), its /32, ready, never taken down meanwhile.
    const after = await tapOf(ip);
    expect(after?.ifindex).toBe(before!.ifindex);
    expect(after?.flags).toContain("LOWER_UP");
    expect((await routes()).filter((x) => x.dst === ip)).toEqual([expect.objectContaining({ dev: before!.ifname })]);
    expect(await endpointOf()).toMatchObject({ domain: orig, state: "ready" });
    // Announced all along: the route reflector saw no withdrawal.
    expect(await lab.importWithdraws()).toBe(withdraws);
    expect(await announced()).toBe(true);
    expect(events, "route or link changes while the clone was refused").not.toMatch(new RegExp(`Deleted.*(${ip.replace(/\./g, "\\.")}|${before!.ifname})`));
    const domains = JSON.parse((await daemon.request("GET", "/v1/domains")).body) as Array<{ domain: string; lifecycle: string }>;
    expect(domains.find((d) => d.domain === clone)?.lifecycle ?? "defined").toBe("defined");
  });

  it("with vmrouted down, the shim's fallback refuses the clone too and touches nothing", async () => {
    const before = await tapOf(ip);
    await daemon.stop();
    try {
      watch();
      const r = await libvirt.virsh(["start", clone], false);
      await unwatch();
      expect(r.exitCode).not.toBe(0);
      expect(r.stderr).toContain(`ip ${ip}: tap ${before!.ifname} is held open by a running domain`);
      expect((await libvirt.virsh(["domstate", clone])).stdout.trim()).toBe("shut off");
      expect((await tapOf(ip))?.ifindex).toBe(before!.ifindex);
      expect(await routed(ip)).toBe(true);
      expect(events, "route or link changes while the clone was refused").toBe("");
    } finally {
      await daemon.start();
    }
    await waitFor(async () => (await endpointOf())?.state === "ready", 15000, "the original ready");
    expect(await announced()).toBe(true);
  });

  it("once the original is destroyed, a copy of it starts at once and takes the address", async () => {
    // virt-clone drops the interface's target dev, which managed='no' requires: as is, the clone cannot start
    // anywhere. With the tap name put back, it is the same domain under another name.
    const tap = (await tapOf(ip))!.ifname;
    const cloned = (await libvirt.virsh(["dumpxml", "--inactive", clone])).stdout;
    const copy = cloned.replace(/<target managed='no'\/>/, `<target dev='${tap}' managed='no'/>`);
    expect(copy).not.toBe(cloned);
    await writeFile(join(libvirt.dir, `${clone}.xml`), copy);
    await libvirt.virsh(["define", join(libvirt.dir, `${clone}.xml`)]);
    await libvirt.virsh(["destroy", orig]);
    const r = await libvirt.virsh(["start", clone], false); // the original's stopped/release calls may still be on their way
    expect(r.exitCode, r.stderr).toBe(0);
    await waitFor(async () => {
      const e = await endpointOf();
      return e?.domain === clone && e.state === "ready";
    }, 15000, "the clone routed");
    expect((await tapOf(ip))?.flags).toContain("LOWER_UP");
    expect(await routed(ip)).toBe(true);
    await waitFor(announced, 15000, "the clone's /32 at the route reflector");
  });
});
