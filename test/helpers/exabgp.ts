import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Proc } from "./reflectors.js";
import type { Netns } from "./lab.js";

// ExaBGP (Debian's exabgp 4.2), nobody's code here: a hostile BGP speaker
// that joins the fabric as an iBGP client of the route reflector and
// announces whatever the test gives it, static routes with their next hops.

export interface HostileRoute { prefix: string; nextHop: string }

export class ExaBgp {
  private constructor(private readonly proc: Proc, private readonly dir: string) {}

  static async start(ns: Netns, o: { local: string; peer: string; asn: string; password?: string; routes: HostileRoute[] }): Promise<ExaBgp> {
    const dir = await mkdtemp(join(tmpdir(), "vmrouted-exabgp-"));
    const config = join(dir, "exabgp.conf");
    await writeFile(config, `neighbor ${o.peer} {
  router-id ${o.local};
  local-address ${o.local};
  local-as ${o.asn};
  peer-as ${o.asn};
${o.password ? `  md5-password "${o.password}";\n` : ""}  family { ipv4 unicast; }
  static {
${o.routes.map((r) => `    route ${r.prefix} next-hop ${r.nextHop};`).join("\n")}
  }
}
`);
    // In the foreground, as root (TCP MD5 is set on its socket), no CLI pipes, never listening.
    const env = {
      "exabgp.daemon.daemonize": "false", "exabgp.daemon.user": "root", "exabgp.daemon.drop": "false",
      "exabgp.api.cli": "false", "exabgp.tcp.bind": "", "exabgp.log.destination": "stdout",
    };
    const proc = new Proc("exabgp", () => ["ip", "netns", "exec", ns.name, "env", ...Object.entries(env).map(([k, v]) => `${k}=${v}`), "exabgp", config]);
    proc.start();
    return new ExaBgp(proc, dir);
  }

  get output(): string {
    return this.proc.output;
  }

  get running(): boolean {
    return this.proc.running;
  }

  async stop(): Promise<void> {
    await this.proc.stop();
    await rm(this.dir, { recursive: true, force: true });
  }
}
