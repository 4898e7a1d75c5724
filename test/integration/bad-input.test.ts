import { request } from "node:http";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { assertLabReady, Daemon, Netns, netState, runId } from "../helpers/lab.js";

// Bad input changes nothing: one clear line on stderr, a non-zero exit, and
// the kernel and the stored desired state exactly as before.

const id = runId();
let host: Netns;
let daemon: Daemon;
let files = "";


async function hostState(): Promise<string> {
  return (await netState(host.name)) + (await daemon.ctl(["get", "spec", "-o", "json"])).stdout;
}

beforeAll(async () => {
  assertLabReady();
  host = await Netns.create(`vmrt-${id}-bad`);
  daemon = await Daemon.create(host);
  await daemon.start();
  files = await mkdtemp(join(tmpdir(), "vmrouted-bad-"));
  const ok = await daemon.ctl(["tap", "add", "--network", "service", "--ip", "172.31.16.10"]);
  expect(ok.exitCode, ok.stderr).toBe(0);
});

afterAll(async () => {
  await daemon?.cleanup();
  await host?.destroy();
  if (files) await rm(files, { recursive: true, force: true });
});

const specWith = (endpoint: string) => `networks:\n  service: { gateway: 172.31.16.1/24 }\nendpoints:\n  - { kind: tap, network: service, ip: 172.31.16.10 }\n  - ${endpoint}\n`;

const specCases: Array<[string, string, RegExp]> = [
  ["an IP outside the network", specWith("{ kind: tap, network: service, ip: 10.0.0.5 }"), /outside network 'service'/],
  ["the gateway IP", specWith("{ kind: tap, network: service, ip: 172.31.16.1 }"), /gateway address/],
  ["a duplicate IP", specWith("{ kind: tap, network: service, ip: 172.31.16.10, name: tap-dup }"), /already used/],
  ["a too-long tap name", specWith("{ kind: tap, network: service, ip: 172.31.16.12, name: tap-0123456789abc }"), /longer than 15/],
  ["a reserved tap name", specWith("{ kind: tap, network: service, ip: 172.31.16.12, name: virgw-evil }"), /reserved prefix/],
  ["odd characters in a tap name", specWith('{ kind: tap, network: service, ip: 172.31.16.12, name: "t$(reboot)" }'), /may contain only/],
  ["an unknown network", specWith("{ kind: tap, network: nope, ip: 172.31.16.12 }"), /unknown network 'nope'/],
  ["an unknown endpoint kind", specWith("{ kind: vlan, network: service, ip: 172.31.16.12 }"), /endpoints\.1\.kind: must be one of tap, netns/],
  ["an unknown key", specWith("{ kind: tap, network: service, ip: 172.31.16.12, vlan: 5 }"), /unknown key\(s\) 'vlan'/],
  ["malformed YAML", "networks: {\n  service: [\n", /invalid YAML at line/],
  ["malformed JSON", '{"networks": {"service": {"gateway": "172.31.16.1/24"}}, "endpoints": [', /invalid YAML/],
  ["a changed config network", "networks:\n  service: { gateway: 172.31.99.1/24 }\n", /comes from the config file/],
  ["a spec that is not a mapping", "- just\n- a list\n", /spec: \(top level\): Expected object/],
];

