import { formatIpv4, parseIpv4, parsePrefix, type Prefix } from "../model/ipv4.js";
import type { DesiredState } from "../model/types.js";

// Egress NAT for networks with natOutgoing (Calico's natOutgoing): vmrouted's
// own nftables table `ip vmrouted`, the only table it ever creates, changes or
// deletes. Pure: desired table from desired state, observed table from
// `nft -j list table ip vmrouted`, and the `nft -f` script from one to the
// other. nft.ts runs the commands.
//
//   table ip vmrouted {
//     set nat_prefixes { type ipv4_addr; flags interval; elements = { <NAT networks> } }
//     set all_prefixes { type ipv4_addr; flags interval; elements = { <every workload prefix> } }
//     chain postrouting {
//       type nat hook postrouting priority 100; policy accept;
//       ip saddr @nat_prefixes ip daddr != @all_prefixes masquerade fully-random
//     }
//   }
//
// `flags interval` because the elements are prefixes (nft refuses a prefix in
// a plain set). No auto-merge: the sets are written as a minimal cover (a
// prefix inside another is dropped; nft refuses overlapping intervals without
// auto-merge), which nft lists back exactly as written, so the observed table
// compares equal to the desired one without interval arithmetic.
// `fully-random` alone is iptables' `--random-fully` (NF_NAT_RANGE_PROTO_RANDOM_FULLY);
// adding `random` would set NF_NAT_RANGE_PROTO_RANDOM too, which older kernels
// let win (a port offset hashed from the addresses, not fully random).

export const NAT_FAMILY = "ip";
export const NAT_TABLE = "vmrouted";
export const NAT_SET = "nat_prefixes";
export const ALL_SET = "all_prefixes";
export const NAT_CHAIN = "postrouting";

/** One set of the table. */
export interface NatSet {
  name: string;
  /** "ipv4_addr"; "" when nft reports none. */
  type: string;
  /** Sorted ("interval", ...). */
  flags: string[];
  /** Canonical elements, sorted by address: "a.b.c.d/len"; anything else (a range "a-b", an element with attributes) as written. */
  elements: string[];
  /** Every other attribute of the set (timeout, size, policy, comment, auto-merge...), canonical JSON; "" when none. */
  extra: string;
}

export interface NatRule {
  /** The rule's expressions as `nft -j` lists them, canonical JSON (the comparison key). */
  expr: string;
  /** nft syntax, on desired rules only (what the script writes). */
  text?: string;
}

export interface NatChain {
  name: string;
  /** Base chain attributes, as `nft -j` lists them; absent on a regular chain. */
  type?: string;
  hook?: string;
  prio?: number;
  policy?: string;
  /** Every other attribute of the chain (dev, comment...), canonical JSON; "" when none. */
  extra: string;
  /** In order. */
  rules: NatRule[];
}

/** The table `ip vmrouted`, normalized so that two equal tables compare equal field by field. */
export interface NatTable {
  /** Attributes of the table itself (flags such as dormant, comment), canonical JSON; "" when none. */
  extra: string;
  /** Sorted by name. */
  sets: NatSet[];
  /** Sorted by name. */
  chains: NatChain[];
  /** Any other object in the table (maps, counters, flowtables...), canonical JSON, sorted: never desired. */
  other: string[];
}

// ---------------------------------------------------------------------------
// Desired

const MASQUERADE_RULE: NatRule = {
  text: `ip saddr @${NAT_SET} ip daddr != @${ALL_SET} masquerade fully-random`,
  expr: canonicalJson([
    { match: { op: "==", left: { payload: { protocol: "ip", field: "saddr" } }, right: `@${NAT_SET}` } },
    { match: { op: "!=", left: { payload: { protocol: "ip", field: "daddr" } }, right: `@${ALL_SET}` } },
    { masquerade: { flags: ["fully-random"] } },
  ]),
};

/**
 * The table vmrouted wants: undefined (no table at all) when no network has
 * natOutgoing. The set of every workload prefix holds every network's prefix
 * and every learned route's prefix (other hosts' workloads).
 */
