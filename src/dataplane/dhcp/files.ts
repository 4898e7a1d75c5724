import { TAP_PREFIX, gatewayDevice } from "../../model/naming.js";
import { networkPrefix } from "../../model/resolve.js";
import { formatIpv4 } from "../../model/ipv4.js";
import { parsePrefix6, type Prefix6 } from "../../model/ipv6.js";
import type { DesiredState, Endpoint, Network } from "../../model/types.js";

// What dnsmasq is told, from the desired state: pure, so the whole answer
// (which MAC gets which address, which options, which interfaces) is
// unit-tested without a dnsmasq. The shell (dnsmasq.ts) writes these files and
// restarts dnsmasq only when `conf` changes; `hosts` and `opts` are re-read on
// SIGHUP, which drops no exchange in flight.
//
// How one dnsmasq answers on every network's taps (after networking-calico):
// taps have no address, so dnsmasq treats a request arriving on any of them
// as arriving on one gateway device (`bridge-interface`, whose alias may be a
// `tap-*` wildcard: taps come and go without a restart), and the other
// networks' subnets are offered there too (`shared-network`). Which address a
// MAC gets is its static host line alone (`dhcp-ignore=tag:!known`: never a
// pool, never an unknown MAC); the network's tag (set by the range the address
// lies in) picks router, MTU and DNS. The interface list names the wildcard
// as well, so dnsmasq binds no single device (`bind-dynamic` with exactly one
// interface binds the socket to it, and the taps' requests would never be
// read) while its socket still shares port 67 with another dnsmasq bound to
// its own bridge (libvirt's `default` network): each answers only its own.
// Replies are broadcast (`dhcp-broadcast`): a unicast reply to a client
// without an address makes dnsmasq write an ARP entry on the arrival
// device, over the permanent neighbour entry vmrouted keeps there.
//
// IPv6 (networks with a prefix6; DESIGN.md "IPv6"): the same dnsmasq sends
// router advertisements on the taps and answers DHCPv6 there, by the same
// `bridge-interface` (it covers DHCPv6 and router solicitations too). The RA
// says "managed" (M, and O) with a router lifetime, and carries the gateway
// device's prefix off-link (L=0) and not autonomous (A=0): guests ignore it,
// make no SLAAC address and route everything to the router, which is the
// tap's link-local address (the RA's source: the same on every host, since
// the tap MAC is). DHCPv6 gives the static address alone (a /128) from the
// host line `MAC,IPv4,[IPv6],lease`: dnsmasq learns the client's MAC from
// the neighbour table (it solicits it on the tap), so any DUID type works.
// dnsmasq finds a network's IPv6 range only through an address of the device
// the taps are aliased to: the kernel dataplane puts `<prefix6 base>/<len>
// nodad noprefixroute` on each virgw-<net> (no connected route), and the
// aliased device is the first DHCP network that has a prefix6 (for IPv4-only
// hosts, the first DHCP network, as before); the other networks' prefixes
// are shared onto it (`shared-network`). The RA's parameters (MTU, lifetime)
// are that device's, for every tap: its MTU is announced only when every
// IPv6 network has the same `mtu` (otherwise none; the link MTU comes from
// DHCPv4 option 26, and an RA can only lower it). The server DUID is fixed
// (DUID-EN), the same on every host, so a migrated guest's Renew, sent to the
// server it knew, is answered by the destination's dnsmasq (NoBinding, when it
// holds no lease: the client asks again and gets the same static address;
// with another DUID it would be ignored until the client's Rebind, at T2).

export interface DhcpPaths {
  /** Our runtime directory for dnsmasq (must be traversable by `nobody`, which reads hosts/opts after dropping root). */
  dir: string;
  /** The lease file (stateDir): survives restarts of dnsmasq and vmrouted. */
  leases: string;
}

export interface DhcpFiles {
  conf: string;
  hosts: string;
  opts: string;
  /** The endpoints answered for (their MAC and IP), for status and tests. */
  served: Array<{ id: string; mac: string; ip: string; ip6?: string; device: string; network: string }>;
}

/** DUID-EN (RFC 8415 11.3): enterprise number 32473 (RFC 5612, documentation use), identifier "vmrouted". */
const DUID_ENTERPRISE = 32473;
const DUID_ID = Buffer.from("vmrouted").toString("hex").match(/../g)!.join(":");
/** The DHCPv6 server DUID every host's dnsmasq uses, as dnsmasq writes it on the lease file's `duid` line. */
export const SERVER_DUID = ["00", "02", ...DUID_ENTERPRISE.toString(16).padStart(8, "0").match(/../g)!, DUID_ID].join(":");
/** RA router lifetime, seconds (dnsmasq's default; RAs every 600 s, and at once on a router solicitation). */
const ROUTER_LIFETIME = 1800;

export const confPath = (p: DhcpPaths) => `${p.dir}/dnsmasq.conf`;
export const hostsPath = (p: DhcpPaths) => `${p.dir}/hosts`;
export const optsPath = (p: DhcpPaths) => `${p.dir}/opts`;
export const pidPath = (p: DhcpPaths) => `${p.dir}/dnsmasq.pid`;

/** dnsmasq tags are alphanumeric words; network names may contain '-'. */
const tag = (network: string) => `net_${network.replace(/-/g, "_")}`;

