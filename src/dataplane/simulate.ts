import type { ObservedAddress, ObservedLink, ObservedNeighbour, ObservedRoute, ObservedState } from "./observed.js";
import type { Operation } from "./operations.js";
import { DEFAULT_MTU } from "./check.js";

// Pure: what the kernel looks like after a batch ran without errors. The
// reconciler trusts a successful batch instead of reading the kernel again
// (one observation per pass); the unit tests use the same model as their kernel.
// Anything a batch reported as failed is read again, not simulated.
// Linear in the size of the state plus the batch: a pass may apply 50,000 routes.

const SYSCTL = /^net\/(ipv4|ipv6)\/(conf|neigh)\/([^/]+)\/(proxy_arp|proxy_delay|rp_filter|forwarding|accept_ra)$/;
const FIELD = {
  "ipv4 proxy_arp": "proxyArp", "ipv4 proxy_delay": "proxyDelay", "ipv4 rp_filter": "rpFilter", "ipv4 forwarding": "forwarding",
  "ipv6 accept_ra": "acceptRa6", "ipv6 forwarding": "forwarding6",
} as const;

/** The kernel's key of a route in one table: destination and metric (replace overwrites whatever has both). */
const routeKey = (dst: string, metric: number) => `${dst} ${metric}`;

export function simulate(state: ObservedState, ops: Operation[]): ObservedState {
  const links = new Map(state.links);
  const routes = new Map<string, ObservedRoute[]>();
  for (const r of state.routes) push(routes, routeKey(r.dst, r.metric), r);
  const neighbours = new Map<string, ObservedNeighbour[]>();
  for (const n of state.neighbours) push(neighbours, n.device, n);
  const addresses = new Map<string, ObservedAddress[]>();
  for (const a of state.addresses) push(addresses, a.device, a);
  const sysctls = new Map(state.sysctls);
  const netns = new Map(state.netns);
  let ipForward = state.ipForward;
  let ip6Forward = state.ip6Forward;
  // ifindexes are never reused while the model lives, as in the kernel (close enough).
  let lastIndex = 1;
  for (const l of links.values()) lastIndex = Math.max(lastIndex, l.ifindex ?? 0);
  for (const n of netns.values()) lastIndex = Math.max(lastIndex, n.inner?.ifindex ?? 0);

  const editLink = (name: string, edit: (l: ObservedLink) => void) => {
    const l = links.get(name);
    if (!l) return;
    const copy = { ...l };
    edit(copy);
    links.set(name, copy);
  };
  const dropDevices = (names: Set<string>) => {
    for (const [key, list] of routes) {
      const kept = list.filter((r) => r.device === undefined || !names.has(r.device));
      if (kept.length !== list.length) kept.length ? routes.set(key, kept) : routes.delete(key);
    }
    for (const name of names) {
      const link = links.get(name);
      links.delete(name);
      neighbours.delete(name);
      addresses.delete(name);
      sysctls.delete(name);
      if (link?.kind === "veth")
        for (const [nsName, ns] of netns)
          if (ns.inner && ns.inner.ifindex === link.peerIndex) netns.set(nsName, { exists: ns.exists });
    }
  };

  for (const op of ops) {
    // Creating a device that exists fails in the kernel (EEXIST) and changes nothing.
    if ((op.op === "gateway.create" || op.op === "tap.create" || op.op === "veth.create") && links.has(op.device)) continue;
    switch (op.op) {
      case "gateway.create":
        links.set(op.device, { ifindex: ++lastIndex, name: op.device, kind: op.kind, group: 0, up: false, carrier: false, mac: "02:00:00:00:00:01", mtu: DEFAULT_MTU });
        sysctls.set(op.device, { acceptRa6: "1" });
        break;
      case "tap.create":
        links.set(op.device, { ifindex: ++lastIndex, name: op.device, kind: "tun", tunType: "tap", vnetHdr: true, group: 0, up: false, carrier: false, mac: "02:00:00:00:00:02", mtu: DEFAULT_MTU });
        sysctls.set(op.device, { proxyArp: "0", proxyDelay: "80", rpFilter: "0", forwarding: "1", acceptRa6: "1", forwarding6: "0" });
        break;
      case "veth.create": {
        const [host, inner] = [++lastIndex, ++lastIndex];
        links.set(op.device, { name: op.device, kind: "veth", peerInOtherNetns: true, group: 0, up: false, carrier: true, mac: "02:00:00:00:00:03", mtu: DEFAULT_MTU, ifindex: host, peerIndex: inner });
        sysctls.set(op.device, { proxyArp: "0", proxyDelay: "80", rpFilter: "0", forwarding: "1", acceptRa6: "1", forwarding6: "0" });
        const ns = netns.get(op.netns);
        if (ns) netns.set(op.netns, { ...ns, inner: { up: false, addresses: [], mac: "02:00:00:00:00:04", mtu: DEFAULT_MTU, ifindex: inner, peerIndex: host } });
        break;
      }
      case "link.set":
        editLink(op.device, (l) => {
          if (op.group !== undefined) l.group = op.group;
          if (op.alias !== undefined) l.alias = op.alias;
          if (op.mac !== undefined) l.mac = op.mac;
          if (op.mtu !== undefined) l.mtu = op.mtu;
          if (op.up) l.up = true;
        });
        break;
      case "link.delete":
        dropDevices(new Set([op.device]));
        break;
      case "link.delete-group":
        dropDevices(new Set([...links.values()].filter((l) => l.group === op.group).map((l) => l.name)));
        break;
      case "address.replace": {
        const [ip, len] = op.cidr.split("/");
        const kept = (addresses.get(op.device) ?? []).filter((a) => a.ip !== ip);
        addresses.set(op.device, [...kept, { device: op.device, ip: ip!, prefixLength: Number(len), noprefixroute: !op.linkLocal }]);
        break;
      }
      case "address.delete":
        addresses.set(op.device, (addresses.get(op.device) ?? []).filter((a) => `${a.ip}/${a.prefixLength}` !== op.cidr));
        break;
      case "route.replace":
        routes.set(routeKey(op.dst, op.metric), [op.via !== undefined
          ? { dst: op.dst, gateway: op.via, protocol: op.protocol, scope: 0, type: "unicast", metric: op.metric }
          : { dst: op.dst, ...(op.device ? { device: op.device } : {}), protocol: op.protocol, scope: 253, type: "unicast", metric: op.metric }]);
        break;
      case "route.delete": {
        const matches = (r: ObservedRoute) => r.dst === op.dst && r.protocol === op.protocol && (!op.device || r.device === op.device) &&
          (op.via === undefined || r.gateway === op.via) && (op.metric === undefined || r.metric === op.metric);
        const keys = op.metric !== undefined ? [routeKey(op.dst, op.metric)] : [...routes.keys()].filter((k) => k.startsWith(`${op.dst} `));
        for (const key of keys) {
          const kept = (routes.get(key) ?? []).filter((r) => !matches(r));
          if (kept.length) routes.set(key, kept);
          else routes.delete(key);
        }
        break;
      }
      case "neighbour.replace":
        neighbours.set(op.device, [...(neighbours.get(op.device) ?? []).filter((n) => n.ip !== op.ip), { device: op.device, ip: op.ip, mac: op.mac, permanent: true }]);
        break;
      case "neighbour.delete":
        neighbours.set(op.device, (neighbours.get(op.device) ?? []).filter((n) => n.ip !== op.ip));
        break;
      case "sysctl.set": {
        if (op.key === "net/ipv4/ip_forward") {
          ipForward = op.value;
          break;
        }
        if (op.key === "net/ipv6/conf/all/forwarding") {
          ip6Forward = op.value;
          break;
        }
        const m = SYSCTL.exec(op.key);
        const field = m ? FIELD[`${m[1]} ${m[4]}` as keyof typeof FIELD] : undefined;
        if (!m || !field) throw new Error(`unexpected sysctl ${op.key}`);
        sysctls.set(m[3]!, { ...sysctls.get(m[3]!), [field]: op.value });
        break;
      }
      case "netns.configure": {
        const ns = netns.get(op.netns);
        if (!ns?.inner) break;
        netns.set(op.netns, {
          ...ns, inner: { ...ns.inner, alias: op.alias, mac: op.mac, mtu: op.mtu, up: true, addresses: [op.cidr, ...(op.cidr6 ? [op.cidr6] : [])] },
          defaultGateway: op.gateway, ...(op.gateway6 ? { defaultGateway6: op.gateway6 } : {}),
        });
        break;
      }
    }
  }
  return {
    links, sysctls, netns,
    routes: [...routes.values()].flat(),
    neighbours: [...neighbours.values()].flat(),
    addresses: [...addresses.values()].flat(),
    ...(ipForward !== undefined ? { ipForward } : {}),
    ...(ip6Forward !== undefined ? { ip6Forward } : {}),
    ...(state.adoptable ? { adoptable: state.adoptable } : {}),
  };
}

function push<K, V>(map: Map<K, V[]>, key: K, value: V): void {
  const list = map.get(key);
  if (list) list.push(value);
  else map.set(key, [value]);
}
