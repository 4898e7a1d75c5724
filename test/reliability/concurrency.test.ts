import { chmod, mkdtemp, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { execa } from "execa";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BgpLab } from "../helpers/bgp-lab.js";
import { assertLabReady, type Daemon, rootSnapshot, runId, waitFor } from "../helpers/lab.js";
import { type LibvirtLab, startLibvirtWithDaemon } from "../helpers/libvirt-lab.js";
import { randomSource } from "../helpers/random.js";

// Everything at once, on real components: dozens of VMs starting and stopping
// together through the real hook, concurrent API calls, a hung gobgpd, and a
// domain whose XML cannot be read in the middle of a libvirt resync.

const id = runId();
const VMS = 30;
const names = Array.from({ length: VMS }, (_, i) => `vm${String(i + 1).padStart(2, "0")}`);
const vmIp = (i: number) => `172.31.16.${100 + i}`;
let lab: BgpLab;
let libvirt: LibvirtLab;
let daemon: Daemon;
let wrapperDir = "";
let rootBefore = "";
const random = randomSource(process.env.VMROUTED_SEED);

interface Link { ifname: string; ifindex: number; ifalias?: string }
const links = () => lab.host.json<Link[]>(["link", "show"]);
const ourTaps = async () => (await links()).filter((l) => l.ifalias?.startsWith("vmrouted:vm:"));
const routes = () => lab.host.json<Array<{ dst: string; dev?: string; protocol?: string }>>(["-4", "route", "show", "proto", "94"]);

beforeAll(async () => {
  assertLabReady();
  rootBefore = await rootSnapshot();
  // A virsh in front of the real one: when told (a flag file), it undefines a
  // domain right before a bulk dump, the race a real resync can meet.
  wrapperDir = await mkdtemp(join(tmpdir(), "vmrouted-virsh-"));
  const realVirsh = (await execa("sh", ["-c", "command -v virsh"])).stdout.trim();
  await writeFile(join(wrapperDir, "virsh"), `#!/bin/sh
case "$*" in *dumpxml*)
  if [ -f ${wrapperDir}/undefine ]; then
    victim=$(cat ${wrapperDir}/undefine); rm -f ${wrapperDir}/undefine
    ${realVirsh} "$1" "$2" "$3" undefine "$victim" >/dev/null 2>&1; echo "$victim" > ${wrapperDir}/undefined
  fi ;;
esac
exec ${realVirsh} "$@"
`);
  await chmod(join(wrapperDir, "virsh"), 0o755);
  lab = await BgpLab.start(id);
  ({ libvirt, daemon } = await startLibvirtWithDaemon(lab.host, {
    bgp: { gobgp: "127.0.0.1:50051" }, resyncSeconds: 3600, env: { PATH: `${wrapperDir}:${process.env.PATH}` },
  }));
  await lab.waitForSession();
  for (const n of names) await libvirt.define(n);
  // iface add serializes on its own; sent together, as an orchestrator would.
  const added = await Promise.all(names.map((n, i) => daemon.ctl(["iface", "add", n, "--network", "service", "--ip", vmIp(i)])));
  for (const r of added) expect(r.exitCode, r.stderr).toBe(0);
}, 300_000);

afterAll(async () => {
  await libvirt?.destroy();
  await daemon?.cleanup();
  await lab?.destroy();
  if (wrapperDir) await rm(wrapperDir, { recursive: true, force: true });
  expect(await rootSnapshot()).toBe(rootBefore);
});

describe("many VMs at once", () => {
  it(`${VMS} domains started in parallel: all start, all ready, all announced; stopped in parallel: all withdrawn, no tap left`, async () => {
    const started = await Promise.all(names.map((n) => libvirt.virsh(["start", n], false)));
    for (const [i, r] of started.entries()) expect(r.exitCode, `${names[i]}: ${r.stderr}`).toBe(0);
    const prefixes = names.map((_, i) => `${vmIp(i)}/32`);
    await waitFor(async () => (await daemon.status()).endpoints.filter((e) => e.kind === "vm" && e.state === "ready").length === VMS, 60000, "every VM ready");
    await lab.waitForExactly(prefixes, 30000);
    expect((await ourTaps()).length).toBe(VMS);

    const stopped = await Promise.all(names.map((n) => libvirt.virsh(["destroy", n], false)));
    for (const [i, r] of stopped.entries()) expect(r.exitCode, `${names[i]}: ${r.stderr}`).toBe(0);
    await lab.waitForExactly([], 30000);
    await waitFor(async () => (await ourTaps()).length === 0, 30000, "every tap removed");
    expect((await routes()).filter((r) => r.dst.startsWith("172.31.16."))).toEqual([]);
  });
});

