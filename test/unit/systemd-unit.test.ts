import { execFileSync } from "node:child_process";
import { readdirSync, readFileSync } from "node:fs";
import { dirname, join, relative } from "node:path";
import { describe, expect, it } from "vitest";
import { configSchema } from "../../src/config/schema.js";

// The sandbox of systemd/vmrouted.service against what the code does: every
// program src/ runs (found in the source: execa, child_process and
// superviseLines calls) must
// be in the table below, with the address families, capabilities, namespaces,
// system calls and devices it needs, and the unit must allow them. A new
// child process fails this test until it is added to the table, and the unit
// is made to allow it: a sandbox that refuses it shows up only on a real host,
// in the middle of a live migration (tcpdump without AF_PACKET did).

const REPO = join(import.meta.dirname, "../..");
const UNIT_FILE = "systemd/vmrouted.service";

interface Needs {
  /** RestrictAddressFamilies. */
  families?: string[];
  /** CapabilityBoundingSet (and AmbientCapabilities when the unit runs as a user other than root). */
  capabilities?: string[];
  /** RestrictNamespaces. */
  namespaces?: string[];
  /** SystemCallFilter, beyond what a service needs anyway. */
  syscalls?: string[];
  /** DevicePolicy / DeviceAllow. */
  devices?: string[];
  /** Arguments every call must pass (for what the unit deliberately does not grant). */
  args?: string[];
  /** A line the unit must have (what the daemon cannot do in its sandbox and the unit does for it). */
  unitLine?: RegExp;
  why: string;
}

interface Program extends Needs {
  /** Run only by vmroutectl (an administrator, outside the unit), from these directories. */
  outsideUnit?: string[];
}

const PROGRAMS: Record<string, Program> = {
  ip: {
    families: ["AF_NETLINK"], capabilities: ["CAP_NET_ADMIN", "CAP_SYS_ADMIN"], namespaces: ["net", "mnt"],
    syscalls: ["setns", "unshare", "mount", "umount2"], devices: ["/dev/net/tun"],
    why: "links, addresses, routes, neighbours and `ip monitor` over rtnetlink; `ip tuntap add` opens /dev/net/tun; "
      + "`ip -n NAME` (task namespaces) does setns() into it, then unshare()s a mount namespace and mounts that namespace's /sys",
  },
  nft: { families: ["AF_NETLINK"], capabilities: ["CAP_NET_ADMIN"], why: "vmrouted's nftables table over nfnetlink" },
  tcpdump: {
    families: ["AF_PACKET"], capabilities: ["CAP_NET_RAW", "CAP_SETGID"], syscalls: ["setgroups"], args: ["-Z", "root"],
    why: "the guest's announcement on a migration's tap: a packet socket; -Z root keeps it root (switching to the user "
      + "tcpdump needs CAP_SETUID, which the unit does not grant), and it still calls initgroups() (CAP_SETGID, setgroups)",
  },
  virsh: { families: ["AF_UNIX"], why: "libvirtd's socket" },
  dnsmasq: {
    families: ["AF_INET", "AF_NETLINK"], capabilities: ["CAP_NET_BIND_SERVICE", "CAP_SETUID", "CAP_SETGID", "CAP_NET_ADMIN"],
    why: "DHCP on the taps: binds UDP port 67 (CAP_NET_BIND_SERVICE), lists interfaces over rtnetlink, then becomes nobody "
      + "(CAP_SETUID, CAP_SETGID) keeping CAP_NET_ADMIN",
  },
  flock: { why: "the single-instance lock: flock(2) on a descriptor it is handed (nothing the unit restricts)" },
  stdbuf: { why: "runs `virsh event` line-buffered (a preloaded library; nothing of its own)" },
  modprobe: {
    unitLine: /^ExecStartPre=\+-?\/sbin\/modprobe dummy$/m,
    why: "the daemon's own `modprobe dummy` cannot work in the sandbox (no CAP_SYS_MODULE, ProtectKernelModules): the unit loads it first, with full privileges",
  },
  "iptables-legacy-save": { outsideUnit: ["src/doctor/"], why: "vmroutectl doctor reads legacy firewall rules" },
};

/** The daemon itself. */
const DAEMON: Needs[] = [
  { families: ["AF_UNIX"], why: "the API socket" },
  { families: ["AF_INET", "AF_INET6"], why: "gobgpd's gRPC API (bgp.gobgp: 127.0.0.0/8 or [::1]) and the metrics listener" },
  { families: ["AF_NETLINK"], why: "Node's os.networkInterfaces()" },
];

