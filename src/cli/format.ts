import type { StartingStatus, Status } from "../daemon/status.js";
import type { EndpointStatus, LearnedStatus, NetworkStatus } from "../daemon/report.js";
import type { Finding } from "../doctor/diagnose.js";

// Human output that fits a terminal; json and yaml for scripts.

export type OutputFormat = "human" | "json" | "yaml";

export function table(headers: string[], rows: string[][]): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)));
  const line = (cells: string[]) => cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]!))).join("  ").trimEnd();
  return [line(headers), ...rows.map(line)].join("\n");
}

/** yaml is loaded only when asked for: every command pays for what it imports (the CLI starts in the hook's path too). */
export async function render(value: unknown, format: OutputFormat, human: (v: never) => string): Promise<string> {
  if (format === "json") return JSON.stringify(value, null, 2);
  if (format === "yaml") return (await import("yaml")).stringify(value).trimEnd();
  return human(value as never);
}

function bytes(n: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) (n /= 1024), i++;
  return `${i === 0 ? n : n.toFixed(1)}${units[i]}`;
}

/** A daemon that predates natOutgoing in status reports none: "-". */
export function networksTable(networks: Array<NetworkStatus & { natOutgoing?: boolean }>): string {
  const nat = (n: { natOutgoing?: boolean }) => (n.natOutgoing === undefined ? "-" : n.natOutgoing ? "yes" : "no");
  return table(["NETWORK", "DEVICE", "GATEWAY", "KIND", "SOURCE", "NAT", "STATE", "REASON"],
    networks.map((n) => [n.name, n.device, n.prefix6 !== undefined ? `${n.gateway} ${n.prefix6}` : n.gateway, n.kind, n.source, nat(n), n.state, n.reason]));
}

/** Conditions in a few letters: "ok" when all hold, otherwise the ones that do not. */
function conditionsCell(e: EndpointStatus): string {
  const c = e.conditions;
  const failing = [
    ["device", c.device], ["up", c.up], ["route", c.route], ["neigh", c.neighbour], ["sysctl", c.sysctls],
    ...(c.gateway6 !== undefined ? [["gw6", c.gateway6] as const] : []),
    ...(c.inner !== undefined ? [["inner", c.inner] as const] : []), ...(c.announced !== undefined ? [["bgp", c.announced] as const] : []),
  ].filter(([, ok]) => !ok).map(([name]) => `!${name}`);
  return failing.length ? failing.join(",") : "ok";
}

export function endpointsTable(endpoints: EndpointStatus[]): string {
  // The migration column appears while a VM moves: a target waits for its guest by design, not by fault.
  const migrating = endpoints.some((e) => e.migration !== undefined && e.migration !== "normal");
  const rows = endpoints.map((e) => {
    const k = e.counters;
    return [
      e.kind, e.domain ?? e.netns ?? "-", e.network, e.ip6 !== undefined ? `${e.ip} ${e.ip6}` : e.ip, e.mac, e.device, e.state, ...(migrating ? [e.migration ?? "-"] : []),
      conditionsCell(e), e.conditions.carrier ? "yes" : "no",
      `${bytes(k.rxBytes)}/${k.rxPackets}`, `${bytes(k.txBytes)}/${k.txPackets}`, `${k.rxErrors + k.txErrors}/${k.rxDropped + k.txDropped}`,
    ];
  });
  const reasons = endpoints.filter((e) => e.reason).map((e) => `  ${e.id}: ${e.reason}`);
  return [
    table(["KIND", "OWNER", "NETWORK", "IP", "MAC", "DEVICE", "STATE", ...(migrating ? ["MIGRATION"] : []),
      "CONDITIONS", "CARRIER", "RX B/PKT", "TX B/PKT", "ERR/DROP"], rows),
    ...(reasons.length ? ["", "why not ready:", ...reasons] : []),
  ].join("\n");
}

function duration(seconds: number): string {
  const d = Math.floor(seconds / 86400), h = Math.floor((seconds % 86400) / 3600), m = Math.floor((seconds % 3600) / 60), s = seconds % 60;
  return d ? `${d}d${h}h` : h ? `${h}h${m}m` : m ? `${m}m${s}s` : `${s}s`;
}

