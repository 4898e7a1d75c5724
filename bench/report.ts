import { execFileSync } from "node:child_process";
import { readFile } from "node:fs/promises";
import { join } from "node:path";

// Bench results: shapes, summaries (median and spread), the markdown table and
// the chart. Every measure sits beside what it is compared with, from the same
// run: the floor (the same kernel work by hand in one batch, and one
// AddPathStream) and, up to 1,000 endpoints, the runbook vmrouted replaces.

export interface Summary { median: number; min: number; max: number; samples: number[] }

export function summarize(samples: number[]): Summary {
  const s = [...samples].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  const median = s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
  const r = (x: number) => Math.round(x * 10) / 10;
  return { median: r(median), min: r(s[0]!), max: r(s[s.length - 1]!), samples: samples.map(r) };
}

export interface SideBySide { floor: Summary; vmrouted: Summary; baseline?: Summary }

/** A process's resident memory now, in MiB (the footprint and learned-route parts report it). */
export async function rssMiB(pid: number): Promise<number> {
  return Number(/VmRSS:\s+(\d+)/.exec(await readFile(`/proc/${pid}/status`, "utf8"))?.[1] ?? 0) / 1024;
}

/** How the learned-route RSS is taken (bench/learned.ts waits this long after the install). */
export const LEARNED_SETTLE_SECONDS = 20;
const SETTLE_TEXT = `${LEARNED_SETTLE_SECONDS} s after the install`;

export interface Footprint { endpoints: number; idleSeconds: number; cpuPercentOfCore: number; rssMiB: number; statusMs?: Summary }

export interface Results {
  date: string;
  machine: { cpus: number; model: string; memoryGiB: number; kernel: string; node: string };
  rounds: number;
  converge: Record<number, SideBySide>;
  teardown: Record<number, SideBySide>;
  /** The same for N taps with an ip6 too: until the reflector has N /32s and N /128s (or none). */
  dual?: { rounds: number; converge: Record<number, SideBySide>; teardown: Record<number, SideBySide> };
  repair?: { endpoints: number; ms: Summary };
  /** From `apply -f` of N taps to dnsmasq confirming it read a hosts file with all N (it answers each from then on). */
  dhcp?: Record<number, Summary>;
  hook?: { noHook: Summary; hook: Summary; addedMs: number; rounds: number };
  footprint: Footprint[];
  learned?: {
    paths: number; localEndpoints: number;
    install: { vmrouted: Summary; bgpOnly: Summary; floorBatch: Summary };
    withdraw: { vmrouted: Summary; bgpOnly: Summary; floorBatch: Summary };
    /** Right after the last route is in (the burst's garbage not yet collected), and once settled. */
    rssPeakMiB?: number;
    rssMiB: number;
  };
}

const t = (ms: number) => (ms >= 1000 ? `${(ms / 1000).toFixed(2)} s` : `${Math.round(ms)} ms`);
const spread = (s: Summary) => `${t(s.median)} (${t(s.min)}–${t(s.max)})`;
const met = (ok: boolean) => (ok ? "met" : "**missed**");

