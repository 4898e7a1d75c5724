import { chmod, mkdir, readFile, stat, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { loadConfig } from "../config/load.js";
import { applyPlan } from "../dataplane/apply.js";
import { observe } from "../dataplane/observe.js";
import { plan } from "../dataplane/plan.js";
import { runtimeFile } from "../state/stored.js";
import { parseDomainXml, routedInterfaces } from "../libvirt/domain-xml.js";
import { vmEndpoints } from "../libvirt/domains.js";
import { InputError } from "../model/errors.js";
import { EndpointClaims, resolveNetworks } from "../model/resolve.js";
import { packaged } from "../layout.js";

// The hook's two halves that do not need the daemon: the fallback that makes
// a starting domain's taps when vmrouted is down (so the VM still starts; the
// daemon routes and announces it when it is back), and installing the shim.

/** Creates the taps of a starting domain directly, touching nothing but them. */
export async function ensureTapsWithoutDaemon(domain: string, xml: string, configPath: string): Promise<string[]> {
  // The daemon's own config, or nothing: defaults would mark the taps with the wrong group or protocol.
  const config = await loadConfig(configPath);
  // Read only (the daemon keeps aside and rebuilds a corrupt file): runtime networks, if readable.
  const runtime = (await runtimeFile(config.stateDir).load()).value;
  const networks = resolveNetworks(config.networks, runtime.networks);
  if (!networks.ok) throw new InputError(networks.error);
  const interfaces = routedInterfaces(parseDomainXml(xml, "hook domain XML"));
  const vm = vmEndpoints([{ name: domain, lifecycle: "prepared", interfaces, seq: 0 }], networks.value, new EndpointClaims(networks.value));
  if (vm.rejected.length) throw new InputError(`${vm.rejected[0]!.ip}: ${vm.rejected[0]!.reason}`);
  const ids = new Set(vm.endpoints.map((e) => e.id));
  const desired = { networks: networks.value, endpoints: vm.endpoints, learned: [] };
  const settings = { ...config.dataplane, gatewayKind: "bridge" as const };
  // Only these taps are read, so only these taps can be planned for: nothing else on the host is touched.
  const look = () => observe({ netns: [], scope: { devices: vm.endpoints.map((e) => e.device), dsts: [] } });
  const before = await look();
  // A tap held open (carrier) at prepare is another domain's, running: a virt-clone carrying its metadata. The
  // clone must not start, and that domain's tap and route stay as they are (the plan below would unroute them).
  const held = vm.endpoints.find((e) => before.links.get(e.device)?.carrier);
  if (held) throw new InputError(`ip ${held.ip}: tap ${held.device} is held open by a running domain`);
  const ops = plan(desired, before, settings, { gateways: new Set() }).operations.filter((op) => ids.has(op.subject));
  await applyPlan(ops);
  const after = plan(desired, await look(), settings, { gateways: new Set() });
  const missing = after.endpoints.filter((c) => !c.link || c.conflict);
  if (missing.length) throw new Error(`tap ${missing[0]!.endpoint.device} could not be created${missing[0]!.conflict ? `: ${missing[0]!.conflict}` : ""}`);
  return vm.endpoints.map((e) => e.device);
}

const MARKER = "vmrouted's libvirt qemu hook";

export async function installHook(options: { hooksDir: string; socket: string; config: string; timeout: number }): Promise<string> {
  const template = await readFile(packaged?.hookTemplate ?? fileURLToPath(new URL("../../templates/qemu-hook.sh", import.meta.url)), "utf8");
  const cli = packaged?.cli ?? fileURLToPath(new URL("./main.js", import.meta.url));
  const values: Record<string, string> = {
    NODE: process.execPath, CLI: cli, SOCKET: options.socket, CONFIG: options.config, TIMEOUT: String(options.timeout),
  };
  for (const [key, value] of Object.entries(values))
    if (value.includes("'")) throw new InputError(`install-hook: ${key.toLowerCase()} path must not contain a single quote`);
  const shim = template.replace(/@([A-Z]+)@/g, (_m, key: string) => values[key] ?? "");
  const target = join(options.hooksDir, "qemu.d", "vmrouted");
  const existing = await readFile(target, "utf8").catch(() => undefined);
  if (existing !== undefined && !existing.includes(MARKER)) throw new InputError(`install-hook: ${target} exists and is not vmrouted's; not replacing it`);
  await mkdir(dirname(target), { recursive: true, mode: 0o755 });
  await writeFile(target, shim, { mode: 0o755 });
  await chmod(target, 0o755);
  const legacy = await stat(join(options.hooksDir, "qemu")).then(() => true, () => false);
  return legacy
    ? `${target} installed (the existing ${join(options.hooksDir, "qemu")} is left as it is; libvirt runs both)`
    : `${target} installed`;
}
