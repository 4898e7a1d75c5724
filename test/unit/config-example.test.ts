import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { parseConfig } from "../../src/config/load.js";
import { configSchema } from "../../src/config/schema.js";

// The package's /etc/vmrouted/config.yaml (packaging/deb/config.yaml): all
// comments as shipped, so vmrouted starts nothing until it is edited; and
// with every setting uncommented ("##" lines are prose, "#" lines settings)
// a valid config whose values are the defaults, so the example cannot drift
// from the schema.

const EXAMPLE = join(import.meta.dirname, "../../packaging/deb/config.yaml");
const README = join(import.meta.dirname, "../../README.md");

const uncomment = (text: string) =>
  text.split("\n").filter((l) => !l.startsWith("##")).map((l) => l.replace(/^#/, "")).join("\n");

describe("the packaged config example", () => {
  it("is only comments: the unit's ExecCondition (a top-level node:) fails, and vmrouted would refuse it", async () => {
    const text = await readFile(EXAMPLE, "utf8");
    expect(text.split("\n").every((l) => l === "" || l.startsWith("#"))).toBe(true);
    expect(/^node:/m.test(text)).toBe(false);
    expect(() => parseConfig(text, "config")).toThrow(/node/);
  });

  it("uncommented, is a valid config with every top-level key, showing the defaults", async () => {
    const config = parseConfig(uncomment(await readFile(EXAMPLE, "utf8")), "example");
    expect(Object.keys(config).sort()).toEqual(Object.keys(configSchema.shape).sort());
    const defaults = parseConfig("node: { address: 10.1.1.3 }\nbgp: {}\n");
    for (const key of ["api", "stateDir", "libvirt", "migration", "dataplane", "log"] as const) expect(config[key], key).toEqual(defaults[key]);
    expect(config.bgp).toMatchObject({ gobgp: defaults.bgp!.gobgp, importRoutes: defaults.bgp!.importRoutes, migrationCommunity: defaults.bgp!.migrationCommunity });
  });
});

describe("the README's configuration", () => {
  it("is a valid config naming every top-level key", async () => {
    const readme = await readFile(README, "utf8");
    const section = readme.slice(readme.indexOf("\n## Configuration"));
    const yaml = /```yaml\n([\s\S]*?)```/.exec(section)?.[1];
    expect(yaml).toBeDefined();
    const config = parseConfig(yaml!, "README");
    expect(Object.keys(config).sort()).toEqual(Object.keys(configSchema.shape).sort());
  });
});
