import { readFile, writeFile } from "node:fs/promises";
import { execa } from "execa";
import { Daemon, Netns, waitFor } from "./lab.js";
import { createReflector, Fabric, type FabricHost, type Reflector, type ReflectorKind } from "./reflectors.js";

// Several hosts on one fabric (reflectors.ts's Fabric: a bridge in its own
// namespace, a veth into each host and the reflector), each host running its
// own gobgpd (templates/gobgpd.toml, started with -r as the systemd drop-in
// does) and its own vmrouted, with task namespaces as workloads on the same
// network 172.31.16.0/24 everywhere.
//
// Lab timers: BGP hold 9 s (keepalive 3 s) and a graceful-restart time of
// 20 s instead of the template's 30 s and 30 s, so that a dead host's paths
// are gone in half a minute, not a whole one (the restart time must still
// cover a gobgpd restart: its first dial alone waits 5-9 s). Nothing else
// differs from the templates.

export const NETWORK = { service: { gateway: "172.31.16.1/24" } };
export const GATEWAY = "172.31.16.1";
/** The network's IPv6 prefix in a dual-stack lab. */
export const PREFIX6 = "fd31:16::/64";

export interface Task { ns: Netns; ip: string; ip6?: string }
export interface LabHost extends FabricHost {
  n: number;
  daemon: Daemon;
  tasks: Task[];
}

export class MultiHostLab {
  private constructor(
    readonly fabric: Fabric, readonly rr: Reflector, readonly hosts: LabHost[],
    /** Fabric hosts the reflector accepts that run neither gobgpd nor vmrouted (another BGP speaker's place). */
    readonly speakers: FabricHost[] = [],
  ) {}

  /** taskIp(n, k): the k-th task of host n. */
  static taskIp(n: number, k: number): string {
    return `172.31.16.${n * 10 + k}`;
  }

  /** taskIp6(n, k): the k-th task's IPv6 address in a dual-stack lab. */
  static taskIp6(n: number, k: number): string {
    return `fd31:16::${n * 10 + k}`;
  }

  /** Every host has node.address6, the network a prefix6 and every task an ip6. */
  get dualStack(): boolean {
    return this.hosts.some((h) => h.tasks.some((t) => t.ip6 !== undefined));
  }

  static async start(id: string, kind: ReflectorKind, o: {
    hosts?: number; tasksPerHost?: number; net?: number; daemonExtra?: Record<string, unknown>;
    /** The network with natOutgoing on every host. */
    nat?: boolean;
    /** More fabric hosts, after the others, that the reflector accepts as clients but run nothing (MultiHostLab.speakers). */
    speakers?: number;
    /** IPv6 too: node.address6 (the host's fabric IPv6 address), the network's prefix6, an ip6 per task. */
    dualStack?: boolean;
    /** BIRD only: the reflector configured without its IPv6 channel (one from before dual stack). */
    reflectorWithoutIpv6?: boolean;
  } = {}): Promise<MultiHostLab> {
    const fabric = await Fabric.create(id, (o.hosts ?? 3) + (o.speakers ?? 0), o.net ?? 97);
    const speakers = fabric.hosts.slice(o.hosts ?? 3);
    let rr: Reflector | undefined;
    const hosts: LabHost[] = [];
    try {
      for (const h of fabric.hosts.slice(0, o.hosts ?? 3)) {
        const text = await readFile(h.gobgpd.configPath, "utf8");
        await writeFile(h.gobgpd.configPath, text.replace(/hold-time = 30/, "hold-time = 9")
          .replace(/keepalive-interval = 10/, "keepalive-interval = 3").replace(/restart-time = 30/, "restart-time = 20"));
      }
      rr = await createReflector(kind, { ...fabric.reflectorOptions(), ...(o.reflectorWithoutIpv6 ? { withoutIpv6: true } : {}) });
      await rr.start();
      for (const [i, h] of fabric.hosts.slice(0, o.hosts ?? 3).entries()) {
        const n = i + 1;
        await h.gobgpd.start(["-r"]);
        const service = { ...NETWORK.service, ...(o.nat ? { natOutgoing: true } : {}), ...(o.dualStack ? { prefix6: PREFIX6 } : {}) };
        const daemon = await Daemon.create(h.ns, {
          networks: { service }, bgp: { gobgp: "127.0.0.1:50051" }, resyncSeconds: 5,
          extra: { node: { address: h.address, ...(o.dualStack ? { address6: h.address6 } : {}), name: `host${n}` }, ...(o.daemonExtra ?? {}) },
        });
        hosts.push({ ...h, n, daemon, tasks: [] });
        await daemon.start();
        for (let k = 1; k <= (o.tasksPerHost ?? 2); k++) {
          const ns = await Netns.create(`${h.ns.name}t${k}`);
          const ip = MultiHostLab.taskIp(n, k);
          const ip6 = o.dualStack ? MultiHostLab.taskIp6(n, k) : undefined;
          hosts.at(-1)!.tasks.push({ ns, ip, ...(ip6 ? { ip6 } : {}) });
          const r = await daemon.ctl(["netns", "add", ns.name, "--network", "service", "--ip", ip, ...(ip6 ? ["--ip6", ip6] : [])]);
          if (r.exitCode !== 0) throw new Error(`netns add on host ${n}: ${r.stderr}`);
        }
      }
      const lab = new MultiHostLab(fabric, rr, hosts, speakers);
      await waitFor(async () => (await Promise.all(hosts.map((h) => rr!.sessionEstablished(h.address)))).every(Boolean), 60000, `${kind}: every host's session`);
      return lab;
    } catch (e) {
      await new MultiHostLab(fabric, rr ?? ({ destroy: async () => undefined } as Reflector), hosts).destroy();
      throw e;
    }
  }