describe("concurrent API calls", () => {
  it("50 calls at once (adds, removes, conflicts): each 2xx or one 4xx line; the result is a serial order; memory = file = kernel", async () => {
    const pool = Array.from({ length: 8 }, (_, i) => `172.31.16.${200 + i}`);
    type Call = { kind: "add" | "remove" | "bad" | "domain"; ip: string };
    const calls: Call[] = Array.from({ length: 50 }, () => {
      const r = random.next();
      const ip = pool[Math.floor(random.next() * pool.length)]!;
      return r < 0.55 ? { kind: "add", ip } : r < 0.9 ? { kind: "remove", ip } : r < 0.95 ? { kind: "bad", ip: "172.31.16.999" } : { kind: "domain", ip: vmIp(0) };
    });
    const answers = await Promise.all(calls.map((c) => c.kind === "remove"
      ? daemon.request("DELETE", `/v1/endpoints?kind=tap&ip=${c.ip}`)
      : daemon.request("POST", "/v1/endpoints", JSON.stringify({ kind: "tap", network: "service", ip: c.ip }))));
    for (const [i, a] of answers.entries()) {
      expect([200, 400], `${JSON.stringify(calls[i])}: ${a.body}`).toContain(a.status);
      if (a.status === 400) {
        const error = (JSON.parse(a.body) as { error: string }).error;
        expect(error).not.toContain("\n");
        expect(error, JSON.stringify(calls[i])).toMatch(/already used|no tap endpoint|not an IPv4 address|used by domain/);
      }
    }
    // A serial order exists exactly when, per IP, the accepted adds and removes alternate from "absent".
    const spec = JSON.parse((await daemon.request("GET", "/v1/spec")).body) as { endpoints: Array<{ ip: string }> };
    const present = new Set(spec.endpoints.map((e) => e.ip));
    for (const ip of pool) {
      const accepted = calls.map((c, i) => ({ c, ok: answers[i]!.status === 200 })).filter(({ c, ok }) => ok && c.ip === ip);
      const adds = accepted.filter(({ c }) => c.kind === "add").length;
      const removes = accepted.filter(({ c }) => c.kind === "remove").length;
      expect(adds - removes, ip).toBe(present.has(ip) ? 1 : 0);
    }
    expect(calls.filter((c, i) => (c.kind === "bad" || c.kind === "domain") && answers[i]!.status === 200)).toEqual([]);
    // Memory = file = kernel.
    const file = JSON.parse(await readFile(join(daemon.dir, "state", "state.json"), "utf8")) as { endpoints: Array<{ ip: string }> };
    expect(file.endpoints.map((e) => e.ip).sort()).toEqual([...present].sort());
    await waitFor(async () => {
      const ours = (await routes()).filter((r) => r.dst.startsWith("172.31.16.2")).map((r) => r.dst).sort();
      return JSON.stringify(ours) === JSON.stringify([...present].sort());
    }, 10000, "kernel routes to equal the stored endpoints");
    await daemon.ctl(["apply", "-f", "-"], "endpoints: []\n");
  });
});

describe("a hung gobgpd", () => {
  it("stopped (SIGSTOP): API calls and hooks answer in under a second, a VM starts and is routed; after SIGCONT its /32 reaches the reflector", async () => {
    const gobgpd = lab.gobgpd.child!;
    gobgpd.kill("SIGSTOP");
    try {
      let t = Date.now();
      const add = await daemon.request("POST", "/v1/endpoints", JSON.stringify({ kind: "tap", network: "service", ip: "172.31.16.220" }));
      expect(add.status, add.body).toBe(200);
      expect(Date.now() - t).toBeLessThan(1000);
      // The hook call the shim makes for a start, timed on its own...
      const xml = (await libvirt.virsh(["dumpxml", names[0]!])).stdout;
      t = Date.now();
      const hook = await daemon.request("POST", `/v1/hook?domain=${names[0]}&op=prepare&subop=begin&extra=-&seq=${Date.now()}000000`, xml);
      expect(hook.status, hook.body).toBe(200);
      expect(Date.now() - t).toBeLessThan(1000);
      // ...and a real start through libvirt's hook.
      const start = await libvirt.virsh(["start", names[0]!], false);
      expect(start.exitCode, start.stderr).toBe(0);
      await waitFor(async () => (await routes()).some((r) => r.dst === vmIp(0)), 5000, "the VM's /32 in the kernel");
      t = Date.now();
      expect((await daemon.ctl(["status", "-o", "json"])).exitCode).toBe(0);
      expect(Date.now() - t).toBeLessThan(1000);
    } finally {
      gobgpd.kill("SIGCONT");
    }
    await lab.waitForExactly([`${vmIp(0)}/32`, "172.31.16.220/32"], 30000, "the reflector to get the VM's and the tap's /32 after SIGCONT");
    await daemon.ctl(["tap", "remove", "172.31.16.220"]);
  });
});

describe("a domain whose XML cannot be read", () => {
  it("undefined between the listing and the dump: no other domain's tap is touched (same ifindex), the failure is that domain's own", async () => {
    // names[0] runs (previous test); start two more; names[29] stays defined and is the victim.
    for (const n of [names[1]!, names[2]!]) expect((await libvirt.virsh(["start", n], false)).exitCode).toBe(0);
    await waitFor(async () => (await daemon.status()).endpoints.filter((e) => e.kind === "vm" && e.state === "ready").length === 3, 20000, "three VMs ready");
    const before = new Map((await ourTaps()).map((l) => [l.ifname, l.ifindex]));
    expect(before.size).toBe(3);
    const logMark = daemon.log.length;
    await writeFile(join(wrapperDir, "undefine"), names[29]!);
    // The daemon's own resync (every 2 s here) meets the race.
    await waitFor(() => stat(join(wrapperDir, "undefined")).then(() => true, () => false), 20000, "the wrapper to undefine the victim mid-resync");
    await waitFor(() => /domains whose XML could not be read/.test(daemon.log.slice(logMark)), 20000, "the failed dump to be reported");
    // Two more resyncs, for good measure: the next one no longer lists the victim.
    await new Promise((r) => setTimeout(r, 4500));
    const after = new Map((await ourTaps()).map((l) => [l.ifname, l.ifindex]));
    expect(after).toEqual(before);
    const status = await daemon.status();
    expect(status.endpoints.filter((e) => e.kind === "vm").map((e) => [e.domain, e.state])).toEqual([[names[0], "ready"], [names[1], "ready"], [names[2], "ready"]]);
    expect(daemon.log.slice(logMark)).not.toMatch(/"subject":"vm:/); // no change to any VM endpoint was made
    for (const n of names.slice(0, 3)) await libvirt.virsh(["destroy", n], false);
    await waitFor(async () => (await ourTaps()).length === 0, 20000, "taps removed");
  });
});
