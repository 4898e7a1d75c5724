// Bench results: shapes, summaries (median and spread) and the markdown table.

export type Sample = number;
export interface Summary { median: number; min: number; max: number; samples: number[] }
interface Pair { baseline: Summary; vmrouted: Summary }

export interface Results {
  date: string;
  machine: { cpus: number; model: string; memoryGiB: number; kernel: string; node: string };
  rounds: number;
  converge: Record<number, Pair>;
  teardown: Record<number, Pair>;
  repair: Record<number, { vmrouted: Summary }>;
  hook?: { noHook: { start: Summary; total: Summary }; hook: { start: Summary; total: Summary }; addedStartMs: number; addedTotalMs: number };
  footprint?: { endpoints: number; idleSeconds: number; rssMiB: number; daemonRssMiB: number; cpuPercentOfCore: number };
}

export function summarize(samples: number[]): Summary {
  const s = [...samples].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  const median = s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
  const r = (x: number) => Math.round(x * 10) / 10;
  return { median: r(median), min: r(s[0]!), max: r(s[s.length - 1]!), samples: samples.map(r) };
}

const t = (ms: number) => (ms >= 1000 ? `${(ms / 1000).toFixed(2)} s` : `${Math.round(ms)} ms`);
const spread = (s: Summary) => `${t(s.median)} (${t(s.min)}–${t(s.max)})`;
const met = (ok: boolean) => (ok ? "met" : "**missed**");

export function markdown(r: Results): string {
  const rows: string[] = [];
  for (const [what, table, goal] of [
    ["converge", r.converge, (n: number, p: Pair) => (n === 1000 ? `≥15x and <1 s: ${met(p.baseline.median / p.vmrouted.median >= 15 && p.vmrouted.median < 1000)}` : "")],
    ["teardown", r.teardown, (n: number, p: Pair) => (n === 1000 ? `≥20x and <1 s: ${met(p.baseline.median / p.vmrouted.median >= 20 && p.vmrouted.median < 1000)}` : "")],
  ] as const) {
    for (const [n, p] of Object.entries(table)) {
      rows.push(`| ${what} | ${n} | ${spread(p.baseline)} | ${spread(p.vmrouted)} | ${(p.vmrouted.median / p.baseline.median).toFixed(3)} | ${(p.baseline.median / p.vmrouted.median).toFixed(1)}x | ${goal(Number(n), p)} |`);
    }
  }
  for (const [n, p] of Object.entries(r.repair))
    rows.push(`| repair (one /32 deleted by hand) | ${n} | manual | ${spread(p.vmrouted)} | – | – | <1 s: ${met(p.vmrouted.median < 1000)} |`);
  if (r.hook)
    rows.push(`| \`virsh start\` (1 routed interface) | 1 | ${spread(r.hook.noHook.start)} (no hook) | ${spread(r.hook.hook.start)} | ${(r.hook.hook.start.median / r.hook.noHook.start.median).toFixed(2)} | +${r.hook.addedStartMs} ms | adds <50 ms: ${met(r.hook.addedStartMs < 50)} |`,
      `| \`virsh start\` + \`destroy\` | 1 | ${spread(r.hook.noHook.total)} (no hook) | ${spread(r.hook.hook.total)} | ${(r.hook.hook.total.median / r.hook.noHook.total.median).toFixed(2)} | +${r.hook.addedTotalMs} ms | |`);
  if (r.footprint)
    rows.push(`| footprint, idle ${r.footprint.idleSeconds} s | ${r.footprint.endpoints} | – | ${r.footprint.rssMiB} MiB RSS (node ${r.footprint.daemonRssMiB} MiB), ${r.footprint.cpuPercentOfCore}% of a core | – | – | <100 MB and <1%: ${met(r.footprint.rssMiB * 1.048576 < 100 && r.footprint.cpuPercentOfCore < 1)} |`);
  const m = r.machine;
  return [
    `Measured ${r.date.slice(0, 10)} on ${m.cpus} × ${m.model}, ${m.memoryGiB} GiB, Linux ${m.kernel}, Node ${m.node}; ${r.rounds} rounds, median (min–max).`,
    "",
    "| measure | N | baseline (runbook) | vmrouted | vmrouted/baseline | speed-up | goal |",
    "| --- | --- | --- | --- | --- | --- | --- |",
    ...rows,
    "",
  ].join("\n");
}
