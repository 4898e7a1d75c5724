// Which firewall rules could drop traffic the host routes for workloads
// (FORWARD), from `nft -j list ruleset` and `iptables-legacy-save` output.
// Pure: the probe runs the commands.

export interface ForwardDrop {
  source: "nftables" | "iptables-legacy";
  /** Where: table and chain. */
  where: string;
  /** What drops: "policy drop" or the rule. */
  what: string;
  /** In an ip6 table: it matters only where workloads are dual stack. */
  ipv6Only?: boolean;
}

/** What marks our devices in a rule: the netdev group or the device name prefixes. */
export interface OwnMarks {
  group: number;
  prefixes: string[];
}

type NftObject = Record<string, Record<string, unknown>>;

/** A rule that accepts traffic on our devices: a drop after it does not hit workloads. */
function acceptsOurs(rule: Record<string, unknown>, marks: OwnMarks): boolean {
  const text = JSON.stringify(rule.expr ?? []);
  if (!/"accept"/.test(text)) return false;
  const byGroup = /"(iifgroup|oifgroup)"/.test(text) && new RegExp(`"right":\\s*${marks.group}\\b`).test(text);
  const byName = marks.prefixes.some((p) => text.includes(`"${p}*"`) || text.includes(`"${p}`));
  return byGroup || byName;
}

function verdictOf(rule: Record<string, unknown>): "drop" | "reject" | undefined {
  const expr = (rule.expr as Array<Record<string, unknown>> | undefined) ?? [];
  if (expr.some((e) => "drop" in e)) return "drop";
  if (expr.some((e) => "reject" in e)) return "reject";
  return undefined;
}

export function nftForwardDrops(ruleset: unknown, marks: OwnMarks): ForwardDrop[] {
  const items = ((ruleset as { nftables?: NftObject[] } | undefined)?.nftables ?? []);
  const chains = items.flatMap((i) => (i.chain ? [i.chain] : []))
    .filter((c) => c.hook === "forward" && (c.family === "ip" || c.family === "ip6" || c.family === "inet"));
  const drops: ForwardDrop[] = [];
  for (const c of chains) {
    const where = `table ${String(c.family)} ${String(c.table)} chain ${String(c.name)}`;
    const ipv6Only = c.family === "ip6" ? { ipv6Only: true } : {};
    const rules = items.flatMap((i) => (i.rule ? [i.rule] : []))
      .filter((r) => r.family === c.family && r.table === c.table && r.chain === c.name);
    let accepted = false;
    for (const r of rules) {
      if (acceptsOurs(r, marks)) {
        accepted = true;
        break;
      }
      const verdict = verdictOf(r);
      if (verdict) drops.push({ source: "nftables", where, what: `rule handle ${String(r.handle)} (${verdict})`, ...ipv6Only });
    }
    if (c.policy === "drop" && !accepted) drops.push({ source: "nftables", where, what: "policy drop", ...ipv6Only });
  }
  return drops;
}

export function iptablesForwardDrops(save: string, marks: OwnMarks): ForwardDrop[] {
  const drops: ForwardDrop[] = [];
  let table = "";
  let accepted = false;
  for (const line of save.split("\n")) {
    if (line.startsWith("*")) table = line.slice(1).trim();
    if (table !== "filter") continue;
    const policy = /^:FORWARD (DROP|REJECT)\b/.exec(line);
    if (policy) drops.push({ source: "iptables-legacy", where: "filter FORWARD", what: `policy ${policy[1]!.toLowerCase()}` });
    if (!line.startsWith("-A FORWARD ") || accepted) continue;
    if (/-j ACCEPT\b/.test(line) && marks.prefixes.some((p) => line.includes(` ${p}+`))) accepted = true;
    else if (/-j (DROP|REJECT)\b/.test(line)) drops.push({ source: "iptables-legacy", where: "filter FORWARD", what: line.trim() });
  }
  // A DROP policy with an earlier accept for our devices does not hit workloads.
  return accepted ? drops.filter((d) => !d.what.startsWith("policy")) : drops;
}
