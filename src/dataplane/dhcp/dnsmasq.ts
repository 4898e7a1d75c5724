import { constants } from "node:fs";
import { access, chmod, mkdir, readFile, stat } from "node:fs/promises";
import { dirname } from "node:path";
import type { Logger } from "pino";
import { superviseLines } from "../../child-lines.js";
import { LatestOnly } from "../../latest-only.js";
import { canonicalIpv6 } from "../../model/ipv6.js";
import type { DesiredState } from "../../model/types.js";
import { writeFileAtomic } from "../../state/files.js";
import { confPath, dhcpFiles, hostsPath, optsPath, pidPath, SERVER_DUID, type DhcpFiles, type DhcpPaths } from "./files.js";

// The DHCP manager's shell: one dnsmasq per host (Debian's dnsmasq-base),
// started, configured and supervised by vmrouted (DESIGN.md, Guest addressing).
// Its files are written whole (temporary + rename, mode 0644: dnsmasq reads
// them as `nobody`); a change of hosts or options is a SIGHUP, which dnsmasq
// handles between packets, so no exchange in flight is dropped; only a change
// of networks (the main file) restarts it. If it dies it is started again
// within RESTART_MS. Its log (stderr) is read for counts and for each lease
// handed out. A dnsmasq left by an earlier vmrouted (killed before it could
// stop its child) is found by its pid file, checked to be ours by its command
// line naming our file, and stopped before ours starts: one per host.

const RESTART_MS = 250;
const MESSAGE = /DHCP(DISCOVER|OFFER|REQUEST|ACK|NAK|RELEASE|DECLINE|INFORM)\(([^)]*)\)\s*(\S+)?\s*(\S+)?/;
// DHCPv6 (networks with a prefix6): REQUEST, RELEASE and DECLINE share their names with DHCPv4's; a
// DHCPv6 line's first word is the client's DUID or an IPv6 address (with ':'), a DHCPv4 one's an IPv4 address.
const MESSAGE6 = /DHCP(SOLICIT|ADVERTISE|REQUEST|CONFIRM|RENEW|REBIND|REPLY|RELEASE|DECLINE|INFORMATION-REQUEST)\(([^)]*)\)\s*(\S+)?\s*(\S+)?\s*(.*)$/;
const V6_ONLY = new Set(["SOLICIT", "ADVERTISE", "CONFIRM", "RENEW", "REBIND", "REPLY", "INFORMATION-REQUEST"]);
/** Message types counted: DHCPv4's, then DHCPv6's with a "6" (SOLICIT6, REPLY6, ...). */
export const DHCP_MESSAGES = ["DISCOVER", "OFFER", "REQUEST", "ACK", "NAK", "RELEASE", "DECLINE", "INFORM",
  "SOLICIT6", "ADVERTISE6", "REQUEST6", "CONFIRM6", "RENEW6", "REBIND6", "REPLY6", "RELEASE6", "DECLINE6", "INFORMATION-REQUEST6"] as const;

export interface DhcpStatus {
  /** off: no network has DHCP; running; starting (between a start or restart and dnsmasq's first line); failing. */
  state: "off" | "starting" | "running" | "failing";
  reason?: string;
  pid?: number;
  /** Endpoints in vmrouted's hosts file (static leases). */
  hosts: number;
  /** Endpoints in the last hosts file dnsmasq confirmed reading: it answers those. */
  loaded: number;
  /** Times dnsmasq ended by itself and was started again. */
  restarts: number;
  messages: Record<string, number>;
}

export interface DhcpServerDeps {
  paths: DhcpPaths;
  log: Logger;
  /** Each lease dnsmasq hands out or refuses (ACK, NAK), for metrics and tests. */
  onMessage?: (type: string) => void;
}

export class DhcpServer {
  private written: Partial<DhcpFiles> = {};
  private child: ReturnType<typeof superviseLines> | undefined;
  private restarting = false;
  private lastError: string | undefined;
  private started = false;
  private restarts = 0;
  /** Host counts of the files dnsmasq was told to read (start, SIGHUP), oldest first: its "read" lines confirm them in order. */
  private readonly asked: number[] = [];
  /** Hosts in the last file dnsmasq confirmed reading. */
  private loaded = 0;
  private readonly messages: Record<string, number> = Object.fromEntries(DHCP_MESSAGES.map((m) => [m, 0]));
  /** The last ACK per MAC: which address, when (status, doctor). */
  readonly acks = new Map<string, { ip: string; at: string }>();

