import type { PeerInfo } from "../bgp/gobgp.js";
import type { ObservedState } from "../dataplane/observed.js";
import { KERNEL_PROTOCOL } from "../dataplane/check.js";
import { endpointSysctls, IP6_FORWARD_KEY, IP_FORWARD_KEY, isGatewayAlias, isOwnedAlias, gatewayAlias } from "../dataplane/ownership.js";
import type { ForwardDrop } from "./firewall.js";

// `vmroutectl doctor`: the things that make routed workloads silently fail,
// each with what to do about it. Pure: probe.ts gathers the facts, from the
// kernel and the daemons themselves (not from vmrouted's own report), so the
// doctor works when vmrouted is down.

export type CheckName =
  | "vmrouted" | "ip-forward" | "gateway-device" | "connected-route" | "endpoint-sysctls" | "tap-carrier"
  | "firewall" | "nat" | "gobgpd" | "bgp-peer" | "peer-paths" | "hook" | "ip-claims" | "endpoints" | "bgp-import" | "dhcp";

export interface Finding {
  check: CheckName;
  /** ok: nothing wrong; problem: something is wrong (exit 1); skipped: not applicable or not inspectable. */
  result: "ok" | "problem" | "skipped";
  message: string;
  fix?: string;
}

export interface DoctorFacts {
  daemon: {
    socket: string; answering: boolean; error?: string; degraded: Array<{ id: string; reason: string; held?: boolean }>;
    /** Set while the daemon has not finished its first pass. */
    starting?: string;
    /** stateDir writes failing (status.storage.reason). */
    storage?: string;
    /** Consecutive failed passes and the last error. */
    failing?: { passes: number; error: string };
    /** Learned paths the import filter refuses now, by reason; and whether bgp.maxLearned keeps new ones out. */
    imports?: { rejected: Record<string, number>; limited: boolean; maxLearned: number };
    /** vmrouted's dnsmasq (status.dhcp). */
    dhcp?: { state: string; reason?: string; hosts: number; restarts: number };
  };
  kernel: ObservedState;
  routeProtocol: number;
  /** Networks vmrouted should serve here (config + runtime), with their gateway device. */
  gateways: Array<{ network: string; device: string }>;
  firewall: { inspected: string[]; drops: ForwardDrop[] };
  bgp?: { address: string; error?: string; peers: PeerInfo[] };
  libvirt?: {
    error?: string;
    running: Array<{ domain: string; taps: string[] }>;
    hook: { path: string; installed: boolean; changedAfterLibvirtdStart?: boolean; libvirtdStart?: string };
  };
  /**
   * vmrouted's nftables table: its differences from what the networks want
   * (routes learned from other hosts aside: only the daemon knows those), or
   * why it could not be read.
   */
  nat: { wanted: boolean; differences: string[]; error?: string };
  /** Every claim of a workload IP: state file endpoints and domains' vmrouted metadata. */
  claims: Array<{ ip: string; owner: string }>;
}

export function diagnose(f: DoctorFacts): Finding[] {
  return [
    ...daemon(f), ...ipForward(f), ...gateways(f), ...endpointSysctlFindings(f), ...carrier(f), ...firewall(f), ...nat(f),
    ...bgp(f), ...imports(f), ...dhcp(f), ...hook(f), ...claims(f),
  ];
}

export function hasProblems(findings: Finding[]): boolean {
  return findings.some((x) => x.result === "problem");
}

const ok = (check: CheckName, message: string): Finding => ({ check, result: "ok", message });
const skipped = (check: CheckName, message: string): Finding => ({ check, result: "skipped", message });
const problem = (check: CheckName, message: string, fix: string): Finding => ({ check, result: "problem", message, fix });