describe("bad input changes nothing", () => {
  it.each(specCases)("apply -f with %s", async (_what, text, message) => {
    const before = await hostState();
    const file = join(files, `spec-${Math.random().toString(36).slice(2)}.yaml`);
    await writeFile(file, text);
    const r = await daemon.ctl(["apply", "-f", file]);
    expect(r.exitCode).not.toBe(0);
    expect(r.stderr).toMatch(message);
    expect(r.stderr.trim().split("\n")).toHaveLength(1);
    expect(await hostState()).toBe(before);
  });

  const cliCases: Array<[string, string[], RegExp]> = [
    ["tap add outside the network", ["tap", "add", "--network", "service", "--ip", "172.31.17.5"], /outside network/],
    ["tap add on the gateway IP", ["tap", "add", "--network", "service", "--ip", "172.31.16.1"], /gateway address/],
    ["tap add with a duplicate IP", ["tap", "add", "--network", "service", "--ip", "172.31.16.10"], /already used/],
    ["tap add with a too-long name", ["tap", "add", "--network", "service", "--ip", "172.31.16.12", "--name", "abcdefghijklmnop"], /longer than 15/],
    ["tap add with a reserved name", ["tap", "add", "--network", "service", "--ip", "172.31.16.12", "--name", "vnet3"], /reserved prefix/],
    ["tap add with odd characters", ["tap", "add", "--network", "service", "--ip", "172.31.16.12", "--name", "a b"], /may contain only/],
    ["tap add to an unknown network", ["tap", "add", "--network", "nope", "--ip", "172.31.16.12"], /unknown network/],
    ["tap add with a bad MAC", ["tap", "add", "--network", "service", "--ip", "172.31.16.12", "--mac", "zz:00:00:00:00:00"], /not a unicast MAC/],
    ["tap add without --ip", ["tap", "add", "--network", "service"], /required option '--ip/],
    ["tap remove of an unknown IP", ["tap", "remove", "172.31.16.200"], /no tap endpoint/],
    ["netns add with a path as name", ["netns", "add", "../../etc", "--network", "service", "--ip", "172.31.16.40"], /netns '..\/..\/etc'/],
    ["network add with a bad gateway", ["network", "add", "x", "300.1.1.1/24"], /gateway '300.1.1.1\/24'/],
    ["network add overlapping", ["network", "add", "x", "172.31.16.129/25"], /overlaps/],
    ["network add of an existing name", ["network", "add", "service", "172.31.30.1/24"], /already exists/],
    ["network remove of a config network", ["network", "remove", "service"], /config file/],
    ["network remove of an unknown network", ["network", "remove", "zzz"], /unknown network/],
    ["an unknown command", ["frobnicate"], /unknown command/],
    ["an unknown output format", ["-o", "xml", "status"], /xml/],
    ["apply of a missing file", ["apply", "-f", "/nonexistent/spec.yaml"], /cannot read: ENOENT/],
  ];

  it.each(cliCases)("%s", async (_what, args, message) => {
    const before = await hostState();
    const r = await daemon.ctl(args);
    expect(r.exitCode).not.toBe(0);
    expect(r.stderr).toMatch(message);
    expect(r.stderr.trim().split("\n")).toHaveLength(1);
    expect(await hostState()).toBe(before);
  });

  const raw = (method: string, path: string, body: string) => new Promise<{ status: number; body: string }>((resolve, reject) => {
    const req = request({ socketPath: daemon.socket, method, path, headers: { "content-type": "application/json" } }, (res) => {
      let text = "";
      res.on("data", (c) => (text += c)).on("end", () => resolve({ status: res.statusCode ?? 0, body: text }));
    });
    req.on("error", reject);
    req.end(body);
  });

  it.each([
    ["invalid JSON", "PUT", "/v1/spec", "{nope", 400, /not valid JSON/],
    ["a body over 4 MiB", "PUT", "/v1/spec", JSON.stringify({ pad: "x".repeat(5 * 1024 * 1024) }), 413, /larger than/],
    ["an endpoint with a number for ip", "POST", "/v1/endpoints", '{"kind":"tap","network":"service","ip":5}', 400, /ip: Expected string/],
    ["an unknown path", "GET", "/v1/nothing", "", 404, /no such API call/],
  ])("API: %s", async (_what, method, path, body, status, message) => {
    const before = await hostState();
    const r = await raw(method as string, path as string, body as string);
    expect(r.status).toBe(status);
    expect(JSON.parse(r.body).error).toMatch(message as RegExp);
    expect(await hostState()).toBe(before);
  });

  it("the daemon refuses a bad config with one line and a non-zero exit", async () => {
    const { execa } = await import("execa");
    const bad = join(files, "bad.yaml");
    await writeFile(bad, "node: { address: 127.0.0.1 }\n");
    const r = await execa(process.execPath, ["dist/daemon/main.js", "--config", bad], { reject: false });
    expect(r.exitCode).toBe(1);
    expect(r.stderr.trim()).toMatch(/^vmrouted: config .*node\.address: must not be a loopback address/);
    expect(r.stderr.trim().split("\n")).toHaveLength(1);
  });

  it("the API socket is root-only", async () => {
    const { stat } = await import("node:fs/promises");
    expect((await stat(daemon.socket)).mode & 0o777).toBe(0o600);
  });
});
