import { isUnusableHostAddress, parseIpv4, parsePrefix, prefixContains, prefixesOverlap, type Prefix } from "./ipv4.js";
import { canonicalIpv6, isUnusableIpv6Host, parsePrefix6, prefix6Contains, prefixes6Overlap, type Prefix6 } from "./ipv6.js";
import { defaultGuestMac, isUsableGuestMac, normalizeMac } from "./mac.js";
import { gatewayDevice, netnsNameProblem, networkNameProblem, tapName, tapNameProblem, vethName } from "./naming.js";
import type { EndpointInput, NetworkInput } from "./spec.js";
import { DEFAULT_LEASE_SECONDS, endpointId, type DesiredState, type Endpoint, type GuestSettings, type HeldEndpoint, type Network } from "./types.js";

// Turns what operators wrote (config networks, runtime networks, endpoint
// requests) into a fully resolved desired state, or one error line that names
// the offending entry. Pure; the same checks guard the CLI, the API and the spec.

export type Result<T> = { ok: true; value: T } | { ok: false; error: string };

const fail = (error: string): { ok: false; error: string } => ({ ok: false, error });

export function resolveNetwork(name: string, input: NetworkInput, source: Network["source"]): Result<Network> {
  const nameProblem = networkNameProblem(name);
  if (nameProblem) return fail(`network '${name}': name ${nameProblem}`);
  const prefix = parsePrefix(input.gateway);
  if (!prefix) return fail(`network '${name}': gateway '${input.gateway}' is not an IPv4 address with a prefix length (like 172.31.16.1/24)`);
  if (prefix.length < 8 || prefix.length > 30)
    return fail(`network '${name}': gateway prefix length /${prefix.length} must be between /8 and /30`);
  const gw = parseIpv4(prefix.address)!;
  if (gw === prefix.base || gw === prefix.base + prefix.size - 1 || isUnusableHostAddress(prefix.address))
    return fail(`network '${name}': gateway ${prefix.address} is not a usable host address in ${input.gateway}`);
  const guest: GuestSettings = {
    dhcp: input.dhcp !== false, dns: input.dns ?? [], leaseSeconds: input.leaseSeconds ?? DEFAULT_LEASE_SECONDS,
    ...(input.mtu !== undefined ? { mtu: input.mtu } : {}), ...(input.domain !== undefined ? { domain: input.domain } : {}),
  };
  let prefix6: Prefix6 | undefined;
  if (input.prefix6 !== undefined) {
    prefix6 = parsePrefix6(input.prefix6);
    if (!prefix6) return fail(`network '${name}': prefix6 '${input.prefix6}' is not an IPv6 prefix with its base address (like fd31:16::/64)`);
    // Each endpoint gets a /128; the prefix only says where they may lie. Link-local,
    // multicast and the like are never routed.
    if (prefix6.length < 16 || prefix6.length > 124) return fail(`network '${name}': prefix6 length /${prefix6.length} must be between /16 and /124`);
    if (isUnusableIpv6Host(prefix6.base))
      return fail(`network '${name}': prefix6 ${prefix6.text} is not a routable unicast prefix`);
  }
  return {
    ok: true,
    value: {
      name, gateway: prefix.address, prefixLength: prefix.length, source, natOutgoing: input.natOutgoing === true, guest,
      ...(prefix6 ? { prefix6: prefix6.text } : {}),
    },
  };
}

/** A network's IPv6 prefix, parsed (undefined: the network is IPv4 only). */
export function networkPrefix6(network: Network): Prefix6 | undefined {
  return network.prefix6 !== undefined ? parsePrefix6(network.prefix6) : undefined;
}

/** Two resolutions of one network say the same thing (every setting, not only the gateway). */
export function sameNetwork(a: Network, b: Network): boolean {
  return JSON.stringify({ ...a, source: undefined }) === JSON.stringify({ ...b, source: undefined });
}

export function networkPrefix(network: Network): Prefix {
  return parsePrefix(`${network.gateway}/${network.prefixLength}`)!;
}

/**
 * Resolves config and runtime networks together; they must not overlap or share
 * a name. A config network that does not resolve is an error (the config file is
 * refused); a runtime network that no longer fits (a config network now overlaps
 * it) is left out and named in `problems`: its endpoints are then held.
 */
