import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { execa } from "execa";
import { XMLNS, XMLNS_PREFIX } from "./domain-xml.js";

// The one place that runs virsh. Never called from a hook's request path:
// libvirtd waits for its hooks, so a hook that calls back into libvirt deadlocks.

export class VirshError extends Error {}

export interface DomainListing {
  uuid: string;
  /** qemu runs (running, paused, ...): its taps are open. */
  active: boolean;
}

const TIMEOUT_MS = 20_000;

export class Virsh {
  constructor(readonly uri: string) {}

  async run(args: string[]): Promise<string> {
    const r = await execa("virsh", ["-q", "-c", this.uri, ...args], { reject: false, timeout: TIMEOUT_MS });
    if (r.exitCode !== 0 || r.timedOut) {
      // virsh prints a generic line first ("Failed to attach device from FILE") and the cause after it.
      const lines = (r.stderr || r.stdout || (r.timedOut ? "timed out" : "failed")).split("\n").map((l) => l.trim().replace(/^error:\s*/, "")).filter(Boolean);
      throw new VirshError(`virsh ${args[0]}: ${lines.join(": ") || "failed"}`);
    }
    return r.stdout;
  }

  async list(): Promise<DomainListing[]> {
    // Without --all, virsh lists the active domains (running and paused alike: qemu holds their taps).
    const [all, active] = await Promise.all([this.run(["list", "--all", "--uuid"]), this.run(["list", "--uuid"])]);
    const up = new Set(active.split("\n").map((l) => l.trim()).filter(Boolean));
    return all.split("\n").map((l) => l.trim()).filter(Boolean).map((uuid) => ({ uuid, active: up.has(uuid) }));
  }

  /**
   * Every domain's XML in one virsh process (live XML for active domains,
   * persistent config otherwise), by uuid. Each dump is followed by a marker,
   * so a dump that fails (a domain undefined meanwhile) leaves its own slot
   * empty and never shifts another domain's XML; callers still check the
   * uuid inside each XML. Domains whose dump failed are missing from the map.
   */
  async dumpAll(domains: DomainListing[]): Promise<Map<string, string>> {
    const result = new Map<string, string>();
    if (domains.length === 0) return result;
    const marker = `vmrouted-dump-end-${process.pid}`;
    const script = domains.map((d) => `dumpxml ${d.active ? "" : "--inactive "}${d.uuid} ; echo ${marker}`).join(" ; ");
    // A failed dump makes virsh exit non-zero after running the rest; the slots tell which one.
    const r = await execa("virsh", ["-q", "-c", this.uri, script], { reject: false, timeout: TIMEOUT_MS, maxBuffer: 256 * 1024 * 1024 });
    if (r.timedOut || (r.stdout.trim() === "" && r.exitCode !== 0)) throw new VirshError(`virsh dumpxml: ${r.stderr.split("\n")[0] || "failed"}`);
    const slots = r.stdout.split(marker);
    domains.forEach((d, i) => {
      const xml = slots[i]?.trim();
      if (xml) result.set(d.uuid, xml);
    });
    return result;
  }

  async state(name: string): Promise<string> {
    return (await this.run(["domstate", "--", name])).trim();
  }

  async dumpXml(name: string, inactive: boolean): Promise<string> {
    return this.run(["dumpxml", ...(inactive ? ["--inactive"] : []), "--", name]);
  }

  private async withFile<T>(text: string, fn: (path: string) => Promise<T>): Promise<T> {
    const dir = await mkdtemp(join(tmpdir(), "vmrouted-virsh-"));
    try {
      const path = join(dir, "input.xml");
      await writeFile(path, text, { mode: 0o600 });
      return await fn(path);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }

  define(xml: string): Promise<string> {
    return this.withFile(xml, (path) => this.run(["define", "--file", path]));
  }

  /** --config always (survives a restart); --live too when the domain runs: hot-plug. */
  attachDevice(name: string, xml: string, live: boolean): Promise<string> {
    return this.withFile(xml, (path) => this.run(["attach-device", "--domain", name, "--file", path, "--config", ...(live ? ["--live"] : [])]));
  }

  detachDevice(name: string, xml: string, live: boolean): Promise<string> {
    return this.withFile(xml, (path) => this.run(["detach-device", "--domain", name, "--file", path, "--config", ...(live ? ["--live"] : [])]));
  }

  /** Sets (or with undefined, removes) our element in the domain's <metadata>. */
  setMetadata(name: string, xml: string | undefined, live: boolean): Promise<string> {
    const flags = ["--config", ...(live ? ["--live"] : [])];
    return this.run(["metadata", "--domain", name, "--uri", XMLNS, ...(xml === undefined ? ["--remove"] : ["--key", XMLNS_PREFIX, "--set", xml]), ...flags]);
  }
}
