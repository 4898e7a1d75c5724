import { chmod, cp, mkdir, mkdtemp, readFile, rm, stat, symlink, writeFile } from "node:fs/promises";
import { existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { execa } from "execa";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BgpLab, HOST_ADDRESS } from "../helpers/bgp-lab.js";
import { Daemon, REPO, rootSnapshot, runId, sh, waitFor } from "../helpers/lab.js";

// The Debian package as an operator gets it: built by scripts/package.sh,
// checked with lintian and dpkg-deb, installed on this machine with
// `apt-get install ./vmrouted_*.deb` (and purged at the end: /etc, /usr,
// /var/lib and /lib/systemd are compared before and after), the installed
// vmrouted run in network namespaces with a real gobgpd and BIRD, and an
// upgrade to a newer build under 100 endpoints, sampled every 50 ms.
// No systemd runs here: the test starts /usr/bin/vmrouted as the unit would,
// and restarts it after the upgrade as postinst's try-restart would (SIGTERM,
// then the new binary); the maintainer scripts' systemd calls are checked
// against a stub systemctl in a private mount namespace.

const id = runId();
const INSTALLED = { daemon: ["/usr/bin/vmrouted"], cli: ["/usr/bin/vmroutectl"] };
const CONFIG = "/etc/vmrouted/config.yaml";
const STATE_DIR = "/var/lib/vmrouted";
const HOOK = "/etc/libvirt/hooks/qemu.d/vmrouted";
const UNIT = "/lib/systemd/system/vmrouted.service";
const DROP_IN = "/lib/systemd/system/gobgpd.service.d/vmrouted.conf";
const LISTED = ["/etc", "/usr", "/var/lib", "/lib/systemd"];

const pkg = JSON.parse(await readFile(join(REPO, "package.json"), "utf8")) as { version: string };
const version = pkg.version;
const [major, minor, patch] = version.split(/[.-]/).map(Number) as [number, number, number];
const nextVersion = `${major}.${minor}.${patch + 1}`;
const debVersion = (v: string) => v.replace(/-/g, "~");

let work = "";
let deb = "";
let nextDeb: Promise<string> | undefined;
let fsBefore: string[] = [];
let rootBefore = "";
let lab: BgpLab | undefined;
let daemon: Daemon | undefined;
const timings: Record<string, string> = {};

async function timed<T>(what: string, fn: () => Promise<T>): Promise<T> {
  const started = Date.now();
  try {
    return await fn();
  } finally {
    timings[what] = `${((Date.now() - started) / 1000).toFixed(1)} s`;
  }
}

const apt = (args: string[]) => execa("apt-get", ["-y", "-q", "--no-install-recommends", "-o", "DPkg::Lock::Timeout=300", ...args],
  { env: { DEBIAN_FRONTEND: "noninteractive" }, reject: false, all: true });

async function dpkgStatus(): Promise<string> {
  const r = await sh("dpkg-query", ["-W", "-f", "${Status} ${Version}", "vmrouted"], { reject: false });
  return r.exitCode === 0 ? r.stdout : "";
}

/** Every path under LISTED with its type and link target, sorted. */
async function fsListing(): Promise<string[]> {
  const r = await sh("find", [...LISTED, "-xdev", "-printf", "%p %y %l\\n"], { reject: false });
  return r.stdout.split("\n").filter(Boolean).sort();
}

