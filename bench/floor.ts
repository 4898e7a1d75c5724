import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { connectGobgp, toApiPath, type GobgpClient } from "../src/bgp/gobgp.js";
import { pathFor, pathsFor } from "../src/bgp/paths.js";
import { linkLocalFromMac } from "../src/model/ipv6.js";
import type { Netns } from "../test/helpers/lab.js";

// The floor: the same kernel work vmrouted does, written by hand and run in
// one go (one `ip -batch`, one `sysctl -p`), and the same announcements in one
// AddPathStream from an already connected client. Nothing can be faster than
// this; vmrouted is measured against it.

export const ipOf = (i: number) => `172.31.${16 + Math.floor(i / 250)}.${2 + (i % 250)}`;
const macOf = (i: number) => `52:54:00:${[(i >> 16) & 255, (i >> 8) & 255, i & 255].map((b) => b.toString(16).padStart(2, "0")).join(":")}`;

/** The dual-stack part's IPv6 addresses (network prefix6 PREFIX6), one per ipOf(i). */
export const PREFIX6 = "fd31:16::/64";
export const ip6Of = (i: number) => `fd31:16::${(2 + i).toString(16)}`;

export interface FloorFiles { up: string; sysctls: string; down: string }

/**
 * The batch files for N endpoints: devices fl<i>, group 93, alias floor:…,
 * routes of protocol 93, so that the vmrouted running beside it (idle, on the
 * same host) never takes them for its own. The same work, other marks.
 */
export async function floorFiles(dir: string, n: number): Promise<FloorFiles> {
  const up: string[] = [], sysctls: string[] = [], down: string[] = [];
  for (let i = 0; i < n; i++) {
    const ip = ipOf(i), dev = `fl${i}`, mac = macOf(i);
    up.push(`tuntap add dev ${dev} mode tap one_queue vnet_hdr`,
      `link set dev ${dev} group 93 alias floor:tap:${ip} address fe${mac.slice(2)} up`,
      `route replace ${ip}/32 dev ${dev} proto 93 scope link metric 1024`,
      `neigh replace ${ip} lladdr ${mac} dev ${dev} nud permanent`);
    sysctls.push(`net.ipv4.conf.${dev}.proxy_arp = 1`, `net.ipv4.neigh.${dev}.proxy_delay = 0`,
      `net.ipv4.conf.${dev}.rp_filter = 1`, `net.ipv4.conf.${dev}.forwarding = 1`);
    down.push(`link set dev ${dev} group 92`);
  }
  down.push("link del group 92");
  const files = { up: join(dir, `floor-up-${n}`), sysctls: join(dir, `floor-sysctl-${n}`), down: join(dir, `floor-down-${n}`) };
  await Promise.all([writeFile(files.up, up.join("\n") + "\n"), writeFile(files.sysctls, sysctls.join("\n") + "\n"), writeFile(files.down, down.join("\n") + "\n")]);
  return files;
}

/**
 * The dual-stack floor's batch files: the IPv4 work of floorFiles and, per tap,
 * what vmrouted adds for an ip6 (src/dataplane/plan.ts): addrgenmode none in the
 * link set line, the EUI-64 link-local of the tap's MAC (nodad), the /128 and a
 * permanent neighbour for the ip6, and accept_ra=0 and forwarding=1. The
 * gateway's prefix6 address and net.ipv6.conf.all.forwarding are not in it: like
 * the IPv4 gateway, vmrouted sets them when it starts, not in the apply.
 */