export function markdown(r: Results): string {
  const rows: string[] = [];
  for (const [what, table] of [["converge", r.converge], ["teardown", r.teardown]] as const)
    for (const [key, p] of Object.entries(table)) {
      const n = Number(key);
      const ratio = p.vmrouted.median / p.floor.median;
      const over = p.vmrouted.median - p.floor.median;
      const goal = n >= 10000 ? `≤ 1.5 × floor: ${met(ratio <= 1.5)}` : n === 1000 ? `≤ floor + 300 ms: ${met(over <= 300)}` : "";
      rows.push(`| ${what} | ${n} | ${spread(p.floor)} | ${spread(p.vmrouted)} | ${ratio.toFixed(2)} (${over >= 0 ? "+" : ""}${t(over)}) | ` +
        `${p.baseline ? `${spread(p.baseline)} (${(p.baseline.median / p.vmrouted.median).toFixed(1)}x slower)` : "–"} | ${goal} |`);
    }
  // Its own rounds when run on its own (--only dual) with other rounds than the rest.
  const dualRounds = r.dual && r.dual.rounds !== r.rounds ? `, ${r.dual.rounds} rounds` : "";
  for (const [what, table] of [["converge", r.dual?.converge ?? {}], ["teardown", r.dual?.teardown ?? {}]] as const)
    for (const [key, p] of Object.entries(table)) {
      const n = Number(key);
      const ratio = p.vmrouted.median / p.floor.median;
      const over = p.vmrouted.median - p.floor.median;
      rows.push(`| ${what}, dual stack (a /32 and a /128 each${dualRounds}) | ${n} | ${spread(p.floor)} | ${spread(p.vmrouted)} | ${ratio.toFixed(2)} (${over >= 0 ? "+" : ""}${t(over)}) | – | ` +
        `${n === 1000 ? `≤ floor + 300 ms: ${met(over <= 300)}` : ""} |`);
    }
  for (const [n, s] of Object.entries(r.dhcp ?? {}))
    rows.push(`| DHCP follows: apply -f → dnsmasq has read all N static leases (its own "read" line) | ${n} | – | ${spread(s)} | – | – | against converge ${r.converge[Number(n)] ? t(r.converge[Number(n)]!.vmrouted.median) : "–"} |`);
  if (r.repair) rows.push(`| repair: a /32 deleted by hand, back by its event (kernel event to kernel event, ${r.repair.ms.samples.length} samples) | ${r.repair.endpoints} | – | ${spread(r.repair.ms)} | – | – | < 100 ms: ${met(r.repair.ms.median < 100)} |`);
  if (r.hook)
    rows.push(`| \`virsh start\`, one routed interface (${r.hook.rounds} each, interleaved) | 1 | ${spread(r.hook.noHook)} (no hook) | ${spread(r.hook.hook)} | ` +
      `${(r.hook.hook.median / r.hook.noHook.median).toFixed(2)} (+${r.hook.addedMs} ms) | – | adds ≤ 50 ms: ${met(r.hook.addedMs <= 50)} |`);
  for (const f of r.footprint) {
    const limits = f.endpoints >= 10000 ? { cpu: 2, mib: 250 } : { cpu: 1, mib: 100 };
    const mb = f.rssMiB * 1.048576;
    rows.push(`| idle ${f.idleSeconds} s: CPU, RSS | ${f.endpoints} | – | ${f.cpuPercentOfCore}% of a core, ${f.rssMiB} MiB | – | – | ` +
      `< ${limits.cpu}% and < ${limits.mib} MB: ${met(f.cpuPercentOfCore < limits.cpu && mb < limits.mib)} |`);
    if (f.statusMs) rows.push(`| \`GET /v1/status\` | ${f.endpoints} | – | ${spread(f.statusMs)} | – | – | ${f.endpoints >= 10000 ? `< 300 ms: ${met(f.statusMs.median < 300)}` : ""} |`);
  }
  if (r.learned) {
    const l = r.learned;
    for (const [what, m] of [["learned routes installed", l.install], ["learned routes withdrawn", l.withdraw]] as const) {
      const floor = m.bgpOnly.median + m.floorBatch.median;
      rows.push(`| ${what} (injected at the reflector) | ${l.paths} | ${t(floor)} (BGP ${t(m.bgpOnly.median)} + one ip -batch ${t(m.floorBatch.median)}) | ` +
        `${spread(m.vmrouted)} | ${(m.vmrouted.median / floor).toFixed(2)} | – | ≤ 1.5 × floor: ${met(m.vmrouted.median <= 1.5 * floor)} |`);
    }
    rows.push(`| RSS with ${l.localEndpoints} endpoints and ${l.paths} learned routes, ${SETTLE_TEXT} | – | – | ${l.rssMiB} MiB` +
      `${l.rssPeakMiB !== undefined ? ` (${l.rssPeakMiB} MiB right after the install)` : ""} | – | – | < 250 MB: ${met(l.rssMiB * 1.048576 < 250)} |`);
  }
  const m = r.machine;
  return [
    `Measured ${r.date.slice(0, 10)} on ${m.cpus} × ${m.model}, ${m.memoryGiB} GiB, Linux ${m.kernel}, Node ${m.node}; ${r.rounds} rounds, median (min–max).`,
    "The floor is the same kernel work written by hand and run as one `ip -batch` (and one `sysctl -p`), plus one AddPathStream",
    "from a client already connected to gobgpd, until the route reflector (BIRD) has every path; the baseline is the runbook vmrouted",
    "replaces (bench/runbook.sh, one VM at a time), measured up to 1,000 endpoints.",
    "",
    "| measure | N | floor | vmrouted | vmrouted ÷ floor | baseline (runbook) | goal |",
    "| --- | --- | --- | --- | --- | --- | --- |",
    ...rows,
    "",
  ].join("\n");
}

/** converge.png: converge time against N, log-log, vmrouted beside the floor and the runbook. */
export function chart(r: Results, outDir: string): void {
  const sizes = Object.keys(r.converge).map(Number).sort((a, b) => a - b);
  if (sizes.length === 0) return;
  const line = (pick: (p: SideBySide) => Summary | undefined) =>
    sizes.flatMap((n) => { const s = pick(r.converge[n]!); return s ? [`${n} ${s.median / 1000}`] : []; }).join("\n") + "\ne\n";
  const script = `set terminal png size 720,440
set output '${join(outDir, "converge.png")}'
set title 'converge: an apply of N endpoints until every /32 is at the route reflector'
set xlabel 'endpoints (N)'
set ylabel 'seconds (median of ${r.rounds})'
set logscale xy
set key top left
set grid
set xrange [${sizes[0]! * 0.7}:${sizes[sizes.length - 1]! * 1.4}]
set xtics (${sizes.join(", ")})
plot '-' with linespoints lw 2 title 'vmrouted', '-' with linespoints lw 2 dt 2 title 'floor (one ip -batch + one AddPathStream)', '-' with linespoints lw 2 title 'runbook (one VM at a time)'
${line((p) => p.vmrouted)}${line((p) => p.floor)}${line((p) => p.baseline)}`;
  execFileSync("gnuplot", [], { input: script });
}