/** Builds the package from a copy of the checkout whose version is `v` (the repo's own version is never changed). */
async function buildCopy(v: string, codeVersion = v): Promise<string> {
  const copy = await mkdtemp(join(tmpdir(), "vmrouted-pkg-src-"));
  try {
    await mkdir(join(copy, "scripts"));
    for (const f of ["package.json", "tsconfig.json", "README.md", "src", "proto", "templates", "systemd", "packaging", "scripts/package.sh"])
      await cp(join(REPO, f), join(copy, f), { recursive: true });
    await symlink(join(REPO, "node_modules"), join(copy, "node_modules"));
    const p = JSON.parse(await readFile(join(copy, "package.json"), "utf8")) as { version: string };
    await writeFile(join(copy, "package.json"), JSON.stringify({ ...p, version: v }, null, 2));
    const versionTs = await readFile(join(copy, "src/version.ts"), "utf8");
    await writeFile(join(copy, "src/version.ts"), versionTs.replace(/export const VERSION = ".*";/, `export const VERSION = "${codeVersion}";`));
    return await packageFrom(copy);
  } finally {
    await rm(copy, { recursive: true, force: true });
  }
}

async function packageFrom(dir: string): Promise<string> {
  const r = await execa("bash", [join(dir, "scripts/package.sh"), "--out", work], { cwd: dir, reject: false, all: true });
  if (r.exitCode !== 0) throw new Error(`scripts/package.sh failed:\n${r.all}`);
  return r.stdout.trim().split(" ")[0]!;
}

/** The installed unit's ExecCondition, run as systemd would run it: 0 = vmrouted starts, 1-254 = skipped. */
async function unitCondition(): Promise<number> {
  const line = (await readFile(UNIT, "utf8")).split("\n").find((l) => l.startsWith("ExecCondition="))!;
  const m = /^ExecCondition=\/bin\/sh -c '(.*)'$/.exec(line);
  if (!m) throw new Error(`unexpected ExecCondition: ${line}`);
  return (await sh("/bin/sh", ["-c", m[1]!], { reject: false })).exitCode ?? -1;
}

const tapSpec = (count: number) => JSON.stringify({
  endpoints: Array.from({ length: count }, (_, i) => ({ kind: "tap", network: "service", ip: `172.31.16.${10 + i}` })),
});
const prefixes = (count: number) => Array.from({ length: count }, (_, i) => `172.31.16.${10 + i}/32`);

beforeAll(async () => {
  if (process.getuid?.() !== 0) throw new Error("the package test needs root (it installs the package with apt-get)");
  // It installs and purges vmrouted on this machine: never over an installation or files it would delete.
  if (await dpkgStatus()) throw new Error(`vmrouted is installed here (${await dpkgStatus()}); the package test installs and purges it: remove it first`);
  for (const p of [HOOK, "/etc/vmrouted", STATE_DIR])
    if (existsSync(p)) throw new Error(`${p} exists; the package test's purge would delete it: move it away first`);
  rootBefore = await rootSnapshot();
  fsBefore = await fsListing();
  work = await mkdtemp(join(tmpdir(), "vmrouted-pkg-"));
  await chmod(work, 0o755); // apt reads local .debs as _apt
  deb = await timed("build", () => packageFrom(REPO));
  // N+1, from a copy with the version bumped; built while lintian and the first install run.
  nextDeb = timed("build N+1", () => buildCopy(nextVersion));
  nextDeb.catch(() => undefined); // awaited (and reported) by the upgrade test
}, 180_000);

afterAll(async () => {
  await daemon?.cleanup();
  await lab?.destroy();
  await nextDeb?.catch(() => undefined);
  if (await dpkgStatus()) await apt(["purge", "vmrouted"]);
  if (work) await rm(work, { recursive: true, force: true });
  console.log(`package test timings: ${JSON.stringify(timings)}`);
  expect(await rootSnapshot()).toBe(rootBefore);
}, 120_000);

