import { spawn, type ChildProcess } from "node:child_process";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Netns, REPO, sh, stopChild, waitFor } from "./lab.js";

// A host and a route reflector, each its own namespace, joined by a veth:
//   host (vmrouted + gobgpd) 10.99.0.1/24  <--->  10.99.0.2/24 rr (BIRD 2)
//                            fd99::1/64           fd99::2/64
// The session is IPv4 (both families ride it); the IPv6 addresses are there so
// that a /128 with next hop fd99::1 (node.address6) lies on a prefix BIRD has
// connected ("gateway direct"), and is reachable and reflected.
// gobgpd and BIRD run from the project's templates, so the templates are what
// the tests prove.

export const HOST_ADDRESS = "10.99.0.1";
export const RR_ADDRESS = "10.99.0.2";
/** The host's IPv6 address on the link to the reflector: node.address6, the next hop of its /128s. */
export const HOST_ADDRESS6 = "fd99::1";
export const RR_ADDRESS6 = "fd99::2";
export const ASN = "64512";
/**
 * The TCP MD5 password of every lab session (BGP_PASSWORD in all four
 * templates): hosts and reflectors are rendered with it, so every lab proves
 * the templates with authentication on.
 */
export const LAB_BGP_PASSWORD = "vmrouted-lab-md5";

function fill(name: string, text: string, values: Record<string, string>): string {
  return text.replace(/\$\{([A-Z_]+)\}/g, (_m, key: string) => {
    if (!(key in values)) throw new Error(`template ${name}: no value for ${key}`);
    return values[key]!;
  });
}

export async function renderTemplate(name: string, values: Record<string, string>, extra = ""): Promise<string> {
  return fill(name, await readFile(join(REPO, "templates", name), "utf8"), values) + extra;
}

/**
 * The per-host part of a reflector template (from its line "# One block per
 * vmrouted host..." to the end), rendered for one more host: what an operator
 * copies for each host beyond the first, so the template's own block is what
 * the labs run.
 */
export async function renderHostBlock(name: string, values: Record<string, string>): Promise<string> {
  const text = await readFile(join(REPO, "templates", name), "utf8");
  const at = /^# One block per vmrouted host.*\n/m.exec(text);
  if (!at) throw new Error(`template ${name}: no "# One block per vmrouted host" line`);
  return "\n" + fill(name, text.slice(at.index + at[0].length), values);
}

class Daemonised {
  child: ChildProcess | undefined;
  log = "";
  constructor(readonly what: string, private readonly argv: () => string[]) {}
  start(): void {
    const [cmd, ...args] = this.argv();
    const child = spawn(cmd!, args, { stdio: ["ignore", "pipe", "pipe"] });
    child.stdout!.on("data", (c: Buffer) => (this.log += c.toString()));
    child.stderr!.on("data", (c: Buffer) => (this.log += c.toString()));
    this.child = child;
  }
  async stop(signal: NodeJS.Signals = "SIGTERM"): Promise<void> {
    await stopChild(this.child, signal);
    this.child = undefined;
  }
}

export class BgpLab {
  gobgpd: Daemonised;
  bird: Daemonised;
  /** gobgpd's API as this process (in the root namespace) reaches it: a unix socket beside the namespace's loopback port. */
  readonly apiSocket: string;
  private constructor(readonly host: Netns, readonly rr: Netns, readonly dir: string, readonly birdSocket: string) {
    this.apiSocket = join(dir, "gobgpd-api.sock");
    this.gobgpd = new Daemonised("gobgpd", () => ["ip", "netns", "exec", host.name, "gobgpd", "-f", join(dir, "gobgpd.toml"),
      "--api-hosts", `127.0.0.1:50051,unix://${this.apiSocket}`, "--pprof-disable", "-l", "warn"]);
    this.bird = new Daemonised("bird", () => ["ip", "netns", "exec", rr.name, "bird", "-f", "-c", join(dir, "bird.conf"),
      "-s", birdSocket, "-P", join(dir, "bird.pid")]);
  }