export async function floorFilesDual(dir: string, n: number): Promise<FloorFiles> {
  const up: string[] = [], sysctls: string[] = [], down: string[] = [];
  for (let i = 0; i < n; i++) {
    const ip = ipOf(i), ip6 = ip6Of(i), dev = `fl${i}`, mac = macOf(i), hostMac = `fe${mac.slice(2)}`;
    up.push(`tuntap add dev ${dev} mode tap one_queue vnet_hdr`,
      `link set dev ${dev} group 93 alias floor:tap:${ip} address ${hostMac} addrgenmode none up`,
      `address replace ${linkLocalFromMac(hostMac)}/64 dev ${dev} nodad`,
      `route replace ${ip}/32 dev ${dev} proto 93 scope link metric 1024`,
      `neigh replace ${ip} lladdr ${mac} dev ${dev} nud permanent`,
      `route replace ${ip6}/128 dev ${dev} proto 93 metric 1024`,
      `neigh replace ${ip6} lladdr ${mac} dev ${dev} nud permanent`);
    sysctls.push(`net.ipv4.conf.${dev}.proxy_arp = 1`, `net.ipv4.neigh.${dev}.proxy_delay = 0`,
      `net.ipv4.conf.${dev}.rp_filter = 1`, `net.ipv4.conf.${dev}.forwarding = 1`,
      `net.ipv6.conf.${dev}.accept_ra = 0`, `net.ipv6.conf.${dev}.forwarding = 1`);
    down.push(`link set dev ${dev} group 92`);
  }
  down.push("link del group 92");
  const files = { up: join(dir, `floor6-up-${n}`), sysctls: join(dir, `floor6-sysctl-${n}`), down: join(dir, `floor6-down-${n}`) };
  await Promise.all([writeFile(files.up, up.join("\n") + "\n"), writeFile(files.sysctls, sysctls.join("\n") + "\n"), writeFile(files.down, down.join("\n") + "\n")]);
  return files;
}

/** A connected gobgpd client that announces or withdraws N paths in one AddPathStream. */
export class Injector {
  private constructor(private readonly client: GobgpClient, private readonly nextHop: string, private readonly nextHop6?: string) {}
  static async connect(apiSocket: string, nextHop: string, nextHop6?: string): Promise<Injector> {
    const client = connectGobgp(`unix://${apiSocket}`);
    await client.getBgp();
    return new Injector(client, nextHop, nextHop6);
  }
  send(n: number, withdraw: boolean, ipFor: (i: number) => string = ipOf): Promise<void> {
    const policy = { nextHop: this.nextHop, communities: [], migrationCommunity: "64512:666" };
    return this.client.addPathStream(Array.from({ length: n }, (_, i) => toApiPath(pathFor({ ip: ipFor(i) }, policy), withdraw)));
  }
  /** N /32s and N /128s (next hop nextHop6), in one AddPathStream. */
  sendDual(n: number, withdraw: boolean): Promise<void> {
    const policy = { nextHop: this.nextHop, nextHop6: this.nextHop6, communities: [], migrationCommunity: "64512:666" };
    return this.client.addPathStream(Array.from({ length: n }, (_, i) => pathsFor({ ip: ipOf(i), ip6: ip6Of(i) }, policy))
      .flat().map((p) => toApiPath(p, withdraw)));
  }
  close(): void {
    this.client.close();
  }
}

/** The floor for converging N: the hand batch, the sysctls, one stream; returns when `done` holds. */
export async function floorUp(host: Netns, files: FloorFiles, injector: Injector, n: number): Promise<void> {
  await host.ip(["-batch", files.up]);
  await host.exec(["sysctl", "-q", "-p", files.sysctls]);
  await injector.send(n, false);
}

export async function floorDown(host: Netns, files: FloorFiles, injector: Injector, n: number): Promise<void> {
  await host.ip(["-batch", files.down]);
  await injector.send(n, true);
}

/** The dual-stack floor for converging N: the hand batch, the sysctls, one stream of the /32s and /128s. */
export async function floorUpDual(host: Netns, files: FloorFiles, injector: Injector, n: number): Promise<void> {
  await host.ip(["-batch", files.up]);
  await host.exec(["sysctl", "-q", "-p", files.sysctls]);
  await injector.sendDual(n, false);
}

export async function floorDownDual(host: Netns, files: FloorFiles, injector: Injector, n: number): Promise<void> {
  await host.ip(["-batch", files.down]);
  await injector.sendDual(n, true);
}
