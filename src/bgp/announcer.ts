import type { Logger } from "pino";
import type { BgpStatus } from "../daemon/status.js";
import { toApiPath, type GobgpTransport, type PeerInfo } from "./gobgp.js";
import { diffAnnouncements, pathsFor, samePath, usableNextHop6, type AnnouncePolicy, type Announcement, type BgpPath } from "./paths.js";

// Keeps gobgpd's local paths equal to the newest set of ready endpoints, in a
// loop of its own: the reconciler publishes the set and never waits. A gobgpd
// that is down or hung delays announcements and nothing else; whatever was
// published meanwhile, only the newest set is sent when it answers again.
//
// The record is what may be in gobgpd from us (persisted, so a restarted
// vmrouted still knows what it announced); it is never rebuilt by listing
// gobgpd's RIB. gobgpd keeps API paths only in memory, so every new
// connection is treated as a possibly restarted gobgpd: everything desired is
// announced again (at once: before gobgpd's graceful-restart End-of-RIB
// deferral ends, so the reflector never sees a withdrawal) and everything else
// in the record withdrawn. The end of the WatchEvent stream is how we learn
// gobgpd went away.

export interface AnnouncerDeps {
  address: string;
  connect: (address: string) => GobgpTransport;
  policy: AnnouncePolicy;
  record: BgpPath[];
  persist: (record: BgpPath[]) => Promise<void>;
  log: Logger;
  retryMs?: number;
  /** Called for each failed attempt to reach or update gobgpd (metrics). */
  onFailure?: () => void;
  /** Called after every successful connection (the importer shares it). */
  onConnected?: (transport: GobgpTransport) => void;
}

export class Announcer {
  state: "connecting" | "up" | "down" = "connecting";
  reason = "not connected yet";
  reconnects = 0;
  private desired = new Map<string, BgpPath>();
  private haveDesired = false;
  private version = 0;
  private pushed = -1;
  private needFull = true;
  private record: Map<string, BgpPath>;
  private transport: GobgpTransport | undefined;
  private stopped = false;
  private cancelWatch: (() => void) | undefined;
  private wake: (() => void) | undefined;
  /**
   * Ready endpoints with an ip6 whose /128 is not announced because this host has no
   * IPv6 next hop (node.address6 unset, or unusable): shown in status and logged once.
   */
  withheld6 = 0;

  constructor(private readonly deps: AnnouncerDeps) {
    this.record = new Map(deps.record.map((p) => [p.prefix, p]));
  }

  /** Why some /128s are not announced, or undefined. */
  get withheld6Reason(): string | undefined {
    if (this.withheld6 === 0) return undefined;
    return `${this.withheld6} endpoint IPv6 address(es) not announced: node.address6 (this host's IPv6 next hop) is ${
      this.deps.policy.nextHop6 === undefined ? "not set" : `unusable (${this.deps.policy.nextHop6})`}`;
  }

  /**
   * What should be announced now (the ready endpoints). Returns at once; the loop sends it.
   * `keep`: prefixes kept as found (held objects): a path the record has for them stays
   * (and is sent again to a restarted gobgpd); none is added.
   */
  setDesired(announcements: Announcement[], keep: ReadonlySet<string> = new Set()): void {
    this.desired = new Map(announcements.flatMap((a) => pathsFor(a, this.deps.policy)).map((p) => [p.prefix, p]));
    const withheld = usableNextHop6(this.deps.policy.nextHop6) ? 0 : announcements.filter((a) => a.ip6 !== undefined).length;
    if (withheld > 0 && this.withheld6 === 0)
      this.deps.log.warn({ endpoints: withheld, address6: this.deps.policy.nextHop6 ?? null }, "IPv6 /128s not announced: set node.address6 (this host's IPv6 next hop)");
    else if (withheld === 0 && this.withheld6 > 0) this.deps.log.info("IPv6 /128s no longer withheld");
    this.withheld6 = withheld;
    for (const prefix of keep) {
      const had = this.record.get(prefix);
      if (had && !this.desired.has(prefix)) this.desired.set(prefix, had);
    }
    this.haveDesired = true;
    this.version++;
    this.wake?.();
  }

  /** Paths gobgpd has from us that are still wanted (of one family: /32s or /128s). */
  announcedCount(family?: "ipv4" | "ipv6"): number {
    let n = 0;
    for (const prefix of this.desired.keys())
      if ((family === undefined || prefix.includes(":") === (family === "ipv6")) && this.isAnnouncedPrefix(prefix)) n++;
    return n;
  }

  /** The IPv4 address's /32, or the IPv6 address's /128 (RFC 5952 text, as endpoints have it). */
  isAnnounced(ip: string): boolean {
    return this.isAnnouncedPrefix(ip.includes(":") ? `${ip}/128` : `${ip}/32`);
  }

  private isAnnouncedPrefix(prefix: string): boolean {
    const want = this.desired.get(prefix), had = this.record.get(prefix);
    return this.state === "up" && !this.needFull && !!want && !!had && samePath(want, had);
  }

  /** Sent everything published so far (tests and the bench wait for this). */
  get converged(): boolean {
    return this.state === "up" && this.haveDesired && this.pushed === this.version && !this.needFull;
  }

  start(): void {
    void this.loop();
  }