/** Settings that would break it. */
const MUST_NOT: Array<[key: string, value: string, why: string]> = [
  ["ProtectKernelTunables", "yes", "sysctls are written through /proc/sys/net"],
  ["ProcSubset", "pid", "sysctls are written through /proc/sys/net"],
  ["PrivateNetwork", "yes", "it manages the host's network"],
  ["PrivateUsers", "yes", "its capabilities must hold in the host's user namespace"],
  ["PrivateDevices", "yes", "ip tuntap opens /dev/net/tun"],
  ["MemoryDenyWriteExecute", "yes", "Node's JIT"],
];

/** Where a program is named by a variable: the programs it can be. */
const INDIRECT: Record<string, string[]> = {
  "src/dataplane/nft.ts:cmd": ["nft", "ip"], // nftCommand(): nft, or `ip netns exec NAME nft`
  "src/child-lines.ts:command": [], // superviseLines(): its callers name the program, and are scanned
};

// ---------------------------------------------------------------------------
// What the code runs

interface Spawn { program: string; file: string; call: string }

/** The calls that start a child (superviseLines: src/child-lines.ts). */
const SPAWNERS = ["execa", "superviseLines", "spawn", "spawnSync", "execFile", "execFileSync", "exec", "execSync", "fork"];
const KNOWN_IMPORTS = [...SPAWNERS, "ResultPromise", "Result", "Options", "ExecaError", "ChildProcess"];

function sourceFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? sourceFiles(join(dir, e.name)) : e.name.endsWith(".ts") ? [join(dir, e.name)] : []);
}

function scanSpawns(): { spawns: Spawn[]; unknown: string[] } {
  const spawns: Spawn[] = [];
  const unknown: string[] = [];
  for (const path of sourceFiles(join(REPO, "src"))) {
    const file = relative(REPO, path);
    const text = readFileSync(path, "utf8");
    // Only ways of starting a child that the calls below find (not execa's $ or execaCommand, not child_process's default import).
    for (const m of text.matchAll(/import\s+([^;]*?)\s+from\s*"(execa|node:child_process|child_process)"/g)) {
      const names = /^\{([^}]*)\}$/.exec(m[1]!.trim())?.[1]!.split(",").map((n) => n.trim().replace(/^type\s+/, "")).filter(Boolean);
      const other = names ? names.filter((n) => !KNOWN_IMPORTS.includes(n)) : [m[1]!.trim()];
      if (other.length) unknown.push(`${file} imports ${other.join(", ")} from ${m[2]}: this test reads only ${SPAWNERS.join("(), ")}() calls`);
    }
    for (const m of text.matchAll(new RegExp(`(?<![\\w.$]|function\\s)(${SPAWNERS.join("|")})\\(\\s*([^,)]*)`, "g"))) {
      const first = m[2]!.trim();
      const call = text.slice(m.index, text.indexOf(")", m.index + m[0].length) + 1);
      const literal = /^"([^"]+)"$/.exec(first);
      if (literal) spawns.push({ program: literal[1]!, file, call });
      else if (`${file}:${first}` in INDIRECT) for (const program of INDIRECT[`${file}:${first}`]!) spawns.push({ program, file, call });
      else unknown.push(`${file}: ${m[1]}(${first}, ...) runs a program this test cannot name: add it to INDIRECT`);
    }
  }
  return { spawns, unknown };
}

// ---------------------------------------------------------------------------
// The unit

/** The [Service] section: every assignment of each key, in order (continued lines joined, comments dropped). */
function parseService(text: string): Map<string, string[]> {
  const out = new Map<string, string[]>();
  let section = "";
  for (const line of text.replace(/\\\n/g, " ").split("\n").map((l) => l.trim())) {
    if (line === "" || line.startsWith("#") || line.startsWith(";")) continue;
    const header = /^\[(.+)\]$/.exec(line);
    if (header) section = header[1]!;
    else if (section === "Service" && line.includes("=")) {
      const key = line.slice(0, line.indexOf("=")).trim();
      out.set(key, [...(out.get(key) ?? []), line.slice(line.indexOf("=") + 1).trim()]);
    }
  }
  return out;
}

/**
 * Whether a list setting lets `item` through, as systemd reads it: unset or
 * reset (an empty assignment): everything; the first assignment makes it an
 * allow list, or with "~" a deny list; later assignments of the same kind
 * add to it, of the other kind take out of it. `expand` maps a group
 * (@mount) to its members.
 */