export function resolveNetworkSet(
  config: Record<string, NetworkInput>,
  runtime: Record<string, NetworkInput>,
): Result<{ networks: Network[]; problems: string[] }> {
  const networks: Network[] = [];
  const problems: string[] = [];
  for (const [name, input] of Object.entries(config)) {
    const r = resolveNetwork(name, input, "config");
    if (!r.ok) return r;
    const overlapped = overlapping(networks, r.value);
    if (overlapped) return fail(overlapped);
    networks.push(r.value);
  }
  for (const [name, input] of Object.entries(runtime)) {
    const r = resolveNetwork(name, input, "runtime");
    if (!r.ok) {
      problems.push(r.error);
      continue;
    }
    const fromConfig = networks.find((n) => n.name === name && n.source === "config");
    if (fromConfig) {
      // Listing a config network in a spec is fine as long as it says the same thing.
      if (!sameNetwork(fromConfig, r.value))
        problems.push(`network '${name}' comes from the config file and cannot be changed at runtime`);
      continue;
    }
    const overlapped = overlapping(networks, r.value);
    if (overlapped) {
      problems.push(overlapped);
      continue;
    }
    networks.push(r.value);
  }
  return { ok: true, value: { networks, problems } };
}

/** Why `b` cannot join `networks` (its IPv4 or IPv6 prefix overlaps one of theirs), or undefined. */
function overlapping(networks: Network[], b: Network): string | undefined {
  const a4 = networks.find((n) => prefixesOverlap(networkPrefix(n), networkPrefix(b)));
  if (a4) return `network '${b.name}' (${b.gateway}/${b.prefixLength}) overlaps network '${a4.name}' (${a4.gateway}/${a4.prefixLength})`;
  const p6 = networkPrefix6(b);
  const a6 = p6 && networks.find((n) => { const q = networkPrefix6(n); return !!q && prefixes6Overlap(p6, q); });
  if (a6) return `network '${b.name}' (${b.prefix6}) overlaps network '${a6.name}' (${a6.prefix6})`;
  return undefined;
}

/** resolveNetworkSet, strict: any problem is the error (config files, the hook fallback, doctor). */
export function resolveNetworks(config: Record<string, NetworkInput>, runtime: Record<string, NetworkInput>): Result<Network[]> {
  const r = resolveNetworkSet(config, runtime);
  if (!r.ok) return r;
  return r.value.problems.length ? fail(r.value.problems[0]!) : { ok: true, value: r.value.networks };
}

function describe(input: EndpointInput): string {
  return `endpoint ${input.kind} ${input.ip}`;
}

export function resolveEndpoint(input: EndpointInput, networks: Network[]): Result<Endpoint> {
  const where = describe(input);
  const network = networks.find((n) => n.name === input.network);
  if (!network) return fail(`${where}: unknown network '${input.network}'`);
  if (parseIpv4(input.ip) === undefined) return fail(`${where}: ip '${input.ip}' is not an IPv4 address`);
  const prefix = networkPrefix(network);
  if (!prefixContains(prefix, input.ip))
    return fail(`${where}: ip ${input.ip} is outside network '${network.name}' (${network.gateway}/${network.prefixLength})`);
  if (input.ip === network.gateway) return fail(`${where}: ip ${input.ip} is the gateway address of network '${network.name}'`);
  const value = parseIpv4(input.ip)!;
  if (value === prefix.base || value === prefix.base + prefix.size - 1)
    return fail(`${where}: ip ${input.ip} is the network or broadcast address of '${network.name}'`);
  let ip6: string | undefined;
  if (input.ip6 !== undefined) {
    ip6 = canonicalIpv6(input.ip6);
    if (!ip6) return fail(`${where}: ip6 '${input.ip6}' is not an IPv6 address`);
    const prefix6 = networkPrefix6(network);
    if (!prefix6) return fail(`${where}: ip6 ${ip6} given, but network '${network.name}' has no prefix6`);
    if (!prefix6Contains(prefix6, ip6)) return fail(`${where}: ip6 ${ip6} is outside network '${network.name}' (${prefix6.text})`);
    // The prefix's first address is the subnet-router anycast address (RFC 4291 2.6.1).
    if (ip6 === prefix6.base) return fail(`${where}: ip6 ${ip6} is the subnet-router anycast address of ${prefix6.text}`);
  }
  let mac: string;
  if (input.mac !== undefined) {
    const normalized = normalizeMac(input.mac);
    if (!normalized || !isUsableGuestMac(normalized)) return fail(`${where}: mac '${input.mac}' is not a unicast MAC address`);
    mac = normalized;
  } else {
    mac = defaultGuestMac(network.name, input.ip);
  }
  if (input.kind === "tap") {
    if (input.name !== undefined) {
      const problem = tapNameProblem(input.name);
      if (problem) return fail(`${where}: tap name '${input.name}' ${problem}`);
    }
    return {
      ok: true,
      value: {
        id: endpointId("tap", input.ip), kind: "tap", network: network.name, ip: input.ip, ...(ip6 ? { ip6 } : {}), mac,
        device: input.name ?? tapName(network.name, input.ip),
      },
    };
  }
  const problem = netnsNameProblem(input.netns);
  if (problem) return fail(`${where}: netns '${input.netns}' ${problem}`);
  return {
    ok: true,
    value: {
      id: endpointId("netns", input.ip), kind: "netns", network: network.name, ip: input.ip, ...(ip6 ? { ip6 } : {}), mac,
      ...(input.resolvConf ? { resolvConf: true } : {}),
      device: vethName(network.name, input.ip), netns: input.netns,
    },
  };
}

