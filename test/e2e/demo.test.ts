import { spawn } from "node:child_process";
import { readdir } from "node:fs/promises";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { assertLabReady, REPO, rootSnapshot, sh } from "../helpers/lab.js";

// The README's first command, run as a user would: to the end, twice in a row,
// and interrupted (SIGINT to its process group, as Ctrl-C does) at several
// steps. Each time, nothing may be left behind: namespaces, daemons, guests,
// files, or changes to the root namespace.

const DAEMONS = /^(gobgpd|bird|libvirtd|qemu-system-x86_64|dnsmasq)$/;

async function leftovers() {
  const netns = (await sh("ip", ["netns", "list"])).stdout.split("\n").filter((l) => l.startsWith("vmrd-")).sort();
  const dirs = (await readdir("/tmp")).filter((d) => d.startsWith("vmrouted-demo")).sort();
  const procs: string[] = [];
  for (const pid of await readdir("/proc")) {
    if (!/^\d+$/.test(pid)) continue;
    const cmd = await sh("cat", [`/proc/${pid}/cmdline`], { reject: false });
    const argv = cmd.stdout.split("\0");
    // By name, not by arguments: libvirtd's command line does not name the demo's directory.
    const daemon = DAEMONS.test((argv[0] ?? "").split("/").pop() ?? "") || argv.some((a) => a.endsWith("dist/daemon/main.js"));
    if (daemon) procs.push(`${pid} ${argv.join(" ")}`);
  }
  return { netns, dirs, procs };
}

/** Runs the demo in its own process group; with `interruptAt`, sends SIGINT `delayMs` after that text is printed. */
function runDemo(interruptAt?: string, delayMs = 300): Promise<{ code: number | null; output: string; interrupted: boolean }> {
  return new Promise((resolve, reject) => {
    const child = spawn("bash", [join(REPO, "scripts/demo.sh")], { detached: true, stdio: ["ignore", "pipe", "pipe"] });
    let output = "";
    let interrupted = false;
    const onData = (c: Buffer) => {
      output += c.toString();
      if (interruptAt && !interrupted && output.includes(interruptAt)) {
        interrupted = true;
        setTimeout(() => process.kill(-child.pid!, "SIGINT"), delayMs);
      }
    };
    child.stdout.on("data", onData);
    child.stderr.on("data", onData);
    child.on("error", reject);
    child.on("exit", (code) => resolve({ code, output, interrupted }));
  });
}

describe("the demo (README quick start, first command)", () => {
  it("runs end to end twice in a row, and leaves nothing behind", async () => {
    assertLabReady();
    const root = await rootSnapshot();
    const before = await leftovers();
    for (let i = 0; i < 2; i++) {
      const r = await runDemo();
      expect(r.code, r.output.slice(-3000)).toBe(0);
      expect(r.output).toContain("guest console: VMR ping 10.99.0.2 ok");
      // No static configuration in the guest: vmrouted's dnsmasq told it all.
      expect(r.output).toMatch(/guest console: VMR dhcp bound 172\.31\.16\.5\/24 router 172\.31\.16\.1 mtu 1450 dns 10\.99\.0\.2 domain demo\.internal /);
      expect(r.output).toMatch(/64 bytes from 172\.31\.16\.5/); // the route reflector's ping to the guest
      expect(r.output).toMatch(/vm\s+demo-guest\s+service\s+172\.31\.16\.5\s.*\sready\s+ok\s/); // all conditions hold, announced included
      expect(r.output).toMatch(/replies lost: \d+ of \d+/); // the live migration, counted
      expect(r.output).toMatch(/172\.31\.16\.5 via 10\.99\.0\.3 dev uplink proto bird/); // the reflector routes to host 2 after it
      expect(r.output).toContain("done: domain, daemons, namespaces and files removed");
      expect(await leftovers()).toEqual(before);
    }
    expect(await rootSnapshot()).toBe(root);
  }, 400_000);

  // Step 2 starts six daemons in about two seconds: Ctrl-C at several moments
  // of it (a daemon started just before the interrupt once outlived the demo).
  it.each([
    ["while the daemons start (+0.1 s)", "== 2.", 100],
    ["while the daemons start (+0.3 s)", "== 2.", 300],
    ["while the daemons start (+0.7 s)", "== 2.", 700],
    ["while the daemons start (+1.2 s)", "== 2.", 1200],
    ["while the guest starts", "== 5.", 300],
    ["with the guest running and announced", "== 6.", 300],
    ["during the live migration", "== 9.", 300],
  ])("Ctrl-C %s leaves no namespaces, daemons, domains or files", async (_when, marker, delayMs) => {
    const root = await rootSnapshot();
    const before = await leftovers();
    const r = await runDemo(marker, delayMs);
    expect(r.interrupted, r.output.slice(-3000)).toBe(true);
    expect(r.code).not.toBe(0);
    expect(r.output).toContain("done: domain, daemons, namespaces and files removed");
    expect(await leftovers()).toEqual(before);
    expect(await rootSnapshot()).toBe(root);
  }, 300_000);
});
