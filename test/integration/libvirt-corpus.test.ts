import { lstat, mkdir, mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { execa } from "execa";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  addRoutedInterface, type DomainXml, parseDomainXml, removeRoutedInterface, routedInterfaces, serializeDomainXml, XMLNS,
} from "../../src/libvirt/domain-xml.js";
import { InputError } from "../../src/model/errors.js";
import { Netns, REPO, runId } from "../helpers/lab.js";
import { LibvirtLab } from "../helpers/libvirt-lab.js";

// The patcher on domain XML nobody here wrote: libvirt 9.0's own test suite
// (scripts/lab/libvirt-corpus.sh fetches it from Debian's source package) and
// what virt-install makes. A patched domain must validate against libvirt's
// schema wherever the original did, keep every other application's metadata,
// and unpatch to the original.

const DIRS = ["qemuxml2argvdata", "qemuxml2xmloutdata"];
// What virt-xml-validate FILE domain runs (/usr/bin/virt-xml-validate: `xmllint --noout --relaxng "$SCHEMA" "$XMLFILE"`).
const SCHEMA = "/usr/share/libvirt/schemas/domain.rng";
const IFACE = { network: "service", ip: "172.31.16.5", mac: "52:54:00:12:34:56", tap: "tap-3f9a01c2e4" };
const BATCH = 250;

let work = "";
beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), "vmrouted-corpus-"));
});
afterAll(async () => {
  if (work) await rm(work, { recursive: true, force: true });
});

/** Runs `task` over `items`, at most `limit` at a time. */
async function pool<T, R>(items: T[], limit: number, task: (item: T) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array(items.length);
  let next = 0;
  await Promise.all(Array.from({ length: limit }, async () => {
    while (next < items.length) {
      const i = next++;
      out[i] = await task(items[i]!);
    }
  }));
  return out;
}

/** libvirt's schema check for many files, one xmllint per batch: file → validates. */
async function validate(files: string[]): Promise<Map<string, boolean>> {
  const batches = Array.from({ length: Math.ceil(files.length / BATCH) }, (_, i) => files.slice(i * BATCH, (i + 1) * BATCH));
  const result = new Map<string, boolean>();
  await pool(batches, 2, async (batch) => {
    const { stderr } = await execa("xmllint", ["--noout", "--relaxng", SCHEMA, ...batch], { reject: false });
    const verdicts = new Set(stderr.split("\n"));
    for (const f of batch) {
      if (verdicts.has(`${f} validates`)) result.set(f, true);
      else if (verdicts.has(`${f} fails to validate`)) result.set(f, false);
      else result.set(f, false); // not even parsed by libxml2
    }
  });
  return result;
}

/** Canonical XML of many files: xmllint --c14n takes one file per run, so one shell per batch runs them (NUL never occurs in XML). */
async function canonical(files: string[]): Promise<Map<string, string>> {
  const batches = Array.from({ length: Math.ceil(files.length / BATCH) }, (_, i) => files.slice(i * BATCH, (i + 1) * BATCH));
  const result = new Map<string, string>();
  await pool(batches, 2, async (batch) => {
    const { stdout } = await execa("bash", ["-c", 'for f; do printf "\\0%s\\0" "$f"; xmllint --c14n "$f"; done', "c14n", ...batch],
      { reject: false, stripFinalNewline: false, maxBuffer: 256 * 1024 * 1024 });
    const parts = stdout.split("\0");
    for (let i = 1; i + 1 < parts.length; i += 2) result.set(parts[i]!, parts[i + 1]!);
  });
  return result;
}

/** The raw text of each element in the domain's first <metadata>, and how many <metadata> there are. */
function metadataEntries(doc: DomainXml): { entries: string[]; count: number } {
  const all = doc.domain.children.filter((c) => c.name === "metadata");
  const entries = (all[0]?.children ?? []).map((c) => doc.text.slice(c.span.start, c.span.end));
  return { entries, count: all.length };
}

function hasOurDevice(doc: DomainXml): boolean {
  return doc.domain.children.filter((c) => c.name === "devices").flatMap((d) => d.children).some((el) =>
    el.name === "interface" && el.attributes.type === "ethernet"
    && el.children.some((c) => c.name === "target" && c.attributes.dev === IFACE.tap && c.attributes.managed === "no")
    && el.children.some((c) => c.name === "mac" && c.attributes.address === IFACE.mac));
}

