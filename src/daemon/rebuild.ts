import { minimalCover, NAT_SET, type NatTable } from "../dataplane/nat.js";
import type { ObservedState } from "../dataplane/observed.js";
import { ALIAS_PREFIX } from "../dataplane/ownership.js";
import { defaultGuestMac } from "../model/mac.js";
import { gatewayDevice, tapName, vethName } from "../model/naming.js";
import { DEFAULT_MTU } from "../dataplane/check.js";
import { networkPrefix, networkPrefix6, resolveDesired, resolveNetworks } from "../model/resolve.js";
import { prefix6Contains } from "../model/ipv6.js";
import { parsePrefix, prefixContains } from "../model/ipv4.js";
import type { EndpointInput, NetworkInput } from "../model/spec.js";
import type { RuntimeState } from "../state/stored.js";

// Pure: the runtime state (API networks, tap and netns endpoints) read back
// from what vmrouted marked in the kernel, for when the state file is corrupt.
// Every owned device must be explained by the result; anything that cannot be
// is returned as a problem, because the first pass would delete it otherwise.
// VM endpoints are not runtime state: libvirt holds them. natOutgoing is in
// no device: vmrouted's nftables table holds it (a network's prefix in the
// masquerade set); without it the first pass would remove the masquerade.

export interface Rebuilt {
  state: RuntimeState;
  /** Owned objects the rebuilt state cannot explain, one line each. Non-empty: do not use `state`. */
  problems: string[];
}

export function rebuildRuntimeState(
  observed: ObservedState, vethNetns: ReadonlyMap<string, string>, natTable: NatTable | undefined, configNetworks: Record<string, NetworkInput>,
  /** Our endpoint routes' protocol: an endpoint's ip6 is read back from its /128. */
  routeProtocol: number,
): Rebuilt {
  const problems: string[] = [];
  const natted = new Set(natTable?.sets.find((s) => s.name === NAT_SET)?.elements);
  const networks: Record<string, NetworkInput> = {};
  const endpointLinks: Array<{ device: string; kind: string; ip: string }> = [];
  for (const link of observed.links.values()) {
    // vmrouted:<kind>:<rest> (rest: the network of a gateway, the IP of an endpoint)
    const m = link.alias?.startsWith(ALIAS_PREFIX) ? /^([a-z]+):(.+)$/.exec(link.alias.slice(ALIAS_PREFIX.length)) : null;
    if (!m) continue;
    const kind = m[1]!, rest = m[2]!;
    if (kind === "gateway") {
      if (rest in configNetworks) continue;
      // The gateway address is the one on its device that is not a /32 (noprefixroute keeps the prefix length).
      const address = observed.addresses.find((a) => a.device === link.name && !a.ip.includes(":") && a.prefixLength < 32);
      if (!address || link.name !== gatewayDevice(rest)) problems.push(`gateway device ${link.name} (${link.alias}) has no gateway address to rebuild network '${rest}' from`);
      else {
        const gateway = `${address.ip}/${address.prefixLength}`;
        // The prefix as desiredNat writes it into the set.
        const natOutgoing = natted.has(minimalCover([parsePrefix(gateway)!])[0]!);
        // A prefix6 is on the device too: its base address, with the prefix length (check.ts, GatewayCheck.cidr6).
        const v6 = observed.addresses.find((x) => x.device === link.name && x.ip.includes(":") && !x.ip.startsWith("fe80:"));
        networks[rest] = { gateway, ...(v6 ? { prefix6: `${v6.ip}/${v6.prefixLength}` } : {}), ...(natOutgoing ? { natOutgoing } : {}) };
      }
    } else if (kind === "tap" || kind === "netns") {
      endpointLinks.push({ device: link.name, kind, ip: rest });
    }
  }
  const resolved = resolveNetworks(configNetworks, networks);
  if (!resolved.ok) return { state: { networks, endpoints: [] }, problems: [...problems, resolved.error] };

  const endpoints: EndpointInput[] = [];
  for (const l of endpointLinks.sort((a, b) => a.device.localeCompare(b.device))) {
    const network = resolved.value.find((n) => prefixContains(networkPrefix(n), l.ip));
    if (!network) {
      problems.push(`device ${l.device} (${ALIAS_PREFIX}${l.kind}:${l.ip}) fits no known network`);
      continue;
    }
    const neighbour = observed.neighbours.find((n) => n.device === l.device && n.ip === l.ip && n.mac);
    // The ip6 is in our /128 via the device (the alias names the IPv4 address only).
    const prefix6 = networkPrefix6(network);
    const route6 = prefix6 && observed.routes.find((r) => r.device === l.device && r.protocol === routeProtocol && r.dst.endsWith("/128") &&
      prefix6Contains(prefix6, r.dst.slice(0, -"/128".length)));
    const ip6 = route6 ? { ip6: route6.dst.slice(0, -"/128".length) } : {};
    // The default MAC is left implicit, as an operator would have written it.
    const mac = neighbour?.mac && neighbour.mac !== defaultGuestMac(network.name, l.ip) ? { mac: neighbour.mac } : {};
    if (l.kind === "tap") {
      endpoints.push({ kind: "tap", network: network.name, ip: l.ip, ...ip6, ...mac, ...(l.device !== tapName(network.name, l.ip) ? { name: l.device } : {}) });
    } else {
      const netns = vethNetns.get(l.device);
      if (!netns) problems.push(`veth ${l.device} (${ALIAS_PREFIX}netns:${l.ip}) has its peer in no named namespace`);
      else endpoints.push({ kind: "netns", network: network.name, ip: l.ip, ...ip6, ...mac, netns });
    }
  }
  // A runtime network's MTU is on its endpoints' devices (not on the gateway device): read back when they agree,
  // so that rebuilding does not put a running VM's tap back to 1500. Its other guest settings are in no device.
  for (const [name, network] of Object.entries(networks)) {
    const mtus = new Set(endpoints.filter((e) => e.network === name)
      .map((e) => observed.links.get(e.kind === "tap" ? (e.name ?? tapName(name, e.ip)) : vethName(name, e.ip))?.mtu));
    const [mtu] = [...mtus];
    if (mtus.size === 1 && mtu !== undefined && mtu !== DEFAULT_MTU) networks[name] = { ...network, mtu };
  }
  const state = { networks, endpoints };
  const check = resolveDesired({ configNetworks, runtimeNetworks: networks, endpoints });
  if (!check.ok) problems.push(check.error);
  return { state, problems };
}