describe("the package", () => {
  it("is vmrouted_<version>_all.deb with the control data, conffile and scripts an operator expects", async () => {
    expect(deb).toBe(join(work, `vmrouted_${debVersion(version)}_all.deb`));
    const field = async (name: string) => (await sh("dpkg-deb", ["-f", deb, name])).stdout;
    expect(await field("Package")).toBe("vmrouted");
    expect(await field("Version")).toBe(debVersion(version));
    expect(await field("Architecture")).toBe("all");
    expect(await field("Depends")).toBe("nodejs (>= 20), iproute2, gobgpd, nftables, curl, dnsmasq-base");
    expect(await field("Recommends")).toBe("libvirt-daemon, tcpdump");
    const info = (await sh("dpkg-deb", ["-I", deb])).stdout;
    for (const script of ["postinst", "prerm", "postrm", "conffiles", "md5sums"]) expect(info).toContain(` ${script}`);
    expect((await sh("dpkg-deb", ["-I", deb, "conffiles"])).stdout.trim()).toBe(CONFIG);
    const size = (await stat(deb)).size;
    timings["package size"] = `${Math.round(size / 1024)} KiB (installed ${await field("Installed-Size")} KiB)`;
    expect(size).toBeLessThan(2 * 1024 * 1024);
  });

  it("holds exactly the bundles, launchers, unit, drop-in, config, templates, man pages and docs: no node_modules, no tests", async () => {
    const listing = (await sh("dpkg-deb", ["-c", deb])).stdout.split("\n").filter(Boolean);
    const files = listing.filter((l) => !l.startsWith("d")).map((l) => l.split(/\s+/)[5]!.replace(/^\./, "")).sort();
    const templates = (await sh("ls", [join(REPO, "templates")])).stdout.split("\n").filter(Boolean).map((t) => `/usr/share/vmrouted/templates/${t}`);
    expect(files).toEqual([
      CONFIG, DROP_IN, UNIT,
      "/usr/bin/vmroutectl", "/usr/bin/vmrouted",
      "/usr/lib/vmrouted/vmroutectl.mjs", "/usr/lib/vmrouted/vmrouted.mjs",
      "/usr/share/doc/vmrouted/README.md.gz", "/usr/share/doc/vmrouted/changelog.gz", "/usr/share/doc/vmrouted/copyright",
      "/usr/share/doc/vmrouted/third-party-licenses.gz",
      "/usr/share/lintian/overrides/vmrouted",
      "/usr/share/man/man1/vmroutectl.1.gz", "/usr/share/man/man8/vmrouted.8.gz",
      "/usr/share/vmrouted/proto/gobgp.proto",
      ...templates,
    ].sort());
    const mode = (path: string) => listing.find((l) => l.endsWith(` .${path}`))!.split(/\s+/)[0];
    expect(mode("/usr/bin/vmrouted")).toBe("-rwxr-xr-x");
    expect(mode("/usr/lib/vmrouted/vmrouted.mjs")).toBe("-rw-r--r--");
    expect(listing.every((l) => l.includes(" root/root "))).toBe(true);
  });

  it("is not built when package.json and src/version.ts disagree", async () => {
    await expect(buildCopy(nextVersion, version)).rejects.toThrow(
      `package: package.json has version ${nextVersion} but src/version.ts has ${version}: make them equal`);
  });

  it("lintian reports no errors", async () => {
    const r = await timed("lintian", () => execa("lintian", ["--display-info", "--pedantic", deb], { reject: false, all: true }));
    const tags = (r.all ?? "").split("\n").filter((l) => /^[EWIPXO]: /.test(l));
    console.log(`lintian (${tags.length} tag(s)):\n${tags.join("\n") || "(none)"}`);
    expect(tags.filter((l) => l.startsWith("E: "))).toEqual([]);
    expect(r.exitCode, r.all).toBe(0);
  }, 120_000);
});

