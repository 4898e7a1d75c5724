import { spawn, type ChildProcess } from "node:child_process";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { execa } from "execa";
import { Daemon, type DaemonOptions, type Netns, REPO, sh, stopChild, waitFor } from "./lab.js";

// A real libvirtd (qemu driver, TCG) isolated from the machine by
// scripts/lab/libvirtd.sh: it runs in the test's host network namespace, in a
// private mount namespace where its config, run, state, cache, log and hooks
// directories are this test's own.

const SANDBOX = join(REPO, "scripts/lab/libvirtd.sh");

/**
 * The lab guest's kernel command line (scripts/lab/guest-init): `ip` is A.B.C.D/N, or "dhcp" (busybox
 * udhcpc configures eth0; with renewSeconds it is asked to renew that often); `ip6: "dhcp"`: ISC dhclient -6
 * gets eth0's IPv6 address by DHCPv6 (its default route comes from the RA); `nic` adds an interface.
 */
export interface GuestSpec {
  ip: string; gateway?: string; ping: string[]; watch: string; echoPort?: number; fetch?: string; renewSeconds?: number; ip6?: "dhcp";
  nic?: { mac: string; tap: string };
}

export class LibvirtLab {
  child: ChildProcess | undefined;
  log = "";
  private constructor(readonly host: Netns, readonly dir: string, readonly listen?: string) {}

  get uri(): string {
    return `qemu:///system?socket=${join(this.dir, "run", "libvirt-sock")}`;
  }
  /** With `listen`: how another host's libvirt and `virsh migrate` reach this one. */
  get tcpUri(): string {
    if (!this.listen) throw new Error("this libvirtd does not listen on TCP");
    return `qemu+tcp://${this.listen}/system`;
  }
  get hooksDir(): string {
    return join(this.dir, "etc", "hooks");
  }

  /** With `listen` (the host's fabric address), it also listens there and can live-migrate to and from its peers. */
  static async create(host: Netns, options: { listen?: string } = {}): Promise<LibvirtLab> {
    const dir = await mkdtemp(join(tmpdir(), "vmrouted-libvirt-"));
    await sh("bash", [SANDBOX, "prepare", dir, ...(options.listen ? [options.listen] : [])]);
    return new LibvirtLab(host, dir, options.listen);
  }

  async start(): Promise<void> {
    const child = spawn("ip", ["netns", "exec", this.host.name, "unshare", "-m", "--propagation", "private", "bash", SANDBOX, "run", this.dir,
      ...(this.listen ? [this.listen] : [])],
      { stdio: ["ignore", "pipe", "pipe"] });
    child.stdout!.on("data", (c: Buffer) => (this.log += c.toString()));
    child.stderr!.on("data", (c: Buffer) => (this.log += c.toString()));
    this.child = child;
    await waitFor(async () => {
      if (child.exitCode !== null) throw new Error(`libvirtd exited: ${this.log.slice(-2000)}`);
      return (await this.virsh(["list"], false)).exitCode === 0;
    }, 20000, "libvirtd");
  }

  async stop(): Promise<void> {
    await stopChild(this.child);
    this.child = undefined;
  }

  virsh(args: string[], reject = true) {
    return execa("virsh", ["-q", "-c", this.uri, ...args], { reject });
  }

  /** A diskless TCG domain: enough for qemu to open its taps. */
  async define(name: string): Promise<void> {
    const xml = `<domain type='qemu'>
  <name>${name}</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <!-- i440fx hot-plugs PCI devices through ACPI -->
  <features><acpi/></features>
  <devices><emulator>/usr/bin/qemu-system-x86_64</emulator></devices>
</domain>`;
    const file = join(this.dir, `${name}.xml`);
    await writeFile(file, xml);
    await this.virsh(["define", file]);
  }

  /**
   * The lab guest (scripts/lab/guest-domain.sh renders it; the image is cached in .cache/guest):
   * Debian's cloud kernel and a busybox init that configures eth0 from
   * `guest` and reports on its serial console, kept in this lab's directory.
   */
  async defineGuest(name: string, guest: GuestSpec): Promise<void> {
    let xml = (await sh("bash", [join(REPO, "scripts/lab/guest-domain.sh"), name, this.consolePath(name), guest.ip, guest.gateway ?? "-",
      guest.ping.join(","), guest.watch, ...(guest.echoPort ? [`vmr.echo=${guest.echoPort}`] : []), ...(guest.fetch ? [`vmr.fetch=${guest.fetch}`] : []),
      ...(guest.renewSeconds ? [`vmr.renew=${guest.renewSeconds}`] : []), ...(guest.ip6 ? [`vmr.ip6=${guest.ip6}`] : [])])).stdout;
    // A NIC of the test's own making (not vmrouted's patch): an existing tap, with a MAC of the test's choosing.
    if (guest.nic) xml = xml.replace("</devices>", `  <interface type='ethernet'><mac address='${guest.nic.mac}'/><target dev='${guest.nic.tap}' managed='no'/><model type='virtio'/></interface>\n  </devices>`);
    const file = join(this.dir, `${name}.xml`);
    await writeFile(file, xml);
    await this.virsh(["define", file]);
  }

  consolePath(name: string): string {
    return join(this.dir, `${name}.console`);
  }

  /** The guest's "VMR ..." report lines, oldest first. */
  async consoleReports(name: string): Promise<string[]> {
    const text = await readFile(this.consolePath(name), "utf8").catch(() => "");
    return text.split(/\r?\n/).map((l) => l.trim()).filter((l) => l.startsWith("VMR ")).map((l) => l.slice(4));
  }

  async destroy(): Promise<void> {
    if (this.child) {
      const names = (await this.virsh(["list", "--all", "--name"], false)).stdout.split("\n").map((l) => l.trim()).filter(Boolean);
      for (const n of names) {
        await this.virsh(["destroy", n], false);
        await this.virsh(["undefine", n], false);
      }
    }
    await this.stop();
    await rm(this.dir, { recursive: true, force: true });
  }
}

/**
 * libvirtd and vmrouted wired together in `host`: the hook shim installed
 * before libvirtd starts (it reads hooks only at start), then both started.
 * `beforeInstall` runs first (e.g. to place someone else's hook).
 */
export async function startLibvirtWithDaemon(host: Netns, options: Omit<DaemonOptions, "libvirtUri">,
  beforeInstall?: (libvirt: LibvirtLab) => Promise<void>): Promise<{ libvirt: LibvirtLab; daemon: Daemon }> {
  const libvirt = await LibvirtLab.create(host);
  const daemon = await Daemon.create(host, { ...options, libvirtUri: libvirt.uri });
  await beforeInstall?.(libvirt);
  const inst = await daemon.ctl(["install-hook", "--hooks-dir", libvirt.hooksDir, "--config", daemon.configPath]);
  if (inst.exitCode !== 0) throw new Error(`install-hook failed: ${inst.stderr}`);
  await libvirt.start();
  await daemon.start();
  return { libvirt, daemon };
}
