import { mkdir, readdir, readFile, rm, rmdir } from "node:fs/promises";
import { join } from "node:path";
import type { Logger } from "pino";
import type { DesiredState } from "../model/types.js";
import { writeFileAtomic } from "../state/files.js";
import { LatestOnly } from "../latest-only.js";

// A netns endpoint's resolver file, when its spec asks (`resolvConf: true`):
// /etc/netns/<netns>/resolv.conf, which `ip netns exec` bind-mounts over
// /etc/resolv.conf for whatever runs in the namespace (netns endpoints get no
// DHCP: this is their DNS). Written from the network's `dns` and `domain`.
// Ownership: the first line names vmrouted and the endpoint; a file without
// it is someone else's and is never overwritten or removed (reported
// instead). Ours that no endpoint wants any more are removed, found by that
// line, so a removal while vmrouted was down is caught at the next start.

export const NETNS_ETC = "/etc/netns";
const MARK = "# vmrouted:";

/** netns name → the resolver file it should have (pure). */
export function resolvConfs(state: DesiredState): Map<string, string> {
  const networks = new Map(state.networks.map((n) => [n.name, n]));
  const out = new Map<string, string>();
  for (const e of state.endpoints) {
    if (e.kind !== "netns" || !e.resolvConf || !e.netns) continue;
    const n = networks.get(e.network)!;
    // Nothing to say: the namespace keeps the host's resolver (an empty file would take it away).
    if (!n.guest.dns.length && n.guest.domain === undefined) continue;
    out.set(e.netns, [
      `${MARK} ${e.id} (network ${n.name}); rewritten from the network's dns and domain, removed with the endpoint`,
      ...(n.guest.domain ? [`search ${n.guest.domain}`] : []),
      ...n.guest.dns.map((d) => `nameserver ${d}`),
      "",
    ].join("\n"));
  }
  return out;
}

export class ResolvConfWriter {
  /** What was last followed: an unchanged set is not looked at again (every published change calls update). */
  private last: string | undefined;
  /** netns whose resolver file is someone else's (not written), for status. */
  readonly refused = new Set<string>();

  constructor(private readonly log: Logger, private readonly base = NETNS_ETC) {}

  private readonly following = new LatestOnly<DesiredState>(async (state) => {
    const wanted = resolvConfs(state);
    const key = JSON.stringify([...wanted]);
    if (key === this.last) return;
    await this.follow(wanted);
    this.last = key; // a failed write is tried again at the next change
  }, (e) => this.log.error({ err: e.message }, "cannot write a task namespace's resolv.conf"));

  update(state: DesiredState): Promise<void> {
    return this.following.offer(state);
  }

  private async follow(wanted: Map<string, string>): Promise<void> {
    for (const [netns, text] of wanted) {
      const path = join(this.base, netns, "resolv.conf");
      const had = await readFile(path, "utf8").catch(() => undefined);
      if (had === text) continue;
      if (had !== undefined && !had.startsWith(MARK)) {
        if (!this.refused.has(netns)) this.log.error({ path }, "not writing a resolv.conf that vmrouted did not write (remove it to let vmrouted write it)");
        this.refused.add(netns);
        continue;
      }
      this.refused.delete(netns);
      // Readable by whoever runs in the namespace (writeFileAtomic would make a new directory 0700).
      await mkdir(join(this.base, netns), { recursive: true, mode: 0o755 });
      await writeFileAtomic(path, text, false, 0o644);
      this.log.info({ path }, "wrote a task namespace's resolv.conf");
    }
    // Ours that nothing wants now.
    for (const netns of await readdir(this.base).catch(() => [] as string[])) {
      if (wanted.has(netns)) continue;
      const path = join(this.base, netns, "resolv.conf");
      if (!(await readFile(path, "utf8").catch(() => "")).startsWith(MARK)) continue;
      await rm(path, { force: true });
      await rmdir(join(this.base, netns)).catch(() => undefined); // only when empty: anything else there stays
      this.log.info({ path }, "removed a task namespace's resolv.conf");
    }
  }
}
