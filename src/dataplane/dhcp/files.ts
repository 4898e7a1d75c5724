import { TAP_PREFIX, gatewayDevice } from "../../model/naming.js";
import { networkPrefix } from "../../model/resolve.js";
import { formatIpv4 } from "../../model/ipv4.js";
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
  served: Array<{ id: string; mac: string; ip: string; device: string; network: string }>;
}

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
  const primary = networks[0];
  if (!primary) return undefined;
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
    ...networks.slice(1).map((n) => `shared-network=${primary.gateway},${subnet(n)}`),
    ...networks.map((n) => `dhcp-range=set:${tag(n.name)},${subnet(n)},static,${netmask(n)},${n.guest.leaseSeconds}`),
    "dhcp-ignore=tag:!known", "dhcp-authoritative", "dhcp-broadcast",
    `dhcp-hostsfile=${hostsPath(paths)}`, `dhcp-optsfile=${optsPath(paths)}`, `dhcp-leasefile=${paths.leases}`, `pid-file=${pidPath(paths)}`,
    "",
  ].join("\n");
  const hosts = endpoints.map((e) => `${e.mac},${e.ip},${byName.get(e.network)!.guest.leaseSeconds}\n`).join("");
  const opts = networks.flatMap((n) => networkOptions(n)).map((l) => `${l}\n`).join("");
  return { conf, hosts, opts, served: endpoints.map((e) => ({ id: e.id, mac: e.mac, ip: e.ip, device: e.device, network: e.network })) };
}

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