  host(n: number): LabHost {
    return this.hosts[n - 1]!;
  }

  /** A host's learned routes of one family in its kernel: prefix → next hop. */
  async learned(h: LabHost, family: "ipv4" | "ipv6" = "ipv4"): Promise<Map<string, string>> {
    const v6 = family === "ipv6";
    const routes = await h.ns.json<Array<{ dst: string; gateway?: string }>>([v6 ? "-6" : "-4", "route", "show", "proto", "96"]);
    return new Map(routes.map((r) => [r.dst.includes("/") ? r.dst : `${r.dst}/${v6 ? 128 : 32}`, r.gateway ?? ""]));
  }

  /** What every host must have learned, per family: the other hosts' ready endpoints, each via its host's address of that family. */
  async expectedLearned(h: LabHost, family: "ipv4" | "ipv6" = "ipv4"): Promise<Map<string, string>> {
    const expected = new Map<string, string>();
    for (const other of this.hosts) {
      if (other === h) continue;
      for (const e of (await other.daemon.status()).endpoints) {
        if (e.state !== "ready") continue;
        if (family === "ipv4") expected.set(`${e.ip}/32`, other.address);
        else if (e.ip6 !== undefined) expected.set(`${e.ip6}/128`, other.address6);
      }
    }
    return expected;
  }

  /** Every host's learned routes equal exactly the other hosts' ready endpoints (in each family the lab has). */
  async learnedExactly(): Promise<boolean> {
    for (const family of this.dualStack ? (["ipv4", "ipv6"] as const) : (["ipv4"] as const))
      for (const h of this.hosts) {
        const [have, want] = await Promise.all([this.learned(h, family), this.expectedLearned(h, family)]);
        if (JSON.stringify([...have].sort()) !== JSON.stringify([...want].sort())) return false;
      }
    return true;
  }

  async destroy(): Promise<void> {
    for (const h of this.hosts) {
      h.daemon.child?.kill("SIGCONT");
      await h.daemon.cleanup();
      for (const t of h.tasks) await t.ns.destroy();
    }
    await this.rr.destroy();
    await this.fabric.destroy();
  }
}

/** One ping from a namespace (true when it was answered); IPv6 for an IPv6 address. */
export async function pings(from: Netns, ip: string): Promise<boolean> {
  return (await from.exec(["ping", ...(ip.includes(":") ? ["-6"] : []), "-c", "1", "-W", "1", ip], false)).exitCode === 0;
}

/**
 * `ping -i 0.01` from a namespace while `during` runs, then until `settleMs`
 * after it: how many of the requests went unanswered (counted by ping itself).
 */
export async function lossDuring(from: Netns, ip: string, during: () => Promise<void>, settleMs = 2000): Promise<{ sent: number; lost: number }> {
  return (await lossesDuring(from, [ip], during, settleMs))[0]!;
}

/** lossDuring for several addresses at once (a dual-stack workload's IPv4 and IPv6), each counted by its own ping. */
export async function lossesDuring(from: Netns, ips: string[], during: () => Promise<void>, settleMs = 2000): Promise<Array<{ sent: number; lost: number }>> {
  const children = ips.map((ip) =>
    execa("ip", ["netns", "exec", from.name, "ping", ...(ip.includes(":") ? ["-6"] : []), "-i", "0.01", "-W", "1", "-q", ip], { reject: false }));
  await new Promise((r) => setTimeout(r, 500));
  try {
    await during();
    await new Promise((r) => setTimeout(r, settleMs));
  } finally {
    for (const c of children) c.kill("SIGINT");
  }
  return Promise.all(children.map(async (child) => {
    const out = (await child).stdout;
    const m = /(\d+) packets transmitted, (\d+) (?:packets )?received/.exec(out);
    if (!m) throw new Error(`no ping summary in: ${out}`);
    return { sent: Number(m[1]), lost: Number(m[1]) - Number(m[2]) };
  }));
}
