// npm run bench: what operators feel, each measure side by side with its floor
// (the same kernel work by hand in one batch, one AddPathStream) and, up to
// 1,000 endpoints, the runbook vmrouted replaces; on this machine, in
// namespaces this run creates, with a real gobgpd and a real BIRD route
// reflector (a GoBGP reflector for the learned-route measure, a real libvirtd
// for the hook). Writes bench/out/results.{json,md} and bench/out/converge.png;
// `npm run bench -- --publish` also copies them to docs/bench/ for the README.
//   --sizes 100,1000,10000  --rounds 3  --idle 60  --only converge|dual|hook|learned (the other parts kept from bench/out)
// The dual-stack part (converge and teardown of taps with an ip6 too) runs at 1,000 unless --sizes is given.
import { spawn } from "node:child_process";
import { copyFile, mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { cpus, release, tmpdir, totalmem } from "node:os";
import { join } from "node:path";
import { BgpLab, HOST_ADDRESS, HOST_ADDRESS6 } from "../test/helpers/bgp-lab.js";
import { assertLabReady, Daemon, REPO, runId, sh, waitFor } from "../test/helpers/lab.js";
import { LibvirtLab } from "../test/helpers/libvirt-lab.js";
import { parseMonitorRecord } from "../src/dataplane/events.js";
import { splitRecords } from "../src/dataplane/monitor.js";
import { floorDown, floorDownDual, floorFiles, floorFilesDual, floorUp, floorUpDual, Injector, ip6Of, ipOf, PREFIX6 } from "./floor.js";
import { learnedRoutes } from "./learned.js";
import { chart, markdown, rssMiB, summarize, type Footprint, type Results } from "./report.js";

const args = process.argv.slice(2);
const arg = (name: string) => (args.includes(name) ? args[args.indexOf(name) + 1] : undefined);
const ROUNDS = Number(arg("--rounds")) || 3;
const SIZES = (arg("--sizes") ?? "100,1000,10000").split(",").map(Number);
const DUAL_SIZES = (arg("--sizes") ?? "1000").split(",").map(Number);
const IDLE_SECONDS = Number(arg("--idle")) || 60;
const ONLY = arg("--only");
const OUT = join(REPO, "bench/out");
const RUNBOOK = join(REPO, "bench/runbook.sh");

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const fmt = (ms: number) => (ms >= 1000 ? `${(ms / 1000).toFixed(2)} s` : `${ms.toFixed(0)} ms`);
function check(ok: boolean, what: string): void {
  if (!ok) throw new Error(`bench: ${what}`);
}
/** ms from t0 (taken before the action) until check() holds, polled every `every` ms. */
async function until(t0: number, done: () => Promise<boolean>, what: string, every = 10): Promise<number> {
  await waitFor(done, 600_000, what, every);
  return performance.now() - t0;
}

async function main(): Promise<void> {
  assertLabReady();
  await mkdir(OUT, { recursive: true });
  const fresh: Results = { date: new Date().toISOString(), machine: machine(), rounds: ROUNDS, converge: {}, teardown: {}, footprint: [] };
  // One part run again (--only) replaces that part of the last run's results and keeps the others.
  const previous = ONLY ? (JSON.parse(await readFile(join(OUT, "results.json"), "utf8").catch(() => "null")) as Results | null) : null;
  const results: Results = previous
    ? { ...previous, date: fresh.date, machine: fresh.machine, ...(ONLY === "converge" ? { rounds: ROUNDS, converge: {}, teardown: {}, footprint: [] } : {}) }
    : fresh;
  // Written after each part too: a part that fails late does not cost the others' numbers.
  const save = async () => {
    await writeFile(join(OUT, "results.json"), JSON.stringify(results, null, 2) + "\n");
    await writeFile(join(OUT, "results.md"), markdown(results));
  };
  if (!ONLY || ONLY === "converge") await convergeAndIdle(results).then(save);
  if (!ONLY || ONLY === "dual") await dualStack(results).then(save);
  if (!ONLY || ONLY === "hook") results.hook = await hookLatency().finally(save);
  if (!ONLY || ONLY === "learned") results.learned = await learnedRoutes(ROUNDS);
  await save();
  chart(results, OUT);
  process.stdout.write(markdown(results));
  if (args.includes("--publish")) {
    await mkdir(join(REPO, "docs/bench"), { recursive: true });
    for (const f of ["results.json", "results.md", "converge.png"]) await copyFile(join(OUT, f), join(REPO, "docs/bench", f)).catch(() => undefined);
  }
}

/** Converge and teardown at each N (floor, vmrouted, runbook up to 1,000), repair, and idle footprint at 1,000 and 10,000. */
async function convergeAndIdle(results: Results): Promise<void> {
  const lab = await BgpLab.start(`b${runId()}`);
  const dir = await mkdtemp(join(tmpdir(), "vmrouted-bench-"));
  let daemon: Daemon | undefined;
  let injector: Injector | undefined;
  try {
    daemon = await Daemon.create(lab.host, {
      bgp: { gobgp: "127.0.0.1:50051" }, networks: { service: { gateway: "172.31.16.1/16" } }, resyncSeconds: 30,
    });
    await daemon.start();
    await lab.waitForSession(60_000);
    injector = await Injector.connect(lab.apiSocket, HOST_ADDRESS);
    const birdCount = async () => {
      const r = await sh("birdc", ["-s", lab.birdSocket, "show", "route", "count", "protocol", "host1"], { reject: false });
      return Number(/(\d+) of \d+ routes/.exec(r.stdout)?.[1] ?? 0);
    };
    const kernel = async (protocol: string) => {
      const [routes, taps] = await Promise.all([
        lab.host.json<unknown[]>(["-4", "route", "show", "proto", protocol]),
        lab.host.json<unknown[]>(["link", "show", "type", "tun"]),
      ]);
      return { routes: routes.length, taps: taps.length };
    };
    for (const n of SIZES) {
      const files = await floorFiles(dir, n);
      const spec = join(dir, `spec-${n}.json`), empty = join(dir, "spec-0.json");
      await writeFile(spec, JSON.stringify({ endpoints: Array.from({ length: n }, (_, i) => ({ kind: "tap", network: "service", ip: ipOf(i) })) }));
      await writeFile(empty, "{}");
      const dhcp: number[] = [];
      const s = { fUp: [] as number[], fDown: [] as number[], vUp: [] as number[], vDown: [] as number[], bUp: [] as number[], bDown: [] as number[], repair: [] as number[] };
      for (let r = 0; r < ROUNDS; r++) {
        // The floor.
        let t0 = performance.now();
        await floorUp(lab.host, files, injector, n);
        s.fUp.push(await until(t0, async () => (await birdCount()) === n, "floor announcements"));
        check((await kernel("93")).routes === n, "floor routes");
        t0 = performance.now();
        await floorDown(lab.host, files, injector, n);
        s.fDown.push(await until(t0, async () => (await birdCount()) === 0, "floor withdrawals"));
        check((await kernel("93")).taps === 0, "floor teardown");

        // vmrouted: one declarative apply, as an operator runs it (the CLI's start counts).
        t0 = performance.now();
        const wall = Date.now();
        const applied = await daemon.ctl(["-o", "json", "apply", "-f", spec]);
        check(applied.exitCode === 0, `apply: ${applied.stderr}`);
        s.vUp.push(await until(t0, async () => (await birdCount()) === n, "vmrouted announcements"));
        // DHCP: dnsmasq's own confirmation that it read the hosts file with all n (vmrouted logs it with its time).
        await until(t0, async () => dhcpLoaded(daemon!, n, wall) !== undefined, "dnsmasq to read all the leases", 100);
        dhcp.push(dhcpLoaded(daemon, n, wall)! - wall);
        const k = await kernel("94");
        check(k.routes === n && k.taps === n, `vmrouted kernel state: ${JSON.stringify(k)}`);

        if (n === 1000) {
          // Repair: a /32 deleted by hand, back by its kernel event (the resync is 30 s away). Timed from
          // the kernel's own events (deleted → added again), not by polling with `ip`, whose processes
          // would compete with vmrouted for the two cores.
          for (let k = 0; k < 5; k++) s.repair.push(await repairTime(lab.host.name, ipOf(500 + r * 5 + k)));
        }
        if ((n === 1000 || n === 10000) && r === ROUNDS - 1) results.footprint.push(await footprint(daemon, n));

        t0 = performance.now();
        check((await daemon.ctl(["-o", "json", "apply", "-f", empty])).exitCode === 0, "apply empty");
        s.vDown.push(await until(t0, async () => (await birdCount()) === 0 && (await kernel("94")).taps === 0, "vmrouted teardown"));

        // The runbook, once per size up to 1,000 (it takes minutes beyond).
        if (n <= 1000 && r === 0) {
          t0 = performance.now();
          await lab.host.exec(["bash", RUNBOOK, "up", "0", String(n), HOST_ADDRESS]);
          s.bUp.push(await until(t0, async () => (await birdCount()) === n, "runbook announcements", 50));
          t0 = performance.now();
          await lab.host.exec(["bash", RUNBOOK, "down", "0", String(n), HOST_ADDRESS]);
          s.bDown.push(await until(t0, async () => (await birdCount()) === 0 && (await kernel("boot")).routes === 0, "runbook teardown", 50));
        }
        process.stderr.write(`N=${n} round ${r + 1}/${ROUNDS}: floor ${fmt(s.fUp.at(-1)!)} / ${fmt(s.fDown.at(-1)!)}, ` +
          `vmrouted ${fmt(s.vUp.at(-1)!)} / ${fmt(s.vDown.at(-1)!)}${s.bUp.length && r === 0 ? `, runbook ${fmt(s.bUp[0]!)} / ${fmt(s.bDown[0]!)}` : ""}\n`);
      }
      results.converge[n] = { floor: summarize(s.fUp), vmrouted: summarize(s.vUp), ...(s.bUp.length ? { baseline: summarize(s.bUp) } : {}) };
      results.teardown[n] = { floor: summarize(s.fDown), vmrouted: summarize(s.vDown), ...(s.bDown.length ? { baseline: summarize(s.bDown) } : {}) };
      if (s.repair.length) results.repair = { endpoints: n, ms: summarize(s.repair) };
      results.dhcp = { ...results.dhcp, [n]: summarize(dhcp) };
    }
  } finally {
    injector?.close();
    // Kept to explain an outlier afterwards (pass timings are logged per pass).
    if (daemon) await writeFile(join(OUT, "converge-daemon.log"), daemon.log).catch(() => undefined);
    await daemon?.cleanup();
    await lab.destroy();
    await rm(dir, { recursive: true, force: true });
  }
}

/**
 * Dual stack at each N (DUAL_SIZES): one apply -f of N taps with an ip and an ip6
 * until BIRD has all N /32s and all N /128s (and the kernel agrees), then of none
 * until BIRD has neither; against the floor of the same kernel work in one
 * ip -batch (the IPv4 and the IPv6 lines per tap), one sysctl -p and one
 * AddPathStream of the 2N paths. The session is IPv4; the /128s' next hop is
 * node.address6, the host's fd99::1 on the link to the reflector.
 */
async function dualStack(results: Results): Promise<void> {
  const lab = await BgpLab.start(`d${runId()}`);
  const dir = await mkdtemp(join(tmpdir(), "vmrouted-bench-"));
  let daemon: Daemon | undefined;
  let injector: Injector | undefined;
  const dual: NonNullable<Results["dual"]> = { rounds: ROUNDS, converge: {}, teardown: {} };
  try {
    daemon = await Daemon.create(lab.host, {
      bgp: { gobgp: "127.0.0.1:50051" }, networks: { service: { gateway: "172.31.16.1/16", prefix6: PREFIX6 } }, resyncSeconds: 30,
      extra: { node: { address: HOST_ADDRESS, address6: HOST_ADDRESS6, name: "test-host" } },
    });
    await daemon.start();
    await lab.waitForSession(60_000);
    injector = await Injector.connect(lab.apiSocket, HOST_ADDRESS, HOST_ADDRESS6);
    // "N of M routes for K networks in table master4" and "... master6": the first number of each.
    const birdCounts = async () => {
      const r = await sh("birdc", ["-s", lab.birdSocket, "show", "route", "count", "protocol", "host1"], { reject: false });
      const of = (table: string) => Number(new RegExp(`(\\d+) of \\d+ routes for \\d+ networks in table ${table}`).exec(r.stdout)?.[1] ?? 0);
      return { v4: of("master4"), v6: of("master6") };
    };
    const holds = async (n: number) => { const c = await birdCounts(); return c.v4 === n && c.v6 === n; };
    const kernel = async (protocol: string) => {
      const [routes, routes6, taps] = await Promise.all([
        lab.host.json<unknown[]>(["-4", "route", "show", "proto", protocol]),
        lab.host.json<unknown[]>(["-6", "route", "show", "proto", protocol]),
        lab.host.json<unknown[]>(["link", "show", "type", "tun"]),
      ]);
      return { routes: routes.length, routes6: routes6.length, taps: taps.length };
    };
    for (const n of DUAL_SIZES) {
      const files = await floorFilesDual(dir, n);
      const spec = join(dir, `spec6-${n}.json`), empty = join(dir, "spec-0.json");
      await writeFile(spec, JSON.stringify({ endpoints: Array.from({ length: n }, (_, i) => ({ kind: "tap", network: "service", ip: ipOf(i), ip6: ip6Of(i) })) }));
      await writeFile(empty, "{}");
      const s = { fUp: [] as number[], fDown: [] as number[], vUp: [] as number[], vDown: [] as number[] };
      for (let r = 0; r < ROUNDS; r++) {
        let t0 = performance.now();
        await floorUpDual(lab.host, files, injector, n);
        s.fUp.push(await until(t0, () => holds(n), "dual-stack floor announcements"));
        const f = await kernel("93");
        check(f.routes === n && f.routes6 === n, `dual-stack floor routes: ${JSON.stringify(f)}`);
        t0 = performance.now();
        await floorDownDual(lab.host, files, injector, n);
        s.fDown.push(await until(t0, () => holds(0), "dual-stack floor withdrawals"));
        check((await kernel("93")).taps === 0, "dual-stack floor teardown");

        t0 = performance.now();
        let wall = Date.now();
        const applied = await daemon.ctl(["-o", "json", "apply", "-f", spec]);
        check(applied.exitCode === 0, `apply: ${applied.stderr}`);
        s.vUp.push(await until(t0, () => holds(n), "vmrouted dual-stack announcements"));
        const up = passPhases(daemon, wall, "announced", 2 * n);
        const k = await kernel("94");
        check(k.routes === n && k.routes6 === n && k.taps === n, `vmrouted dual-stack kernel state: ${JSON.stringify(k)}`);
        t0 = performance.now();
        wall = Date.now();
        check((await daemon.ctl(["-o", "json", "apply", "-f", empty])).exitCode === 0, "apply empty");
        s.vDown.push(await until(t0, async () => (await holds(0)) && (await kernel("94")).taps === 0, "vmrouted dual-stack teardown"));
        const down = passPhases(daemon, wall, "withdrawn", 2 * n);
        process.stderr.write(`dual stack N=${n} round ${r + 1}/${ROUNDS}: floor ${fmt(s.fUp.at(-1)!)} / ${fmt(s.fDown.at(-1)!)}, ` +
          `vmrouted ${fmt(s.vUp.at(-1)!)} / ${fmt(s.vDown.at(-1)!)} (up: ${up}; down: ${down})\n`);
      }
      dual.converge[n] = { floor: summarize(s.fUp), vmrouted: summarize(s.vUp) };
      dual.teardown[n] = { floor: summarize(s.fDown), vmrouted: summarize(s.vDown) };
      results.dual = dual;
    }
  } finally {
    injector?.close();
    if (daemon) await writeFile(join(OUT, "dual-daemon.log"), daemon.log).catch(() => undefined);
    await daemon?.cleanup();
    await lab.destroy();
    await rm(dir, { recursive: true, force: true });
  }
}

/**
 * Where an apply's time went, from the daemon's log (epoch ms, from `wall` taken
 * before the CLI ran): until its pass started (CLI and API), the pass (plan,
 * apply), and from the pass's end until gobgpd had taken all `paths` (the
 * announcer's "bgp paths updated", logged after the AddPathStream returned).
 */
function passPhases(daemon: Daemon, wall: number, field: "announced" | "withdrawn", paths: number): string {
  const lines = daemon.log.split("\n").filter((l) => l.startsWith("{")).map((l) => JSON.parse(l) as Record<string, number | string>)
    .filter((l) => (l.time as number) >= wall);
  const pass = lines.find((l) => l.msg === "reconciled" && String(l.trigger).includes("api"));
  const bgp = lines.find((l) => l.msg === "bgp paths updated" && l[field] === paths);
  if (!pass || !bgp) return "phases not in the log";
  const end = (pass.time as number) - wall, duration = pass.durationMs as number;
  return `to pass ${Math.round(end - duration)} ms, pass ${Math.round(duration)} ms (plan ${pass.planMs}, apply ${pass.applyMs}), ` +
    `pass end to gobgpd's ack ${(bgp.time as number) - (pass.time as number)} ms`;
}

/** When (epoch ms, from the daemon's log) dnsmasq first confirmed reading a hosts file with `n` entries after `since`. */
function dhcpLoaded(daemon: Daemon, n: number, since: number): number | undefined {
  for (const line of daemon.log.split("\n")) {
    if (!line.includes('"msg":"dnsmasq loaded its hosts"')) continue;
    const l = JSON.parse(line) as { time: number; hosts: number };
    if (l.hosts === n && l.time >= since) return l.time;
  }
  return undefined;
}

/** ms from the kernel's event for `ip`'s /32 deleted by hand to its event for the route back (read as vmrouted reads them). */
async function repairTime(netns: string, ip: string): Promise<number> {
  const monitor = spawn("ip", ["-n", netns, "-N", "-d", "monitor", "label", "route"], { stdio: ["ignore", "pipe", "ignore"] });
  try {
    let deletedAt = 0, partial = "";
    const back = new Promise<number>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`bench: ${ip}/32 not repaired within 10 s`)), 10_000);
      monitor.stdout!.setEncoding("utf8");
      monitor.stdout!.on("data", (chunk: string) => {
        const now = performance.now();
        const text = partial + chunk;
        const end = text.lastIndexOf("\n");
        partial = text.slice(end + 1);
        for (const e of splitRecords(text.slice(0, Math.max(end, 0))).flatMap((r) => parseMonitorRecord(r) ?? [])) {
          if (e.kind !== "route" || e.dst !== `${ip}/32` || e.protocol !== 94) continue;
          if (e.deleted) deletedAt = now;
          else if (deletedAt) {
            clearTimeout(timer);
            resolve(now - deletedAt);
          }
        }
      });
    });
    await sleep(200); // the monitor is listening
    await sh("ip", ["-n", netns, "route", "del", `${ip}/32`, "proto", "94"]);
    return await back;
  } finally {
    monitor.kill();
  }
}

