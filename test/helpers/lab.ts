import { spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { chmod, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { execa } from "execa";
import { stringify } from "yaml";
import { exchange } from "../../src/cli/client.js";

// Building blocks for integration tests: network namespaces this test creates
// (never the root one), the real daemon started and stopped by its pid, and
// the CLI as an operator runs it.

export const REPO = resolve(import.meta.dirname, "../..");
const DAEMON = join(REPO, "dist/daemon/main.js");
const CLI = join(REPO, "dist/cli/main.js");

export function assertLabReady(): void {
  if (process.getuid?.() !== 0) throw new Error("integration tests need root (they create network namespaces)");
  if (!existsSync(DAEMON)) throw new Error("dist/ is missing: run `npm run build` first (scripts/test-all.sh does)");
}

export const runId = () => randomBytes(3).toString("hex");

export async function sh(cmd: string, args: string[], opts: { input?: string; reject?: boolean } = {}) {
  return execa(cmd, args, { reject: opts.reject ?? true, ...(opts.input !== undefined ? { input: opts.input } : {}) });
}

export class Netns {
  private constructor(readonly name: string) {}
  static async create(name: string): Promise<Netns> {
    await sh("ip", ["netns", "add", name]);
    const ns = new Netns(name);
    await ns.ip(["link", "set", "lo", "up"]);
    return ns;
  }
  ip(args: string[], reject = true) {
    return sh("ip", ["-n", this.name, ...args], { reject });
  }
  async json<T>(args: string[]): Promise<T> {
    const { stdout } = await this.ip(["-N", "-j", ...args]);
    return (stdout.trim() ? JSON.parse(stdout) : []) as T;
  }
  exec(args: string[], reject = true) {
    return sh("ip", ["netns", "exec", this.name, ...args], { reject });
  }
  async sysctl(key: string): Promise<string> {
    return (await this.exec(["cat", `/proc/sys/${key}`])).stdout.trim();
  }
  async setSysctl(key: string, value: string): Promise<void> {
    await this.exec(["sh", "-c", `echo ${value} > /proc/sys/${key}`]);
  }
  async destroy(): Promise<void> {
    await sh("ip", ["netns", "del", this.name], { reject: false });
  }
}

/** Stops a process this test started, by its pid: the signal, then SIGKILL after 5 s. */
export async function stopChild(child: ChildProcess | undefined, signal: NodeJS.Signals = "SIGTERM"): Promise<void> {
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((r) => child.once("exit", r));
  child.kill(signal);
  await Promise.race([exited, new Promise((r) => setTimeout(r, 5000))]);
  if (child.exitCode === null && child.signalCode === null) {
    child.kill("SIGKILL");
    await exited;
  }
}

export interface DaemonOptions {
  networks?: Record<string, { gateway: string; natOutgoing?: boolean; prefix6?: string }>;
  bgp?: Record<string, unknown>;
  extra?: Record<string, unknown>;
  resyncSeconds?: number;
  /** libvirt URI; without it the daemon's libvirt integration is off (never the machine's libvirtd). */
  libvirtUri?: string;
  /** Environment of the daemon process (e.g. a PATH with a fault-injecting wrapper first). */
  env?: Record<string, string>;
  /** The daemon and the CLI to run (argv before their own arguments): by default the checkout's dist/ under this Node; the package tests run the installed /usr/bin/vmrouted and /usr/bin/vmroutectl. */
  command?: { daemon: string[]; cli: string[] };
  /** Where the config is written (default: the daemon's temp dir). */
  configPath?: string;
}

const CHECKOUT = { daemon: [process.execPath, DAEMON], cli: [process.execPath, CLI] };

/** The real vmrouted, run inside a test namespace, with its files in a temp dir. */
export class Daemon {
  child: ChildProcess | undefined;
  log = "";
  env: Record<string, string> = {};
  command = CHECKOUT;
  private constructor(readonly host: Netns, readonly dir: string, readonly socket: string, readonly configPath: string) {}

  static async create(host: Netns, options: DaemonOptions = {}): Promise<Daemon> {
    const dir = await mkdtemp(join(tmpdir(), "vmrouted-test-"));
    // The daemon's dnsmasq reads its hosts (beside the socket) as nobody: the directory must be searchable, as /run/vmrouted is.
    await chmod(dir, 0o755);
    const d = new Daemon(host, dir, join(dir, "vmrouted.sock"), options.configPath ?? join(dir, "config.yaml"));
    d.env = options.env ?? {};
    d.command = options.command ?? CHECKOUT;
    await d.writeConfig(options);
    return d;
  }

  async writeConfig(options: DaemonOptions): Promise<void> {
    const config = {
      node: { address: "10.99.0.1", name: "test-host" },
      api: { socket: this.socket },
      stateDir: join(this.dir, "state"),
      networks: options.networks ?? { service: { gateway: "172.31.16.1/24" } },
      dataplane: { resyncSeconds: options.resyncSeconds ?? 1 },
      libvirt: options.libvirtUri ? { enabled: true, uri: options.libvirtUri, resyncSeconds: 2 } : { enabled: false },
      ...(options.bgp ? { bgp: options.bgp } : {}),
      ...(options.extra ?? {}),
    };
    await writeFile(this.configPath, stringify(config));
  }

  async start(): Promise<void> {
    await rm(this.socket, { force: true });
    const child = spawn("ip", ["netns", "exec", this.host.name, ...this.command.daemon, "--config", this.configPath], {
      stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, ...this.env },
    });
    this.child = child;
    child.stdout.on("data", (c: Buffer) => (this.log += c.toString()));
    child.stderr.on("data", (c: Buffer) => (this.log += c.toString()));
    await waitFor(async () => {
      if (child.exitCode !== null) throw new Error(`vmrouted exited: ${this.log}`);
      if (!existsSync(this.socket)) return false;
      // The socket answers from the first moment; the daemon is up once its first pass has run.
      const r = await this.ctl(["status", "-o", "json"]);
      return r.exitCode === 0 && (JSON.parse(r.stdout) as { state: string }).state === "running";
    }, 15000, "vmrouted to start");
  }

  async stop(signal: NodeJS.Signals = "SIGTERM"): Promise<void> {
    await stopChild(this.child, signal);
    this.child = undefined;
  }

  ctl(args: string[], input?: string) {
    const [cmd, ...cli] = this.command.cli;
    return execa(cmd!, [...cli, "--socket", this.socket, ...args], { reject: false, ...(input !== undefined ? { input } : {}) });
  }

  /** The CLI run inside the host namespace, as an operator on that host would (doctor looks at the kernel itself). */
  ctlOnHost(args: string[]) {
    return execa("ip", ["netns", "exec", this.host.name, ...this.command.cli, "--socket", this.socket, ...args], { reject: false });
  }

  /** `vmroutectl doctor -o json` on the host: exit code and findings. */
  async doctor(extra: string[] = []): Promise<{ exitCode: number; findings: Finding[]; stderr: string }> {
    const r = await this.ctlOnHost(["-o", "json", "doctor", "--config", this.configPath, ...extra]);
    const out = r.stdout.trim() ? (JSON.parse(r.stdout) as { findings: Finding[] }) : { findings: [] };
    return { exitCode: r.exitCode ?? -1, findings: out.findings, stderr: r.stderr };
  }

  /** One raw API call, as any client could send it: status code and body text. */
  async request(method: string, path: string, body = ""): Promise<{ status: number; body: string }> {
    const r = await exchange(this.socket, method, path, { headers: { "content-type": "application/json" }, payload: body });
    return { status: r.status, body: r.text };
  }

  async status(): Promise<StatusJson> {
    const r = await this.ctl(["status", "-o", "json"]);
    if (r.exitCode !== 0) throw new Error(`status failed: ${r.stderr}`);
    return JSON.parse(r.stdout) as StatusJson;
  }

  /** The daemon run to its exit with another config (for starts that must be refused): exit code and stderr. */
  async runToExit(configPath: string): Promise<{ code: number | null; stderr: string }> {
    const child = spawn("ip", ["netns", "exec", this.host.name, ...this.command.daemon, "--config", configPath], { stdio: ["ignore", "ignore", "pipe"] });
    let stderr = "";
    child.stderr.on("data", (c: Buffer) => (stderr += c.toString()));
    const timer = setTimeout(() => child.kill("SIGKILL"), 20000);
    const code = await new Promise<number | null>((r) => child.once("exit", r));
    clearTimeout(timer);
    return { code, stderr };
  }

  /** The daemon's dnsmasq, while one runs (its pid file, checked against its command line). */
  async dnsmasqPid(): Promise<number | undefined> {
    const pid = Number((await readFile(join(this.dir, "dhcp", "dnsmasq.pid"), "utf8").catch(() => "")).trim());
    if (!pid) return undefined;
    const cmdline = await readFile(`/proc/${pid}/cmdline`, "utf8").catch(() => "");
    return cmdline.includes(join(this.dir, "dhcp")) ? pid : undefined;
  }

  async cleanup(): Promise<void> {
    await this.stop();
    // A daemon killed (SIGKILL) leaves its dnsmasq: started by this test's daemon, stopped by its pid.
    const dnsmasq = await this.dnsmasqPid();
    if (dnsmasq) process.kill(dnsmasq, "SIGTERM");
    await rm(this.dir, { recursive: true, force: true });
  }
}

export interface Finding { check: string; result: "ok" | "problem" | "skipped"; message: string; fix?: string }

export interface StatusJson {
  node: { name: string; address: string };
  networks: Array<{ name: string; device: string; gateway: string; prefix6?: string; kind: string; state: string; reason: string }>;
  endpoints: Array<{
    id: string; kind: string; network: string; ip: string; ip6?: string; mac: string; device: string; state: string; reason: string;
    netns?: string; domain?: string; migration?: string; elevated?: boolean; conditions: Record<string, boolean>;
    counters: Record<`${"rx" | "tx"}${"Bytes" | "Packets" | "Errors" | "Dropped"}`, number>;
  }>;
  bgp: {
    enabled: boolean; state: string; reason?: string; peers: Array<{ address: string; state: string }>; announced: number; learned?: number;
    importer?: { state: string; reason?: string; corrections: number };
  };
  reconcile: { passes: number; operationsApplied: number; passesByTrigger: Record<string, number> };
  libvirt: { enabled: boolean; state: string; unreadable: Array<{ uuid: string; error: string }> };
  version: string;
}

export async function waitFor(check: () => Promise<boolean> | boolean, timeoutMs: number, what: string, intervalMs = 50): Promise<number> {
  const started = Date.now();
  let lastError: unknown;
  while (Date.now() - started < timeoutMs) {
    try {
      if (await check()) return Date.now() - started;
    } catch (e) {
      lastError = e;
      if ((e as Error).message.startsWith("vmrouted exited")) throw e;
    }
    await new Promise((r) => setTimeout(r, intervalMs));
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${lastError ? ` (last error: ${(lastError as Error).message})` : ""}`);
}

/**
 * A namespace's links, addresses, IPv4 routes and permanent neighbours, reduced
 * to identity (no counters, timers, lifetimes or IPv6 DAD flags, which move by
 * themselves): equal before and after means nothing was changed.
 */
export async function netState(netns?: string): Promise<string> {
  const ip = (args: string[]) => sh("ip", [...(netns ? ["-n", netns] : []), "-N", "-d", "-j", ...args]);
  const [links, addrs, routes, neighs] = await Promise.all([
    ip(["link", "show"]), ip(["addr", "show"]), ip(["-4", "route", "show", "table", "all"]), ip(["neigh", "show", "nud", "permanent"]),
  ]);
  const parse = (t: string) => (t.trim() ? JSON.parse(t) : []) as Array<Record<string, unknown>>;
  const l = parse(links.stdout).map((o) => [o.ifindex, o.ifname, o.address, o.ifalias, o.group, o.master,
    (o.flags as string[] | undefined)?.includes("UP"), (o.linkinfo as { info_kind?: string } | undefined)?.info_kind].join(" "));
  const a = parse(addrs.stdout).flatMap((o) =>
    ((o.addr_info as Array<Record<string, unknown>>) ?? []).map((i) => `${o.ifname} ${i.local}/${i.prefixlen} ${i.noprefixroute ?? ""}`));
  const r = parse(routes.stdout).map((o) => [o.type, o.dst, o.gateway, o.dev, o.table, o.protocol, o.scope, o.metric].join(" "));
  const n = parse(neighs.stdout).map((o) => [o.dst, o.dev, o.lladdr].join(" "));
  return [...l.sort(), "", ...a.sort(), "", ...r.sort(), "", ...n.sort()].join("\n");
}

export const rootSnapshot = () => netState();