describe("installed with apt-get", () => {
  it("puts everything in place and starts nothing: the config is the example until edited", async () => {
    const r = await timed("install", () => apt(["install", deb]));
    expect(r.exitCode, r.all).toBe(0);
    expect(await dpkgStatus()).toBe(`install ok installed ${debVersion(version)}`);
    // Not running systemd here: the scripts say what to do and succeed.
    expect(r.all).toContain(`vmrouted: edit ${CONFIG}`);
    for (const p of [UNIT, DROP_IN, CONFIG, "/usr/lib/vmrouted/vmrouted.mjs", "/usr/lib/vmrouted/vmroutectl.mjs",
      "/usr/share/vmrouted/proto/gobgp.proto", "/usr/share/vmrouted/templates/qemu-hook.sh", "/usr/share/vmrouted/templates/gobgpd.toml",
      "/usr/share/man/man1/vmroutectl.1.gz", "/usr/share/man/man8/vmrouted.8.gz"]) expect(existsSync(p), p).toBe(true);
    expect((await sh("dpkg-query", ["-W", "-f", "${Conffiles}", "vmrouted"])).stdout).toContain(CONFIG);
    expect(await readFile(CONFIG, "utf8")).toBe(await readFile(join(REPO, "packaging/deb/config.yaml"), "utf8"));
    expect(await unitCondition()).toBe(1); // the unit would be skipped: nothing starts until the config is edited
    expect((await sh("pgrep", ["-f", "/usr/(bin|lib)/vmrouted"], { reject: false })).exitCode).toBe(1);
  }, 120_000);

  it("installs the libvirt hook where libvirt is, pointing at the installed CLI", async () => {
    if (!existsSync("/etc/libvirt")) {
      expect(existsSync(HOOK)).toBe(false);
      return;
    }
    const shim = await readFile(HOOK, "utf8");
    const value = (key: string) => new RegExp(`^${key}='(.*)'$`, "m").exec(shim)?.[1];
    expect(value("CLI")).toBe("/usr/lib/vmrouted/vmroutectl.mjs");
    expect(value("SOCKET")).toBe("/run/vmrouted/vmrouted.sock");
    expect((await sh(value("NODE")!, [value("CLI")!, "--version"])).stdout).toBe(version);
    expect(((await stat(HOOK)).mode & 0o777).toString(8)).toBe("755");
  });

  it("vmroutectl --help and --version, vmrouted --version, from /usr/bin; the man page covers every command", async () => {
    expect((await sh("/usr/bin/vmroutectl", ["--version"])).stdout).toBe(version);
    expect((await sh("/usr/bin/vmrouted", ["--version"])).stdout).toBe(version);
    const help = (await sh("/usr/bin/vmroutectl", ["--help"])).stdout;
    const commands = help.split("Commands:")[1]!.split("\n").map((l) => /^ {2}([a-z-]+)/.exec(l)?.[1]).filter((c): c is string => !!c && c !== "help");
    expect(commands.length).toBeGreaterThan(10);
    const man = (await sh("sh", ["-c", "zcat /usr/share/man/man1/vmroutectl.1.gz"])).stdout.replace(/\\-/g, "-").replace(/\\f[BIRP]/g, "");
    for (const c of commands) expect(man, c).toMatch(new RegExp(`^\\.B[IR]?\\s+"?${c}\\b`, "m"));
    expect((await sh("/usr/bin/vmrouted", ["--help"])).stdout).toContain("--config");
  });

  it("systemd-analyze verify of the installed unit and gobgpd with the drop-in is silent", async () => {
    const r = await sh("systemd-analyze", ["verify", UNIT, "gobgpd.service"], { reject: false });
    expect(r.exitCode, r.stderr).toBe(0);
    expect(r.stdout + r.stderr).toBe("");
    const dropIn = await sh("systemd-analyze", ["cat-config", "systemd/system/gobgpd.service.d/vmrouted.conf"]);
    expect(dropIn.stdout).toContain("--api-hosts=127.0.0.1:50051");
  });
});