/** CPU (vmrouted and every process it ran, over IDLE_SECONDS of idling) and RSS, with n endpoints; and status latency. */
async function footprint(daemon: Daemon, n: number): Promise<Footprint> {
  const pid = daemon.child!.pid!;
  const stat = async (p: number) => {
    const f = (await readFile(`/proc/${p}/stat`, "utf8")).slice(0).split(") ")[1]!.split(" ");
    return Number(f[11]) + Number(f[12]) + Number(f[13]) + Number(f[14]); // utime, stime, and of children waited for
  };
  // The long-lived `ip monitor` and `virsh event` children are not waited for until they end: counted on their own.
  const children = async () => (await readFile(`/proc/${pid}/task/${pid}/children`, "utf8")).trim().split(/\s+/).filter(Boolean).map(Number);
  const total = async () => {
    let ticks = await stat(pid);
    for (const c of await children()) ticks += await stat(c).catch(() => 0);
    return ticks;
  };
  // Idle means after the burst: its echo, announcements and the collection of its garbage (5 s after its last pass).
  await sleep(10_000);
  const before = await total();
  const t0 = performance.now();
  await sleep(IDLE_SECONDS * 1000);
  const seconds = (performance.now() - t0) / 1000;
  const ticks = (await total()) - before;
  const statusMs: number[] = [];
  for (let i = 0; i < 5; i++) {
    const t = performance.now();
    check((await daemon.request("GET", "/v1/status")).status === 200, "status");
    statusMs.push(performance.now() - t);
  }
  return {
    endpoints: n, idleSeconds: Math.round(seconds), cpuPercentOfCore: Math.round(((ticks / 100) / seconds) * 1000) / 10,
    rssMiB: Math.round((await rssMiB(pid)) * 10) / 10, statusMs: summarize(statusMs),
  };
}