function daemon(f: DoctorFacts): Finding[] {
  if (!f.daemon.answering)
    return [problem("vmrouted", `vmrouted is not answering on ${f.daemon.socket}: ${f.daemon.error ?? "no answer"}`,
      "start it (systemctl start vmrouted) and read why it stopped (journalctl -u vmrouted); nothing is repaired or announced meanwhile")];
  if (f.daemon.starting)
    return [problem("vmrouted", `vmrouted is starting: ${f.daemon.starting}`, "wait a moment and run doctor again; if it stays, read its log")];
  const out = [ok("vmrouted", `vmrouted answers on ${f.daemon.socket}`)];
  if (f.daemon.storage)
    out.push(problem("vmrouted", `stateDir writes are failing: ${f.daemon.storage}`, "free space or make stateDir writable; vmrouted retries and keeps the kernel as it is meanwhile"));
  if (f.daemon.failing)
    out.push(problem("vmrouted", `${f.daemon.failing.passes} reconcile pass(es) failed in a row: ${f.daemon.failing.error}`, "vmrouted retries with a backoff; read its log for the cause"));
  for (const e of f.daemon.degraded)
    out.push(e.held
      ? problem("endpoints", `endpoint ${e.id} is held as found: ${e.reason}`,
        "its entry no longer validates, so vmrouted changes none of its objects: put its network back in the config, or remove the endpoint (vmroutectl config check shows what a config would orphan)")
      : problem("endpoints", `endpoint ${e.id} is degraded: ${e.reason}`, "see `vmroutectl status`; vmrouted never overwrites what it does not own, so remove the conflicting object"));
  return out;
}

/** Devices with an IPv6 /128 of ours: their workloads are dual stack. */
function ipv6Devices(f: DoctorFacts): Set<string> {
  return new Set(f.kernel.routes.filter((r) => r.protocol === f.routeProtocol && r.dst.includes(":") && r.device).map((r) => r.device!));
}

function ipForward(f: DoctorFacts): Finding[] {
  const out = f.kernel.ipForward === "1" ? [ok("ip-forward", "IPv4 forwarding is on")]
    : [problem("ip-forward", `${IP_FORWARD_KEY.replaceAll("/", ".")} is ${f.kernel.ipForward ?? "unreadable"}: the host routes nothing for its workloads`,
      "sysctl -w net.ipv4.ip_forward=1 (vmrouted sets it on each resync; something else turns it off: check /etc/sysctl.d)")];
  if (ipv6Devices(f).size === 0) return out;
  const key = IP6_FORWARD_KEY.replaceAll("/", ".");
  out.push(f.kernel.ip6Forward === "1" ? ok("ip-forward", "IPv6 forwarding is on")
    : problem("ip-forward", `${key} is ${f.kernel.ip6Forward ?? "unreadable"}: the host routes no IPv6 for its workloads`,
      `sysctl -w ${key}=1 (vmrouted sets it on each resync; an uplink that takes its default route from router advertisements then needs accept_ra=2)`));
  return out;
}

function gateways(f: DoctorFacts): Finding[] {
  const out: Finding[] = [];
  for (const g of f.gateways) {
    const link = f.kernel.links.get(g.device);
    if (!link) out.push(problem("gateway-device", `gateway device ${g.device} of network ${g.network} is missing`,
      "vmrouted creates it on its next pass: is vmrouted running? (vmroutectl status)"));
    else if (link.alias !== gatewayAlias(g.network)) out.push(problem("gateway-device", `${g.device} exists but is not vmrouted's (ifalias '${link.alias ?? ""}')`,
      `remove or rename that device; vmrouted never touches devices it does not own`));
    else if (!link.up) out.push(problem("gateway-device", `gateway device ${g.device} is down`, `ip link set ${g.device} up`));
    // IPv4: the IPv6 fe80::/64 every device has is not a subnet route.
    const connected = f.kernel.routes.filter((r) => r.device === g.device && r.protocol === KERNEL_PROTOCOL && !r.dst.includes(":"));
    for (const r of connected)
      out.push(problem("connected-route", `connected route ${r.dst} on ${g.device} is back: the subnet's traffic goes to the gateway device, not to the workloads' /32s`,
        `ip route del ${r.dst} dev ${g.device} proto kernel (vmrouted deletes it on its next pass: is vmrouted running?)`));
  }
  if (!out.some((x) => x.check === "gateway-device")) out.push(ok("gateway-device", `${f.gateways.length} gateway device(s) present`));
  if (!out.some((x) => x.check === "connected-route")) out.push(ok("connected-route", "no connected route on any gateway device"));
  return out;
}