describe("the installed vmrouted", () => {
  it("applies a spec: taps ready, routed, and their /32s at BIRD with the host as next hop", async () => {
    lab = await BgpLab.start(id);
    // The config as an operator edits it (the conffile), the state where the unit keeps it.
    daemon = await Daemon.create(lab.host, {
      command: INSTALLED, configPath: CONFIG, bgp: { gobgp: "127.0.0.1:50051" }, resyncSeconds: 2, extra: { stateDir: STATE_DIR },
    });
    expect(await unitCondition()).toBe(0); // edited: the unit would start it
    await daemon.start();
    await lab.waitForSession();
    const applied = await daemon.ctl(["apply", "-f", "-"], tapSpec(3));
    expect(applied.exitCode, applied.stderr).toBe(0);
    await waitFor(async () => {
      const s = await daemon!.status();
      return s.endpoints.length === 3 && s.endpoints.every((e) => e.state === "ready") && s.bgp.announced === 3;
    }, 20000, "3 endpoints ready and announced");
    await lab.waitForExactly(prefixes(3));
    expect([...(await lab.birdRoutes()).values()]).toEqual([HOST_ADDRESS, HOST_ADDRESS, HOST_ADDRESS]);
    const routes = await lab.host.json<Array<{ dst: string; dev: string }>>(["route", "show", "proto", "94"]);
    expect(routes.map((r) => r.dst).sort()).toEqual(["172.31.16.10", "172.31.16.11", "172.31.16.12"]);
    const status = await daemon.status();
    expect(status.version).toBe(version);
    expect(existsSync(join(STATE_DIR, "state.json"))).toBe(true);
  }, 120_000);

  it("is upgraded to N+1 under 100 endpoints without a blip: no route, tap or reflector path missing at any sample", async () => {
    const d = daemon!, l = lab!;
    const applied = await d.ctl(["apply", "-f", "-"], tapSpec(100));
    expect(applied.exitCode, applied.stderr).toBe(0);
    await waitFor(async () => {
      const s = await d.status();
      return s.endpoints.length === 100 && s.endpoints.every((e) => e.state === "ready") && s.bgp.announced === 100;
    }, 30000, "100 endpoints ready and announced");
    await l.waitForExactly(prefixes(100));

    type Link = { ifname: string; ifindex: number; flags: string[] };
    const look = async () => {
      const [links, routes, bird] = await Promise.all([
        l.host.json<Link[]>(["link", "show", "group", "94"]),
        l.host.json<Array<{ dst: string; dev: string }>>(["route", "show", "proto", "94"]),
        sh("birdc", ["-s", l.birdSocket, "show", "route", "protocol", "host1"], { reject: false }),
      ]);
      return {
        // (iproute2 prints {} for each link the group filter leaves out)
        taps: new Set(links.filter((k) => k.ifname && k.flags.includes("UP")).map((k) => `${k.ifname}#${k.ifindex}`)),
        routes: new Set(routes.map((r) => `${r.dst} ${r.dev}`)),
        paths: new Set(bird.stdout.split("\n").map((line) => /^(\d+\.\d+\.\d+\.\d+\/32)\s/.exec(line)?.[1]).filter(Boolean) as string[]),
      };
    };
    const baseline = await look();
    expect([baseline.taps.size, baseline.routes.size, baseline.paths.size]).toEqual([100, 100, 100]);
    const withdrawsBefore = await l.importWithdraws();
    const hookBefore = existsSync(HOOK) ? (await stat(HOOK)).mtimeMs : undefined;

    // Sampling every 50 ms (or back to back when a sample takes longer) from before the
    // upgrade until the new daemon has announced everything and a few seconds more.
    const samples: Array<{ at: number; missing: string[] }> = [];
    let sampling = true;
    const t0 = performance.now();
    const sampler = (async () => {
      while (sampling) {
        const started = performance.now();
        const now = await look();
        const missing = [
          ...[...baseline.taps].filter((t) => !now.taps.has(t)).map((t) => `tap ${t}`),
          ...[...baseline.routes].filter((r) => !now.routes.has(r)).map((r) => `route ${r}`),
          ...[...baseline.paths].filter((p) => !now.paths.has(p)).map((p) => `BIRD path ${p}`),
        ];
        samples.push({ at: started - t0, missing });
        await new Promise((r) => setTimeout(r, Math.max(0, 50 - (performance.now() - started))));
      }
    })();
    let restartMs = 0;
    try {
      await new Promise((r) => setTimeout(r, 500));
      const next = await nextDeb!;
      const r = await timed("upgrade install", () => apt(["install", next]));
      expect(r.exitCode, r.all).toBe(0);
      expect(await dpkgStatus()).toBe(`install ok installed ${debVersion(nextVersion)}`);
      // What postinst's `deb-systemd-invoke try-restart vmrouted.service` makes systemd do: SIGTERM, then the new binary.
      const restart = performance.now();
      await d.stop();
      await d.start();
      await waitFor(async () => {
        const s = await d.status();
        return s.version === nextVersion && s.endpoints.length === 100 && s.endpoints.every((e) => e.state === "ready") && s.bgp.announced === 100;
      }, 30000, "vmrouted N+1 ready with 100 endpoints announced");
      restartMs = performance.now() - restart;
      timings["restart to all announced"] = `${(restartMs / 1000).toFixed(2)} s`;
      await new Promise((r) => setTimeout(r, 3000)); // re-announcements reach BIRD, resync passes run
    } finally {
      sampling = false;
      await sampler;
    }
    const gaps = samples.slice(1).map((s, i) => s.at - samples[i]!.at).sort((a, b) => a - b);
    const bad = samples.filter((s) => s.missing.length);
    timings["upgrade samples"] = `${samples.length} over ${((samples.at(-1)?.at ?? 0) / 1000).toFixed(1)} s, interval median ${gaps[gaps.length >> 1]?.toFixed(0)} ms, max ${gaps.at(-1)?.toFixed(0)} ms, with something missing: ${bad.length}`;
    console.log(`upgrade: ${timings["upgrade samples"]}; restart to all announced ${(restartMs / 1000).toFixed(2)} s`);
    expect(bad.slice(0, 3)).toEqual([]);
    expect(samples.length).toBeGreaterThan(20);
    // Between samples too: BIRD received no withdrawal, and every tap is the same device (same ifindex) as before.
    expect(await l.importWithdraws()).toBe(withdrawsBefore);
    expect(await look()).toEqual(baseline);
    expect(await l.holdsExactly(prefixes(100))).toBe(true);
    // The new vmrouted found everything right and changed nothing; the operator's config and the hook were kept as they were.
    expect((await d.status()).reconcile.operationsApplied).toBe(0);
    expect(await readFile(CONFIG, "utf8")).toContain("test-host");
    expect((await sh("sh", ["-c", "ls /etc/vmrouted"])).stdout.trim()).toBe("config.yaml");
    if (hookBefore !== undefined) expect((await stat(HOOK)).mtimeMs).toBe(hookBefore);
  }, 180_000);
});