  constructor(private readonly deps: DhcpServerDeps) {}

  private readonly following = new LatestOnly<DesiredState>((state) => this.follow(state), (e) => this.fail(e.message));

  /** Follows the desired state; coalesced (the latest wins), never concurrent. */
  update(state: DesiredState): Promise<void> {
    return this.following.offer(state);
  }

  private async follow(state: DesiredState): Promise<void> {
    const next = dhcpFiles(state, this.deps.paths);
    if (!next) {
      if (this.child) {
        this.child.stop();
        this.child = undefined;
        this.deps.log.info("no network has DHCP: dnsmasq stopped");
      }
      this.written = {};
      return;
    }
    const changed = { conf: next.conf !== this.written.conf, hosts: next.hosts !== this.written.hosts, opts: next.opts !== this.written.opts };
    // Most published changes (learned routes, claims) change nothing here.
    if (this.child && !changed.conf && !changed.hosts && !changed.opts) return;
    const { dir } = this.deps.paths;
    await mkdir(dir, { recursive: true, mode: 0o755 });
    await chmod(dir, 0o755);
    const unreadable = await untraversable(dir);
    if (unreadable) throw new Error(`${unreadable} is not searchable by other users: dnsmasq (as nobody) could not read its hosts in ${dir}`);
    if (changed.hosts) await writeFileAtomic(hostsPath(this.deps.paths), next.hosts, false, 0o644);
    if (changed.opts) await writeFileAtomic(optsPath(this.deps.paths), next.opts, false, 0o644);
    if (changed.conf) await writeFileAtomic(confPath(this.deps.paths), next.conf, false, 0o644);
    this.written = next;
    if (!this.child) {
      await this.stopLeftover();
      if (next.conf.includes("\ndhcp-duid=")) await this.keepServerDuid();
      this.start();
    } else if (changed.conf) {
      // Interfaces and ranges are read only at start.
      this.restarting = true;
      this.child.signal("SIGTERM");
    } else if (changed.hosts || changed.opts) {
      this.asked.push(next.served.length);
      this.child.signal("SIGHUP");
    }
  }

  private start(): void {
    this.started = false;
    this.asked.length = 0;
    this.asked.push(this.written.served?.length ?? 0);
    this.child = superviseLines("dnsmasq", [`--conf-file=${confPath(this.deps.paths)}`], {
      stream: "stderr", restartMs: RESTART_MS,
      onLines: (text) => text.split("\n").forEach((l) => this.line(l)),
      onExit: (how) => {
        this.started = false;
        // The same files are read again at the restart.
        this.asked.length = 0;
        this.asked.push(this.written.served?.length ?? 0);
        if (this.restarting) {
          this.restarting = false;
          return;
        }
        this.restarts++;
        this.deps.log.warn({ how, lastError: this.lastError }, "dnsmasq ended; starting it again");
      },
    });
  }

  private line(l: string): void {
    const m6 = MESSAGE6.exec(l);
    if (m6 && (V6_ONLY.has(m6[1]!) || m6[3]?.includes(":"))) {
      const [, type, , first, second, why] = m6;
      const counted = `${type}6`;
      this.messages[counted] = (this.messages[counted] ?? 0) + 1;
      this.deps.onMessage?.(counted);
      // A REPLY with an address and no complaint ("lease not found": NoBinding): the lease (or its renewal)
      // handed out. Its client is named by DUID, not MAC.
      if (type === "REPLY" && first && second && !why && canonicalIpv6(first) !== undefined) {
        this.deps.log.info({ ip6: first, duid: second, line: l }, "dhcp6 reply");
      }
      return;
    }
    const m = MESSAGE.exec(l);
    if (m) {
      const [, type, , first, second] = m;
      this.messages[type!] = (this.messages[type!] ?? 0) + 1;
      this.deps.onMessage?.(type!);
      if (type === "ACK" && first && second) this.acks.set(second, { ip: first, at: new Date().toISOString() });
      if (type === "ACK" || type === "NAK") this.deps.log.info({ mac: second, ip: first, line: l }, `dhcp ${type.toLowerCase()}`);
      return;
    }
    if (l.endsWith(`read ${hostsPath(this.deps.paths)}`)) {
      // A start's or SIGHUP's read went through: an earlier "cannot read" is over. Logged: from here
      // dnsmasq answers every endpoint of that file (the bench times apply → this line).
      this.lastError = undefined;
      this.loaded = this.asked.shift() ?? this.written.served?.length ?? 0;
      this.deps.log.info({ hosts: this.loaded }, "dnsmasq loaded its hosts");
    } else if (/started, version/.test(l)) {
      this.started = true;
      this.lastError = undefined;
      this.deps.log.info({ pid: this.child?.pid(), line: l }, "dnsmasq started");
    } else if (/\b(failed|cannot|bad|unknown|illegal|error)\b/i.test(l)) {
      this.fail(l.replace(/^dnsmasq(-dhcp)?(\[\d+\])?: /, ""));
    } else {
      this.deps.log.debug({ line: l }, "dnsmasq");
    }
  }

