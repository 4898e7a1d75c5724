import type { ObservedState } from "../../src/dataplane/observed.js";
import type { Operation } from "../../src/dataplane/operations.js";

// A model of the kernel for unit tests of the pure planner only: applies
// operations to an ObservedState the way the kernel would.

const SYSCTL = /^net\/ipv4\/(conf|neigh)\/([^/]+)\/(proxy_arp|proxy_delay|rp_filter|forwarding)$/;
const FIELD = { proxy_arp: "proxyArp", proxy_delay: "proxyDelay", rp_filter: "rpFilter", forwarding: "forwarding" } as const;

export function applyToModel(state: ObservedState, ops: Operation[]): ObservedState {
  const s: ObservedState = structuredClone(state);
  // ifindexes are never reused while the model lives, as in the kernel (close enough).
  let lastIndex = Math.max(1, ...[...s.links.values()].map((l) => l.ifindex ?? 0),
    ...[...s.netns.values()].map((n) => n.inner?.ifindex ?? 0));
  const dropDevice = (name: string) => {
    const link = s.links.get(name);
    s.links.delete(name);
    s.routes = s.routes.filter((r) => r.device !== name);
    s.neighbours = s.neighbours.filter((n) => n.device !== name);
    s.addresses = s.addresses.filter((a) => a.device !== name);
    s.sysctls.delete(name);
    if (link?.kind === "veth")
      for (const ns of s.netns.values()) if (ns.inner && ns.inner.ifindex === link.peerIndex) delete ns.inner, delete ns.defaultGateway;
  };
  for (const op of ops) {
    // Creating a device that exists fails in the kernel (EEXIST) and changes nothing.
    if ((op.op === "gateway.create" || op.op === "tap.create" || op.op === "veth.create") && s.links.has(op.device)) continue;
    switch (op.op) {
      case "gateway.create":
        s.links.set(op.device, { ifindex: ++lastIndex, name: op.device, kind: op.kind, group: 0, up: false, carrier: false, mac: "02:00:00:00:00:01" });
        break;
      case "tap.create":
        s.links.set(op.device, { ifindex: ++lastIndex, name: op.device, kind: "tun", tunType: "tap", vnetHdr: true, group: 0, up: false, carrier: false, mac: "02:00:00:00:00:02" });
        s.sysctls.set(op.device, { proxyArp: "0", proxyDelay: "80", rpFilter: "0", forwarding: "1" });
        break;
      case "veth.create": {
        const [host, inner] = [++lastIndex, ++lastIndex];
        s.links.set(op.device, { name: op.device, kind: "veth", peerInOtherNetns: true, group: 0, up: false, carrier: true, mac: "02:00:00:00:00:03", ifindex: host, peerIndex: inner });
        s.sysctls.set(op.device, { proxyArp: "0", proxyDelay: "80", rpFilter: "0", forwarding: "1" });
        const ns = s.netns.get(op.netns);
        if (ns) ns.inner = { up: false, addresses: [], mac: "02:00:00:00:00:04", ifindex: inner, peerIndex: host };
        break;
      }
      case "link.set": {
        const l = s.links.get(op.device);
        if (!l) break;
        if (op.group !== undefined) l.group = op.group;
        if (op.alias !== undefined) l.alias = op.alias;
        if (op.mac !== undefined) l.mac = op.mac;
        if (op.up) l.up = true;
        break;
      }
      case "link.delete":
        dropDevice(op.device);
        break;
      case "link.delete-group":
        for (const l of [...s.links.values()]) if (l.group === op.group) dropDevice(l.name);
        break;
      case "address.replace": {
        const [ip, len] = op.cidr.split("/");
        s.addresses = s.addresses.filter((a) => !(a.device === op.device && a.ip === ip));
        s.addresses.push({ device: op.device, ip: ip!, prefixLength: Number(len), noprefixroute: true });
        break;
      }
      case "address.delete":
        s.addresses = s.addresses.filter((a) => !(a.device === op.device && `${a.ip}/${a.prefixLength}` === op.cidr));
        break;
      case "route.replace":
        s.routes = s.routes.filter((r) => r.dst !== op.dst);
        s.routes.push({ dst: op.dst, device: op.device, protocol: op.protocol, scope: 253, type: "unicast" });
        break;
      case "route.delete":
        s.routes = s.routes.filter((r) => !(r.dst === op.dst && r.protocol === op.protocol && (!op.device || r.device === op.device)));
        break;
      case "neighbour.replace":
        s.neighbours = s.neighbours.filter((n) => !(n.device === op.device && n.ip === op.ip));
        s.neighbours.push({ device: op.device, ip: op.ip, mac: op.mac, permanent: true });
        break;
      case "neighbour.delete":
        s.neighbours = s.neighbours.filter((n) => !(n.device === op.device && n.ip === op.ip));
        break;
      case "sysctl.set": {
        if (op.key === "net/ipv4/ip_forward") {
          s.ipForward = op.value;
          break;
        }
        const m = SYSCTL.exec(op.key);
        if (!m) throw new Error(`unexpected sysctl ${op.key}`);
        const entry = s.sysctls.get(m[2]!) ?? {};
        entry[FIELD[m[3] as keyof typeof FIELD]] = op.value;
        s.sysctls.set(m[2]!, entry);
        break;
      }
      case "netns.configure": {
        const ns = s.netns.get(op.netns);
        if (!ns?.inner) break;
        ns.inner = { ...ns.inner, alias: op.alias, mac: op.mac, up: true, addresses: [op.cidr] };
        ns.defaultGateway = op.gateway;
        break;
      }
    }
  }
  return s;
}