/**
 * `virsh start` of a diskless domain with one routed interface: a libvirtd
 * with vmrouted's hook against one without any hook (its tap made by hand
 * beforehand, outside the clock), 20 starts each (the noise of a qemu start is ±200 ms), interleaved.
 */
async function hookLatency(): Promise<NonNullable<Results["hook"]>> {
  const lab = await BgpLab.start(`h${runId()}`);
  const plain = await LibvirtLab.create(lab.host);
  const hooked = await LibvirtLab.create(lab.host);
  const daemon = await Daemon.create(lab.host, { bgp: { gobgp: "127.0.0.1:50051" }, libvirtUri: hooked.uri });
  const rounds = 20;
  try {
    check((await daemon.ctl(["install-hook", "--hooks-dir", hooked.hooksDir, "--config", daemon.configPath])).exitCode === 0, "install-hook");
    await plain.start();
    await hooked.start();
    await daemon.start();
    await hooked.define("withhook");
    check((await daemon.ctl(["iface", "add", "withhook", "--network", "service", "--ip", "172.31.16.50"])).exitCode === 0, "iface add");
    await plain.define("nohook");
    const tap = "tap-nohook";
    const iface = `<interface type='ethernet'><mac address='52:54:00:00:00:51'/><target dev='${tap}' managed='no'/><model type='virtio'/></interface>`;
    await writeFile(join(plain.dir, "iface.xml"), iface);
    await plain.virsh(["attach-device", "nohook", join(plain.dir, "iface.xml"), "--config"]);
    const cycle = async (libvirt: LibvirtLab, name: string) => {
      if (libvirt === plain && (await lab.host.ip(["link", "show", tap], false)).exitCode !== 0) {
        await lab.host.ip(["tuntap", "add", "dev", tap, "mode", "tap", "one_queue", "vnet_hdr"]);
        await lab.host.ip(["link", "set", tap, "up"]);
      }
      const t0 = performance.now();
      await libvirt.virsh(["start", name]);
      const ms = performance.now() - t0;
      await libvirt.virsh(["destroy", name]);
      return ms;
    };
    await cycle(plain, "nohook"); // warm-up (qemu and firmware into the page cache)
    await cycle(hooked, "withhook");
    const none: number[] = [], withHook: number[] = [];
    for (let i = 0; i < rounds; i++) {
      none.push(await cycle(plain, "nohook"));
      withHook.push(await cycle(hooked, "withhook"));
    }
    const noHook = summarize(none), hook = summarize(withHook);
    return { noHook, hook, addedMs: Math.round(hook.median - noHook.median), rounds };
  } finally {
    await daemon.cleanup();
    await hooked.destroy();
    await plain.destroy();
    await lab.destroy();
  }
}

function machine(): Results["machine"] {
  const c = cpus();
  return { cpus: c.length, model: c[0]?.model ?? "unknown", memoryGiB: Math.round(totalmem() / 2 ** 30), kernel: release(), node: process.version };
}

main().catch((e: unknown) => {
  process.stderr.write(`bench: ${(e as Error).message}\n`);
  process.exit(1);
});