export function desiredNat(desired: DesiredState): NatTable | undefined {
  const networkPrefix = (n: { gateway: string; prefixLength: number }) => parsePrefix(`${n.gateway}/${n.prefixLength}`);
  const nat = desired.networks.filter((n) => n.natOutgoing).map(networkPrefix);
  if (nat.length === 0) return undefined;
  const all = [...desired.networks.map(networkPrefix), ...desired.learned.map((l) => parsePrefix(l.prefix))];
  return {
    extra: "",
    sets: [prefixSet(ALL_SET, all), prefixSet(NAT_SET, nat)],
    chains: [{ name: NAT_CHAIN, type: "nat", hook: "postrouting", prio: 100, policy: "accept", extra: "", rules: [MASQUERADE_RULE] }],
    other: [],
  };
}

function prefixSet(name: string, prefixes: Array<Prefix | undefined>): NatSet {
  return { name, type: "ipv4_addr", flags: ["interval"], elements: minimalCover(prefixes.filter((p): p is Prefix => p !== undefined)), extra: "" };
}

/**
 * The prefixes as canonical "base/len" strings, sorted by address, without
 * duplicates and without any prefix inside another (two prefixes either nest
 * or are disjoint: after sorting by base, shorter first, a prefix is covered
 * iff the last one kept covers it).
 */
export function minimalCover(prefixes: Prefix[]): string[] {
  const sorted = [...prefixes].sort((a, b) => a.base - b.base || a.length - b.length);
  const kept: Prefix[] = [];
  for (const p of sorted) {
    const last = kept[kept.length - 1];
    if (last && p.base >= last.base && p.base + p.size <= last.base + last.size) continue;
    kept.push(p);
  }
  return kept.map((p) => `${formatIpv4(p.base)}/${p.length}`);
}

// ---------------------------------------------------------------------------
// Observed

type Json = Record<string, unknown>;

/**
 * The table from `nft -j list table ip vmrouted` output (the parsed JSON).
 * Undefined when the output holds no table `ip vmrouted`.
 */
export function parseNftTable(json: unknown): NatTable | undefined {
  const items = (json as { nftables?: unknown } | null | undefined)?.nftables;
  if (!Array.isArray(items)) return undefined;
  const ours = (o: Json, tableKey: "name" | "table") => o.family === NAT_FAMILY && o[tableKey] === NAT_TABLE;
  let table: NatTable | undefined;
  const sets: NatSet[] = [];
  const chains = new Map<string, NatChain>();
  const rules: Array<{ chain: string; rule: NatRule }> = [];
  const other: string[] = [];
  for (const item of items as Json[]) {
    const [kind, value] = Object.entries(item ?? {})[0] ?? [];
    if (!kind || typeof value !== "object" || value === null) continue;
    const o = value as Json;
    if (kind === "metainfo") continue;
    if (kind === "table") {
      if (ours(o, "name")) table = { extra: extraOf(o, ["family", "name", "handle"]), sets: [], chains: [], other: [] };
    } else if (kind === "set") {
      if (ours(o, "table")) sets.push(parseSet(o));
    } else if (kind === "chain") {
      if (ours(o, "table")) chains.set(String(o.name), parseChain(o));
    } else if (kind === "rule") {
      if (ours(o, "table")) {
        const extra = extraOf(o, ["family", "table", "chain", "handle", "expr", "index"]);
        // A rule's comment (or anything else nft lists beside its expressions) is part of what it is.
        rules.push({ chain: String(o.chain), rule: { expr: canonicalJson(extra ? { expr: o.expr, extra } : o.expr ?? []) } });
      }
    } else if (o.table === NAT_TABLE && o.family === NAT_FAMILY) {
      other.push(canonicalJson({ [kind]: withoutKeys(o, ["handle"]) }));
    }
  }
  if (!table) return undefined;
  for (const { chain, rule } of rules) {
    // nft lists a chain before its rules; a rule of an unlisted chain still counts.
    if (!chains.has(chain)) chains.set(chain, { name: chain, extra: "", rules: [] });
    chains.get(chain)!.rules.push(rule);
  }
  table.sets = sets.sort((a, b) => compareText(a.name, b.name));
  table.chains = [...chains.values()].sort((a, b) => compareText(a.name, b.name));
  table.other = other.sort(compareText);
  return table;
}

function parseSet(o: Json): NatSet {
  const elements = (Array.isArray(o.elem) ? o.elem : []).map(canonicalElement);
  return {
    name: String(o.name),
    type: typeof o.type === "string" ? o.type : o.type === undefined ? "" : canonicalJson(o.type),
    flags: asList(o.flags).map(String).sort(compareText),
    elements: sortElements([...new Set(elements)]),
    extra: extraOf(o, ["family", "name", "table", "handle", "type", "flags", "elem"]),
  };
}