export function routesTable(routes: LearnedStatus[]): string {
  if (routes.length === 0) return "no routes learned from other hosts";
  const rows = routes.map((r) => [r.prefix, r.nextHop, String(r.metric), r.elevated ? "migration" : "-", r.state, r.reason]);
  return table(["PREFIX", "VIA", "METRIC", "PREFERRED", "STATE", "REASON"], rows);
}

export function rejectedTable(paths: Array<{ prefix: string; nextHop: string; reason: string }>): string {
  if (paths.length === 0) return "no learned path refused";
  return table(["PREFIX", "NEXT HOP", "REASON"], paths.map((p) => [p.prefix, p.nextHop, p.reason]));
}

export function statusHuman(s: Status | StartingStatus): string {
  if (s.state === "starting") return `vmrouted ${s.version}  node ${s.node.name} (${s.node.address})  starting: ${s.reason}`;
  const counts = { ready: 0, pending: 0, degraded: 0 };
  for (const e of s.endpoints) counts[e.state]++;
  const peers = s.bgp.peers.map((p) => `  peer ${p.address}  ${p.state}` +
    (p.uptimeSeconds !== undefined ? `  up ${duration(p.uptimeSeconds)}` : "") +
    (p.prefixesSent !== undefined ? `  ${p.prefixesSent} prefixes sent` : ""));
  const lines = [
    `vmrouted ${s.version}  node ${s.node.name} (${s.node.address})  gateway devices: ${s.dataplane.gatewayKind}${s.dataplane.gatewayKindReason ? ` (${s.dataplane.gatewayKindReason})` : ""}`,
    s.bgp.enabled ? `bgp: gobgpd ${s.bgp.state}${s.bgp.reason ? ` (${s.bgp.reason})` : ""}, ${s.bgp.announced} path(s) announced` +
      (s.bgp.importer ? `, ${s.bgp.learned ?? 0} route(s) learned (import ${s.bgp.importer.state}${s.bgp.importer.reason ? `: ${s.bgp.importer.reason}` : ""})` : "")
      : "bgp: disabled (no bgp section in the config)",
    ...peers,
    `endpoints: ${counts.ready} ready, ${counts.pending} pending, ${counts.degraded} degraded`,
    ...(s.storage.state === "failing" ? [`stateDir: writes failing since ${s.storage.since} (${s.storage.reason}); retrying`] : []),
    ...(s.reconcile.failing ? [`reconcile: ${s.reconcile.failing} pass(es) failed in a row (${s.reconcile.lastError?.message}); retrying`] : []),
    ...s.problems.map((p) => `held as found: ${p}`),
    "",
    s.networks.length ? networksTable(s.networks) : "no networks",
    "",
    s.endpoints.length ? endpointsTable(s.endpoints) : "no endpoints",
  ];
  return lines.join("\n");
}

export interface DomainView {
  domain: string;
  lifecycle: string;
  migration?: string;
  interfaces: Array<{ network: string; ip: string; mac: string; tap: string; state: string; reason: string }>;
}

export function domainsTable(domains: DomainView[]): string {
  if (domains.length === 0) return "no domains with routed interfaces";
  return table(["DOMAIN", "LIFECYCLE", "NETWORK", "IP", "MAC", "TAP", "STATE", "REASON"],
    domains.flatMap((d) => d.interfaces.map((i) => [d.domain, d.migration ? `${d.lifecycle} (migration: ${d.migration})` : d.lifecycle, i.network, i.ip, i.mac, i.tap, i.state, i.reason])));
}

const MARK = { ok: "ok  ", problem: "FAIL", skipped: "skip" } as const;

export function doctorHuman(findings: Finding[]): string {
  const problems = findings.filter((f) => f.result === "problem").length;
  const width = Math.max(...findings.map((f) => f.check.length));
  const lines = findings.flatMap((f) => [
    `${MARK[f.result]}  ${f.check.padEnd(width)}  ${f.message}`,
    ...(f.fix ? [`      ${" ".repeat(width)}  fix: ${f.fix}`] : []),
  ]);
  return [...lines, "", problems ? `${problems} problem(s) found` : "no problems found"].join("\n");
}