interface Outcome {
  file: string;
  patched?: string;
  unpatched?: string;
  refused?: string;
  problems: string[];
  withMetadata: boolean;
  withoutDevices: boolean;
  byteIdentical: boolean;
}

async function patchOne(dir: string, name: string, file: string): Promise<Outcome> {
  const text = await readFile(file, "utf8");
  const outcome: Outcome = { file, problems: [], withMetadata: false, withoutDevices: false, byteIdentical: false };
  let doc: DomainXml;
  try {
    doc = parseDomainXml(text, name);
  } catch (e) {
    if (!(e instanceof InputError)) throw e;
    outcome.refused = e.message;
    return outcome;
  }
  const before = metadataEntries(doc);
  outcome.withMetadata = before.count > 0;
  outcome.withoutDevices = !doc.domain.children.some((c) => c.name === "devices");
  addRoutedInterface(doc, IFACE);
  const patchedText = serializeDomainXml(doc);
  const patched = parseDomainXml(patchedText, `patched ${name}`); // well-formed, and read back
  const after = metadataEntries(patched);
  if (after.count !== 1) outcome.problems.push(`${after.count} <metadata> elements`);
  if (JSON.stringify(after.entries.slice(0, -1)) !== JSON.stringify(before.entries)) outcome.problems.push("other metadata entries changed");
  if (!after.entries.at(-1)?.includes(`xmlns:vmrouted="${XMLNS}"`)) outcome.problems.push("our metadata is not the last entry");
  if (JSON.stringify(routedInterfaces(patched)) !== JSON.stringify([IFACE])) outcome.problems.push("routed interfaces read back differ");
  if (!hasOurDevice(patched)) outcome.problems.push("our <interface> is missing");
  removeRoutedInterface(patched, IFACE.ip);
  const unpatchedText = serializeDomainXml(patched);
  outcome.byteIdentical = unpatchedText === text;
  outcome.patched = join(work, "patched", dir, name);
  outcome.unpatched = join(work, "unpatched", dir, name);
  await writeFile(outcome.patched, patchedText);
  await writeFile(outcome.unpatched, unpatchedText);
  return outcome;
}

describe("the domain XML patcher on libvirt's own test-suite domains", () => {
  it("patches every domain so that it still validates, keeps others' metadata, and unpatches to the original", async () => {
    const t0 = Date.now();
    const corpus = (await execa("bash", [join(REPO, "scripts/lab/libvirt-corpus.sh")])).stdout.trim().split("\n").at(-1)!;
    const fetchedMs = Date.now() - t0;

    const files: Array<{ dir: string; name: string; path: string }> = [];
    let symlinks = 0;
    for (const dir of DIRS) {
      await mkdir(join(work, "patched", dir), { recursive: true });
      await mkdir(join(work, "unpatched", dir), { recursive: true });
      for (const name of (await readdir(join(corpus, dir))).filter((n) => n.endsWith(".xml")).sort()) {
        const path = join(corpus, dir, name);
        if ((await lstat(path)).isSymbolicLink()) symlinks++;
        else files.push({ dir, name, path });
      }
    }
    expect(files.length).toBeGreaterThan(1000);

    const t1 = Date.now();
    const outcomes = await pool(files, 4, (f) => patchOne(f.dir, f.name, f.path));
    const patchMs = Date.now() - t1;
    const patchedOk = outcomes.filter((o) => o.patched);

    const t2 = Date.now();
    const [original, patched] = await Promise.all([validate(patchedOk.map((o) => o.file)), validate(patchedOk.map((o) => o.patched!))]);
    const validateMs = Date.now() - t2;

    // The same verdicts as the real virt-xml-validate, on a sample: files with metadata, invalid ones, others.
    const t3 = Date.now();
    const sample = [
      ...patchedOk.filter((o) => o.withMetadata).slice(0, 8),
      ...patchedOk.filter((o) => !original.get(o.file)).slice(0, 4),
      ...patchedOk.filter((o) => !o.withMetadata && original.get(o.file)).filter((_, i) => i % 150 === 0).slice(0, 8),
    ];
    const disagreements: string[] = [];
    await pool(sample.flatMap((o) => [o.file, o.patched!]), 2, async (file) => {
      const real = (await execa("virt-xml-validate", [file, "domain"], { reject: false })).exitCode === 0;
      const batch = original.get(file) ?? patched.get(file);
      if (real !== batch) disagreements.push(`${file}: virt-xml-validate ${real}, batch ${batch}`);
    });
    const sampleMs = Date.now() - t3;

    const t4 = Date.now();
    const canon = await canonical(patchedOk.flatMap((o) => [o.file, o.unpatched!]));
    const c14nMismatch = patchedOk.filter((o) => !canon.get(o.file) || canon.get(o.file) !== canon.get(o.unpatched!)).map((o) => o.file);
    const c14nMs = Date.now() - t4;

    const lostValidity = patchedOk.filter((o) => original.get(o.file) && !patched.get(o.patched!)).map((o) => o.file);
    const problems = outcomes.filter((o) => o.problems.length).map((o) => `${o.file}: ${o.problems.join(", ")}`);
    const refused = outcomes.filter((o) => o.refused);
    console.log(`libvirt corpus: ${files.length} domain files (${symlinks} symlinks skipped), ${refused.length} refused, `
      + `${patchedOk.filter((o) => o.withMetadata).length} with <metadata>, ${patchedOk.filter((o) => o.withoutDevices).length} without <devices>; validate before ${[...original.values()].filter(Boolean).length}, `
      + `after ${[...patched.values()].filter(Boolean).length}; unpatched byte-identical ${patchedOk.filter((o) => o.byteIdentical).length}, `
      + `c14n-identical ${patchedOk.length - c14nMismatch.length}; virt-xml-validate sample ${sample.length * 2} files agree: ${disagreements.length === 0}`);
    for (const r of refused) console.log(`  refused ${r.file}: ${r.refused}`);
    console.log(`libvirt corpus timings (ms): ${JSON.stringify({ fetchedMs, patchMs, validateMs, sampleMs, c14nMs, totalMs: Date.now() - t0 })}`);

    expect(problems).toEqual([]);
    expect(lostValidity).toEqual([]);
    expect(disagreements).toEqual([]);
    expect(c14nMismatch).toEqual([]);
  });
});