function parseChain(o: Json): NatChain {
  return {
    name: String(o.name),
    ...(typeof o.type === "string" ? { type: o.type } : {}),
    ...(typeof o.hook === "string" ? { hook: o.hook } : {}),
    ...(typeof o.prio === "number" ? { prio: o.prio } : {}),
    ...(typeof o.policy === "string" ? { policy: o.policy } : {}),
    extra: extraOf(o, ["family", "table", "name", "handle", "type", "hook", "prio", "policy"]),
    rules: [],
  };
}

/** "a.b.c.d" and {prefix: {addr, len}} as "base/len"; a range as "a-b"; anything else as canonical JSON. */
function canonicalElement(e: unknown): string {
  if (typeof e === "string" && parseIpv4(e) !== undefined) return `${e}/32`;
  const prefix = (e as { prefix?: { addr?: unknown; len?: unknown } } | null)?.prefix;
  if (prefix && typeof prefix.addr === "string" && typeof prefix.len === "number") {
    const p = parsePrefix(`${prefix.addr}/${prefix.len}`);
    if (p) return `${formatIpv4(p.base)}/${p.length}`;
  }
  const range = (e as { range?: unknown } | null)?.range;
  if (Array.isArray(range) && range.length === 2 && range.every((a) => typeof a === "string")) return `${range[0]}-${range[1]}`;
  return canonicalJson(e);
}

function sortElements(elements: string[]): string[] {
  // Prefixes and ranges by first address, anything else after them.
  const key = (e: string) => {
    const p = parsePrefix(e);
    if (p) return [0, p.base, p.length];
    const start = parseIpv4(e.split("-")[0]!);
    return start !== undefined ? [0, start, 33] : [1, 0, 0];
  };
  return elements.sort((a, b) => {
    const [ka, kb] = [key(a), key(b)];
    return ka[0]! - kb[0]! || ka[1]! - kb[1]! || ka[2]! - kb[2]! || compareText(a, b);
  });
}

// ---------------------------------------------------------------------------
// Compare and plan

/**
 * What differs between the desired and the observed table, one line each
 * (for logs, status and doctor); empty when they are the same.
 */
export function natDifferences(desired: NatTable | undefined, observed: NatTable | undefined): string[] {
  const t = `table ${NAT_FAMILY} ${NAT_TABLE}`;
  if (!desired && !observed) return [];
  if (!desired) return [`${t} exists but no network has natOutgoing`];
  if (!observed) return [`${t} is missing`];
  const out: string[] = [];
  if (desired.extra !== observed.extra) out.push(`${t}: attributes ${observed.extra || "none"}, want ${desired.extra || "none"}`);
  for (const [name, want, have] of pairs(desired.sets, observed.sets)) {
    if (!have) out.push(`${t}: set ${name} is missing`);
    else if (!want) out.push(`${t}: unexpected set ${name}`);
    else {
      if (want.type !== have.type || want.extra !== have.extra || want.flags.join(",") !== have.flags.join(","))
        out.push(`${t}: set ${name} is declared differently`);
      const haveSet = new Set(have.elements);
      const wantSet = new Set(want.elements);
      const missing = want.elements.filter((e) => !haveSet.has(e));
      const extra = have.elements.filter((e) => !wantSet.has(e));
      if (missing.length) out.push(`${t}: set ${name} lacks ${listSome(missing)}`);
      if (extra.length) out.push(`${t}: set ${name} has unexpected ${listSome(extra)}`);
    }
  }
  for (const [name, want, have] of pairs(desired.chains, observed.chains)) {
    if (!have) out.push(`${t}: chain ${name} is missing`);
    else if (!want) out.push(`${t}: unexpected chain ${name}`);
    else {
      if (want.type !== have.type || want.hook !== have.hook || want.prio !== have.prio || want.policy !== have.policy || want.extra !== have.extra)
        out.push(`${t}: chain ${name} is declared differently`);
      const same = want.rules.length === have.rules.length && want.rules.every((r, i) => r.expr === have.rules[i]!.expr);
      if (!same) out.push(`${t}: chain ${name} has ${have.rules.length} rule(s) that differ from the ${want.rules.length} wanted`);
    }
  }
  const wantOther = new Set(desired.other);
  for (const o of observed.other) if (!wantOther.has(o)) out.push(`${t}: unexpected ${o}`);
  const haveOther = new Set(observed.other);
  for (const o of desired.other) if (!haveOther.has(o)) out.push(`${t}: lacks ${o}`);
  return out;
}

