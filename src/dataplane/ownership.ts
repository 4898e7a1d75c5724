// How vmrouted recognises what it owns (DESIGN.md "ownership marker").

export const ALIAS_PREFIX = "vmrouted:";

export function endpointAlias(endpointId: string): string {
  return `${ALIAS_PREFIX}${endpointId}`;
}

export function gatewayAlias(network: string): string {
  return `${ALIAS_PREFIX}gateway:${network}`;
}

export function isOwnedAlias(alias: string | undefined): alias is string {
  return alias !== undefined && alias.startsWith(ALIAS_PREFIX);
}

export function isGatewayAlias(alias: string | undefined): boolean {
  return alias !== undefined && alias.startsWith(`${ALIAS_PREFIX}gateway:`);
}

/** Per-interface sysctls every endpoint device must have, as /proc/sys paths relative to net/ipv4. */
export function endpointSysctls(device: string): Array<{ key: string; field: "proxyArp" | "proxyDelay" | "rpFilter" | "forwarding"; value: string }> {
  return [
    // Answer the guest's ARP for the gateway and every other subnet address.
    { key: `net/ipv4/conf/${device}/proxy_arp`, field: "proxyArp", value: "1" },
    // Without this the kernel delays proxy ARP replies by up to 0.8 s.
    { key: `net/ipv4/neigh/${device}/proxy_delay`, field: "proxyDelay", value: "0" },
    // Strict reverse-path filtering: a workload cannot send with another workload's address.
    { key: `net/ipv4/conf/${device}/rp_filter`, field: "rpFilter", value: "1" },
    { key: `net/ipv4/conf/${device}/forwarding`, field: "forwarding", value: "1" },
  ];
}

export const IP_FORWARD_KEY = "net/ipv4/ip_forward";