function permits(assignments: string[] | undefined, item: string, expand: (name: string) => string[] = (n) => [n]): boolean {
  let mode: "all" | "allow" | "deny" = "all";
  let set = new Set<string>();
  for (const raw of assignments ?? []) {
    if (raw === "") {
      [mode, set] = ["all", new Set()];
      continue;
    }
    const deny = raw.startsWith("~");
    const items = (deny ? raw.slice(1) : raw).split(/\s+/).filter(Boolean).flatMap(expand);
    if (mode === "all") mode = deny ? "deny" : "allow";
    const adds = (mode === "deny") === deny;
    for (const i of items) adds ? set.add(i) : set.delete(i);
  }
  return mode === "all" || (mode === "allow" ? set.has(item) : !set.has(item));
}

let syscallGroups: Map<string, string[]> | undefined;

/** A SystemCallFilter group's members, nested groups expanded (systemd-analyze knows them; this test does not copy them). */
function expandSyscalls(name: string): string[] {
  if (!name.startsWith("@")) return [name.replace(/:.*$/, "")];
  if (!syscallGroups) {
    const text = execFileSync("systemd-analyze", ["syscall-filter", "--no-pager"], { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] });
    syscallGroups = new Map();
    let group = "";
    for (const line of text.split("\n")) {
      if (line.startsWith("@")) syscallGroups.set((group = line.trim()), []);
      else if (group && line.trim() && !line.trim().startsWith("#")) syscallGroups.get(group)!.push(line.trim());
    }
  }
  const members = syscallGroups.get(name);
  if (!members) throw new Error(`systemd-analyze knows no system call group ${name}`);
  return members.flatMap(expandSyscalls);
}

/** What the unit does not allow of `needs`, one line each. */
function refusals(unit: Map<string, string[]>, unitText: string, who: string, needs: Needs): string[] {
  const out: string[] = [];
  const last = (key: string) => unit.get(key)?.at(-1);
  const user = last("User");
  const asRoot = user === undefined || user === "" || user === "root" || user === "0";
  for (const family of needs.families ?? []) {
    const value = unit.get("RestrictAddressFamilies");
    if (value?.at(-1) === "none" || !permits(value?.filter((v) => v !== "none"), family)) out.push(`${who}: RestrictAddressFamilies refuses ${family} (${needs.why})`);
  }
  for (const cap of needs.capabilities ?? []) {
    if (!permits(unit.get("CapabilityBoundingSet"), cap)) out.push(`${who}: CapabilityBoundingSet lacks ${cap} (${needs.why})`);
    if (!asRoot && !(unit.get("AmbientCapabilities") ?? []).join(" ").split(/\s+/).includes(cap))
      out.push(`${who}: User=${user} without ${cap} in AmbientCapabilities (${needs.why})`);
  }
  for (const ns of needs.namespaces ?? []) {
    const value = last("RestrictNamespaces");
    const ok = value === undefined || value === "no" || (value !== "yes" && permits([value], ns));
    if (!ok) out.push(`${who}: RestrictNamespaces refuses ${ns} (${needs.why})`);
  }
  for (const call of needs.syscalls ?? []) {
    if (unit.has("SystemCallFilter") && !permits(unit.get("SystemCallFilter"), call, expandSyscalls))
      out.push(`${who}: SystemCallFilter refuses ${call}() (${needs.why})`);
  }
  for (const device of needs.devices ?? []) {
    const policy = last("DevicePolicy") ?? "auto";
    const allowed = (unit.get("DeviceAllow") ?? []).some((a) => a.split(/\s+/)[0] === device && /r/.test(a.split(/\s+/)[1] ?? "rwm") && /w/.test(a.split(/\s+/)[1] ?? "rwm"));
    if ((policy !== "auto" || unit.has("DeviceAllow")) && !allowed) out.push(`${who}: DevicePolicy=${policy} without DeviceAllow=${device} rw (${needs.why})`);
  }
  if (needs.unitLine && !needs.unitLine.test(unitText)) out.push(`${who}: the unit lacks a line like ${needs.unitLine.source} (${needs.why})`);
  return out;
}

