import { readFile } from "node:fs/promises";
import { Command, Option } from "commander";
import type { StartingStatus, Status } from "../daemon/status.js";
import { InputError } from "../model/errors.js";
import type { Spec } from "../model/spec.js";
import { ApiError, call, RawBody, UnreachableError } from "./client.js";
import { MAX_HOOK_XML, readStdin } from "./stdin.js";
import { VERSION } from "../version.js";
import type { LearnedStatus } from "../daemon/report.js";
import type { ConfigImpact } from "../config/impact.js";
import type { RejectedPath } from "../bgp/import-filter.js";
import {
  doctorHuman, domainsTable, endpointsTable, networksTable, rejectedTable, render, routesTable, statusHuman, type DomainView, type OutputFormat,
} from "./format.js";

const IP6_HELP = "the workload's IPv6 address, inside the network's prefix6 (a /128 beside the /32)";

// vmroutectl: the admin CLI. Every command is one API call; the daemon
// validates, so the CLI and the API can never accept different things.

const DEFAULT_SOCKET = "/run/vmrouted/vmrouted.sock";
const DEFAULT_CONFIG = "/etc/vmrouted/config.yaml";

function endpointOf(status: Status, match: (e: Status["endpoints"][number]) => boolean): string {
  const e = status.endpoints.find(match);
  if (!e) return "removed";
  return `${e.kind} ${e.ip} on ${e.device} (mac ${e.mac}): ${e.state}${e.reason ? ` — ${e.reason}` : ""}`;
}

