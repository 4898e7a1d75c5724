import type { DomainRecord } from "../libvirt/domains.js";
import type { LearnedRoute } from "../model/types.js";
import type { HostFacts } from "../bgp/import-filter.js";
import type { RuntimeState } from "./stored.js";
import { Serial } from "./serial.js";

// The desired state and its one writer. Every change (API call, spec, hook,
// libvirt resync, BGP import) is a function queued here: it sees the newest
// state, returns the next one (or throws: nothing changes), the whole
// would-be state is validated, the parts that changed are persisted, and only
// then is it published to the listeners (the reconciler marks what changed
// dirty). No two changes interleave, and memory never differs from the files.

export interface Desired {
  /** Runtime networks and tap/netns endpoints (API, spec): state.json. */
  readonly runtime: RuntimeState;
  /** libvirt domains as hooks and resyncs reported them: domains.json. */
  readonly domains: ReadonlyMap<string, DomainRecord>;
  /** Best paths other hosts announce, by prefix (BGP importer). Not persisted: gobgpd has them. */
  readonly learned: ReadonlyMap<string, LearnedRoute>;
  /**
   * The importer has given a complete set since this start. Until then the
   * learned routes already in the kernel are kept as they are: a restarted
   * vmrouted must not flush them before it knows what the fabric has.
   */
  readonly learnedKnown: boolean;
  /**
   * The domains are the whole set libvirt has (a usable domains cache, or a
   * libvirt resync since). Until then every vm-class object in the kernel is
   * kept as found: a missing cache and a libvirtd that is down at the same
   * time must not read as "no VMs" and delete the taps qemu holds.
   */
  readonly domainsKnown: boolean;
  /** This host's addresses, connected prefixes and BGP peers, for the import filter (not persisted: read again). */
  readonly hostFacts: HostFacts;
  /** Other hosts' paths to this host's workload IPs (duplicates), as gobgpd last listed them. Not persisted. */
  readonly remoteClaims: ReadonlyMap<string, string>;
}

export interface Change<T> {
  /** The parts that change; the rest stays as it is. */
  next: Partial<Desired>;
  result: T;
}

export interface DesiredPersistence {
  saveRuntime(runtime: RuntimeState): Promise<void>;
  saveDomains(domains: ReadonlyMap<string, DomainRecord>, complete: boolean): Promise<void>;
}

export type DesiredListener = (next: Desired, previous: Desired, reason: string) => void;

export class DesiredStore {
  private value: Desired;
  private readonly queue = new Serial();
  private readonly listeners: DesiredListener[] = [];
  /** Changes published so far (a resync that read libvirt at version v knows what came after). */
  version = 0;

  constructor(
    initial: Desired,
    private readonly persistence: DesiredPersistence,
    /** Throws (an InputError) when the whole would-be state is not acceptable. */
    private readonly validate: (next: Desired, previous: Desired) => void,
  ) {
    this.value = initial;
  }

  get current(): Desired {
    return this.value;
  }

  subscribe(listener: DesiredListener): void {
    this.listeners.push(listener);
  }

  /** Queues a change; resolves with its result once it is persisted and published. */
  change<T>(reason: string, fn: (current: Desired) => Change<T>): Promise<T> {
    return this.queue.run(async () => {
      const previous = this.value;
      const { next: parts, result } = fn(previous);
      const next: Desired = { ...previous, ...parts };
      if (next.runtime === previous.runtime && next.domains === previous.domains && next.learned === previous.learned &&
        next.learnedKnown === previous.learnedKnown && next.domainsKnown === previous.domainsKnown && next.hostFacts === previous.hostFacts &&
        next.remoteClaims === previous.remoteClaims) return result;
      this.validate(next, previous);
      // Persisted before anyone sees it: a crash from here on leaves the old or the new state on disk.
      if (next.runtime !== previous.runtime) await this.persistence.saveRuntime(next.runtime);
      if (next.domains !== previous.domains || next.domainsKnown !== previous.domainsKnown)
        await this.persistence.saveDomains(next.domains, next.domainsKnown);
      this.value = next;
      this.version++;
      for (const listener of this.listeners) listener(next, previous, reason);
      return result;
    });
  }
}
