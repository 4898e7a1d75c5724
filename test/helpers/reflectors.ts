import { spawn, type ChildProcess } from "node:child_process";
import { chmod, chown, mkdir, mkdtemp, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { connectGobgp, type GobgpClient } from "../../src/bgp/gobgp.js";
import { LAB_BGP_PASSWORD, renderHostBlock, renderTemplate } from "./bgp-lab.js";
import { Netns, sh, stopChild, waitFor } from "./lab.js";

// Route reflectors of three makes (BIRD 2, FRR 8.4, gobgpd), each started in
// a namespace a test gives, from the project's templates (so the templates are
// what the tests prove), and read through its own CLI. Also: a fabric of host
// namespaces on one bridge, and gobgpd run as a host from templates/gobgpd.toml.
// Every process is started by this code and stopped by its pid; every file is
// in a temp dir; the root namespace is never touched. Every session is
// authenticated with TCP MD5: reflectors and hosts are rendered with
// LAB_BGP_PASSWORD unless told otherwise.

export { LAB_BGP_PASSWORD };

export type ReflectorKind = "bird" | "frr" | "gobgp";
/** A unicast address family, as the reflectors' CLIs name it. */
export type Family = "ipv4" | "ipv6";
export const REFLECTOR_KINDS: ReflectorKind[] = ["bird", "frr", "gobgp"];

/** One path a reflector holds for a prefix: its BGP next hop and the peer it came from. */
export interface ReflectedPath { nextHop: string; peer: string; stale?: boolean }

export interface ReflectorOptions {
  ns: Netns;
  /** The reflector's address on the fabric (already configured in ns). */
  address: string;
  /** The hosts' addresses (BIRD and gobgpd need one block per host). */
  hosts: string[];
  /** A prefix covering the hosts (FRR accepts any host in it). */
  hostsPrefix: string;
  asn: string;
  /** The TCP MD5 password (BGP_PASSWORD); LAB_BGP_PASSWORD by default. */
  password?: string;
  /** BIRD only: the template without its ipv6 channel (a reflector configured before dual stack). */
  withoutIpv6?: boolean;
}

/**
 * The first host fills the template's own per-host block (NODE_ADDRESS); each
 * further host gets that block again (renderHostBlock), as the templates say.
 */
async function renderPerHost(name: string, o: ReflectorOptions, perHost: (block: string, n: number) => string = (b) => b): Promise<string> {
  if (!o.hosts.length) throw new Error(`${name}: no hosts`);
  const all = { ASN: o.asn, RR_ADDRESS: o.address, BGP_PASSWORD: o.password ?? LAB_BGP_PASSWORD };
  const more: string[] = [];
  for (const [i, h] of o.hosts.slice(1).entries()) more.push(perHost(await renderHostBlock(name, { ...all, NODE_ADDRESS: h }), i + 2));
  return renderTemplate(name, { ...all, NODE_ADDRESS: o.hosts[0]! }, more.join(""));
}

export interface Reflector {
  readonly kind: ReflectorKind;
  readonly address: string;
  /** Starts the daemon(s) and waits until its control interface answers. */
  start(): Promise<void>;
  /** Stops the daemon(s) by pid: the signal, then SIGKILL after 5 s. */
  stop(signal?: NodeJS.Signals): Promise<void>;
  /** prefix → the paths the reflector holds for it (every path, not only its best), of one family (IPv4 unicast by default). */
  routes(family?: Family): Promise<Map<string, ReflectedPath[]>>;
  /**
   * Withdrawals the reflector has received from this host in UPDATE messages,
   * as the daemon counts them (see each implementation for the source and
   * when it starts again from zero). Paths dropped because a session went
   * down, or because a restarted peer's End-of-RIB did not refresh them, are
   * not received withdrawals and are not counted: tests watch for those by
   * sampling routes() and the other hosts' tables.
   */
  withdrawCount(peer: string): Promise<number>;
  sessionEstablished(peer: string): Promise<boolean>;
  /** What the daemons wrote (stdout/stderr, logs), for failure messages. */
  log(): Promise<string>;
  /** Stops everything and removes its files (not the namespace: the test owns it). */
  destroy(): Promise<void>;
}

/** A foreground process run in a namespace with `ip netns exec` (which execs: the child's pid is the daemon's). */
export class Proc {
  child: ChildProcess | undefined;
  output = "";
  constructor(readonly what: string, private readonly argv: () => string[]) {}
  start(): void {
    const [cmd, ...args] = this.argv();
    const child = spawn(cmd!, args, { stdio: ["ignore", "pipe", "pipe"] });
    child.stdout!.on("data", (c: Buffer) => (this.output += c.toString()));
    child.stderr!.on("data", (c: Buffer) => (this.output += c.toString()));
    child.on("exit", (code, signal) => (this.output += `\n[${this.what} exited: ${code ?? signal}]\n`));
    this.child = child;
  }
  get running(): boolean {
    return !!this.child && this.child.exitCode === null && this.child.signalCode === null;
  }
  get pid(): number | undefined {
    return this.child?.pid;
  }
  async stop(signal: NodeJS.Signals = "SIGTERM"): Promise<void> {
    await stopChild(this.child, signal);
    this.child = undefined;
  }
}

async function assertRunning(procs: Proc[]): Promise<void> {
  for (const p of procs) if (!p.running) throw new Error(`${p.what} is not running:\n${p.output}`);
}

// --- BIRD ------------------------------------------------------------------

class BirdReflector implements Reflector {
  readonly kind = "bird" as const;
  readonly address: string;
  private readonly bird: Proc;
  private readonly socket: string;
  private constructor(private readonly o: ReflectorOptions, private readonly dir: string) {
    this.address = o.address;
    this.socket = join(dir, "bird.ctl");
    this.bird = new Proc("bird", () => ["ip", "netns", "exec", o.ns.name, "bird", "-f", "-c", join(dir, "bird.conf"), "-s", this.socket, "-P", join(dir, "bird.pid")]);
  }

  /** templates/bird-rr.conf has one host block (host1 = NODE_ADDRESS); more hosts get the same block (host2, ...), as its comment says. */
  static async create(o: ReflectorOptions): Promise<BirdReflector> {
    const dir = await mkdtemp(join(tmpdir(), "vmrouted-rr-bird-"));
    let conf = await renderPerHost("bird-rr.conf", o, (block, n) => block.replace(/protocol bgp host1 /, `protocol bgp host${n} `));
    if (o.withoutIpv6) {
      const without = conf.replace(/\n  ipv6 \{[\s\S]*?\n  \};\n/, "\n");
      if (without === conf) throw new Error("bird-rr.conf: no ipv6 channel to leave out");
      conf = without;
    }
    await writeFile(join(dir, "bird.conf"), conf);
    await sh("bird", ["-p", "-c", join(dir, "bird.conf")]);
    return new BirdReflector(o, dir);
  }

  private protocol(peer: string): string {
    const i = this.o.hosts.indexOf(peer);
    if (i < 0) throw new Error(`BIRD: ${peer} is not a configured host`);
    return `host${i + 1}`;
  }
  private birdc(args: string[]) {
    return sh("birdc", ["-s", this.socket, ...args], { reject: false });
  }

  async start(): Promise<void> {
    this.bird.start();
    await waitFor(async () => {
      await assertRunning([this.bird]);
      return (await this.birdc(["show", "status"])).exitCode === 0;
    }, 15000, "BIRD");
  }
  stop(signal: NodeJS.Signals = "SIGTERM") {
    return this.bird.stop(signal);
  }

  async routes(family: Family = "ipv4"): Promise<Map<string, ReflectedPath[]>> {
    const r = await this.birdc(["show", "route", "all", "table", family === "ipv4" ? "master4" : "master6"]);
    const byProtocol = new Map(this.o.hosts.map((h, i) => [`host${i + 1}`, h]));
    const routes = new Map<string, ReflectedPath[]>();
    let current: ReflectedPath | undefined;
    let prefix: string | undefined;
    for (const line of r.stdout.split("\n")) {
      // "172.31.16.5/32       unicast [host1 21:03:11.123] * (100) [i]"; further paths of a prefix start with spaces.
      // IPv6: "fd31:16::5/128       unicast [host1 ...]".
      const head = /^(\d+\.\d+\.\d+\.\d+\/\d+|[0-9a-f:]+:[0-9a-f:]*\/\d+)?\s+unicast \[(\S+)/.exec(line);
      if (head) {
        if (head[1]) prefix = head[1];
        current = { nextHop: "", peer: byProtocol.get(head[2]!) ?? head[2]! };
        if (prefix) routes.set(prefix, [...(routes.get(prefix) ?? []), current]);
        continue;
      }
      const nh = /^\s+BGP\.next_hop:\s+(\S+)/.exec(line);
      if (nh && current) current.nextHop = nh[1]!;
    }
    return routes;
  }

  /**
   * "Import withdraws: received ..." of the host's protocol (BIRD's per-channel
   * import statistics). Kept across a graceful restart of the session; back to
   * zero when the session restarts without one (the protocol restarts).
   */
  async withdrawCount(peer: string): Promise<number> {
    const r = await this.birdc(["show", "protocols", "all", this.protocol(peer)]);
    const m = /Import withdraws:\s+(\d+)/.exec(r.stdout);
    if (!m) throw new Error(`BIRD: no withdraw counter for ${peer} in: ${r.stdout}`);
    return Number(m[1]);
  }

  async sessionEstablished(peer: string): Promise<boolean> {
    const r = await this.birdc(["show", "protocols", this.protocol(peer)]);
    return /Established/.test(r.stdout);
  }

  async log(): Promise<string> {
    return this.bird.output;
  }

  async destroy(): Promise<void> {
    await this.bird.stop();
    await rm(this.dir, { recursive: true, force: true });
  }
}

// --- FRR -------------------------------------------------------------------

class FrrReflector implements Reflector {
  readonly kind = "frr" as const;
  readonly address: string;
  private readonly zebra: Proc;
  private readonly bgpd: Proc;
  private constructor(o: ReflectorOptions, private readonly dir: string) {
    this.address = o.address;
    const common = (daemon: string) => ["-i", join(dir, `${daemon}.pid`), "-z", join(dir, "zserv.api"), "--vty_socket", dir, "-P", "0", "-u", "frr", "-g", "frr",
      "--log", `file:${join(dir, `${daemon}.log`)}`];
    this.zebra = new Proc("zebra", () => ["ip", "netns", "exec", o.ns.name, "/usr/lib/frr/zebra", "-f", join(dir, "zebra.conf"), ...common("zebra")]);
    // No -l: it implies -n (zebra would install nothing).
    this.bgpd = new Proc("bgpd", () => ["ip", "netns", "exec", o.ns.name, "/usr/lib/frr/bgpd", "-f", join(dir, "bgpd.conf"), ...common("bgpd"), "-p", "179"]);
  }

  /**
   * The test instrumentation appended to the template: "debug bgp updates in"
   * logs one line per withdrawn prefix received ("<peer> rcvd UPDATE about
   * <prefix> IPv4 unicast -- withdrawn"), which withdrawCount counts: FRR's
   * JSON has no cumulative withdrawal counter (messageStats counts UPDATE
   * messages of every kind; prefix-counts are current table counts).
   */
  static async create(o: ReflectorOptions): Promise<FrrReflector> {
    const dir = await mkdtemp(join(tmpdir(), "vmrouted-rr-frr-"));
    await writeFile(join(dir, "zebra.conf"), "hostname vmrouted-rr-zebra\n");
    await writeFile(join(dir, "bgpd.conf"), await renderTemplate("frr-rr.conf",
      { ASN: o.asn, RR_ADDRESS: o.address, HOSTS_PREFIX: o.hostsPrefix, BGP_PASSWORD: o.password ?? LAB_BGP_PASSWORD }, "debug bgp updates in\n"));
    // The daemons run as frr (-u frr -g frr): their directory (configs, pid files, sockets, logs) is frr's.
    const frr = await frrIds();
    for (const f of ["", "zebra.conf", "bgpd.conf"]) await chown(join(dir, f), frr.uid, frr.gid);
    await chmod(dir, 0o750);
    // vtysh's dry run fails on an unknown command (bgpd -C only logs it and exits 0).
    const check = await sh("vtysh", ["-C", "-f", join(dir, "bgpd.conf")], { reject: false });
    if (check.exitCode !== 0) throw new Error(`FRR rejects the rendered frr-rr.conf: ${check.stdout}${check.stderr}`);
    return new FrrReflector(o, dir);
  }

  vtysh(command: string) {
    return sh("vtysh", ["--vty_socket", this.dir, "-c", command], { reject: false });
  }
  private async json<T>(command: string): Promise<T> {
    const r = await this.vtysh(command);
    if (r.exitCode !== 0) throw new Error(`vtysh ${command}: ${r.stderr || r.stdout}`);
    return JSON.parse(r.stdout || "{}") as T;
  }

  async start(): Promise<void> {
    this.zebra.start();
    await waitFor(async () => {
      await assertRunning([this.zebra]);
      return (await stat(join(this.dir, "zserv.api")).catch(() => undefined))?.isSocket() ?? false;
    }, 15000, "zebra");
    this.bgpd.start();
    await waitFor(async () => {
      await assertRunning([this.zebra, this.bgpd]);
      const r = await this.vtysh("show bgp vrf default json");
      return r.exitCode === 0 && /"routerId"/.test(r.stdout);
    }, 15000, "FRR bgpd");
  }
  async stop(signal: NodeJS.Signals = "SIGTERM"): Promise<void> {
    await this.bgpd.stop(signal);
    await this.zebra.stop(signal);
  }

  async routes(family: Family = "ipv4"): Promise<Map<string, ReflectedPath[]>> {
    type FrrPath = { peerId?: string; stale?: boolean; nexthops?: Array<{ ip?: string; scope?: string }> };
    const r = await this.json<{ routes?: Record<string, FrrPath[]> }>(`show bgp ${family} unicast json`);
    const routes = new Map<string, ReflectedPath[]>();
    // IPv6: the global next hop (a link-local one, when there is one, has scope "link-local").
    const hop = (p: FrrPath) => (p.nexthops?.find((n) => n.scope !== "link-local") ?? p.nexthops?.[0])?.ip ?? "";
    for (const [prefix, paths] of Object.entries(r.routes ?? {}))
      routes.set(prefix, paths.map((p) => ({ nextHop: hop(p), peer: p.peerId ?? "", ...(p.stale ? { stale: true } : {}) })));
    return routes;
  }

  /** Lines "<peer>(<its hostname>) rcvd UPDATE about <prefix> IPv4 unicast -- withdrawn" in bgpd's log (debug bgp updates in); counts over bgpd's whole life. */
  async withdrawCount(peer: string): Promise<number> {
    const text = await readFile(join(this.dir, "bgpd.log"), "utf8").catch(() => "");
    const line = new RegExp(`\\s${peer.replaceAll(".", "\\.")}(\\([^)]*\\))? rcvd UPDATE about \\S+ .*-- withdrawn$`);
    return text.split("\n").filter((l) => line.test(l)).length;
  }

  async sessionEstablished(peer: string): Promise<boolean> {
    const r = await this.vtysh(`show bgp neighbors ${peer} json`);
    if (r.exitCode !== 0 || !r.stdout.trim()) return false;
    const j = JSON.parse(r.stdout) as Record<string, { bgpState?: string }>;
    return j[peer]?.bgpState === "Established";
  }

  async log(): Promise<string> {
    const files = await Promise.all(["zebra.log", "bgpd.log"].map((f) => readFile(join(this.dir, f), "utf8").catch(() => "")));
    return `${this.zebra.output}\n${this.bgpd.output}\n${files.join("\n")}`;
  }

  async destroy(): Promise<void> {
    await this.stop();
    await rm(this.dir, { recursive: true, force: true });
  }
}

async function frrIds(): Promise<{ uid: number; gid: number }> {
  const [uid, gid] = await Promise.all([sh("id", ["-u", "frr"]), sh("id", ["-g", "frr"])]);
  return { uid: Number(uid.stdout.trim()), gid: Number(gid.stdout.trim()) };
}

// --- gobgpd ----------------------------------------------------------------

/** gobgpd's JSON (`gobgp neighbor X -j`): the Go API structs, snake_case, enums as numbers. */
interface GobgpNeighborJson {
  state?: { session_state?: number; messages?: { received?: { withdraw_update?: number; withdraw_prefix?: number } } };
}
const SESSION_ESTABLISHED = 6;

export class GobgpReflector implements Reflector {
  readonly kind = "gobgp" as const;
  readonly address: string;
  readonly gobgpd: GobgpdProcess;
  private constructor(o: ReflectorOptions, dir: string) {
    this.address = o.address;
    this.gobgpd = new GobgpdProcess(o.ns, dir, "rr", join(dir, "gobgp-rr.toml"));
  }
  static async create(o: ReflectorOptions): Promise<GobgpReflector> {
    const dir = await mkdtemp(join(tmpdir(), "vmrouted-rr-gobgp-"));
    const config = join(dir, "gobgp-rr.toml");
    // One static neighbor per host (gobgpd 3.10 has no MD5 for dynamic neighbors: see the template).
    await writeFile(config, await renderPerHost("gobgp-rr.toml", o));
    await sh("gobgpd", ["-f", config, "-d"]);
    return new GobgpReflector(o, dir);
  }

  start(): Promise<void> {
    return this.gobgpd.start();
  }
  stop(signal: NodeJS.Signals = "SIGTERM") {
    return this.gobgpd.stop(signal);
  }

  /** `gobgp global rib -j`: prefix → every known path (gobgpd's JSON: nlri.prefix, attrs[type 3].nexthop, source-id, neighbor-ip, stale). */
  async routes(family: Family = "ipv4"): Promise<Map<string, ReflectedPath[]>> {
    const r = await this.gobgpd.cli(["global", "rib", "-a", family, "-j"]);
    type Attr = { type: number; nexthop?: string };
    type Path = { nlri?: { prefix?: string }; attrs?: Attr[]; "neighbor-ip"?: string; stale?: boolean };
    const j = JSON.parse(r.stdout || "{}") as Record<string, Path[]>;
    const routes = new Map<string, ReflectedPath[]>();
    for (const [prefix, paths] of Object.entries(j))
      // NEXT_HOP (type 3), or for IPv6 MP_REACH_NLRI's (type 14).
      routes.set(prefix, paths.map((p) => ({ nextHop: p.attrs?.find((a) => a.type === 3 || a.type === 14)?.nexthop ?? "", peer: p["neighbor-ip"] ?? "", ...(p.stale ? { stale: true } : {}) })));
    return routes;
  }

  /**
   * state.messages.received.withdraw_prefix of `gobgp neighbor X -j`: withdrawn
   * prefixes received in UPDATEs (gobgpd counts them for BMP). The counters
   * live in the peer object, which for the template's static neighbors
   * outlives a session: kept across a graceful restart (what the tests rely on).
   */
  async withdrawCount(peer: string): Promise<number> {
    const r = await this.gobgpd.cli(["neighbor", peer, "-j"], false);
    if (r.exitCode !== 0) return 0; // not a configured neighbor
    const j = JSON.parse(r.stdout) as GobgpNeighborJson;
    return j.state?.messages?.received?.withdraw_prefix ?? 0;
  }

  async sessionEstablished(peer: string): Promise<boolean> {
    const r = await this.gobgpd.cli(["neighbor", peer, "-j"], false);
    if (r.exitCode !== 0) return false;
    return (JSON.parse(r.stdout) as GobgpNeighborJson).state?.session_state === SESSION_ESTABLISHED;
  }

  async log(): Promise<string> {
    return this.gobgpd.proc.output;
  }
  async destroy(): Promise<void> {
    await this.gobgpd.destroy();
  }
}

export async function createReflector(kind: ReflectorKind, o: ReflectorOptions): Promise<Reflector> {
  switch (kind) {
    case "bird": return BirdReflector.create(o);
    case "frr": return FrrReflector.create(o);
    case "gobgp": return GobgpReflector.create(o);
  }
}

// --- gobgpd as a process -----------------------------------------------------

/**
 * One gobgpd in a namespace. Its API is on 127.0.0.1:50051 inside the
 * namespace (what vmrouted uses; the gobgp CLI run there reaches it) and also
 * on a unix socket in the temp dir, through which this test process (in the
 * root namespace, which cannot reach another namespace's loopback) talks to it
 * with vmrouted's own client.
 */
export class GobgpdProcess {
  readonly proc: Proc;
  readonly apiSocket: string;
  private extraArgs: string[] = [];
  private current: GobgpClient | undefined;
  constructor(readonly ns: Netns, readonly dir: string, readonly name: string, readonly configPath: string) {
    this.apiSocket = join(dir, `${name}-api.sock`);
    this.proc = new Proc(`gobgpd ${name}`, () => ["ip", "netns", "exec", ns.name, "gobgpd", "-f", configPath,
      "--api-hosts", `127.0.0.1:50051,unix://${this.apiSocket}`, "--pprof-disable", "-l", "info", ...this.extraArgs]);
  }

  /** Starts gobgpd (with extra arguments, e.g. ["-r"]) and waits until its API answers with its configured AS. */
  async start(extraArgs: string[] = []): Promise<void> {
    this.extraArgs = extraArgs;
    await mkdir(this.dir, { recursive: true });
    await rm(this.apiSocket, { force: true }); // left behind by a SIGKILLed gobgpd: it would refuse to start
    this.current?.close();
    this.current = undefined;
    this.proc.start();
    const client = this.client();
    await waitFor(async () => {
      await assertRunning([this.proc]);
      return (await client.getBgp()).asn !== 0;
    }, 15000, `gobgpd ${this.name} API`);
  }

  /** vmrouted's client to this gobgpd (one per start). */
  client(): GobgpClient {
    this.current ??= connectGobgp(`unix://${this.apiSocket}`);
    return this.current;
  }

  cli(args: string[], reject = true) {
    return this.ns.exec(["gobgp", "-u", "127.0.0.1", "-p", "50051", ...args], reject);
  }

  async stop(signal: NodeJS.Signals = "SIGTERM"): Promise<void> {
    await this.proc.stop(signal);
  }

  async destroy(): Promise<void> {
    this.current?.close();
    this.current = undefined;
    await this.proc.stop();
    await rm(this.dir, { recursive: true, force: true });
  }
}

// --- a fabric of hosts ------------------------------------------------------

/** templates/gobgpd.toml for a host, rendered. */
async function writeHostConfig(path: string, o: { asn: string; address: string; rrAddress: string; password: string }): Promise<void> {
  await writeFile(path, await renderTemplate("gobgpd.toml", { ASN: o.asn, NODE_ADDRESS: o.address, RR_ADDRESS: o.rrAddress, BGP_PASSWORD: o.password }));
}

export interface FabricHost {
  ns: Netns;
  address: string;
  /** The host's IPv6 address on the fabric (its node.address6: the next hop of its /128s). */
  address6: string;
  gobgpd: GobgpdProcess;
}

/**
 * Namespaces `vmrt-<id>-fab` (a bridge), `vmrt-<id>-rr` and `vmrt-<id>-h<N>`,
 * each joined to the bridge by a veth made straight into both namespaces;
 * 10.<net>.0.<N> for host N, 10.<net>.0.254 for the reflector; and IPv6 on
 * the same link, fd<net>::<N>/64 and fd<net>::fe (the /128s' next hops must
 * lie on a prefix the reflector is connected to: BIRD's "gateway direct",
 * FRR's next-hop resolution). The BGP sessions stay IPv4. Each host's
 * gobgpd config is templates/gobgpd.toml, rendered (with LAB_BGP_PASSWORD;
 * setPassword renders it again with another).
 */
export class Fabric {
  private constructor(
    readonly fabric: Netns, readonly rr: Netns, readonly hosts: FabricHost[], readonly rrAddress: string, readonly prefix: string, readonly asn: string,
    readonly rrAddress6: string, readonly prefix6: string,
  ) {}

  static async create(id: string, hostCount: number, net = 97, asn = "64512"): Promise<Fabric> {
    const made: Netns[] = [];
    try {
      const fab = await Netns.create(`vmrt-${id}-fab`);
      made.push(fab);
      await fab.ip(["link", "add", "br0", "type", "bridge"]);
      await fab.ip(["link", "set", "br0", "up"]);
      const attach = async (ns: Netns, port: string, address: string, address6: string) => {
        await sh("ip", ["link", "add", "eth0", "netns", ns.name, "type", "veth", "peer", "name", port, "netns", fab.name]);
        await fab.ip(["link", "set", port, "master", "br0"]);
        await fab.ip(["link", "set", port, "up"]);
        await ns.ip(["addr", "add", `${address}/24`, "dev", "eth0"]);
        // nodad: usable at once (a tentative address cannot be a source or a resolved next hop).
        await ns.ip(["addr", "add", `${address6}/64`, "dev", "eth0", "nodad"]);
        await ns.ip(["link", "set", "eth0", "up"]);
      };
      const rr = await Netns.create(`vmrt-${id}-rr`);
      made.push(rr);
      const rrAddress = `10.${net}.0.254`;
      const rrAddress6 = `fd${net}::fe`;
      await attach(rr, "p-rr", rrAddress, rrAddress6);
      const hosts: FabricHost[] = [];
      for (let n = 1; n <= hostCount; n++) {
        const ns = await Netns.create(`vmrt-${id}-h${n}`);
        made.push(ns);
        const address = `10.${net}.0.${n}`;
        const address6 = `fd${net}::${n.toString(16)}`;
        await attach(ns, `p-h${n}`, address, address6);
        const dir = await mkdtemp(join(tmpdir(), `vmrouted-host${n}-`));
        const config = join(dir, "gobgpd.toml");
        await writeHostConfig(config, { asn, address, rrAddress, password: LAB_BGP_PASSWORD });
        hosts.push({ ns, address, address6, gobgpd: new GobgpdProcess(ns, dir, `h${n}`, config) });
      }
      return new Fabric(fab, rr, hosts, rrAddress, `10.${net}.0.0/24`, asn, rrAddress6, `fd${net}::/64`);
    } catch (e) {
      for (const ns of made) await ns.destroy();
      throw e;
    }
  }

  /** Renders the host's gobgpd config again with this TCP MD5 password ("" = none); it takes effect when its gobgpd next starts. */
  setPassword(host: FabricHost, password: string): Promise<void> {
    return writeHostConfig(host.gobgpd.configPath, { asn: this.asn, address: host.address, rrAddress: this.rrAddress, password });
  }

  reflectorOptions(): ReflectorOptions {
    return { ns: this.rr, address: this.rrAddress, hosts: this.hosts.map((h) => h.address), hostsPrefix: this.prefix, asn: this.asn };
  }

  async destroy(): Promise<void> {
    for (const h of this.hosts) await h.gobgpd.destroy();
    for (const ns of [...this.hosts.map((h) => h.ns), this.rr, this.fabric]) await ns.destroy();
  }
}