/** Endpoints dnsmasq answers for: taps (VMs and tap endpoints) on DHCP networks; netns endpoints are configured directly. */
export function dhcpEndpoints(state: DesiredState): Endpoint[] {
  const dhcp = new Set(state.networks.filter((n) => n.guest.dhcp).map((n) => n.name));
  return state.endpoints.filter((e) => e.kind !== "netns" && dhcp.has(e.network));
}

/** undefined: no network wants DHCP, and no dnsmasq runs. */
export function dhcpFiles(state: DesiredState, paths: DhcpPaths): DhcpFiles | undefined {
  const networks = state.networks.filter((n) => n.guest.dhcp).sort((a, b) => a.name.localeCompare(b.name));
  const v6 = networks.filter((n) => prefix6(n) !== undefined);
  // The device the taps are aliased to must carry an address in an IPv6 range (see above).
  const primary = v6[0] ?? networks[0];
  if (!primary) return undefined;
  const others = networks.filter((n) => n !== primary);
  const endpoints = dhcpEndpoints(state).sort((a, b) => a.ip.localeCompare(b.ip));
  const byName = new Map(networks.map((n) => [n.name, n]));
  // Taps named by the operator do not match the wildcard: listed by name (a change restarts dnsmasq; rare).
  const named = [...new Set(endpoints.map((e) => e.device).filter((d) => !d.startsWith(TAP_PREFIX)))].sort();
  const primaryDevice = gatewayDevice(primary.name);
  const conf = [
    "# Written by vmrouted; rewritten whenever its networks change. Do not edit.",
    "port=0", "no-resolv", "no-hosts", "keep-in-foreground", "log-facility=-",
    "user=nobody", "group=nogroup", "bind-dynamic",
    `interface=${primaryDevice}`, `interface=${TAP_PREFIX}*`, ...named.map((d) => `interface=${d}`),
    `bridge-interface=${primaryDevice},${TAP_PREFIX}*${named.map((d) => `,${d}`).join("")}`,
    ...others.map((n) => `shared-network=${primary.gateway},${subnet(n)}`),
    ...networks.map((n) => `dhcp-range=set:${tag(n.name)},${subnet(n)},static,${netmask(n)},${n.guest.leaseSeconds}`),
    ...(v6.length ? ipv6Conf(v6, primaryDevice) : []),
    "dhcp-ignore=tag:!known", "dhcp-authoritative", "dhcp-broadcast",
    `dhcp-hostsfile=${hostsPath(paths)}`, `dhcp-optsfile=${optsPath(paths)}`, `dhcp-leasefile=${paths.leases}`, `pid-file=${pidPath(paths)}`,
    "",
  ].join("\n");
  const hosts = endpoints.map((e) => {
    const ip6 = e.ip6 !== undefined && prefix6(byName.get(e.network)!) ? `,[${e.ip6}]` : "";
    return `${e.mac},${e.ip}${ip6},${byName.get(e.network)!.guest.leaseSeconds}\n`;
  }).join("");
  const opts = networks.flatMap((n) => networkOptions(n)).map((l) => `${l}\n`).join("");
  return {
    conf, hosts, opts,
    served: endpoints.map((e) => ({ id: e.id, mac: e.mac, ip: e.ip, ...(e.ip6 !== undefined ? { ip6: e.ip6 } : {}), device: e.device, network: e.network })),
  };
}

/** RAs and DHCPv6 for the networks with a prefix6 (v6[0] is the primary: its device carries `<base>/<len>`). */
function ipv6Conf(v6: Network[], primaryDevice: string): string[] {
  const primary = prefix6(v6[0]!)!;
  const mtus = new Set(v6.map((n) => n.guest.mtu));
  const mtu = mtus.size === 1 && v6[0]!.guest.mtu !== undefined ? String(v6[0]!.guest.mtu) : "off";
  return [
    ...v6.slice(1).map((n) => `shared-network=${primary.base},${prefix6(n)!.base}`),
    // static: only the host lines' addresses; off-link: the prefix's L flag clear (A is clear without `slaac`).
    // dnsmasq's IPv6 ranges are /64 or longer: a shorter prefix6 is served in its first /64 only.
    ...v6.map((n) => { const p = prefix6(n)!; return `dhcp-range=set:${tag(n.name)},${p.base},static,off-link,${Math.max(64, p.length)},${n.guest.leaseSeconds}`; }),
    "enable-ra", `ra-param=${primaryDevice},mtu:${mtu},0,${ROUTER_LIFETIME}`, "quiet-ra",
    `dhcp-duid=${DUID_ENTERPRISE},${DUID_ID}`,
  ];
}

const prefix6 = (n: Network): Prefix6 | undefined => (n.prefix6 !== undefined ? parsePrefix6(n.prefix6) : undefined);

function networkOptions(n: Network): string[] {
  const t = `tag:${tag(n.name)}`;
  return [
    // The router is the shared gateway address: the same on every host, so a migrated guest keeps it.
    `${t},option:router,${n.gateway}`,
    ...(n.guest.mtu !== undefined ? [`${t},option:mtu,${n.guest.mtu}`] : []),
    ...(n.guest.dns.length ? [`${t},option:dns-server,${n.guest.dns.join(",")}`] : []),
    ...(n.guest.domain !== undefined ? [`${t},option:domain-name,${n.guest.domain}`] : []),
  ];
}

const subnet = (n: Network) => formatIpv4(networkPrefix(n).base);

function netmask(n: Network): string {
  return formatIpv4(n.prefixLength === 0 ? 0 : (0xffffffff << (32 - n.prefixLength)) >>> 0);
}
