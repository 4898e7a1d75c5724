import type { Logger } from "pino";
import type { BgpStatus } from "../daemon/status.js";
import { toApiPath, type GobgpTransport, type PeerInfo } from "./gobgp.js";
import { diffAnnouncements, pathFor, type AnnouncePolicy, type BgpPath } from "./paths.js";

// Keeps gobgpd's local paths equal to the set of ready endpoints.
//
// The record is what may be in gobgpd from us (persisted, so a restarted
// vmrouted still knows what it announced); it is never rebuilt by listing
// gobgpd's RIB. gobgpd keeps API paths only in memory, so every new
// connection is treated as a possibly restarted gobgpd: everything desired is
// announced again and everything else in the record withdrawn. The end of the
// WatchEvent stream is how we learn gobgpd went away.

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
}

export class Announcer {
  state: "connecting" | "up" | "down" = "connecting";
  reason = "not connected yet";
  reconnects = 0;
  private desired = new Map<string, BgpPath>();
  private haveDesired = false;
  private record: Map<string, BgpPath>;
  private transport: GobgpTransport | undefined;
  private queue: Promise<unknown> = Promise.resolve();
  private stopped = false;
  private cancelWatch: (() => void) | undefined;
  private wake: (() => void) | undefined;

  constructor(private readonly deps: AnnouncerDeps) {
    this.record = new Map(deps.record.map((p) => [p.prefix, p]));
  }

  /** The IPs that should be announced now (the ready endpoints). Resolves once gobgpd has them, or at once when it is unreachable. */
  setDesired(ips: string[]): Promise<void> {
    this.desired = new Map(ips.map((ip) => pathFor(ip, this.deps.policy)).map((p) => [p.prefix, p]));
    const first = !this.haveDesired;
    this.haveDesired = true;
    return this.enqueue(() => this.push(first));
  }

  /** Paths gobgpd has from us that are still wanted. */
  announcedCount(): number {
    return this.state === "up" ? [...this.record.keys()].filter((p) => this.desired.has(p)).length : 0;
  }

  isAnnounced(ip: string): boolean {
    return this.state === "up" && this.record.has(`${ip}/32`) && this.desired.has(`${ip}/32`);
  }

  start(): void {
    void this.connectLoop();
  }

  stop(): void {
    this.stopped = true;
    this.cancelWatch?.();
    this.wake?.();
    this.transport?.close();
  }

  async status(): Promise<BgpStatus> {
    let peers: PeerInfo[] = [];
    let reason = this.state === "up" ? undefined : this.reason;
    if (this.state === "up" && this.transport) {
      try {
        peers = await this.transport.listPeers();
      } catch (e) {
        reason = `cannot list peers: ${(e as Error).message}`;
      }
    }
    return { enabled: true, state: this.state, ...(reason ? { reason } : {}), peers, announced: this.announcedCount() };
  }

  private enqueue(task: () => Promise<void>): Promise<void> {
    const run = this.queue.then(task, task);
    this.queue = run.catch(() => undefined);
    return run;
  }

  /** Sends the difference (or, after a new connection, everything) to gobgpd. */
  private async push(full: boolean): Promise<void> {
    if (this.state !== "up" || !this.transport || !this.haveDesired) return;
    const diff = diffAnnouncements(this.desired, full ? new Map() : this.record);
    if (full) for (const [prefix, path] of this.record) if (!this.desired.has(prefix)) diff.withdraw.push(path);
    if (diff.announce.length === 0 && diff.withdraw.length === 0) return;
    // Remember what may be in gobgpd before sending: a crash mid-stream must not forget a path.
    for (const p of diff.announce) this.record.set(p.prefix, p);
    await this.deps.persist([...this.record.values()]);
    try {
      await this.transport.addPathStream([
        ...diff.announce.map((p) => toApiPath(p, false)),
        ...diff.withdraw.map((p) => toApiPath(p, true)),
      ]);
    } catch (e) {
      this.markDown(`AddPathStream failed: ${(e as Error).message}`);
      return;
    }
    for (const p of diff.withdraw) this.record.delete(p.prefix);
    await this.deps.persist([...this.record.values()]);
    this.deps.log.info({ announced: diff.announce.length, withdrawn: diff.withdraw.length, full }, "bgp paths updated");
  }

  private markDown(reason: string): void {
    this.deps.onFailure?.();
    if (this.state !== "down") this.deps.log.warn({ reason, gobgp: this.deps.address }, "gobgpd unreachable; kernel side keeps working");
    this.state = "down";
    this.reason = reason;
    this.cancelWatch?.();
  }

  private async connectLoop(): Promise<void> {
    while (!this.stopped) {
      const transport = this.deps.connect(this.deps.address);
      try {
        const global = await transport.getBgp();
        if (!global.asn) throw new Error("gobgpd has no global BGP config yet (asn 0)");
        const watch = transport.watch();
        this.cancelWatch = watch.cancel;
        this.transport = transport;
        this.state = "up";
        this.reason = "";
        this.deps.log.info({ gobgp: this.deps.address, asn: global.asn, routerId: global.routerId }, "connected to gobgpd");
        await this.enqueue(() => this.push(true));
        const ended = await watch.ended;
        if (!this.stopped) {
          this.reconnects++;
          this.markDown(`gobgpd connection lost (${ended}); will re-announce everything`);
        }
      } catch (e) {
        this.markDown(`cannot reach gobgpd at ${this.deps.address}: ${(e as Error).message}`);
      }
      this.transport = undefined;
      transport.close();
      if (this.stopped) return;
      await new Promise<void>((resolve) => {
        this.wake = resolve;
        setTimeout(resolve, this.deps.retryMs ?? 1000).unref();
      });
    }
  }
}