/**
 * The `nft -f` script that makes the kernel's table exactly the desired one,
 * in one transaction (nft -f commits the whole file atomically or nothing):
 * create the table if absent, delete it, define it whole. Packets never see a
 * half-written table, and whatever drift the table had (extra rules, sets,
 * chains, flags) is gone. Undefined when nothing differs. Touches no other
 * table.
 */
export function planNat(desired: NatTable | undefined, observed: NatTable | undefined): string | undefined {
  if (natDifferences(desired, observed).length === 0) return undefined;
  const reset = [`add table ${NAT_FAMILY} ${NAT_TABLE}`, `delete table ${NAT_FAMILY} ${NAT_TABLE}`];
  return [...reset, ...(desired ? [renderNatTable(desired)] : [])].join("\n") + "\n";
}

/** The table in nft syntax: sets before the chains that refer to them. */
export function renderNatTable(table: NatTable): string {
  if (table.extra !== "" || table.other.length) throw new Error("renderNatTable: only tables built by desiredNat can be written");
  const lines = [`table ${NAT_FAMILY} ${NAT_TABLE} {`];
  for (const s of table.sets) {
    lines.push(`\tset ${s.name} {`, `\t\ttype ${s.type}`);
    if (s.flags.length) lines.push(`\t\tflags ${s.flags.join(",")}`);
    if (s.extra !== "") throw new Error(`renderNatTable: set ${s.name} has attributes it cannot write`);
    if (s.elements.length) {
      const rows: string[] = [];
      for (let i = 0; i < s.elements.length; i += 8) rows.push(s.elements.slice(i, i + 8).join(", "));
      lines.push(`\t\telements = { ${rows.join(",\n\t\t\t     ")} }`);
    }
    lines.push("\t}");
  }
  for (const c of table.chains) {
    lines.push(`\tchain ${c.name} {`);
    if (c.type !== undefined) lines.push(`\t\ttype ${c.type} hook ${c.hook} priority ${c.prio}; policy ${c.policy ?? "accept"};`);
    for (const r of c.rules) {
      if (r.text === undefined) throw new Error(`renderNatTable: a rule of chain ${c.name} has no nft text`);
      lines.push(`\t\t${r.text}`);
    }
    lines.push("\t}");
  }
  lines.push("}");
  return lines.join("\n");
}

// ---------------------------------------------------------------------------
// Helpers

function pairs<T extends { name: string }>(want: T[], have: T[]): Array<[string, T | undefined, T | undefined]> {
  const names = [...new Set([...want.map((x) => x.name), ...have.map((x) => x.name)])].sort(compareText);
  return names.map((n) => [n, want.find((x) => x.name === n), have.find((x) => x.name === n)]);
}

function listSome(items: string[]): string {
  return items.length <= 5 ? items.join(", ") : `${items.slice(0, 5).join(", ")} and ${items.length - 5} more`;
}

function asList(v: unknown): unknown[] {
  return v === undefined ? [] : Array.isArray(v) ? v : [v];
}

function withoutKeys(o: Json, keys: string[]): Json {
  return Object.fromEntries(Object.entries(o).filter(([k]) => !keys.includes(k)));
}

function extraOf(o: Json, known: string[]): string {
  const rest = withoutKeys(o, known);
  return Object.keys(rest).length ? canonicalJson(rest) : "";
}

function compareText(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/**
 * JSON with object keys sorted, and a "flags" string as a one-element list
 * (nft 1.0.6 lists one flag as a string and several as a list).
 */
export function canonicalJson(value: unknown): string {
  const norm = (v: unknown, key?: string): unknown => {
    if (key === "flags" && typeof v === "string") return [v];
    if (Array.isArray(v)) return v.map((x) => norm(x));
    if (v && typeof v === "object") {
      return Object.fromEntries(Object.keys(v as Json).sort(compareText).map((k) => [k, norm((v as Json)[k], k)]));
    }
    return v;
  };
  return JSON.stringify(norm(value));
}