async function readSpec(path: string): Promise<unknown> {
  let text: string;
  try {
    text = path === "-" ? await new Promise<string>((resolve, reject) => {
      const chunks: Buffer[] = [];
      process.stdin.on("data", (c: Buffer) => chunks.push(c)).on("end", () => resolve(Buffer.concat(chunks).toString("utf8"))).on("error", reject);
    }) : await readFile(path, "utf8");
  } catch (e) {
    throw new InputError(`spec ${path}: cannot read: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  // JSON (what scripts and orchestrators write) is parsed natively; YAML only when it is not JSON.
  if (/^\s*[{[]/.test(text)) {
    try {
      return JSON.parse(text) as unknown;
    } catch {
      // not JSON after all: YAML says what is wrong with it
    }
  }
  const { parseYaml } = await import("../config/load.js");
  return parseYaml(text, `spec ${path}`) ?? {};
}

/**
 * Orders this call with the shim's (templates/qemu-hook.sh): the boot id and the monotonic clock
 * in ns (process.hrtime is CLOCK_MONOTONIC, as /proc/timer_list's "now at"), never the wall clock.
 */
async function hookSeq(): Promise<string> {
  const boot = (await readFile("/proc/sys/kernel/random/boot_id", "utf8")).trim();
  return `${boot}:${process.hrtime.bigint()}`;
}

export function buildProgram(out: (s: string) => void): Command {
  const program = new Command("vmroutectl")
    .version(VERSION, "-V, --version", "print vmroutectl's version")
    .description("Admin CLI of vmrouted: routed network interfaces for VMs and namespaces")
    .option("--socket <path>", "vmrouted API socket", DEFAULT_SOCKET)
    .addOption(new Option("-o, --output <format>", "output format").choices(["human", "json", "yaml"]).default("human"))
    .showSuggestionAfterError(false)
    // Every command refuses arguments it does not take (commander accepts them by default:
    // `network add n 10.0.0.1/24 --nat-outgoing yes` made the network and ignored the "yes").
    .allowExcessArguments(false);
  const opts = () => program.opts<{ socket: string; output: OutputFormat }>();
  const api = <T>(method: string, path: string, body?: unknown) => call<T>(opts().socket, method, path, body);
  const show = async (value: unknown, human: (v: never) => string) => out(await render(value, opts().output, human));
  /** The reported state, for commands that read parts of it (before the first pass there is none yet). */
  const running = async (): Promise<Status> => {
    const s = await api<Status | StartingStatus>("GET", "/v1/status");
    if (s.state === "starting") throw new ApiError(`vmrouted is starting (${s.reason}); try again in a moment`);
    return s;
  };

  program.command("status").description("reported state: networks, endpoints, BGP").action(async () => {
    await show(await api<Status | StartingStatus>("GET", "/v1/status"), statusHuman);
  });

  program.command("apply").description("make the runtime networks and endpoints exactly those of a spec file")
    .requiredOption("-f, --file <path>", "spec file (YAML or JSON; - for stdin)")
    .action(async (o: { file: string }) => {
      const s = await api<Status>("PUT", "/v1/spec", await readSpec(o.file));
      await show(s, statusHuman);
    });

  program.command("get").description("show desired state").argument("<what>", "spec").action(async (what: string) => {
    if (what !== "spec") throw new InputError(`get: unknown object '${what}' (known: spec)`);
    const spec = await api<Spec>("GET", "/v1/spec");
    // For people a spec reads best as YAML, the format apply -f takes.
    out(await render(spec, opts().output === "human" ? "yaml" : opts().output, () => ""));
  });

  const network = program.command("network").description("gateways (routed networks)");
  network.command("add").argument("<name>").argument("<gateway>", "gateway address with prefix, e.g. 172.31.17.1/24")
    .option("--prefix6 <prefix>", "the network's IPv6 prefix, e.g. fd31:17::/64 (endpoints may then have an --ip6 in it)")
    .option("--nat-outgoing", "masquerade traffic from the network to destinations outside every vmrouted network (IPv4 only)")
    .option("--no-dhcp", "vmrouted's dnsmasq does not answer DHCP on this network's taps")
    .option("--mtu <bytes>", "MTU of the taps and veths, and DHCP option 26 (68-65535)")
    .option("--dns <addresses>", "DNS servers handed out by DHCP, comma-separated")
    .option("--domain <name>", "search domain handed out by DHCP")
    .option("--lease-seconds <seconds>", "DHCP lease time (at least 120)")
    .action(async (name: string, gateway: string, o: {
      prefix6?: string; natOutgoing?: boolean; dhcp: boolean; mtu?: string; dns?: string; domain?: string; leaseSeconds?: string;
    }) => {
      // Numbers are sent as given (a word stays a word): the daemon's one check names what is wrong.
      const num = (v: string) => (/^-?\d+(\.\d+)?$/.test(v) ? Number(v) : v);
      const s = await api<Status>("POST", "/v1/networks", {
        name, gateway, ...(o.prefix6 !== undefined ? { prefix6: o.prefix6 } : {}), ...(o.natOutgoing ? { natOutgoing: true } : {}), ...(o.dhcp === false ? { dhcp: false } : {}),
        ...(o.mtu !== undefined ? { mtu: num(o.mtu) } : {}), ...(o.dns !== undefined ? { dns: o.dns.split(",").filter(Boolean) } : {}),
        ...(o.domain !== undefined ? { domain: o.domain } : {}), ...(o.leaseSeconds !== undefined ? { leaseSeconds: num(o.leaseSeconds) } : {}),
      });
      await show(s.networks.find((n) => n.name === name), () => networksTable(s.networks.filter((n) => n.name === name)));
    });
  network.command("remove").argument("<name>").action(async (name: string) => {
    await api("DELETE", `/v1/networks/${encodeURIComponent(name)}`);
    await show({ removed: name }, () => `network ${name} removed`);
  });
  network.command("list").action(async () => {
    const s = await running();
    await show(s.networks, networksTable);
  });

  const tap = program.command("tap").description("tap endpoints for VMs that libvirt does not run");
  tap.command("add").requiredOption("--network <name>").requiredOption("--ip <address>").option("--ip6 <address>", IP6_HELP)
    .option("--mac <mac>", "guest MAC (default: derived from network and IP)").option("--name <device>", "tap device name")
    .action(async (o: { network: string; ip: string; ip6?: string; mac?: string; name?: string }) => {
      const s = await api<Status>("POST", "/v1/endpoints", { kind: "tap", ...o });
      const e = s.endpoints.find((x) => x.kind === "tap" && x.ip === o.ip);
      await show(e, () => endpointOf(s, (x) => x.kind === "tap" && x.ip === o.ip));
    });
  tap.command("remove").argument("<ip>").action(async (ip: string) => {
    await api("DELETE", `/v1/endpoints?kind=tap&ip=${encodeURIComponent(ip)}`);
    await show({ removed: ip }, () => `tap ${ip} removed`);
  });

  const netns = program.command("netns").description("container/task namespaces, connected by a veth pair");
  netns.command("add").argument("<netns>", "named network namespace (/run/netns/NAME)")
    .requiredOption("--network <name>").requiredOption("--ip <address>").option("--ip6 <address>", IP6_HELP)
    .option("--mac <mac>", "MAC of eth0 inside the namespace")
    .option("--resolv-conf", "write the network's DNS servers and domain into /etc/netns/NETNS/resolv.conf")
    .action(async (name: string, o: { network: string; ip: string; ip6?: string; mac?: string; resolvConf?: boolean }) => {
      const s = await api<Status>("POST", "/v1/endpoints", { kind: "netns", netns: name, ...o });
      const e = s.endpoints.find((x) => x.kind === "netns" && x.ip === o.ip);
      await show(e, () => endpointOf(s, (x) => x.kind === "netns" && x.ip === o.ip));
    });
  netns.command("remove").argument("<netns>").action(async (name: string) => {
    await api("DELETE", `/v1/endpoints?kind=netns&netns=${encodeURIComponent(name)}`);
    await show({ removed: name }, () => `netns ${name} endpoint removed`);
  });

  const iface = program.command("iface").description("routed interfaces of libvirt domains");
  iface.command("add").argument("<domain>").requiredOption("--network <name>").requiredOption("--ip <address>").option("--ip6 <address>", IP6_HELP)
    .option("--mac <mac>", "guest MAC (default: derived from network and IP)")
    .action(async (domain: string, o: { network: string; ip: string; ip6?: string; mac?: string }) => {
      const r = await api<{ added: { tap: string; mac: string }; domains: DomainView[] }>("POST", `/v1/domains/${encodeURIComponent(domain)}/interfaces`, o);
      await show(r.added, () => `${domain}: ${o.ip} on ${r.added.tap} (guest mac ${r.added.mac}) added`);
    });
  iface.command("remove").argument("<domain>").requiredOption("--ip <address>").action(async (domain: string, o: { ip: string }) => {
    const r = await api<{ removed: object }>("DELETE", `/v1/domains/${encodeURIComponent(domain)}/interfaces/${encodeURIComponent(o.ip)}`);
    await show(r.removed, () => `${domain}: ${o.ip} removed`);
  });
  iface.command("list").argument("[domain]").action(async (domain?: string) => {
    const all = await api<DomainView[]>("GET", "/v1/domains");
    const list = domain ? all.filter((d) => d.domain === domain) : all;
    if (domain && list.length === 0) throw new InputError(`unknown domain '${domain}' (or it has no routed interfaces)`);
    await show(list, domainsTable);
  });

  program.command("hook").description("libvirt qemu hook call (domain XML on stdin); what the installed shim runs")
    .argument("<domain>").argument("<op>").argument("<subop>").argument("[extra]", "", "-")
    .option("--config <path>", "daemon config, for making taps when the daemon is down", DEFAULT_CONFIG)
    .action(async (domain: string, op: string, subop: string, extra: string, o: { config: string }) => {
      const xml = await readStdin(MAX_HOOK_XML + 1);
      try {
        const query = new URLSearchParams({ domain, op, subop, extra, seq: await hookSeq() });
        const r = await api("POST", `/v1/hook?${query}`, new RawBody("application/xml", xml));
        await show(r, () => "ok");
      } catch (e) {
        // The daemon is down while a domain starts: make its taps so qemu can open them.
        if (e instanceof UnreachableError && subop === "begin" && (op === "prepare" || op === "migrate")) {
          const { ensureTapsWithoutDaemon } = await import("./hook.js");
          const taps = await ensureTapsWithoutDaemon(domain, xml, o.config);
          process.stderr.write(`vmroutectl: vmrouted is not running; created ${taps.join(", ") || "no taps"} directly, routes follow when it starts\n`);
          return;
        }
        throw e;
      }
    });

  program.command("install-hook").description("install the libvirt qemu hook shim into HOOKS_DIR/qemu.d/ (never replaces HOOKS_DIR/qemu)")
    .option("--hooks-dir <dir>", "libvirt's hooks directory", "/etc/libvirt/hooks")
    .option("--config <path>", "daemon config the shim hands to the fallback", DEFAULT_CONFIG)
    .option("--timeout <seconds>", "how long a hook call may take", "20")
    .action(async (o: { hooksDir: string; config: string; timeout: string }) => {
      const timeout = Number(o.timeout);
      if (!Number.isInteger(timeout) || timeout < 1 || timeout > 300) throw new InputError("install-hook: --timeout must be 1-300 seconds");
      const { installHook } = await import("./hook.js");
      const message = await installHook({ hooksDir: o.hooksDir, socket: opts().socket, config: o.config, timeout });
      await show({ installed: true, message }, () => `${message}\nlibvirtd reads hooks at start or on SIGHUP: reload it (systemctl reload libvirtd) to activate.`);
    });

  program.command("doctor")
    .description("check what makes routed workloads silently fail, and say what to do (exit 1 if anything is wrong)")
    .option("--config <path>", "vmrouted's config", "/etc/vmrouted/config.yaml")
    .option("--hooks-dir <dir>", "libvirt's hooks directory", "/etc/libvirt/hooks")
    .option("--libvirtd-pidfile <path>", "libvirtd's pid file", "/run/libvirt/libvirtd.pid")
    .action(async (o: { config: string; hooksDir: string; libvirtdPidfile: string }) => {
      // Loaded here, not at the top: the doctor pulls in the gRPC stack, which would
      // add ~150 ms to every other command (the hook shim's included).
      const [{ diagnose, hasProblems }, { probe }] = await Promise.all([import("../doctor/diagnose.js"), import("../doctor/probe.js")]);
      const { loadConfig } = await import("../config/load.js");
      const config = await loadConfig(o.config);
      const findings = diagnose(await probe(config, { socket: opts().socket, hooksDir: o.hooksDir, libvirtdPidFile: o.libvirtdPidfile }));
      const problems = findings.filter((f) => f.result === "problem").length;
      await show({ problems, findings }, () => doctorHuman(findings));
      if (hasProblems(findings)) process.exitCode = 1;
    });

  program.command("config").description("the daemon's config file").command("check")
    .description("what a restart with a config would change; exit 1 where it would orphan an endpoint")
    .option("--config <path>", "the config to check", DEFAULT_CONFIG)
    .action(async (o: { config: string }) => {
      const text = await readFile(o.config, "utf8").catch((e: NodeJS.ErrnoException) => {
        throw new InputError(`config ${o.config}: cannot read: ${e.code ?? e.message}`);
      });
      const { impactHuman } = await import("../config/impact.js");
      const impact = await api<ConfigImpact>("POST", `/v1/config/check?name=${encodeURIComponent(o.config)}`, new RawBody("application/yaml", text));
      await show(impact, impactHuman);
      if (impact.orphaned.length) process.exitCode = 1;
    });

  program.command("routes").description("routes learned from other hosts (BGP import), as installed")
    .option("--rejected", "the learned paths the import filter refuses, with the announcing next hop and why")
    .action(async (o: { rejected?: boolean }) => {
      if (o.rejected) await show(await api<RejectedPath[]>("GET", "/v1/routes?rejected"), rejectedTable);
      else await show(await api<LearnedStatus[]>("GET", "/v1/routes"), routesTable);
    });

  program.command("endpoints").description("list endpoints").action(async () => {
    const s = await running();
    await show(s.endpoints, endpointsTable);
  });
  return program;
}

async function main(): Promise<void> {
  const program = buildProgram((s) => process.stdout.write(s + "\n"));
  program.exitOverride().configureOutput({
    writeErr: (s) => {
      const line = s.split("\n").find((l) => l.trim());
      if (line) process.stderr.write(`${line.startsWith("error:") ? "vmroutectl: " + line.slice(6).trim() : line}\n`);
    },
    writeOut: (s) => process.stdout.write(s),
  });
  await program.parseAsync(process.argv);
}

main().catch((e: unknown) => {
  const err = e as Error & { code?: string; exitCode?: number };
  if (err.code?.startsWith("commander.")) process.exit(err.code === "commander.helpDisplayed" || err.code === "commander.version" ? 0 : 2);
  const known = err instanceof InputError || err instanceof ApiError;
  process.stderr.write(`vmroutectl: ${known ? err.message : (err.message ?? String(e)).split("\n")[0]}\n`);
  process.exit(1);
});