describe("maintainer scripts under systemd (systemctl stubbed in a private mount namespace)", () => {
  /** Runs one installed maintainer script with /run/systemd/system present and systemctl/deb-systemd-helper logging; returns their calls. */
  async function underSystemd(script: string, args: string[]): Promise<string[]> {
    const dir = await mkdtemp(join(tmpdir(), "vmrouted-maint-"));
    try {
      const log = join(dir, "calls.log");
      await mkdir(join(dir, "bin"));
      await writeFile(join(dir, "bin/systemctl"),
        `#!/bin/sh\necho "systemctl $*" >> ${log}\ncase "$*" in *is-enabled*) echo enabled ;; esac\nexit 0\n`, { mode: 0o755 });
      await writeFile(join(dir, "bin/deb-systemd-helper"), `#!/bin/sh\necho "deb-systemd-helper $*" >> ${log}\nexit 0\n`, { mode: 0o755 });
      await writeFile(log, "");
      // deb-systemd-invoke is the real one (init-system-helpers); it calls systemctl through PATH.
      const inner = [
        "set -e",
        "mount -t tmpfs tmpfs /run/systemd && mkdir /run/systemd/system",
        "if [ -e /usr/sbin/policy-rc.d ]; then mount --bind /dev/null /usr/sbin/policy-rc.d; fi",
        `PATH=${dir}/bin:$PATH DPKG_MAINTSCRIPT_PACKAGE=vmrouted DPKG_MAINTSCRIPT_NAME=${script} /var/lib/dpkg/info/vmrouted.${script} "$@"`,
      ].join("\n");
      const r = await sh("unshare", ["-m", "--propagation", "private", "sh", "-c", inner, "sh", ...args], { reject: false });
      expect(r.exitCode, r.stderr).toBe(0);
      return (await readFile(log, "utf8")).split("\n").filter(Boolean);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }

  it("first install enables and starts the unit; an upgrade try-restarts it; removal stops it; never libvirtd or gobgpd", async () => {
    const fresh = await underSystemd("postinst", ["configure"]);
    expect(fresh).toContain("deb-systemd-helper enable vmrouted.service");
    expect(fresh).toContain("systemctl --system daemon-reload");
    expect(fresh).toContain("systemctl --quiet --system start vmrouted.service");
    const upgrade = await underSystemd("postinst", ["configure", debVersion(version)]);
    expect(upgrade).toContain("systemctl try-restart vmrouted.service");
    expect(upgrade.filter((c) => / (start|restart|stop) /.test(c))).toEqual([]);
    expect(await underSystemd("prerm", ["upgrade", debVersion(nextVersion)])).toEqual([]); // vmrouted runs on through the unpack
    expect(await underSystemd("prerm", ["remove"])).toEqual(["systemctl stop vmrouted.service"]);
    expect(await underSystemd("postrm", ["remove"])).toEqual(["deb-systemd-helper mask vmrouted.service", "systemctl --system daemon-reload"]);
    for (const call of [...fresh, ...upgrade]) expect(call).not.toMatch(/libvirt|gobgp/);
  }, 60_000);
});

describe("purged", () => {
  it("leaves nothing of ours in /etc, /usr, /var/lib or /lib/systemd", async () => {
    await daemon?.stop();
    const r = await timed("purge", () => apt(["purge", "vmrouted"]));
    expect(r.exitCode, r.all).toBe(0);
    expect(await dpkgStatus()).toBe("");
    for (const p of ["/etc/vmrouted", STATE_DIR, HOOK, "/usr/lib/vmrouted", "/usr/share/vmrouted", UNIT, DROP_IN]) expect(existsSync(p), p).toBe(false);
    const after = await fsListing();
    const before = new Set(fsBefore), now = new Set(after);
    const changed = [...after.filter((l) => !before.has(l)).map((l) => `+ ${l}`), ...fsBefore.filter((l) => !now.has(l)).map((l) => `- ${l}`)];
    // Anything else that changed meanwhile (another apt run on this machine) belongs to another package.
    const paths = changed.map((c) => c.slice(2).split(" ")[0]!);
    const owned = paths.length ? (await sh("dpkg-query", ["-S", ...paths], { reject: false })).stdout : "";
    // dpkg-query -S prints "package[, package...]: path" for each path some package owns.
    const ownedBy = new Map(owned.split("\n").filter(Boolean).map((line) => {
      const i = line.lastIndexOf(": ");
      return [line.slice(i + 2), line.slice(0, i)] as const;
    }));
    const ours = changed.filter((c, i) => {
      const p = paths[i]!;
      if (p.includes("vmrouted")) return true;
      if (/^\/var\/lib\/(dpkg|apt)\//.test(p)) return false;
      return !ownedBy.has(p);
    });
    if (changed.length) console.log(`filesystem changes during the test (not ours unless listed below):\n${changed.join("\n")}`);
    expect(ours).toEqual([]);
  }, 120_000);
});
