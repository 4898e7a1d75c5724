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

export type EndpointSysctlField = "proxyArp" | "proxyDelay" | "rpFilter" | "forwarding" | "acceptRa6" | "forwarding6";

/** Per-interface sysctls every endpoint device must have (the IPv6 ones when the endpoint has an ip6), as /proc/sys paths. */
export function endpointSysctls(device: string, ipv6 = false): Array<{ key: string; field: EndpointSysctlField; value: string }> {
  return [
    // Answer the guest's ARP for the gateway and every other subnet address.
    { key: `net/ipv4/conf/${device}/proxy_arp`, field: "proxyArp", value: "1" },
    // Without this the kernel delays proxy ARP replies by up to 0.8 s.
    { key: `net/ipv4/neigh/${device}/proxy_delay`, field: "proxyDelay", value: "0" },
    // Strict reverse-path filtering: a workload cannot send with another workload's address.
    { key: `net/ipv4/conf/${device}/rp_filter`, field: "rpFilter", value: "1" },
    { key: `net/ipv4/conf/${device}/forwarding`, field: "forwarding", value: "1" },
    ...(ipv6 ? [
      // A router's workload port (as Felix): no RA from a guest may configure the host.
      { key: `net/ipv6/conf/${device}/accept_ra`, field: "acceptRa6" as const, value: "0" },
      { key: `net/ipv6/conf/${device}/forwarding`, field: "forwarding6" as const, value: "1" },
    ] : []),
  ];
}

export const IP_FORWARD_KEY = "net/ipv4/ip_forward";
/**
 * IPv6 forwarding is host-wide in Linux (ip6_forward checks `all`), set only
 * when a network has a prefix6. It also makes every interface ignore RAs that
 * have accept_ra=1 (an uplink that takes its default route from RAs needs
 * accept_ra=2: doctor says so; vmrouted never changes a device it does not own).
 */
export const IP6_FORWARD_KEY = "net/ipv6/conf/all/forwarding";
