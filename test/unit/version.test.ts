import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { VERSION } from "../../src/version.js";

// One version: package.json's (what npm and the Debian package say) is the one
// `vmroutectl --version`, `vmrouted --version` and status report.
// scripts/package.sh refuses to build when they differ.

const REPO = join(import.meta.dirname, "../..");

describe("version", () => {
  it("src/version.ts says what package.json says", async () => {
    const pkg = JSON.parse(await readFile(join(REPO, "package.json"), "utf8")) as { version: string };
    expect(VERSION).toBe(pkg.version);
  });

  it("is a version Debian can order (semver, no build metadata)", () => {
    expect(VERSION).toMatch(/^\d+\.\d+\.\d+(-[0-9A-Za-z.]+)?$/);
  });
});