describe("a domain made by virt-install, through an isolated libvirtd", () => {
  const id = runId();
  let host: Netns | undefined;
  let libvirt: LibvirtLab | undefined;

  beforeAll(async () => {
    if (process.getuid?.() !== 0) throw new Error("this test needs root (it runs libvirtd in a network namespace)");
    host = await Netns.create(`vxml-${id}`);
    libvirt = await LibvirtLab.create(host);
    await libvirt.start();
  });
  afterAll(async () => {
    await libvirt?.destroy();
    await host?.destroy();
  });

  it("keeps libosinfo's metadata beside ours through virsh define and dumpxml, and unpatches cleanly", async () => {
    const lab = libvirt!;
    const name = `vi-${id}`;
    const { stdout: xml } = await execa("virt-install", ["--connect", lab.uri, "--print-xml", "--name", name, "--memory", "256",
      "--vcpus", "1", "--osinfo", "debian11", "--disk", "none", "--network", "none", "--graphics", "none", "--boot", "hd",
      "--virt-type", "qemu", "--arch", "x86_64", "--machine", "q35"], { env: { XDG_CACHE_HOME: join(lab.dir, "xdg-cache") } });
    expect(xml).toContain("<libosinfo:os id=\"http://debian.org/debian/11\"/>");
    expect(xml).toContain("pcie-root-port");

    const doc = parseDomainXml(xml);
    addRoutedInterface(doc, IFACE);
    const file = join(lab.dir, `${name}.xml`);
    await writeFile(file, serializeDomainXml(doc));
    const check = await execa("virt-xml-validate", [file, "domain"], { reject: false });
    expect(check.exitCode, check.stderr).toBe(0);

    await lab.virsh(["define", file]);
    const defined = parseDomainXml((await lab.virsh(["dumpxml", "--inactive", name])).stdout);
    const { entries, count } = metadataEntries(defined);
    expect(count).toBe(1);
    expect(entries.some((e) => e.includes("http://libosinfo.org/xmlns/libvirt/domain/1.0") && e.includes("debian/11"))).toBe(true);
    expect(routedInterfaces(defined)).toEqual([IFACE]);
    expect(hasOurDevice(defined)).toBe(true);

    // Back out of the XML libvirt wrote (its formatting, with the address it assigned).
    removeRoutedInterface(defined, IFACE.ip);
    await writeFile(file, serializeDomainXml(defined));
    await lab.virsh(["define", file]);
    const after = (await lab.virsh(["dumpxml", "--inactive", name])).stdout;
    expect(after).toContain("debian/11");
    expect(after).not.toContain(XMLNS);
    expect(after).not.toContain(IFACE.tap);
    expect(metadataEntries(parseDomainXml(after)).count).toBe(1);
  });
});
