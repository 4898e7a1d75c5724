import { z } from "zod";
import type { Config } from "../config/schema.js";
import { InputError } from "../model/errors.js";
import { describeZodError, endpointInputSchema, networkInputSchema, specSchema, type EndpointInput, type Spec } from "../model/spec.js";
import type { Desired, DesiredStore } from "../state/desired.js";
import type { DesiredResolver } from "../state/resolve.js";
import type { RuntimeState } from "../state/stored.js";

// Changes to runtime networks and tap/netns endpoints, from the API. Each is
// one change on the desired state's writer, checked against the whole
// would-be state (including the IPs libvirt domains claim): if anything is
// wrong nothing is stored and the kernel is not touched. The caller then
// waits for the pass that applies it.

export class Controller {
  constructor(
    private readonly config: Config,
    private readonly store: DesiredStore,
    private readonly resolver: DesiredResolver,
    private readonly settled: () => Promise<void>,
  ) {}

  spec(): Spec {
    const runtime = this.store.current.runtime;
    return { networks: { ...runtime.networks }, endpoints: [...runtime.endpoints] };
  }

  /** One change: `build` returns the next runtime state from the current desired state (or throws an InputError). */
  private async commit(reason: string, build: (d: Desired) => RuntimeState): Promise<void> {
    await this.store.change(`api: ${reason}`, (d) => {
      const next = build(d);
      // The writer refuses a change that adds a problem (entries already held stay held): nothing changes.
      const resolved = this.resolver.runtimePart(next);
      for (const e of resolved.endpoints)
        for (const domain of d.domains.values())
          if (domain.interfaces.some((i) => i.ip === e.ip)) throw new InputError(`endpoint ${e.kind} ${e.ip}: ip ${e.ip} is used by domain '${domain.name}'`);
      const kept = new Set(resolved.networks.map((n) => n.name));
      const had = new Set(this.resolver.runtimePart(d.runtime).networks.map((n) => n.name));
      for (const domain of d.domains.values())
        for (const i of domain.interfaces)
          if (had.has(i.network) && !kept.has(i.network)) throw new InputError(`network '${i.network}' is used by domain '${domain.name}'`);
      return { next: { runtime: next }, result: undefined };
    });
    await this.settled();
  }

  applySpec(body: unknown): Promise<void> {
    const parsed = specSchema.safeParse(body);
    if (!parsed.success) throw new InputError(describeZodError(parsed.error, "spec"));
    // Config networks listed in a spec are checked for agreement, then not stored twice.
    const networks = Object.fromEntries(Object.entries(parsed.data.networks).filter(([name]) => !(name in this.config.networks)));
    return this.commit("apply", () => {
      // A spec is the whole desired set, as written: every entry of it must resolve (a config network
      // listed with other settings too), whatever was held before.
      const problem = this.resolver.runtimePart({ networks: parsed.data.networks, endpoints: parsed.data.endpoints }).problems[0];
      if (problem) throw new InputError(problem);
      return { networks, endpoints: parsed.data.endpoints };
    });
  }

  addNetwork(body: unknown): Promise<void> {
    const shape = networkInputSchema.extend({ name: z.string() }).strict().safeParse(body);
    if (!shape.success) throw new InputError(describeZodError(shape.error, "network"));
    const { name, ...network } = shape.data;
    return this.commit(`network add ${name}`, ({ runtime }) => {
      if (name in this.config.networks) throw new InputError(`network '${name}' comes from the config file; change it there`);
      // Adding a runtime network again with the same gateway sets its other settings (natOutgoing on or off).
      const had = runtime.networks[name];
      if (had && had.gateway !== network.gateway) throw new InputError(`network '${name}' already exists with gateway ${had.gateway}`);
      return { ...runtime, networks: { ...runtime.networks, [name]: network } };
    });
  }

  removeNetwork(name: string): Promise<void> {
    if (name in this.config.networks) throw new InputError(`network '${name}' comes from the config file; remove it there`);
    return this.commit(`network remove ${name}`, ({ runtime }) => {
      if (!(name in runtime.networks)) throw new InputError(`unknown network '${name}'`);
      const users = runtime.endpoints.filter((e) => e.network === name);
      if (users.length) throw new InputError(`network '${name}' still has ${users.length} endpoint(s); remove them first`);
      const { [name]: _, ...networks } = runtime.networks;
      return { ...runtime, networks };
    });
  }

  addEndpoint(body: unknown): Promise<void> {
    const parsed = endpointInputSchema.safeParse(body);
    if (!parsed.success) throw new InputError(describeZodError(parsed.error, "endpoint"));
    return this.commit(`${parsed.data.kind} add ${parsed.data.ip}`, ({ runtime }) => ({ ...runtime, endpoints: [...runtime.endpoints, parsed.data] }));
  }

  /** Removes the endpoint matching every given field (kind plus ip and/or netns). */
  removeEndpoint(match: { kind?: string; ip?: string; netns?: string }): Promise<void> {
    if (!match.kind || (!match.ip && !match.netns)) throw new InputError("endpoint removal needs kind and ip or netns");
    const matches = (e: EndpointInput) =>
      e.kind === match.kind && (!match.ip || e.ip === match.ip) && (!match.netns || (e.kind === "netns" && e.netns === match.netns));
    return this.commit(`${match.kind} remove ${match.ip ?? match.netns}`, ({ runtime }) => {
      if (!runtime.endpoints.some(matches)) throw new InputError(`no ${match.kind} endpoint ${match.ip ?? match.netns}`);
      return { ...runtime, endpoints: runtime.endpoints.filter((e) => !matches(e)) };
    });
  }
}
