import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BgpLab } from "../helpers/bgp-lab.js";
import { assertLabReady, type Daemon, rootSnapshot, runId, waitFor } from "../helpers/lab.js";
import { type LibvirtLab, startLibvirtWithDaemon } from "../helpers/libvirt-lab.js";

// Faults around vmrouted: gobgpd killed, the route reflector restarted,
// libvirtd restarted, the link to the route reflector cut. Each time the
// desired set changes while the fault lasts; afterwards the route reflector
// must hold exactly the desired /32s, with no operator action. How long that
// took is printed ("recovery (ms)") and quoted in the README.

const id = runId();
let lab: BgpLab;
let libvirt: LibvirtLab;
let daemon: Daemon;
let rootBefore = "";
const recovery: Record<string, number> = {};
const VM_IP = "172.31.16.5";
let taps: string[] = [];

const ip = (n: number) => `172.31.16.${n}`;
const slash32 = (list: string[]) => list.map((x) => `${x}/32`).sort();
const wanted = () => slash32([...taps, VM_IP]);

async function setTaps(list: string[]): Promise<void> {
  taps = list;
  const r = await daemon.request("PUT", "/v1/spec", JSON.stringify({ endpoints: list.map((x) => ({ kind: "tap", network: "service", ip: x })) }));
  expect(r.status, r.body).toBe(200);
}

/** Waits until the RR holds exactly the desired set; returns how long that took (ms). */
function exactAtReflector(what: string, timeoutMs = 90000): Promise<number> {
  return lab.waitForExactly(wanted(), timeoutMs, `the route reflector to hold exactly the desired set (${what})`);
}

beforeAll(async () => {
  assertLabReady();
  rootBefore = await rootSnapshot();
  lab = await BgpLab.start(id);
  ({ libvirt, daemon } = await startLibvirtWithDaemon(lab.host, { bgp: { gobgp: "127.0.0.1:50051" } }));
  await lab.waitForSession();
  await libvirt.define("vm1");
  expect((await daemon.ctl(["iface", "add", "vm1", "--network", "service", "--ip", VM_IP])).exitCode).toBe(0);
  await libvirt.virsh(["start", "vm1"]);
  await setTaps([10, 11, 12, 13, 14].map(ip));
  await exactAtReflector("initial");
});

afterAll(async () => {
  await libvirt?.destroy();
  await daemon?.cleanup();
  await lab?.destroy();
  console.log(`recovery (ms): ${JSON.stringify(recovery)}`);
  await writeFile(join(process.cwd(), ".cache", "reliability-recovery.json"), JSON.stringify(recovery) + "\n").catch(() => undefined);
  expect(await rootSnapshot()).toBe(rootBefore);
});

describe("faults around vmrouted", () => {
  it("gobgpd killed (SIGKILL) and restarted: the RR ends with exactly the desired set", async () => {
    await lab.gobgpd.stop("SIGKILL");
    await waitFor(async () => (await daemon.status()).bgp.state === "down", 15000, "vmrouted to notice gobgpd is gone");
    await setTaps([10, 12, 14, 15, 16].map(ip)); // changed while gobgpd is away
    const restarted = Date.now();
    await lab.startGobgpd();
    await exactAtReflector("gobgpd restarted");
    recovery.gobgpdKilled = Date.now() - restarted;
  });

  it("route reflector restarted: the RR ends with exactly the desired set", async () => {
    await lab.bird.stop();
    await setTaps([10, 12, 15, 16, 17, 18].map(ip));
    const restarted = Date.now();
    await lab.startBird();
    await exactAtReflector("BIRD restarted");
    recovery.reflectorRestarted = Date.now() - restarted;
  });

  it("libvirtd restarted: nothing withdrawn meanwhile, and the RR ends with exactly the desired set", async () => {
    const withdraws = await lab.importWithdraws();
    await libvirt.stop();
    // While libvirtd is away, vmrouted works from what it knows (the VM keeps its /32) and taps still change.
    await setTaps([10, 12, 15, 16].map(ip));
    await exactAtReflector("libvirtd down");
    await waitFor(async () => (await daemon.status()).endpoints.some((e) => e.ip === VM_IP && e.state === "ready"), 5000, "VM endpoint ready");
    const restarted = Date.now();
    await libvirt.start();
    await waitFor(async () => {
      const s = await daemon.ctl(["status", "-o", "json"]);
      return (JSON.parse(s.stdout) as { libvirt: { state: string } }).libvirt.state === "up";
    }, 30000, "vmrouted to be back in sync with libvirtd");
    await exactAtReflector("libvirtd restarted");
    recovery.libvirtdRestarted = Date.now() - restarted;
    // Only the two taps taken out were withdrawn: the VM's /32 never was.
    expect(await lab.importWithdraws()).toBe(withdraws + 2);
  });

  it("link to the route reflector cut (longer than the hold time) and restored: the RR ends with exactly the desired set", async () => {
    await lab.rr.ip(["link", "set", "downlink", "down"]);
    const cut = Date.now();
    await setTaps([10, 15, 16, 19, 20].map(ip));
    // Both ends give up on the session only after the 30 s hold time (nothing tells gobgpd the far end went).
    await waitFor(async () => !(await lab.sessionEstablished()), 60000, "BIRD to drop the session", 500);
    await waitFor(async () => (await daemon.status()).bgp.peers.every((p) => p.state !== "established"), 60000, "gobgpd to drop the session", 500);
    recovery.linkCutDetectedByBothEnds = Date.now() - cut;
    const restored = Date.now();
    await lab.rr.ip(["link", "set", "downlink", "up"]);
    await exactAtReflector("link restored");
    recovery.linkRestored = Date.now() - restored;
  });
});