  /** With `reflectorInstallsRoutes`, BIRD also puts what it learns into the rr namespace's kernel (scripts/lab/bird-kernel.conf), so the rr can reach workloads. */
  static async create(id: string, options: { reflectorInstallsRoutes?: boolean } = {}): Promise<BgpLab> {
    const birdExtra = options.reflectorInstallsRoutes ? await readFile(join(REPO, "scripts/lab/bird-kernel.conf"), "utf8") : "";
    const host = await Netns.create(`vmrt-${id}-host`);
    const rr = await Netns.create(`vmrt-${id}-rr`);
    const dir = await mkdtemp(join(tmpdir(), "vmrouted-bgp-"));
    const lab = new BgpLab(host, rr, dir, join(dir, "bird.ctl"));
    await host.ip(["link", "add", "uplink", "type", "veth", "peer", "name", "downlink", "netns", rr.name]);
    await host.ip(["addr", "add", `${HOST_ADDRESS}/24`, "dev", "uplink"]);
    // nodad: usable at once (a tentative address cannot be a resolved next hop).
    await host.ip(["addr", "add", `${HOST_ADDRESS6}/64`, "dev", "uplink", "nodad"]);
    await host.ip(["link", "set", "uplink", "up"]);
    await rr.ip(["addr", "add", `${RR_ADDRESS}/24`, "dev", "downlink"]);
    await rr.ip(["addr", "add", `${RR_ADDRESS6}/64`, "dev", "downlink", "nodad"]);
    await rr.ip(["link", "set", "downlink", "up"]);
    const values = { ASN, NODE_ADDRESS: HOST_ADDRESS, RR_ADDRESS, BGP_PASSWORD: LAB_BGP_PASSWORD };
    await writeFile(join(dir, "gobgpd.toml"), await renderTemplate("gobgpd.toml", values));
    await writeFile(join(dir, "bird.conf"), await renderTemplate("bird-rr.conf", values, birdExtra));
    return lab;
  }

  /** create(), then BIRD and gobgpd started (the session comes up by itself: waitForSession). */
  static async start(id: string, options: { reflectorInstallsRoutes?: boolean } = {}): Promise<BgpLab> {
    const lab = await BgpLab.create(id, options);
    try {
      await lab.startBird();
      await lab.startGobgpd();
    } catch (e) {
      await lab.destroy(); // the caller never gets the lab to clean up
      throw e;
    }
    return lab;
  }

  /** Waits for gobgpd→BIRD to be Established; returns how long that took (ms). */
  waitForSession(timeoutMs = 30000): Promise<number> {
    return waitFor(() => this.sessionEstablished(), timeoutMs, "BGP session gobgpd→BIRD");
  }

  async startGobgpd(): Promise<void> {
    await rm(this.apiSocket, { force: true }); // a killed gobgpd leaves it, and the next one would not start
    this.gobgpd.start();
    await waitFor(async () => (await this.host.exec(["gobgp", "global"], false)).exitCode === 0, 15000, "gobgpd API");
  }

  async startBird(): Promise<void> {
    this.bird.start();
    await waitFor(async () => (await sh("birdc", ["-s", this.birdSocket, "show", "status"], { reject: false })).exitCode === 0, 15000, "BIRD");
  }

  async sessionEstablished(): Promise<boolean> {
    const r = await sh("birdc", ["-s", this.birdSocket, "show", "protocols", "host1"], { reject: false });
    return /Established/.test(r.stdout);
  }

  /** BIRD's count of withdrawals received from the host: unchanged means nothing flapped. */
  async importWithdraws(): Promise<number> {
    const r = await sh("birdc", ["-s", this.birdSocket, "show", "protocols", "all", "host1"]);
    const m = /Import withdraws:\s+(\d+)/.exec(r.stdout);
    if (!m) throw new Error(`no withdraw counter in: ${r.stdout}`);
    return Number(m[1]);
  }

  /** BIRD has exactly these prefixes from the host (any order), each with the host as next hop. */
  async holdsExactly(prefixes: string[]): Promise<boolean> {
    const routes = await this.birdRoutes();
    return JSON.stringify([...routes.keys()].sort()) === JSON.stringify([...prefixes].sort()) && [...routes.values()].every((nh) => nh === HOST_ADDRESS);
  }

  /** Waits until BIRD holds exactly these prefixes; returns how long that took (ms). */
  waitForExactly(prefixes: string[], timeoutMs = 20000, what = `BIRD to have exactly ${prefixes.length} route(s)`): Promise<number> {
    return waitFor(() => this.holdsExactly(prefixes), timeoutMs, what, 100);
  }

  /** prefix → BGP next hop, as BIRD has them. */
  async birdRoutes(): Promise<Map<string, string>> {
    const r = await sh("birdc", ["-s", this.birdSocket, "show", "route", "all", "protocol", "host1"], { reject: false });
    const routes = new Map<string, string>();
    let prefix: string | undefined;
    for (const line of r.stdout.split("\n")) {
      const start = /^(\d+\.\d+\.\d+\.\d+\/\d+)\s+unicast/.exec(line);
      if (start) prefix = start[1];
      const nh = /^\s+BGP\.next_hop:\s+(\S+)/.exec(line);
      if (nh && prefix) routes.set(prefix, nh[1]!);
    }
    return routes;
  }

  async destroy(): Promise<void> {
    await this.gobgpd.stop();
    await this.bird.stop();
    await this.host.destroy();
    await this.rr.destroy();
    await rm(this.dir, { recursive: true, force: true });
  }
}
