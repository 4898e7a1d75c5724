import { mkdtemp, readFile, rm, utimes, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BgpLab } from "../helpers/bgp-lab.js";
import { assertLabReady, Daemon, type Finding, netState, REPO, rootSnapshot, runId, sh, waitFor } from "../helpers/lab.js";
import { type LibvirtLab, startLibvirtWithDaemon } from "../helpers/libvirt-lab.js";

// A real libvirtd + qemu (TCG) in the host namespace, driven through the
// installed hook shim; gobgpd and a BIRD route reflector as in bgp.test.ts.

interface Link { ifname: string; ifindex: number; flags?: string[]; ifalias?: string }
interface Route { dst: string; dev?: string; protocol?: string }

const id = runId();
let lab: BgpLab;
let libvirt: LibvirtLab;
let daemon: Daemon;
let rootBefore = "";
const timings: Record<string, number> = {};

const links = () => lab.host.json<Link[]>(["link", "show"]);
const routes = () => lab.host.json<Route[]>(["-4", "route", "show", "proto", "94"]);
const tapOf = async (ip: string) => (await daemon.status()).endpoints.find((e) => e.ip === ip)?.device;
const birdHas = async (prefix: string) => (await lab.birdRoutes()).has(prefix);


beforeAll(async () => {
  assertLabReady();
  rootBefore = await rootSnapshot();
  lab = await BgpLab.start(id);
  // Someone else's hook, which install-hook must leave alone.
  ({ libvirt, daemon } = await startLibvirtWithDaemon(lab.host, { bgp: { gobgp: "127.0.0.1:50051" } },
    (l) => writeFile(join(l.hooksDir, "qemu"), "#!/bin/sh\nexit 0\n", { mode: 0o755 })));
  await lab.waitForSession();
  await libvirt.define("vm1");
});

afterAll(async () => {
  await libvirt?.destroy();
  await daemon?.cleanup();
  await lab?.destroy();
  console.log(`libvirt timings (ms): ${JSON.stringify(timings)}`);
  expect(await rootSnapshot()).toBe(rootBefore);
});

