import { resolveNetworkSet } from "../model/resolve.js";
import type { NetworkInput } from "../model/spec.js";
import type { DomainRecord } from "../libvirt/domains.js";
import { DesiredResolver } from "../state/resolve.js";
import type { Desired } from "../state/desired.js";
import type { Config } from "./schema.js";

// Pure: what a restart with another config file would change, against the
// state the daemon holds now (`vmroutectl config check`). Networks added,
// removed or changed; settings that differ; and every endpoint or domain
// interface that would be orphaned (held, degraded) because its network
// would be gone or it would no longer fit it. Orphans make the check fail.

export interface ConfigImpact {
  networks: { added: string[]; removed: string[]; changed: Array<{ name: string; what: string }> };
  /** Other settings that differ, as dotted keys with both values. */
  settings: Array<{ key: string; from: unknown; to: unknown }>;
  /** What would no longer resolve (and would be held as found, degraded), one line each. */
  orphaned: string[];
}

export function configImpact(current: Config, next: Config, state: Desired): ConfigImpact {
  const names = (n: Record<string, NetworkInput>) => new Set(Object.keys(n));
  const before = names(current.networks), after = names(next.networks);
  const changed: ConfigImpact["networks"]["changed"] = [];
  for (const name of after) {
    if (!before.has(name)) continue;
    const what = differences(current.networks[name], next.networks[name], `networks.${name}`).map((d) => `${d.key}: ${show(d.from)} → ${show(d.to)}`);
    if (what.length) changed.push({ name, what: what.join(", ") });
  }
  const { networks: _a, ...restCurrent } = current;
  const { networks: _b, ...restNext } = next;
  return {
    networks: { added: [...after].filter((n) => !before.has(n)).sort(), removed: [...before].filter((n) => !after.has(n)).sort(), changed },
    settings: differences(restCurrent, restNext, ""),
    orphaned: orphans(current, next, state),
  };
}

function orphans(current: Config, next: Config, state: Desired): string[] {
  const problems = (config: Config) =>
    new DesiredResolver({
      configNetworks: config.networks, nodeAddress: config.node.address, ...(config.node.address6 ? { nodeAddress6: config.node.address6 } : {}),
    }).resolve(state).problems;
  const already = new Set(problems(current));
  const result = problems(next).filter((p) => !already.has(p));
  // Domains that are not running are not served now, but would be refused when they start.
  const set = resolveNetworkSet(next.networks, state.runtime.networks);
  const known = new Set(set.ok ? set.value.networks.map((n) => n.name) : []);
  for (const d of [...state.domains.values()].sort((a, b) => a.name.localeCompare(b.name)) as DomainRecord[])
    for (const i of d.interfaces)
      if (d.lifecycle === "defined" && !known.has(i.network)) result.push(`domain '${d.name}' ${i.ip}: unknown network '${i.network}' (when it starts)`);
  return result;
}

function differences(a: unknown, b: unknown, path: string): ConfigImpact["settings"] {
  const isObject = (v: unknown): v is Record<string, unknown> => typeof v === "object" && v !== null && !Array.isArray(v);
  if (isObject(a) && isObject(b)) {
    const keys = [...new Set([...Object.keys(a), ...Object.keys(b)])].sort();
    return keys.flatMap((k) => differences(a[k], b[k], path ? `${path}.${k}` : k));
  }
  return JSON.stringify(a) === JSON.stringify(b) ? [] : [{ key: path, from: a, to: b }];
}

const show = (v: unknown) => (v === undefined ? "(unset)" : JSON.stringify(v));

export function impactHuman(i: ConfigImpact): string {
  const lines: string[] = [];
  for (const n of i.networks.added) lines.push(`network ${n}: added`);
  for (const n of i.networks.removed) lines.push(`network ${n}: removed`);
  for (const c of i.networks.changed) lines.push(`network ${c.name}: ${c.what}`);
  for (const s of i.settings) lines.push(`${s.key}: ${show(s.from)} → ${show(s.to)}`);
  for (const o of i.orphaned) lines.push(`orphaned: ${o}`);
  if (lines.length === 0) lines.push("no change");
  else if (i.orphaned.length) lines.push(`${i.orphaned.length} endpoint(s) would be orphaned: kept as found and degraded until their network is back or they are removed`);
  return lines.join("\n");
}