/** Everything the unit refuses of what the code does. */
function check(unitText: string, spawns: Spawn[]): string[] {
  const unit = parseService(unitText);
  const out: string[] = [];
  for (const program of [...new Set(spawns.map((s) => s.program))].sort()) {
    const p = PROGRAMS[program];
    if (!p || p.outsideUnit) continue;
    out.push(...refusals(unit, unitText, program, p));
    for (const s of spawns.filter((x) => x.program === program)) {
      const args = p.args ?? [];
      if (args.length && !s.call.includes(args.map((a) => JSON.stringify(a)).join(", ")))
        out.push(`${program} in ${s.file} is run without ${args.join(" ")} (${p.why})`);
    }
  }
  for (const d of DAEMON) out.push(...refusals(unit, unitText, "vmrouted", d));
  for (const [key, value, why] of MUST_NOT) if (unit.get(key)?.at(-1) === value) out.push(`vmrouted: ${key}=${value} (${why})`);
  return out;
}

// ---------------------------------------------------------------------------

const unitText = readFileSync(join(REPO, UNIT_FILE), "utf8");
const { spawns, unknown } = scanSpawns();

describe("the systemd unit allows what the daemon does", () => {
  it("every program the code runs is known to this test", () => {
    expect(unknown).toEqual([]);
    const run = [...new Set(spawns.map((s) => s.program))].sort();
    expect(run.filter((p) => !(p in PROGRAMS)), "programs the code runs that the table here does not know: add them, with what they need").toEqual([]);
    // The scan sees the children it must (a scan that finds nothing would pass everything).
    expect(run).toEqual(expect.arrayContaining(["ip", "nft", "tcpdump", "virsh"]));
  });

  it("programs the unit need not allow are run only by vmroutectl", () => {
    for (const s of spawns) {
      const outside = PROGRAMS[s.program]?.outsideUnit;
      if (outside) expect(outside.some((dir) => s.file.startsWith(dir)), `${s.program} run from ${s.file}`).toBe(true);
    }
  });

  it("RestrictAddressFamilies, CapabilityBoundingSet, RestrictNamespaces, SystemCallFilter and devices allow every program it runs", () => {
    expect(check(unitText, spawns)).toEqual([]);
  });

  it("would catch the unit refusing a program what it needs (the unit without AF_PACKET, as it was, or without CAP_SETGID or CAP_NET_BIND_SERVICE)", () => {
    const without = (from: string, item: string) => unitText.replace(new RegExp(`^(${from}=.*) ${item}\\b`, "m"), "$1");
    expect(check(without("RestrictAddressFamilies", "AF_PACKET"), spawns)).toEqual([expect.stringMatching(/^tcpdump: RestrictAddressFamilies refuses AF_PACKET/)]);
    expect(check(without("CapabilityBoundingSet", "CAP_SETGID"), spawns)).toEqual([
      expect.stringMatching(/^dnsmasq: CapabilityBoundingSet lacks CAP_SETGID/), expect.stringMatching(/^tcpdump: CapabilityBoundingSet lacks CAP_SETGID/)]);
    expect(check(without("CapabilityBoundingSet", "CAP_NET_BIND_SERVICE"), spawns)).toEqual([expect.stringMatching(/^dnsmasq: CapabilityBoundingSet lacks CAP_NET_BIND_SERVICE/)]);
    expect(check(unitText + "[Service]\nSystemCallFilter=@system-service\nSystemCallFilter=~@mount\n", spawns))
      .toEqual(expect.arrayContaining([expect.stringMatching(/^ip: SystemCallFilter refuses mount\(\)/)]));
    expect(check(unitText, spawns.map((s) => (s.program === "tcpdump" ? { ...s, call: s.call.replace('"-Z", "root", ', "") } : s))))
      .toEqual([expect.stringMatching(/^tcpdump in src\/libvirt\/guest-announce\.ts is run without -Z root/)]);
  });

  it("lets it write where the default config puts its state and its socket", () => {
    const defaults = configSchema.parse({ node: { address: "10.1.1.3" } });
    const unit = parseService(unitText);
    expect(`/var/lib/${unit.get("StateDirectory")?.at(-1)}`).toBe(defaults.stateDir);
    expect(`/run/${unit.get("RuntimeDirectory")?.at(-1)}`).toBe(dirname(defaults.api.socket));
  });

  it("is the unit the Debian package installs", () => {
    const script = readFileSync(join(REPO, "scripts/package.sh"), "utf8");
    expect(script).toMatch(/^install -m 0644 systemd\/vmrouted\.service "\$root\/lib\/systemd\/system\/"$/m);
    // Installed as it is: no other line of the build names or edits it.
    expect(script.split("\n").filter((l) => l.includes("vmrouted.service"))).toHaveLength(1);
  });
});