describe("routed interfaces for libvirt domains", () => {
  it("install-hook writes the shim into qemu.d and leaves an existing qemu hook alone", async () => {
    const shim = await readFile(join(libvirt.hooksDir, "qemu.d", "vmrouted"), "utf8");
    expect(shim).toContain(daemon.socket);
    expect(await readFile(join(libvirt.hooksDir, "qemu"), "utf8")).toBe("#!/bin/sh\nexit 0\n");
    expect(shim).not.toMatch(/^[^#]*\bvirsh\b/m); // never calls back into libvirt
  });

  it("iface add to a shut-off domain records the interface and metadata in its persistent XML", async () => {
    const r = await daemon.ctl(["iface", "add", "vm1", "--network", "service", "--ip", "172.31.16.5"]);
    expect(r.exitCode, r.stderr).toBe(0);
    const xml = (await libvirt.virsh(["dumpxml", "--inactive", "vm1"])).stdout;
    expect(xml).toMatch(/<interface type='ethernet'>[\s\S]*<target dev='tap-[0-9a-f]{10}' managed='no'\/>[\s\S]*<\/interface>/);
    expect(xml).toContain("https://vmrouted.dev/xmlns/interfaces/1");
    expect(xml).toMatch(/ip="172\.31\.16\.5"/);
    const list = JSON.parse((await daemon.ctl(["iface", "list", "vm1", "-o", "json"])).stdout);
    expect(list[0]).toMatchObject({ domain: "vm1", lifecycle: "defined", interfaces: [expect.objectContaining({ ip: "172.31.16.5" })] });
  });

  it("virsh start: the hook makes the tap before qemu opens it, then routes and announces", async () => {
    const started = Date.now();
    await libvirt.virsh(["start", "vm1"]);
    timings.virshStartMs = Date.now() - started;
    const tap = (await daemon.status()).endpoints.find((e) => e.ip === "172.31.16.5")?.device;
    expect(tap).toMatch(/^tap-/);
    // qemu has the tap open: carrier is up (with managed='no', libvirt refuses to start without the tap).
    expect((await links()).find((l) => l.ifname === tap)?.flags).toContain("LOWER_UP");
    await waitFor(async () => (await routes()).some((r) => r.dst === "172.31.16.5" && r.dev === tap), 10000, "route");
    const neigh = await lab.host.json<Array<{ dst: string; state?: string[] }>>(["neigh", "show", "dev", tap!]);
    expect(neigh).toContainEqual(expect.objectContaining({ dst: "172.31.16.5", state: ["PERMANENT"] }));
    await waitFor(() => birdHas("172.31.16.5/32"), 10000, "the route reflector to learn the /32");
    const e = (await daemon.status()).endpoints.find((x) => x.ip === "172.31.16.5")!;
    expect(e).toMatchObject({ kind: "vm", domain: "vm1", state: "ready" });
  });

  it("virsh destroy: withdrawn, unrouted, tap removed", async () => {
    const tap = await tapOf("172.31.16.5");
    await libvirt.virsh(["destroy", "vm1"]);
    await waitFor(async () => !(await birdHas("172.31.16.5/32")), 30000, "withdrawal at the route reflector");
    expect((await routes()).some((r) => r.dst === "172.31.16.5")).toBe(false);
    await waitFor(async () => !(await links()).some((l) => l.ifname === tap), 10000, "tap removal");
  });

  it("iface add to a running domain hot-plugs and routes it with no restart", async () => {
    await libvirt.virsh(["start", "vm1"]);
    await waitFor(() => birdHas("172.31.16.5/32"), 10000, "first interface announced");
    const domId = (await libvirt.virsh(["domid", "vm1"])).stdout.trim();
    const r = await daemon.ctl(["iface", "add", "vm1", "--network", "service", "--ip", "172.31.16.6", "--mac", "52:54:00:16:00:06"]);
    expect(r.exitCode, r.stderr).toBe(0);
    const tap = await tapOf("172.31.16.6");
    const iflist = (await libvirt.virsh(["domiflist", "vm1"])).stdout;
    expect(iflist).toContain(tap!);
    expect(iflist).toContain("52:54:00:16:00:06");
    expect((await links()).find((l) => l.ifname === tap)?.flags).toContain("LOWER_UP");
    await waitFor(() => birdHas("172.31.16.6/32"), 10000, "hot-plugged /32 at the route reflector");
    expect((await libvirt.virsh(["domid", "vm1"])).stdout.trim()).toBe(domId);
    // Recorded in the persistent config and in the live metadata.
    expect((await libvirt.virsh(["dumpxml", "--inactive", "vm1"])).stdout).toContain(tap!);
    expect((await libvirt.virsh(["dumpxml", "vm1"])).stdout).toMatch(/ip="172\.31\.16\.6"/);
  });

  it("a libvirtd restart makes nothing flap", async () => {
    const before = await netState(lab.host.name);
    const withdraws = await lab.importWithdraws();
    await libvirt.stop();
    await libvirt.start(); // the reconnect hook runs for vm1
    await new Promise((r) => setTimeout(r, 3000)); // a libvirt resync happens meanwhile
    expect(await netState(lab.host.name)).toBe(before);
    expect(await lab.importWithdraws()).toBe(withdraws);
    expect((await daemon.status()).endpoints.filter((e) => e.domain === "vm1").map((e) => e.state)).toEqual(["ready", "ready"]);
  });

  it("iface remove on a running domain is the exact inverse", async () => {
    const tap = await tapOf("172.31.16.6");
    const r = await daemon.ctl(["iface", "remove", "vm1", "--ip", "172.31.16.6"]);
    expect(r.exitCode, r.stderr).toBe(0);
    await waitFor(async () => !(await birdHas("172.31.16.6/32")), 30000, "withdrawal");
    await waitFor(async () => !(await links()).some((l) => l.ifname === tap), 10000, "tap removal");
    // The live unplug completes when the guest acknowledges the ACPI eject; this
    // diskless test domain has no OS to do so. The persistent config must be clean.
    expect((await libvirt.virsh(["dumpxml", "--inactive", "vm1"])).stdout).not.toContain("172.31.16.6");
    expect((await libvirt.virsh(["dumpxml", "--inactive", "vm1"])).stdout).not.toContain(tap!);
    expect((await libvirt.virsh(["dumpxml", "vm1"])).stdout).not.toMatch(/ip="172\.31\.16\.6"/); // live metadata
    expect(await birdHas("172.31.16.5/32")).toBe(true);
  });

  it("a domain still starts with its tap while vmrouted is down, and is routed when it is back", async () => {
    await libvirt.virsh(["destroy", "vm1"]);
    await waitFor(async () => !(await birdHas("172.31.16.5/32")), 30000, "withdrawal");
    await daemon.stop();
    await libvirt.virsh(["start", "vm1"]);
    const tap = (await links()).find((l) => l.ifalias === "vmrouted:vm:172.31.16.5");
    expect(tap?.flags).toContain("LOWER_UP");
    expect((await routes()).some((r) => r.dst === "172.31.16.5")).toBe(false);
    await daemon.start();
    await waitFor(() => birdHas("172.31.16.5/32"), 15000, "announcement once vmrouted is back");
    expect((await routes()).some((r) => r.dst === "172.31.16.5" && r.dev === tap!.ifname)).toBe(true);
    // The same tap, still held by qemu: vmrouted's first pass must not take it for unwanted.
    const now = (await links()).find((l) => l.ifname === tap!.ifname);
    expect(now?.ifindex).toBe(tap!.ifindex);
    expect(now?.flags).toContain("LOWER_UP");
  });

  it("the shim answers started, stopped and release without waiting for a pass; calls applied in order, an older one never over a newer one", async () => {
    const shim = join(libvirt.hooksDir, "qemu.d", "vmrouted");
    await libvirt.virsh(["destroy", "vm1"], false);
    await waitFor(async () => !(await birdHas("172.31.16.5/32")), 30000, "vm1 stopped and withdrawn");
    // The shim is called here as libvirt would, with no domain started: libvirt's resync (which would put
    // the record right) is made rare for this test, so that what the calls did stays to be seen.
    const options = { bgp: { gobgp: "127.0.0.1:50051" }, libvirtUri: libvirt.uri };
    await daemon.stop();
    await daemon.writeConfig({ ...options, extra: { libvirt: { enabled: true, uri: libvirt.uri, resyncSeconds: 3600 } } });
    await daemon.start();
    const xml = (await libvirt.virsh(["dumpxml", "--inactive", "vm1"])).stdout;
    // As libvirt calls it: prepare first (it waits for the tap).
    expect((await sh(shim, ["vm1", "prepare", "begin", "-"], { input: xml, reject: false })).exitCode).toBe(0);
    // vmrouted kept busy by a large change: a pass of 2,000 endpoints takes seconds here.
    const busy = daemon.request("PUT", "/v1/spec", JSON.stringify({
      networks: { bulk: { gateway: "172.31.32.1/20" } },
      endpoints: Array.from({ length: 2000 }, (_, i) => ({ kind: "tap", network: "bulk", ip: `172.31.${32 + Math.floor(i / 250)}.${(i % 250) + 2}` })),
    }));
    await new Promise((r) => setTimeout(r, 300)); // that pass has begun
    // Then started: answered at once, before any pass ran for it.
    const t = Date.now();
    const started = await sh(shim, ["vm1", "started", "begin", "-"], { input: xml, reject: false });
    const answeredMs = Date.now() - t;
    expect(started.exitCode).toBe(0);
    expect((await routes()).some((r) => r.dst === "172.31.16.5"), "the route must not be there yet: the call did not wait").toBe(false);
    console.log(`shim answered started in ${answeredMs} ms while a 2,000-endpoint pass ran`);
    // An older call arriving after a newer one (its sequence is lower: the same boot, an earlier monotonic clock) changes nothing.
    const boot = (await readFile("/proc/sys/kernel/random/boot_id", "utf8")).trim();
    const stale = await daemon.request("POST", `/v1/hook?domain=vm1&op=stopped&subop=end&extra=-&seq=${boot}:1`, xml);
    expect(JSON.parse(stale.body)).toMatchObject({ ignored: expect.stringMatching(/later hook call/) });
    expect((await busy).status).toBe(200);
    await waitFor(async () => (await routes()).some((r) => r.dst === "172.31.16.5"), 20000, "vm1 routed after the busy pass");
    // stopped, then release: applied in order; the route goes, then the tap.
    for (const [op, sub] of [["stopped", "end"], ["release", "end"]]) expect((await sh(shim, ["vm1", op!, sub!, "-"], { input: xml, reject: false })).exitCode).toBe(0);
    await waitFor(async () => !(await links()).some((l) => l.ifalias === "vmrouted:vm:172.31.16.5"), 10000, "vm1's tap gone");
    expect((await routes()).some((r) => r.dst === "172.31.16.5")).toBe(false);
    await daemon.ctl(["apply", "-f", "-"], "networks: {}\nendpoints: []\n");
    await daemon.stop();
    await daemon.writeConfig(options);
    await daemon.start();
  });

  it("the shim returns from started, stopped and release while vmrouted cannot answer: libvirt is never held by them", async () => {
    const shim = join(libvirt.hooksDir, "qemu.d", "vmrouted");
    const xml = (await libvirt.virsh(["dumpxml", "--inactive", "vm1"])).stdout;
    const pid = daemon.child!.pid!; // our own child
    process.kill(pid, "SIGSTOP");
    try {
      for (const [op, sub] of [["started", "begin"], ["stopped", "end"], ["release", "end"]] as const) {
        const t = Date.now();
        // Output captured as libvirt does: the call returns only once every holder of the pipes has let go.
        const r = await sh(shim, ["vm1", op, sub, "-"], { input: xml, reject: false });
        expect(r.exitCode, r.stderr).toBe(0);
        expect(Date.now() - t, `${op} ${sub} returned while vmrouted was stopped (a waiting curl would take the 20 s timeout)`).toBeLessThan(3000);
      }
    } finally {
      process.kill(pid, "SIGCONT");
    }
    // Sent in the background, they arrive once vmrouted runs again, in order: the last, release, leaves no tap.
    const lifecycle = async () => (JSON.parse((await daemon.request("GET", "/v1/domains")).body) as Array<{ domain: string; lifecycle: string }>).find((d) => d.domain === "vm1")?.lifecycle;
    await waitFor(async () => (await lifecycle()) === "defined", 15000, "the calls applied, release last");
    await waitFor(async () => !(await links()).some((l) => l.ifalias === "vmrouted:vm:172.31.16.5"), 10000, "vm1's tap gone");
  });

  it("a stop immediately followed by a start of the same domain ends routed and announced", async () => {
    await libvirt.virsh(["start", "vm1"]);
    await waitFor(() => birdHas("172.31.16.5/32"), 15000, "vm1 announced");
    for (let i = 0; i < 3; i++) {
      await libvirt.virsh(["destroy", "vm1"]);
      await libvirt.virsh(["start", "vm1"]);
    }
    await waitFor(async () => (await daemon.status()).endpoints.find((e) => e.ip === "172.31.16.5")?.state === "ready", 15000, "vm1 ready");
    expect((await routes()).some((r) => r.dst === "172.31.16.5")).toBe(true);
    await waitFor(() => birdHas("172.31.16.5/32"), 15000, "vm1 announced");
    await new Promise((r) => setTimeout(r, 3000)); // and it stays so (a late stop would undo it)
    expect(await birdHas("172.31.16.5/32")).toBe(true);
  });

  it("a domain made by virt-install (q35, libosinfo metadata): iface add keeps libosinfo's entry beside vmrouted's", async () => {
    const file = join(libvirt.dir, "vi.xml");
    await writeFile(file, await readFile(join(REPO, "test/fixtures/domain-virt-install.xml"), "utf8"));
    await libvirt.virsh(["define", file]);
    const r = await daemon.ctl(["iface", "add", "vi-test", "--network", "service", "--ip", "172.31.16.9"]);
    expect(r.exitCode, r.stderr).toBe(0);
    const xml = (await libvirt.virsh(["dumpxml", "--inactive", "vi-test"])).stdout;
    expect(xml.match(/<metadata>/g)).toHaveLength(1);
    expect(xml).toContain("http://libosinfo.org/xmlns/libvirt/domain/1.0");
    expect(xml).toContain("https://vmrouted.dev/xmlns/interfaces/1");
    expect(xml).toMatch(/<target dev='tap-[0-9a-f]{10}' managed='no'\/>/);
    await daemon.ctl(["iface", "remove", "vi-test", "--ip", "172.31.16.9"]);
    const after = (await libvirt.virsh(["dumpxml", "--inactive", "vi-test"])).stdout;
    expect(after).toContain("http://libosinfo.org/xmlns/libvirt/domain/1.0");
    expect(after).not.toContain("https://vmrouted.dev/xmlns/interfaces/1");
    await libvirt.virsh(["undefine", "vi-test"]);
  });

  describe("doctor with libvirt", () => {
    const doctor = (hooksDir = libvirt.hooksDir) =>
      daemon.doctor(["--hooks-dir", hooksDir, "--libvirtd-pidfile", join(libvirt.dir, "run", "libvirtd.pid")]);
    const problemsOf = (f: Finding[], check: string) => f.filter((x) => x.check === check && x.result === "problem").map((x) => x.message);
    /** Waits for doctor to exit 0; on timeout, says what it still finds. */
    async function clean(after: string): Promise<void> {
      let last: Finding[] = [];
      await waitFor(async () => {
        const d = await doctor();
        last = d.findings.filter((f) => f.result === "problem");
        return d.exitCode === 0;
      }, 30000, `doctor clean after ${after}`).catch((e: Error) => {
        throw new Error(`${e.message}; still: ${JSON.stringify(last)}`);
      });
    }

    it("is clean with the hook read by libvirtd and every tap of a running domain carrying", async () => {
      const d = await doctor();
      expect(d.findings.filter((f) => f.result === "problem"), d.stderr).toEqual([]);
      expect(d.exitCode).toBe(0);
      expect(d.findings.find((f) => f.check === "hook")?.message).toMatch(/installed and older than libvirtd \(started /);
      expect(d.findings.find((f) => f.check === "tap-carrier")?.message).toMatch(/1 tap\(s\) of running domains have carrier/);
    });

    it("a tap of a running domain deleted by hand: vmrouted re-creates it, but qemu is not attached (no carrier)", async () => {
      const tap = (await tapOf("172.31.16.5"))!;
      await lab.host.ip(["link", "del", tap]);
      await waitFor(async () => (await links()).some((l) => l.ifname === tap), 10000, "vmrouted to re-create the tap");
      const d = await doctor();
      expect(d.exitCode).toBe(1);
      expect(problemsOf(d.findings, "tap-carrier")).toEqual([`tap ${tap} of running domain vm1 has no carrier: qemu does not hold it (was it deleted and re-created?)`]);
      // The fix doctor gives: restart the domain.
      await libvirt.virsh(["destroy", "vm1"]);
      await libvirt.virsh(["start", "vm1"]);
      await clean("the domain restart");
    });

    it("the hook not installed, or changed after libvirtd started", async () => {
      const empty = await mkdtemp(join(tmpdir(), "vmrouted-hooks-"));
      try {
        const d = await doctor(empty);
        expect(d.exitCode).toBe(1);
        expect(problemsOf(d.findings, "hook")[0]).toMatch(/qemu.d\/vmrouted is not installed/);
      } finally {
        await rm(empty, { recursive: true, force: true });
      }
      const shim = join(libvirt.hooksDir, "qemu.d", "vmrouted");
      const now = new Date();
      await utimes(shim, now, now); // as if installed just now, long after libvirtd started
      const d = await doctor();
      expect(d.exitCode).toBe(1);
      expect(problemsOf(d.findings, "hook")[0]).toMatch(/changed after libvirtd started/);
      await libvirt.stop();
      await new Promise((r) => setTimeout(r, 1500)); // doctor allows 1 s for the precision of a process start time
      await libvirt.start();
      await clean("the libvirtd restart");
    });

    it("two domains claiming one IP", async () => {
      const xml = (await libvirt.virsh(["dumpxml", "--inactive", "vm1"])).stdout.replace("<name>vm1</name>", "<name>vm2</name>").replace(/<uuid>[^<]*<\/uuid>/, "");
      const file = join(libvirt.dir, "vm2-copy.xml");
      await writeFile(file, xml);
      await libvirt.virsh(["define", file]);
      try {
        const d = await doctor();
        expect(d.exitCode).toBe(1);
        expect(problemsOf(d.findings, "ip-claims")).toEqual(["172.31.16.5 is claimed by domain vm1 and domain vm2: only one gets the address"]);
      } finally {
        await libvirt.virsh(["undefine", "vm2"]);
      }
      await clean("vm2 is gone");
    });
  });
});
