import { stringify } from "yaml";
import type { Status } from "../daemon/status.js";
import type { EndpointStatus, NetworkStatus } from "../daemon/report.js";

// Human output that fits a terminal; json and yaml for scripts.

export type OutputFormat = "human" | "json" | "yaml";

export function table(headers: string[], rows: string[][]): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)));
  const line = (cells: string[]) => cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]!))).join("  ").trimEnd();
  return [line(headers), ...rows.map(line)].join("\n");
}

export function render(value: unknown, format: OutputFormat, human: (v: never) => string): string {
  if (format === "json") return JSON.stringify(value, null, 2);
  if (format === "yaml") return stringify(value).trimEnd();
  return human(value as never);
}

function bytes(n: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) (n /= 1024), i++;
  return `${i === 0 ? n : n.toFixed(1)}${units[i]}`;
}

export function networksTable(networks: NetworkStatus[]): string {
  return table(["NETWORK", "DEVICE", "GATEWAY", "KIND", "SOURCE", "STATE", "REASON"],
    networks.map((n) => [n.name, n.device, n.gateway, n.kind, n.source, n.state, n.reason]));
}

export function endpointsTable(endpoints: EndpointStatus[]): string {
  return table(["KIND", "OWNER", "NETWORK", "IP", "MAC", "DEVICE", "STATE", "BGP", "RX", "TX", "REASON"],
    endpoints.map((e) => [
      e.kind, e.domain ?? e.netns ?? "-", e.network, e.ip, e.mac, e.device, e.state,
      e.conditions.announced === undefined ? "-" : e.conditions.announced ? "announced" : "no",
      bytes(e.counters.rxBytes), bytes(e.counters.txBytes), e.reason,
    ]));
}

export function statusHuman(s: Status): string {
  const counts = { ready: 0, pending: 0, degraded: 0 };
  for (const e of s.endpoints) counts[e.state]++;
  const lines = [
    `node ${s.node.name} (${s.node.address})  gateway devices: ${s.dataplane.gatewayKind}${s.dataplane.gatewayKindReason ? ` (${s.dataplane.gatewayKindReason})` : ""}`,
    `bgp: ${s.bgp.state}${s.bgp.reason ? ` (${s.bgp.reason})` : ""}, ${s.bgp.announced} path(s) announced` +
      (s.bgp.peers.length ? `; peers: ${s.bgp.peers.map((p) => `${p.address} ${p.state}`).join(", ")}` : ""),
    `endpoints: ${counts.ready} ready, ${counts.pending} pending, ${counts.degraded} degraded`,
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
  interfaces: Array<{ network: string; ip: string; mac: string; tap: string; state: string; reason: string }>;
}

export function domainsTable(domains: DomainView[]): string {
  if (domains.length === 0) return "no domains with routed interfaces";
  return table(["DOMAIN", "LIFECYCLE", "NETWORK", "IP", "MAC", "TAP", "STATE", "REASON"],
    domains.flatMap((d) => d.interfaces.map((i) => [d.domain, d.lifecycle, i.network, i.ip, i.mac, i.tap, i.state, i.reason])));
}
