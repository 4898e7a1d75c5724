import { spawn, type ChildProcess } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { execa } from "execa";
import { type Netns, stopChild, waitFor } from "./lab.js";

// A real libvirtd (qemu driver, TCG) isolated from the machine: it runs in the
// test's host network namespace, in a private mount namespace where its
// config, run, state, cache, log and hooks directories are this test's own.

const MOUNTS = ["/etc/libvirt", "/run/libvirt", "/var/lib/libvirt", "/var/cache/libvirt", "/var/log/libvirt"];

export class LibvirtLab {
  child: ChildProcess | undefined;
  log = "";
  private constructor(readonly host: Netns, readonly dir: string) {}

  get uri(): string {
    return `qemu:///system?socket=${join(this.dir, "run", "libvirt-sock")}`;
  }
  get hooksDir(): string {
    return join(this.dir, "etc", "hooks");
  }

  static async create(host: Netns): Promise<LibvirtLab> {
    for (const m of MOUNTS)
      if (!existsSync(m)) throw new Error(`${m} is missing: run scripts/setup.sh (it creates libvirt's directories and user)`);
    const dir = await mkdtemp(join(tmpdir(), "vmrouted-libvirt-"));
    for (const d of ["etc/hooks/qemu.d", "run", "lib", "cache", "log"]) await mkdir(join(dir, d), { recursive: true });
    await writeFile(join(dir, "etc/libvirtd.conf"), 'unix_sock_rw_perms = "0700"\nauth_unix_rw = "none"\nauth_unix_ro = "none"\n');
    // qemu as root without a security driver, logs to files (no virtlogd): a test lab, not a production host.
    await writeFile(join(dir, "etc/qemu.conf"), 'user = "root"\ngroup = "root"\ndynamic_ownership = 0\nsecurity_driver = "none"\nstdio_handler = "file"\n');
    const binds = MOUNTS.map((m, i) => `mount --bind '${join(dir, ["etc", "run", "lib", "cache", "log"][i]!)}' '${m}'`).join("\n");
    await writeFile(join(dir, "start.sh"), `set -e\n${binds}\nexec libvirtd --config /etc/libvirt/libvirtd.conf\n`);
    return new LibvirtLab(host, dir);
  }

  async start(): Promise<void> {
    const child = spawn("ip", ["netns", "exec", this.host.name, "unshare", "-m", "--propagation", "private", "sh", join(this.dir, "start.sh")],
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
