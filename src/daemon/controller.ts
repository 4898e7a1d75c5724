import { z } from "zod";
import type { Config } from "../config/schema.js";
import { InputError } from "../model/errors.js";
import { resolveDesired } from "../model/resolve.js";
import { describeZodError, endpointInputSchema, networkInputSchema, specSchema, type EndpointInput, type Spec } from "../model/spec.js";
import type { DesiredState, Network } from "../model/types.js";
import { vmEndpoints, type DomainRecord, type VmEndpoints } from "../libvirt/domains.js";
import type { Reconciler, ReconcileReport } from "./reconciler.js";
import type { RuntimeState, StateStore } from "./store.js";

// Changes to desired state, from the API. Each change is validated against the
// whole would-be state first: if anything is wrong nothing is stored and the
// kernel is not touched. A valid change is persisted, then reconciled.

/** Where VM endpoints come from (the libvirt service), when libvirt is enabled. */
export interface VmSource {
  records(): DomainRecord[];
  claimedIps(): Map<string, string>;
}

export class Controller {
  private reconciler: Reconciler | undefined;
  private vm: VmSource | undefined;
  /** VM interfaces that could not be served in the last desired state, with why. */
  rejected: VmEndpoints["rejected"] = [];

  constructor(
    private readonly config: Config,
    private readonly store: StateStore,
    private state: RuntimeState,
  ) {}

  attach(reconciler: Reconciler, vm?: VmSource): void {
    this.reconciler = reconciler;
    this.vm = vm;
  }

  /**
   * The desired state the reconciler works towards: tap/netns endpoints (always
   * valid: only valid states are stored), then VM endpoints from libvirt, of
   * which any that conflict are rejected and reported, not fatal.
   */
  desired(): DesiredState {
    const r = this.current();
    if (!r.ok) throw new Error(`stored state became invalid: ${r.error}`);
    if (!this.vm) return r.value;
    const vm = vmEndpoints(this.vm.records(), r.value.networks, this.apiClaims());
    this.rejected = vm.rejected;
    return { networks: r.value.networks, endpoints: [...r.value.endpoints, ...vm.endpoints] };
  }

  networks(): Network[] {
    const r = this.current();
    return r.ok ? r.value.networks : [];
  }

  /** IPs and device names (as dev:NAME) of tap and netns endpoints. */
  apiClaims(): Set<string> {
    const r = this.current();
    const claims = new Set<string>();
    if (r.ok) for (const e of r.value.endpoints) claims.add(e.ip).add(`dev:${e.device}`);
    return claims;
  }

  spec(): Spec {
    return { networks: { ...this.state.networks }, endpoints: [...this.state.endpoints] };
  }

  private cache: { state: RuntimeState; result: ReturnType<Controller["resolve"]> } | undefined;

  /** The stored state, resolved once per change (desired(), networks() and apiClaims() all need it). */
  private current(): ReturnType<Controller["resolve"]> {
    if (this.cache?.state !== this.state) this.cache = { state: this.state, result: this.resolve(this.state) };
    return this.cache.result;
  }

  private resolve(state: RuntimeState) {
    return resolveDesired({ configNetworks: this.config.networks, runtimeNetworks: state.networks, endpoints: state.endpoints });
  }

  private async commit(next: RuntimeState, reason: string): Promise<ReconcileReport> {
    const r = this.resolve(next);
    if (!r.ok) throw new InputError(r.error);
    const byDomain = this.vm?.claimedIps() ?? new Map<string, string>();
    for (const e of r.value.endpoints) {
      const domain = byDomain.get(e.ip);
      if (domain) throw new InputError(`endpoint ${e.kind} ${e.ip}: ip ${e.ip} is used by domain '${domain}'`);
    }
    const removed = this.networks().filter((n) => !r.value.networks.some((m) => m.name === n.name));
    for (const d of this.vm?.records() ?? []) for (const i of d.interfaces)
      if (removed.some((n) => n.name === i.network)) throw new InputError(`network '${i.network}' is used by domain '${d.name}'`);
    await this.store.save(next);
    this.state = next;
    return this.reconciler!.request(reason);
  }

  async applySpec(body: unknown): Promise<ReconcileReport> {
    const parsed = specSchema.safeParse(body);
    if (!parsed.success) throw new InputError(describeZodError(parsed.error, "spec"));
    // Config networks listed in a spec are checked for agreement, then not stored twice.
    const networks = Object.fromEntries(Object.entries(parsed.data.networks).filter(([name]) => !(name in this.config.networks)));
    const r = this.resolve({ networks: parsed.data.networks, endpoints: parsed.data.endpoints });
    if (!r.ok) throw new InputError(r.error);
    return this.commit({ networks, endpoints: parsed.data.endpoints }, "apply");
  }

  async addNetwork(body: unknown): Promise<ReconcileReport> {
    const shape = networkInputSchema.extend({ name: z.string() }).strict().safeParse(body);
    if (!shape.success) throw new InputError(describeZodError(shape.error, "network"));
    const { name, gateway } = shape.data;
    if (name in this.config.networks || name in this.state.networks) throw new InputError(`network '${name}' already exists`);
    return this.commit({ ...this.state, networks: { ...this.state.networks, [name]: { gateway } } }, `network add ${name}`);
  }

  async removeNetwork(name: string): Promise<ReconcileReport> {
    if (name in this.config.networks) throw new InputError(`network '${name}' comes from the config file; remove it there`);
    if (!(name in this.state.networks)) throw new InputError(`unknown network '${name}'`);
    const users = this.state.endpoints.filter((e) => e.network === name);
    if (users.length) throw new InputError(`network '${name}' still has ${users.length} endpoint(s); remove them first`);
    const { [name]: _, ...networks } = this.state.networks;
    return this.commit({ ...this.state, networks }, `network remove ${name}`);
  }

  async addEndpoint(body: unknown): Promise<ReconcileReport> {
    const parsed = endpointInputSchema.safeParse(body);
    if (!parsed.success) throw new InputError(describeZodError(parsed.error, "endpoint"));
    return this.commit({ ...this.state, endpoints: [...this.state.endpoints, parsed.data] }, `${parsed.data.kind} add ${parsed.data.ip}`);
  }

  /** Removes the endpoint matching every given field (kind plus ip and/or netns). */
  async removeEndpoint(match: { kind?: string; ip?: string; netns?: string }): Promise<ReconcileReport> {
    if (!match.kind || (!match.ip && !match.netns)) throw new InputError("endpoint removal needs kind and ip or netns");
    const matches = (e: EndpointInput) =>
      e.kind === match.kind && (!match.ip || e.ip === match.ip) && (!match.netns || (e.kind === "netns" && e.netns === match.netns));
    const found = this.state.endpoints.filter(matches);
    if (found.length === 0) throw new InputError(`no ${match.kind} endpoint ${match.ip ?? match.netns}`);
    return this.commit({ ...this.state, endpoints: this.state.endpoints.filter((e) => !matches(e)) }, `${match.kind} remove ${match.ip ?? match.netns}`);
  }
}
