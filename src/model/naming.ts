import { createHash } from "node:crypto";

/** Linux IFNAMSIZ is 16 including the terminating NUL. */
export const MAX_IFNAME = 15;
export const GATEWAY_PREFIX = "virgw-";
export const TAP_PREFIX = "tap-";
export const VETH_PREFIX = "veth-";
export const MAX_NETWORK_NAME = MAX_IFNAME - GATEWAY_PREFIX.length;

const NETWORK_NAME = /^[a-z][a-z0-9-]*$/;
const IFNAME = /^[A-Za-z0-9][A-Za-z0-9_.-]*$/;
const NETNS_NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;

/**
 * Prefixes we refuse for a tap name given by the operator: our own gateway
 * devices, and the names libvirt generates for itself (libvirt rejects a
 * target dev starting with vnet/vif/macvtap/macvlan as "reserved").
 */
export const RESERVED_IFNAME_PREFIXES = [GATEWAY_PREFIX, "vnet", "vif", "macvtap", "macvlan", VETH_PREFIX, "lo"];

export function gatewayDevice(network: string): string {
  return GATEWAY_PREFIX + network;
}

function shortHash(text: string): string {
  return createHash("sha256").update(text).digest("hex").slice(0, 10);
}

/**
 * Deterministic device names: a function of network and IP only, so the name
 * recorded in a domain's XML can be created on whichever host the domain moves to.
 */
export function tapName(network: string, ip: string): string {
  return `${TAP_PREFIX}${shortHash(`${network}/${ip}`)}`;
}

export function vethName(network: string, ip: string): string {
  return `${VETH_PREFIX}${shortHash(`${network}/${ip}`)}`;
}

export function networkNameProblem(name: string): string | undefined {
  if (name.length === 0) return "is empty";
  if (name.length > MAX_NETWORK_NAME)
    return `is longer than ${MAX_NETWORK_NAME} characters (the device virgw-<name> must fit in ${MAX_IFNAME})`;
  if (!NETWORK_NAME.test(name)) return "must start with a lowercase letter and contain only a-z, 0-9 and '-'";
  return undefined;
}

export function tapNameProblem(name: string): string | undefined {
  if (name.length === 0) return "is empty";
  if (name.length > MAX_IFNAME) return `is longer than ${MAX_IFNAME} characters`;
  if (!IFNAME.test(name)) return "may contain only letters, digits, '_', '.' and '-' and must start with a letter or digit";
  const reserved = RESERVED_IFNAME_PREFIXES.find((prefix) => name.startsWith(prefix));
  if (reserved) return `uses the reserved prefix '${reserved}'`;
  return undefined;
}

export function netnsNameProblem(name: string): string | undefined {
  if (!NETNS_NAME.test(name)) return "must be 1-64 characters of letters, digits, '_', '.' and '-'";
  return undefined;
}
