// The vocabulary of changes vmrouted makes to a host. Every operation names the
// subject it is for (an endpoint id or `gateway:<network>`) so that a failure
// can be reported against the right endpoint.

export type Operation = { subject: string } & (
  | { op: "gateway.create"; device: string; kind: "dummy" | "bridge" }
  | { op: "tap.create"; device: string }
  | { op: "veth.create"; device: string; netns: string; inner: string }
  | { op: "link.set"; device: string; group?: number; alias?: string; mac?: string; mtu?: number; up?: boolean; addrGenNone?: boolean }
  | { op: "link.delete"; device: string }
  | { op: "link.delete-group"; group: number }
  | { op: "address.replace"; device: string; cidr: string; linkLocal?: boolean }
  | { op: "address.delete"; device: string; cidr: string }
  | { op: "route.replace"; dst: string; device?: string; via?: string; protocol: number; metric: number }
  | { op: "route.delete"; dst: string; device?: string; via?: string; protocol: number; metric?: number }
  | { op: "neighbour.replace"; device: string; ip: string; mac: string }
  | { op: "neighbour.delete"; device: string; ip: string }
  | { op: "sysctl.set"; key: string; value: string }
  | {
    op: "netns.configure"; netns: string; device: string; alias: string; mac: string; mtu: number; cidr: string; gateway: string;
    /** With an ip6: its /128 and the IPv6 default route via the host end's link-local address. */
    cidr6?: string; gateway6?: string;
  }
);

export type OperationKind = Operation["op"];

/** Renders the operations that go through `ip -batch` (everything but sysctls and netns insides). */
export function renderBatchLine(op: Operation): string | undefined {
  switch (op.op) {
    case "gateway.create":
      return `link add ${op.device} type ${op.kind}`;
    case "tap.create":
      return `tuntap add dev ${op.device} mode tap one_queue vnet_hdr`;
    case "veth.create":
      return `link add ${op.device} type veth peer name ${op.inner} netns ${op.netns}`;
    case "link.set": {
      const parts = [`link set dev ${op.device}`];
      if (op.group !== undefined) parts.push(`group ${op.group}`);
      if (op.alias !== undefined) parts.push(`alias ${op.alias}`);
      if (op.mac !== undefined) parts.push(`address ${op.mac}`);
      if (op.mtu !== undefined) parts.push(`mtu ${op.mtu}`);
      // No link-local of the kernel's choosing (addr_gen_mode may be stable_secret or random on
      // this host): vmrouted adds the EUI-64 one itself, the same on every host. A new tap has
      // no carrier until qemu opens it, so the mode is set before the kernel would make one.
      if (op.addrGenNone) parts.push("addrgenmode none");
      if (op.up) parts.push("up");
      return parts.join(" ");
    }
    case "link.delete":
      return `link del dev ${op.device}`;
    case "link.delete-group":
      return `link del group ${op.group}`;
    case "address.replace":
      // A workload device's link-local gateway: its fe80::/64 route is needed to reach the
      // guest's link-local address; nodad: usable at once, and it is unique by construction.
      if (op.linkLocal) return `address replace ${op.cidr} dev ${op.device} nodad`;
      // noprefixroute: the kernel adds no connected route for the gateway
      // subnet, not now and not when the device flaps (a deleted connected
      // route would otherwise come back on every link up).
      // IPv6 (a gateway's prefix6 base): nodad, in place at once and unique by construction.
      return `address replace ${op.cidr} dev ${op.device} noprefixroute${op.cidr.includes(":") ? " nodad" : ""}`;
    case "address.delete":
      return `address del ${op.cidr} dev ${op.device}`;
    case "route.replace":
      // An endpoint route goes to its device (scope link); a learned one via another host's address.
      // IPv6 routes have no scope (the kernel ignores it and shows none).
      return op.via !== undefined
        ? `route replace ${op.dst} via ${op.via} proto ${op.protocol} metric ${op.metric}`
        : `route replace ${op.dst} dev ${op.device} proto ${op.protocol}${op.dst.includes(":") ? "" : " scope link"} metric ${op.metric}`;
    case "route.delete":
      return `route del ${op.dst}${op.via !== undefined ? ` via ${op.via}` : ""}${op.device ? ` dev ${op.device}` : ""} proto ${op.protocol}` +
        (op.metric !== undefined ? ` metric ${op.metric}` : "");
    case "neighbour.replace":
      return `neigh replace ${op.ip} lladdr ${op.mac} dev ${op.device} nud permanent`;
    case "neighbour.delete":
      return `neigh del ${op.ip} dev ${op.device}`;
    case "sysctl.set":
    case "netns.configure":
      return undefined;
  }
}

/** The lines run inside a netns endpoint's namespace (`ip -n NS -batch -`). */
export function renderNetnsLines(op: Extract<Operation, { op: "netns.configure" }>): string[] {
  return [
    "link set dev lo up",
    `link set dev ${op.device} alias ${op.alias} address ${op.mac} mtu ${op.mtu} up`,
    `address replace ${op.cidr} dev ${op.device}`,
    `route replace default via ${op.gateway} dev ${op.device}`,
    // The family follows from the addresses (a batch has no -6); the /128 needs no DAD: it is the workload's alone.
    ...(op.cidr6 && op.gateway6 ? [`address replace ${op.cidr6} dev ${op.device} nodad`, `route replace default via ${op.gateway6} dev ${op.device}`] : []),
  ];
}