  private fail(reason: string): void {
    if (reason !== this.lastError) this.deps.log.error({ reason }, "dnsmasq: DHCP is not answered as desired");
    this.lastError = reason;
  }

  /**
   * dnsmasq keeps the server DUID its lease file names over the one it is told (`dhcp-duid`): a
   * different one (a lease file from before the fixed DUID) is dropped, so that every host answers
   * as the same DHCPv6 server (a migrated guest's Renew names it). Its leases stay.
   */
  private async keepServerDuid(): Promise<void> {
    const { leases } = this.deps.paths;
    const text = await readFile(leases, "utf8").catch(() => undefined);
    if (text === undefined) return;
    const kept = text.split("\n").filter((l) => !l.startsWith("duid ") || l === `duid ${SERVER_DUID}`);
    if (kept.length === text.split("\n").length) return;
    this.deps.log.info({ leases }, "dropping the lease file's other DHCPv6 server DUID");
    await writeFileAtomic(leases, kept.join("\n"), false, 0o644);
  }

  /** A dnsmasq of an earlier vmrouted on this stateDir: ours if its command line names our file; stopped by its pid. */
  private async stopLeftover(): Promise<void> {
    const pid = Number((await readFile(pidPath(this.deps.paths), "utf8").catch(() => "")).trim());
    if (!Number.isInteger(pid) || pid <= 1) return;
    const cmdline = await readFile(`/proc/${pid}/cmdline`, "utf8").catch(() => "");
    if (!cmdline.startsWith("dnsmasq") || !cmdline.includes(confPath(this.deps.paths))) return;
    this.deps.log.info({ pid }, "stopping the dnsmasq an earlier vmrouted left running");
    process.kill(pid, "SIGTERM");
    for (let i = 0; i < 50 && (await alive(pid)); i++) await new Promise((r) => setTimeout(r, 20));
    if (await alive(pid)) process.kill(pid, "SIGKILL");
  }

  status(): DhcpStatus {
    const hosts = this.written.served?.length ?? 0;
    const common = { hosts, loaded: this.loaded, restarts: this.restarts, messages: { ...this.messages } };
    if (!this.child) return { state: this.lastError ? "failing" : "off", ...(this.lastError ? { reason: this.lastError } : {}), ...common };
    const pid = this.child.pid();
    if (this.lastError) return { state: "failing", reason: this.lastError, ...(pid ? { pid } : {}), ...common };
    return { state: this.started && pid ? "running" : "starting", ...(pid ? { pid } : {}), ...common };
  }

  /** The endpoints answered for now (the hosts file as written). */
  served(): NonNullable<DhcpFiles["served"]> {
    return this.written.served ?? [];
  }

  stop(): void {
    this.child?.stop();
    this.child = undefined;
  }
}

const alive = (pid: number) => access(`/proc/${pid}`).then(() => true, () => false);

/** The first ancestor of dir that other users cannot search, if any. */
async function untraversable(dir: string): Promise<string | undefined> {
  for (let d = dir; ; d = dirname(d)) {
    const mode = (await stat(d)).mode;
    if ((mode & constants.S_IXOTH) === 0) return d;
    if (d === dirname(d)) return undefined;
  }
}