function endpointSysctlFindings(f: DoctorFacts): Finding[] {
  const out: Finding[] = [];
  let devices = 0;
  const dualStack = ipv6Devices(f);
  for (const link of f.kernel.links.values()) {
    if (!isOwnedAlias(link.alias) || isGatewayAlias(link.alias)) continue;
    devices++;
    const values = f.kernel.sysctls.get(link.name) ?? {};
    for (const s of endpointSysctls(link.name, dualStack.has(link.name))) {
      if (values[s.field] === s.value) continue;
      out.push(problem("endpoint-sysctls", `${s.key.replaceAll("/", ".")} is ${values[s.field] ?? "unreadable"}, not ${s.value}`,
        `sysctl -w ${s.key.replaceAll("/", ".")}=${s.value} (vmrouted restores it on each resync; find what resets it)`));
    }
  }
  return out.length ? out : [ok("endpoint-sysctls",
    `proxy_arp, proxy_delay, rp_filter and forwarding right on ${devices} workload device(s)${dualStack.size ? ` (and accept_ra, IPv6 forwarding on ${dualStack.size})` : ""}`)];
}

function carrier(f: DoctorFacts): Finding[] {
  if (!f.libvirt) return [skipped("tap-carrier", "libvirt integration is disabled")];
  if (f.libvirt.error) return [skipped("tap-carrier", `cannot list running domains: ${f.libvirt.error}`)];
  const out: Finding[] = [];
  let taps = 0;
  for (const d of f.libvirt.running) for (const tap of d.taps) {
    taps++;
    const link = f.kernel.links.get(tap);
    if (!link) out.push(problem("tap-carrier", `tap ${tap} of running domain ${d.domain} is missing`,
      "vmrouted re-creates it, but qemu will not reopen it: detach and attach the interface (or restart the domain)"));
    else if (!link.carrier) out.push(problem("tap-carrier", `tap ${tap} of running domain ${d.domain} has no carrier: qemu does not hold it (was it deleted and re-created?)`,
      `re-attach the interface: virsh detach-interface/attach-device on ${d.domain}, or restart the domain`));
  }
  return out.length ? out : [ok("tap-carrier", `${taps} tap(s) of running domains have carrier`)];
}

function nat(f: DoctorFacts): Finding[] {
  if (f.nat.error) return f.nat.wanted
    ? [problem("nat", `cannot read vmrouted's nftables table: ${f.nat.error}`, "install nftables (the kernel needs nf_tables) and restart vmrouted")]
    : [skipped("nat", `no network has natOutgoing (and nftables cannot be read: ${f.nat.error})`)];
  if (f.nat.differences.length)
    return f.nat.differences.map((d) => problem("nat", d,
      "vmrouted rewrites its table at its next resync (dataplane.resyncSeconds); if this stays, its log says why (nft -f errors)"));
  return [f.nat.wanted ? ok("nat", "table ip vmrouted masquerades the natOutgoing networks as they want")
    : ok("nat", "no network has natOutgoing, and vmrouted has no nftables table")];
}

function firewall(f: DoctorFacts): Finding[] {
  if (f.firewall.inspected.length === 0) return [skipped("firewall", "neither nft nor iptables-legacy-save is installed")];
  // An ip6 table's drops reach workloads only where they have IPv6.
  const drops = ipv6Devices(f).size ? f.firewall.drops : f.firewall.drops.filter((d) => !d.ipv6Only);
  if (drops.length === 0) return [ok("firewall", `no FORWARD drop in ${f.firewall.inspected.join(", ")}`)];
  return drops.map((d) => problem("firewall", `${d.source} ${d.where}: ${d.what} may drop forwarded workload traffic`,
    "accept traffic to and from vmrouted's devices before it, e.g. nft insert rule ... iifgroup 94 accept; ... oifgroup 94 accept"));
}

function bgp(f: DoctorFacts): Finding[] {
  if (!f.bgp) return [skipped("gobgpd", "no bgp section in the config: nothing is announced")];
  if (f.bgp.error) return [problem("gobgpd", `gobgpd is not reachable at ${f.bgp.address}: ${f.bgp.error}`,
    "start gobgpd (systemctl start gobgpd); vmrouted re-announces everything when it is back")];
  const out: Finding[] = [ok("gobgpd", `gobgpd answers at ${f.bgp.address}`)];
  if (f.bgp.peers.length === 0) out.push(problem("bgp-peer", "gobgpd has no peers configured", "add the route reflectors as neighbours in gobgpd.toml"));
  const ours = f.kernel.routes.filter((r) => r.protocol === f.routeProtocol && r.dst.endsWith("/32")).length;
  for (const p of f.bgp.peers) {
    if (p.state !== "established") {
      out.push(problem("bgp-peer", `peer ${p.address} is ${p.state}, not established`, `check reachability and the peer's config; gobgp neighbor ${p.address}`));
      continue;
    }
    out.push(ok("bgp-peer", `peer ${p.address} established`));
    if (p.prefixesSent !== undefined && p.prefixesSent < ours)
      out.push(problem("peer-paths", `peer ${p.address} was sent ${p.prefixesSent} of this host's ${ours} workload /32s`,
        "is vmrouted running and connected to gobgpd? (vmroutectl status: bgp); check gobgpd's export policy"));
    else if (p.prefixesSent !== undefined) out.push(ok("peer-paths", `peer ${p.address} has all ${ours} workload /32s`));
  }
  return out;
}

