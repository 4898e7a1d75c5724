import { isUnusableHostAddress, parseIpv4, parsePrefix, prefixContains, prefixesOverlap, type Prefix } from "./ipv4.js";
import { defaultGuestMac, isUsableGuestMac, normalizeMac } from "./mac.js";
import { gatewayDevice, netnsNameProblem, networkNameProblem, tapName, tapNameProblem, vethName } from "./naming.js";
import type { EndpointInput, NetworkInput } from "./spec.js";
import { endpointId, type DesiredState, type Endpoint, type Network } from "./types.js";

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
  return { ok: true, value: { name, gateway: prefix.address, prefixLength: prefix.length, source, natOutgoing: input.natOutgoing === true } };
}

export function networkPrefix(network: Network): Prefix {
  return parsePrefix(`${network.gateway}/${network.prefixLength}`)!;
}

/** Resolves config and runtime networks together; they must not overlap or share a name. */
export function resolveNetworks(
  config: Record<string, NetworkInput>,
  runtime: Record<string, NetworkInput>,
): Result<Network[]> {
  const networks: Network[] = [];
  for (const [name, input] of Object.entries(config)) {
    const r = resolveNetwork(name, input, "config");
    if (!r.ok) return r;
    networks.push(r.value);
  }
  for (const [name, input] of Object.entries(runtime)) {
    const r = resolveNetwork(name, input, "runtime");
    if (!r.ok) return r;
    const fromConfig = networks.find((n) => n.name === name && n.source === "config");
    if (fromConfig) {
      // Listing a config network in a spec is fine as long as it says the same thing.
      if (fromConfig.gateway !== r.value.gateway || fromConfig.prefixLength !== r.value.prefixLength || fromConfig.natOutgoing !== r.value.natOutgoing)
        return fail(`network '${name}' comes from the config file and cannot be changed at runtime`);
      continue;
    }
    networks.push(r.value);
  }
  for (let i = 0; i < networks.length; i++)
    for (let j = i + 1; j < networks.length; j++) {
      const a = networks[i]!, b = networks[j]!;
      if (prefixesOverlap(networkPrefix(a), networkPrefix(b)))
        return fail(`network '${b.name}' (${b.gateway}/${b.prefixLength}) overlaps network '${a.name}' (${a.gateway}/${a.prefixLength})`);
    }
  return { ok: true, value: networks };
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
      value: { id: endpointId("tap", input.ip), kind: "tap", network: network.name, ip: input.ip, mac, device: input.name ?? tapName(network.name, input.ip) },
    };
  }
  const problem = netnsNameProblem(input.netns);
  if (problem) return fail(`${where}: netns '${input.netns}' ${problem}`);
  return {
    ok: true,
    value: {
      id: endpointId("netns", input.ip), kind: "netns", network: network.name, ip: input.ip, mac,
      device: vethName(network.name, input.ip), netns: input.netns,
    },
  };
}

/** Checks that hold across endpoints: one IP, one device, one namespace each. */
export function checkEndpointSet(endpoints: Endpoint[], networks: Network[]): Result<Endpoint[]> {
  const byIp = new Map<string, Endpoint>();
  const byDevice = new Map<string, Endpoint>();
  const byNetns = new Map<string, Endpoint>();
  const gatewayDevices = new Set(networks.map((n) => gatewayDevice(n.name)));
  for (const e of endpoints) {
    const ipOwner = byIp.get(e.ip);
    if (ipOwner) return fail(`endpoint ${e.kind} ${e.ip}: ip ${e.ip} is already used by ${ipOwner.kind} endpoint ${ipOwner.device}`);
    byIp.set(e.ip, e);
    const devOwner = byDevice.get(e.device);
    if (devOwner || gatewayDevices.has(e.device)) return fail(`endpoint ${e.kind} ${e.ip}: device name ${e.device} is already used`);
    byDevice.set(e.device, e);
    if (e.netns !== undefined) {
      const nsOwner = byNetns.get(e.netns);
      if (nsOwner) return fail(`endpoint ${e.kind} ${e.ip}: netns '${e.netns}' already has endpoint ${nsOwner.ip} (one routed interface per namespace)`);
      byNetns.set(e.netns, e);
    }
  }
  return { ok: true, value: endpoints };
}

export interface DesiredInputs {
  configNetworks: Record<string, NetworkInput>;
  runtimeNetworks: Record<string, NetworkInput>;
  endpoints: EndpointInput[];
  /** Endpoints resolved elsewhere (libvirt domains); they take part in the set checks. */
  extraEndpoints?: Endpoint[];
}

export function resolveDesired(inputs: DesiredInputs): Result<DesiredState> {
  const networks = resolveNetworks(inputs.configNetworks, inputs.runtimeNetworks);
  if (!networks.ok) return networks;
  const endpoints: Endpoint[] = [...(inputs.extraEndpoints ?? [])];
  for (const input of inputs.endpoints) {
    const r = resolveEndpoint(input, networks.value);
    if (!r.ok) return r;
    endpoints.push(r.value);
  }
  const checked = checkEndpointSet(endpoints, networks.value);
  if (!checked.ok) return checked;
  return { ok: true, value: { networks: networks.value, endpoints, learned: [] } };
}