/** The checks that hold across endpoints: one IP, one device, one namespace each. */
export class EndpointClaims {
  private readonly byIp = new Map<string, Endpoint>();
  private readonly byDevice = new Map<string, Endpoint>();
  private readonly byNetns = new Map<string, Endpoint>();
  private readonly gatewayDevices: Set<string>;

  constructor(networks: Network[]) {
    this.gatewayDevices = new Set(networks.map((n) => gatewayDevice(n.name)));
  }

  /** Claims the endpoint's IP, device and namespace, or says why it cannot (and claims nothing). */
  claim(e: Endpoint): string | undefined {
    // One map for both families: an IPv4 and an IPv6 text never collide.
    for (const ip of [e.ip, ...(e.ip6 ? [e.ip6] : [])]) {
      const ipOwner = this.byIp.get(ip);
      if (ipOwner) return `endpoint ${e.kind} ${e.ip}: ip ${ip} is already used by ${ipOwner.kind} endpoint ${ipOwner.device}`;
    }
    if (this.byDevice.has(e.device) || this.gatewayDevices.has(e.device)) return `endpoint ${e.kind} ${e.ip}: device name ${e.device} is already used`;
    const nsOwner = e.netns !== undefined ? this.byNetns.get(e.netns) : undefined;
    if (nsOwner) return `endpoint ${e.kind} ${e.ip}: netns '${e.netns}' already has endpoint ${nsOwner.ip} (one routed interface per namespace)`;
    this.byIp.set(e.ip, e);
    if (e.ip6) this.byIp.set(e.ip6, e);
    this.byDevice.set(e.device, e);
    if (e.netns !== undefined) this.byNetns.set(e.netns, e);
    return undefined;
  }
}

/** What an entry that does not resolve is kept as (its device name can be told from the entry alone). */
export function heldEndpoint(input: EndpointInput, reason: string): HeldEndpoint {
  const device = input.kind === "tap" ? input.name ?? tapName(input.network, input.ip) : vethName(input.network, input.ip);
  const ip6 = input.ip6 !== undefined ? canonicalIpv6(input.ip6) : undefined;
  return { id: endpointId(input.kind, input.ip), kind: input.kind, network: input.network, ip: input.ip, ...(ip6 ? { ip6 } : {}), device, reason };
}

export interface DesiredInputs {
  configNetworks: Record<string, NetworkInput>;
  runtimeNetworks: Record<string, NetworkInput>;
  endpoints: EndpointInput[];
}

export interface ResolvedDesired extends DesiredState {
  held: HeldEndpoint[];
  /** Every entry that does not resolve, one line each (held entries and left-out runtime networks). */
  problems: string[];
}

/**
 * The whole desired state. Only config networks can fail it (the config file
 * is refused); a runtime network or endpoint that does not resolve is left
 * out, held (kept as found) and named in `problems`: one bad entry never
 * takes the others down. Callers that accept new input refuse what adds a problem.
 */
export function resolveDesired(inputs: DesiredInputs): Result<ResolvedDesired> {
  const set = resolveNetworkSet(inputs.configNetworks, inputs.runtimeNetworks);
  if (!set.ok) return set;
  const { networks } = set.value;
  const problems = [...set.value.problems];
  const held: HeldEndpoint[] = [];
  const claims = new EndpointClaims(networks);
  const endpoints: Endpoint[] = [];
  for (const input of inputs.endpoints) {
    const r = resolveEndpoint(input, networks);
    const problem = r.ok ? claims.claim(r.value) : r.error;
    if (problem) {
      problems.push(problem);
      held.push(heldEndpoint(input, problem));
      continue;
    }
    if (r.ok) endpoints.push(r.value);
  }
  return { ok: true, value: { networks, endpoints, learned: [], held, problems } };
}