function imports(f: DoctorFacts): Finding[] {
  const i = f.daemon.imports;
  if (!i) return [];
  const out: Finding[] = [];
  const total = Object.values(i.rejected).reduce((a, b) => a + b, 0);
  const refused = Object.entries(i.rejected).filter(([reason]) => reason !== "duplicate" && reason !== "max-learned");
  if (refused.length)
    out.push(problem("bgp-import", `${refused.reduce((a, [, n]) => a + n, 0)} learned path(s) refused by the import filter (${refused.map(([r, n]) => `${r}: ${n}`).join(", ")})`,
      "vmroutectl routes --rejected names each prefix and the next hop that announces it: find that speaker and stop it; nothing of it was installed"));
  if (i.limited)
    out.push(problem("bgp-import", `bgp.maxLearned (${i.maxLearned}) reached: new learned prefixes are refused`,
      "raise bgp.maxLearned if the fleet really has that many workloads, or find the speaker flooding the reflector (vmroutectl routes --rejected)"));
  if (out.length === 0) out.push(ok("bgp-import", total ? `${total} learned path(s) refused (duplicates are listed with their endpoints)` : "no learned path refused"));
  return out;
}

function dhcp(f: DoctorFacts): Finding[] {
  const d = f.daemon.dhcp;
  if (!d) return f.daemon.answering && !f.daemon.starting ? [skipped("dhcp", "this vmrouted reports no DHCP manager")] : [];
  if (d.state === "off") return [skipped("dhcp", "no network has dhcp: guests are configured by hand")];
  if (d.state === "failing")
    return [problem("dhcp", `dnsmasq does not answer as it should: ${d.reason ?? "unknown"}${d.restarts ? ` (restarted ${d.restarts}×)` : ""}; guests asking DHCP get no address`,
      "is dnsmasq installed (Debian: dnsmasq-base)? vmrouted's log has dnsmasq's own lines; `ss -ulpn sport = :67` shows who holds the DHCP port")];
  return [ok("dhcp", `dnsmasq ${d.state}, answering ${d.hosts} endpoint(s)${d.restarts ? `; restarted ${d.restarts}× after it ended` : ""}`)];
}

function hook(f: DoctorFacts): Finding[] {
  if (!f.libvirt) return [skipped("hook", "libvirt integration is disabled")];
  const h = f.libvirt.hook;
  if (!h.installed) return [problem("hook", `the qemu hook ${h.path} is not installed: VMs start without their taps`,
    "vmroutectl install-hook, then restart libvirtd (it reads hooks when it starts)")];
  if (h.changedAfterLibvirtdStart) return [problem("hook", `the qemu hook changed after libvirtd started (${h.libvirtdStart}): libvirtd may not run it`,
    "restart libvirtd (systemctl restart libvirtd) so it reads its hooks again")];
  return [ok("hook", `the qemu hook is installed${h.libvirtdStart ? ` and older than libvirtd (started ${h.libvirtdStart})` : ""}`)];
}

function claims(f: DoctorFacts): Finding[] {
  const owners = new Map<string, Set<string>>();
  for (const c of f.claims) owners.set(c.ip, (owners.get(c.ip) ?? new Set()).add(c.owner));
  const out = [...owners].filter(([, o]) => o.size > 1).map(([ip, o]) =>
    problem("ip-claims", `${ip} is claimed by ${[...o].sort().join(" and ")}: only one gets the address`,
      "give one of them another address (vmroutectl iface remove / tap remove / netns remove)"));
  return out.length ? out : [ok("ip-claims", `${owners.size} workload IP(s), each claimed once`)];
}
