// npm run bench: what operators feel, vmrouted side by side with the runbook it
// replaces (bench/runbook.sh), on this machine, in namespaces this run creates,
// with a real gobgpd and a real BIRD route reflector (and a real libvirtd for
// the hook). Writes bench/out/results.{json,md} and bench/out/converge.png;
// `npm run bench -- --publish` also copies them to docs/bench/ for the README.
import { execFileSync } from "node:child_process";
import { cpus, totalmem, release } from "node:os";
import { copyFile, mkdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { BgpLab, HOST_ADDRESS } from "../test/helpers/bgp-lab.js";
import { assertLabReady, Daemon, REPO, runId, sh, waitFor } from "../test/helpers/lab.js";
import { LibvirtLab } from "../test/helpers/libvirt-lab.js";
import { markdown, type Results, type Sample, summarize } from "./report.js";

const args = process.argv.slice(2);
const ROUNDS = Number(args[args.indexOf("--rounds") + 1] ?? "") || 3;
const ONLY = args.includes("--only") ? args[args.indexOf("--only") + 1] : undefined; // converge | hook (for reruns)
const SIZES = ONLY === "hook" ? [] : [100, 1000];
const IDLE_SECONDS = Number(args[args.indexOf("--idle") + 1] ?? "") || 30;
const OUT = join(REPO, "bench/out");
const RUNBOOK = join(REPO, "bench/runbook.sh");

const ipOf = (i: number) => `172.31.${16 + Math.floor(i / 250)}.${2 + (i % 250)}`;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Polls every 5 ms; returns ms since t0 (taken before the action) when check() first holds. */
async function until(t0: number, check: () => Promise<boolean>, what: string, timeoutMs = 300_000): Promise<number> {
  await waitFor(check, timeoutMs, what, 5);
  return performance.now() - t0;
}

async function main(): Promise<void> {
  assertLabReady();
  await mkdir(OUT, { recursive: true });
  const id = runId();
  const lab = await BgpLab.start(`b${id}`);
  let daemon: Daemon | undefined;
  let libvirt: LibvirtLab | undefined;
  try {
    daemon = await Daemon.create(lab.host, { bgp: { gobgp: "127.0.0.1:50051" }, networks: { service: { gateway: "172.31.16.1/20" } }, resyncSeconds: 5 });
    await daemon.start();
    await lab.waitForSession(60_000);

    const birdCount = async () => {
      const r = await sh("birdc", ["-s", lab.birdSocket, "show", "route", "count", "protocol", "host1"], { reject: false });
      return Number(/(\d+) of \d+ routes/.exec(r.stdout)?.[1] ?? 0);
    };
    const kernel = async (protocol: string) => {
      const [routes, links] = await Promise.all([
        lab.host.json<unknown[]>(["-4", "route", "show", "proto", protocol]),
        lab.host.json<Array<{ ifname: string; group?: string | number }>>(["link", "show", "type", "tun"]),
      ]);
      return { routes: routes.length, taps: links.length };
    };
    const spec = async (n: number) => {
      const file = join(daemon!.dir, `spec-${n}.json`);
      await writeFile(file, JSON.stringify({ endpoints: Array.from({ length: n }, (_, i) => ({ kind: "tap", network: "service", ip: ipOf(i) })) }));
      return file;
    };

    const results: Results = { date: new Date().toISOString(), machine: machine(), rounds: ROUNDS, converge: {}, teardown: {}, repair: {} };
    for (const n of SIZES) {
      const samples = { bConv: [] as Sample[], bTear: [] as Sample[], vConv: [] as Sample[], vTear: [] as Sample[], repair: [] as Sample[] };
      const full = await spec(n);
      const empty = await spec(0);
      for (let r = 0; r < ROUNDS; r++) {
        // Baseline: the runbook, one VM at a time.
        let t0 = performance.now();
        await lab.host.exec(["bash", RUNBOOK, "up", "0", String(n), HOST_ADDRESS]);
        samples.bConv.push(await until(t0, async () => (await birdCount()) === n, "baseline announcements"));
        check((await kernel("boot")).routes === n, "baseline routes");
        t0 = performance.now();
        await lab.host.exec(["bash", RUNBOOK, "down", "0", String(n), HOST_ADDRESS]);
        samples.bTear.push(await until(t0, async () => (await birdCount()) === 0 && (await kernel("boot")).taps === 0, "baseline teardown"));

        // vmrouted: one declarative apply.
        t0 = performance.now();
        const applied = await daemon.ctl(["-o", "json", "apply", "-f", full]);
        check(applied.exitCode === 0, `apply: ${applied.stderr}`);
        samples.vConv.push(await until(t0, async () => (await birdCount()) === n, "vmrouted announcements"));
        const k = await kernel("94");
        check(k.routes === n && k.taps === n, `vmrouted kernel state: ${JSON.stringify(k)}`);

        // Repair: a /32 deleted by hand, until it is back in the kernel.
        const victim = `${ipOf(Math.floor(n / 2))}/32`;
        t0 = performance.now();
        await lab.host.ip(["route", "del", victim]);
        const t1 = performance.now();
        samples.repair.push((await until(t0, async () => (await lab.host.json<unknown[]>(["route", "show", victim])).length === 1, "repair")) - (t1 - t0));

        if (n === SIZES[SIZES.length - 1] && r === ROUNDS - 1) results.footprint = await footprint(daemon, n);

        t0 = performance.now();
        check((await daemon.ctl(["-o", "json", "apply", "-f", empty])).exitCode === 0, "apply empty");
        samples.vTear.push(await until(t0, async () => (await birdCount()) === 0 && (await kernel("94")).taps === 0, "vmrouted teardown"));
        process.stderr.write(`N=${n} round ${r + 1}/${ROUNDS}: baseline ${fmt(samples.bConv.at(-1)!)} / ${fmt(samples.bTear.at(-1)!)}, ` +
          `vmrouted ${fmt(samples.vConv.at(-1)!)} / ${fmt(samples.vTear.at(-1)!)}, repair ${fmt(samples.repair.at(-1)!)}\n`);
      }
      results.converge[n] = { baseline: summarize(samples.bConv), vmrouted: summarize(samples.vConv) };
      results.teardown[n] = { baseline: summarize(samples.bTear), vmrouted: summarize(samples.vTear) };
      results.repair[n] = { vmrouted: summarize(samples.repair) };
    }

    await daemon.cleanup();
    daemon = undefined;
    if (ONLY !== "converge") {
      libvirt = await LibvirtLab.create(lab.host);
      results.hook = await hookLatency(lab, libvirt);
    }

    await writeFile(join(OUT, "results.json"), JSON.stringify(results, null, 2) + "\n");
    await writeFile(join(OUT, "results.md"), markdown(results));
    if (SIZES.length) chart(results);
    process.stdout.write(markdown(results));
    if (args.includes("--publish")) {
      await mkdir(join(REPO, "docs/bench"), { recursive: true });
      for (const f of ["results.json", "results.md", "converge.png"]) await copyFile(join(OUT, f), join(REPO, "docs/bench", f));
    }
  } finally {
    await libvirt?.destroy();
    await daemon?.cleanup();
    await lab.destroy();
  }
}

function check(ok: boolean, what: string): void {
  if (!ok) throw new Error(`bench: ${what}`);
}

const fmt = (ms: number) => (ms >= 1000 ? `${(ms / 1000).toFixed(2)} s` : `${ms.toFixed(0)} ms`);

function machine(): Results["machine"] {
  const c = cpus();
  return { cpus: c.length, model: c[0]?.model ?? "unknown", memoryGiB: Math.round(totalmem() / 2 ** 30), kernel: release(), node: process.version };
}

/** vmrouted's process tree (node + its `ip monitor`): RSS now, CPU over IDLE_SECONDS of idling with n endpoints. */
async function footprint(daemon: Daemon, n: number): Promise<NonNullable<Results["footprint"]>> {
  const pid = daemon.child!.pid!;
  // node and its long-lived `ip monitor` child (not the short-lived ip/virsh runs).
  const tree = async () => {
    const kids = (await readFile(`/proc/${pid}/task/${pid}/children`, "utf8")).trim().split(/\s+/).filter(Boolean).map(Number);
    const monitors = [];
    for (const k of kids) if ((await readFile(`/proc/${k}/cmdline`, "utf8").catch(() => "")).includes("monitor")) monitors.push(k);
    return [pid, ...monitors];
  };
  const cpuTicks = async (p: number) => {
    const stat = await readFile(`/proc/${p}/stat`, "utf8");
    const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return Number(f[11]) + Number(f[12]); // utime + stime
  };
  const rssKiB = async (p: number) => Number(/VmRSS:\s+(\d+)/.exec(await readFile(`/proc/${p}/status`, "utf8"))?.[1] ?? 0);
  const pids = await tree();
  const before = await Promise.all(pids.map(cpuTicks));
  const t0 = performance.now();
  await sleep(IDLE_SECONDS * 1000);
  const seconds = (performance.now() - t0) / 1000;
  const after = await Promise.all(pids.map(cpuTicks));
  const ticks = after.reduce((a, b) => a + b, 0) - before.reduce((a, b) => a + b, 0);
  const rss = await Promise.all(pids.map(rssKiB));
  return {
    endpoints: n, idleSeconds: Math.round(seconds),
    rssMiB: Math.round((rss.reduce((a, b) => a + b, 0) / 1024) * 10) / 10,
    daemonRssMiB: Math.round((rss[0]! / 1024) * 10) / 10,
    cpuPercentOfCore: Math.round(((ticks / 100) / seconds) * 1000) / 10,
  };
}

/** virsh start + destroy of a diskless domain with one routed interface: vmrouted's hook vs no hook at all. */
async function hookLatency(lab: BgpLab, libvirt: LibvirtLab): Promise<NonNullable<Results["hook"]>> {
  const daemon = await Daemon.create(lab.host, { bgp: { gobgp: "127.0.0.1:50051" }, libvirtUri: libvirt.uri });
  const rounds = Math.max(5, ROUNDS);
  try {
    // Without any hook: libvirtd has no hooks dir entry; the tap is made by hand beforehand (managed='no').
    await libvirt.start();
    await daemon.start();
    await libvirt.define("bench1");
    check((await daemon.ctl(["iface", "add", "bench1", "--network", "service", "--ip", "172.31.16.50"])).exitCode === 0, "iface add");
    const tap = /<target dev='([^']+)' managed='no'/.exec((await libvirt.virsh(["dumpxml", "--inactive", "bench1"])).stdout)![1]!;
    await daemon.stop();
    let hooked = false;
    const cycle = async () => {
      // The runbook's part, outside the clock: the tap must exist before the start (libvirt removes it at destroy).
      if (!hooked && (await lab.host.ip(["link", "show", tap], false)).exitCode !== 0) {
        await lab.host.ip(["tuntap", "add", "dev", tap, "mode", "tap", "one_queue", "vnet_hdr"]);
        await lab.host.ip(["link", "set", tap, "up"]);
      }
      const t0 = performance.now();
      await libvirt.virsh(["start", "bench1"]);
      const t1 = performance.now();
      await libvirt.virsh(["destroy", "bench1"]);
      return { start: t1 - t0, total: performance.now() - t0 };
    };
    await cycle(); // warm-up (qemu binary and firmware into the page cache)
    const none: Array<{ start: number; total: number }> = [];
    for (let i = 0; i < rounds; i++) none.push(await cycle());
    await lab.host.ip(["link", "del", tap], false);
    hooked = true;

    // With vmrouted's hook: installed, read by a restarted libvirtd; vmrouted running.
    check((await daemon.ctl(["install-hook", "--hooks-dir", libvirt.hooksDir, "--config", daemon.configPath])).exitCode === 0, "install-hook");
    await libvirt.stop();
    await libvirt.start();
    await daemon.start();
    await cycle();
    const withHook: Array<{ start: number; total: number }> = [];
    for (let i = 0; i < rounds; i++) withHook.push(await cycle());
    const noHook = { start: summarize(none.map((x) => x.start)), total: summarize(none.map((x) => x.total)) };
    const hook = { start: summarize(withHook.map((x) => x.start)), total: summarize(withHook.map((x) => x.total)) };
    return { noHook, hook, addedStartMs: Math.round(hook.start.median - noHook.start.median), addedTotalMs: Math.round(hook.total.median - noHook.total.median) };
  } finally {
    await daemon.cleanup();
  }
}

function chart(r: Results): void {
  const rows = SIZES.map((n) => `${n} ${r.converge[n]!.baseline.median / 1000} ${r.converge[n]!.vmrouted.median / 1000}`).join("\n");
  const script = `set terminal png size 640,400
set output '${join(OUT, "converge.png")}'
set title 'converge: empty host to N taps + routes + /32s at the route reflector'
set xlabel 'endpoints (N)'
set ylabel 'seconds (median of ${r.rounds})'
set logscale xy
set key top left
set grid
set xrange [70:1400]
set xtics (${SIZES.join(", ")})
plot '-' using 1:2 with linespoints lw 2 title 'runbook (bash, one VM at a time)', '-' using 1:3 with linespoints lw 2 title 'vmrouted'
${rows}
e
${rows}
e
`;
  execFileSync("gnuplot", [], { input: script });
}

main().catch((e: unknown) => {
  process.stderr.write(`bench: ${(e as Error).message}\n`);
  process.exit(1);
});