  stop(): void {
    this.stopped = true;
    this.cancelWatch?.();
    this.wake?.();
    this.transport?.close();
  }

  /**
   * gobgpd's view of its peers, for status. Waits at most a moment: a hung
   * gobgpd must not hang `vmroutectl status`; the last answer is shown then.
   */
  async status(): Promise<BgpStatus> {
    let reason = this.state === "up" ? this.withheld6Reason : this.reason;
    if (this.state === "up" && this.transport) {
      const ask = this.transport.listPeers().then((peers) => {
        this.peers = { list: peers, at: Date.now() };
        return undefined;
      }, (e: Error) => `cannot list peers: ${e.message}`);
      const late = new Promise<string>((r) => setTimeout(() => r("gobgpd did not answer ListPeer within 250 ms; peers as last seen"), 250).unref());
      const [withheld, peerProblem] = [this.withheld6Reason, await Promise.race([ask, late])];
      reason = [peerProblem, withheld].filter((x) => x !== undefined).join("; ") || undefined;
    }
    const peers = this.state === "up" ? this.peers.list : [];
    return { enabled: true, state: this.state, ...(reason ? { reason } : {}), peers, announced: this.announcedCount() };
  }

  private peers: { list: PeerInfo[]; at: number } = { list: [], at: 0 };

  private async loop(): Promise<void> {
    let first = true;
    while (!this.stopped) {
      if (this.state !== "up") {
        // Every attempt after the first waits: a gobgpd that accepts connections but fails every call is not hammered.
        if (!first) await new Promise((r) => setTimeout(r, this.deps.retryMs ?? 1000).unref());
        first = false;
        if (!this.stopped) await this.connect();
        continue;
      }
      if (!this.haveDesired || (this.pushed === this.version && !this.needFull)) {
        await this.pause();
        continue;
      }
      const version = this.version;
      const full = this.needFull;
      this.needFull = false;
      try {
        if (await this.push(full)) this.pushed = version;
      } catch (e) {
        // The record could not be written (a full stateDir): nothing is sent that it does not
        // cover; the same work is tried again after a pause.
        this.needFull ||= full;
        this.deps.onFailure?.();
        this.deps.log.error({ err: (e as Error).message }, "cannot record announced paths; retrying");
        await new Promise((r) => setTimeout(r, this.deps.retryMs ?? 1000).unref());
      }
    }
  }

  /** Waits for new work. */
  private pause(): Promise<void> {
    return new Promise<void>((resolve) => {
      this.wake = () => {
        this.wake = undefined;
        resolve();
      };
    });
  }

  private async connect(): Promise<boolean> {
    const transport = this.deps.connect(this.deps.address);
    try {
      const global = await transport.getBgp();
      if (!global.asn) throw new Error("gobgpd has no global BGP config yet (asn 0)");
      const watch = transport.watch();
      this.cancelWatch = watch.cancel;
      this.transport = transport;
      this.state = "up";
      this.reason = "";
      this.needFull = true;
      this.deps.log.info({ gobgp: this.deps.address, asn: global.asn, routerId: global.routerId }, "connected to gobgpd");
      this.deps.onConnected?.(transport);
      void watch.ended.then((ended) => {
        if (this.stopped || this.transport !== transport) return;
        this.reconnects++;
        this.markDown(`gobgpd connection lost (${ended}); will re-announce everything`);
      });
      return true;
    } catch (e) {
      transport.close();
      this.markDown(`cannot reach gobgpd at ${this.deps.address}: ${(e as Error).message}`);
      return false;
    }
  }

  /** Sends the difference (or, after a new connection, everything). False when gobgpd failed. */
  private async push(full: boolean): Promise<boolean> {
    const transport = this.transport;
    if (!transport) return false;
    const diff = diffAnnouncements(this.desired, full ? new Map() : this.record);
    if (full) for (const [prefix, path] of this.record) if (!this.desired.has(prefix)) diff.withdraw.push(path);
    if (diff.announce.length === 0 && diff.withdraw.length === 0) return true;
    // Remember what may be in gobgpd before sending: a crash mid-stream must not forget a path.
    for (const p of diff.announce) this.record.set(p.prefix, p);
    await this.deps.persist([...this.record.values()]);
    try {
      await transport.addPathStream([
        ...diff.announce.map((p) => toApiPath(p, false)),
        ...diff.withdraw.map((p) => toApiPath(p, true)),
      ]);
    } catch (e) {
      this.needFull = true;
      this.markDown(`AddPathStream failed: ${(e as Error).message}`);
      return false;
    }
    for (const p of diff.withdraw) this.record.delete(p.prefix);
    await this.deps.persist([...this.record.values()]);
    this.deps.log.info({ announced: diff.announce.length, withdrawn: diff.withdraw.length, full }, "bgp paths updated");
    return true;
  }

  private markDown(reason: string): void {
    this.deps.onFailure?.();
    if (this.state !== "down") this.deps.log.warn({ reason, gobgp: this.deps.address }, "gobgpd unreachable; kernel side keeps working");
    this.state = "down";
    this.reason = reason;
    this.needFull = true;
    this.cancelWatch?.();
    this.cancelWatch = undefined;
    this.transport?.close();
    this.transport = undefined;
    this.wake?.();
  }
}
