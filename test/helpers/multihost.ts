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

export interface Task { ns: Netns; ip: string }
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

  static async start(id: string, kind: ReflectorKind, o: {
    hosts?: number; tasksPerHost?: number; net?: number; daemonExtra?: Record<string, unknown>;
    /** The network with natOutgoing on every host. */
    nat?: boolean;
    /** More fabric hosts, after the others, that the reflector accepts as clients but run nothing (MultiHostLab.speakers). */
    speakers?: number;
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
      rr = await createReflector(kind, fabric.reflectorOptions());
      await rr.start();
      for (const [i, h] of fabric.hosts.slice(0, o.hosts ?? 3).entries()) {
        const n = i + 1;
        await h.gobgpd.start(["-r"]);
        const daemon = await Daemon.create(h.ns, {
          networks: o.nat ? { service: { ...NETWORK.service, natOutgoing: true } } : NETWORK, bgp: { gobgp: "127.0.0.1:50051" }, resyncSeconds: 5,
          extra: { node: { address: h.address, name: `host${n}` }, ...(o.daemonExtra ?? {}) },
        });
        hosts.push({ ...h, n, daemon, tasks: [] });
        await daemon.start();
        for (let k = 1; k <= (o.tasksPerHost ?? 2); k++) {
          const ns = await Netns.create(`${h.ns.name}t${k}`);
          const ip = MultiHostLab.taskIp(n, k);
          hosts.at(-1)!.tasks.push({ ns, ip });
          const r = await daemon.ctl(["netns", "add", ns.name, "--network", "service", "--ip", ip]);
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

  /** A host's learned routes in its kernel: prefix → next hop. */
  async learned(h: LabHost): Promise<Map<string, string>> {
    const routes = await h.ns.json<Array<{ dst: string; gateway?: string }>>(["-4", "route", "show", "proto", "96"]);
    return new Map(routes.map((r) => [r.dst.includes("/") ? r.dst : `${r.dst}/32`, r.gateway ?? ""]));
  }

  /** What every host must have learned: the other hosts' ready endpoints, each via its host. */
  async expectedLearned(h: LabHost): Promise<Map<string, string>> {
    const expected = new Map<string, string>();
    for (const other of this.hosts) {
      if (other === h) continue;
      for (const e of (await other.daemon.status()).endpoints) if (e.state === "ready") expected.set(`${e.ip}/32`, other.address);
    }
    return expected;
  }

  /** Every host's learned routes equal exactly the other hosts' ready endpoints. */
  async learnedExactly(): Promise<boolean> {
    for (const h of this.hosts) {
      const [have, want] = await Promise.all([this.learned(h), this.expectedLearned(h)]);
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

/** One ping from a namespace (true when it was answered). */
export async function pings(from: Netns, ip: string): Promise<boolean> {
  return (await from.exec(["ping", "-c", "1", "-W", "1", ip], false)).exitCode === 0;
}

/**
 * `ping -i 0.01` from a namespace while `during` runs, then until `settleMs`
 * after it: how many of the requests went unanswered (counted by ping itself).
 */
export async function lossDuring(from: Netns, ip: string, during: () => Promise<void>, settleMs = 2000): Promise<{ sent: number; lost: number }> {
  const child = execa("ip", ["netns", "exec", from.name, "ping", "-i", "0.01", "-W", "1", "-q", ip], { reject: false });
  await new Promise((r) => setTimeout(r, 500));
  await during();
  await new Promise((r) => setTimeout(r, settleMs));
  child.kill("SIGINT");
  const out = (await child).stdout;
  const m = /(\d+) packets transmitted, (\d+) (?:packets )?received/.exec(out);
  if (!m) throw new Error(`no ping summary in: ${out}`);
  return { sent: Number(m[1]), lost: Number(m[1]) - Number(m[2]) };
}
