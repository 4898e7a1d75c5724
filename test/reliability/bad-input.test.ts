import { chmod, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { execa } from "execa";
import { stringify } from "yaml";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { assertLabReady, type Daemon, Netns, netState, rootSnapshot, runId, sh } from "../helpers/lab.js";
import { type LibvirtLab, startLibvirtWithDaemon } from "../helpers/libvirt-lab.js";

// Bad input changes nothing: one clear line on stderr (or one {"error"} from
// the API), a non-zero exit, and the kernel, libvirt and vmrouted's state
// exactly as before. Inputs: config file, spec file, CLI arguments, API
// bodies, hook arguments and hook XML.

const id = runId();
let host: Netns;
let libvirt: LibvirtLab;
let daemon: Daemon;
let files = "";
let rootBefore = "";

/** Kernel, libvirt and every file in vmrouted's state directory. */
async function everything(): Promise<string> {
  const state = await Promise.all(["state.json", "domains.json", "announced.json"].map((f) =>
    readFile(join(daemon.dir, "state", f), "utf8").catch(() => "(none)")));
  const domains = (await libvirt.virsh(["list", "--all", "--name"])).stdout;
  const vm1 = (await libvirt.virsh(["dumpxml", "--inactive", "vm1"])).stdout;
  return [await netState(host.name), ...state, domains, vm1].join("\n----\n");
}

const oneLine = (stderr: string) => expect(stderr.trim().split("\n"), stderr).toHaveLength(1);

beforeAll(async () => {
  assertLabReady();
  rootBefore = await rootSnapshot();
  host = await Netns.create(`vmrt-${id}-bad`);
  ({ libvirt, daemon } = await startLibvirtWithDaemon(host, {}));
  files = await mkdtemp(join(tmpdir(), "vmrouted-bad-"));
  expect((await daemon.ctl(["tap", "add", "--network", "service", "--ip", "172.31.16.10"])).exitCode).toBe(0);
  await libvirt.define("vm1");
  expect((await daemon.ctl(["iface", "add", "vm1", "--network", "service", "--ip", "172.31.16.5"])).exitCode).toBe(0);
});

afterAll(async () => {
  await libvirt?.destroy();
  await daemon?.cleanup();
  await host?.destroy();
  if (files) await rm(files, { recursive: true, force: true });
  expect(await rootSnapshot()).toBe(rootBefore);
});

const specWith = (endpoint: string) => `networks:\n  service: { gateway: 172.31.16.1/24 }\nendpoints:\n  - { kind: tap, network: service, ip: 172.31.16.10 }\n  - ${endpoint}\n`;
const yamlBomb = ["a: &a [x, x, x, x, x, x, x, x, x]", ...Array.from({ length: 8 }, (_, i) =>
  `${String.fromCharCode(98 + i)}: &${String.fromCharCode(98 + i)} [${Array(9).fill(`*${String.fromCharCode(97 + i)}`).join(", ")}]`)].join("\n") + "\n";

describe("spec file (vmroutectl apply -f)", () => {
  const cases: Array<[string, string, RegExp]> = [
    ["an IP outside the network", specWith("{ kind: tap, network: service, ip: 10.0.0.5 }"), /outside network 'service'/],
    ["the gateway IP", specWith("{ kind: tap, network: service, ip: 172.31.16.1 }"), /gateway address/],
    ["a duplicate IP", specWith("{ kind: tap, network: service, ip: 172.31.16.10, name: tap-dup }"), /already used/],
    ["an IP used by a domain", specWith("{ kind: tap, network: service, ip: 172.31.16.5 }"), /used by domain 'vm1'/],
    ["a too-long tap name", specWith("{ kind: tap, network: service, ip: 172.31.16.12, name: tap-0123456789abc }"), /longer than 15/],
    ["a reserved tap name", specWith("{ kind: tap, network: service, ip: 172.31.16.12, name: virgw-evil }"), /reserved prefix/],
    ["shell injection in a tap name", specWith('{ kind: tap, network: service, ip: 172.31.16.12, name: "t$(reboot)" }'), /may contain only/],
    ["a newline in a tap name (batch line injection)", specWith('{ kind: tap, network: service, ip: 172.31.16.12, name: "t\\nlink del x" }'), /tap name 't\\nlink del x' may contain only/],
    ["a path as a namespace", specWith("{ kind: netns, network: service, ip: 172.31.16.40, netns: ../../proc/1/ns/net }"), /netns '..\/..\/proc\/1\/ns\/net'/],
    ["an unknown network", specWith("{ kind: tap, network: nope, ip: 172.31.16.12 }"), /unknown network 'nope'/],
    ["an unknown endpoint kind", specWith("{ kind: vlan, network: service, ip: 172.31.16.12 }"), /endpoints\.1\.kind: must be one of tap, netns/],
    ["an unknown key", specWith("{ kind: tap, network: service, ip: 172.31.16.12, vlan: 5 }"), /unknown key\(s\) 'vlan'/],
    ["malformed YAML", "networks: {\n  service: [\n", /invalid YAML at line/],
    ["malformed JSON", '{"networks": {"service": {"gateway": "172.31.16.1/24"}}, "endpoints": [', /invalid YAML/],
    ["a YAML alias bomb (entity expansion)", yamlBomb, /alias|resource exhaustion/i],
    ["a changed config network", "networks:\n  service: { gateway: 172.31.99.1/24 }\n", /comes from the config file/],
    ["natOutgoing that is not a boolean", "networks:\n  service: { gateway: 172.31.16.1/24 }\n  extra: { gateway: 172.31.40.1/24, natOutgoing: \"yes\" }\n", /natOutgoing: Expected boolean/],
    ["an unknown key beside natOutgoing", "networks:\n  service: { gateway: 172.31.16.1/24 }\n  extra: { gateway: 172.31.40.1/24, natOutgoing: true, masquerade: true }\n", /unknown key\(s\) 'masquerade'/],
    ["a spec that is not a mapping", "- just\n- a list\n", /spec: \(top level\): Expected object/],
    ["an oversized spec (5 MiB)", `# ${"x".repeat(5 * 1024 * 1024)}\nendpoints: []\n`, /larger than/],
  ];
  it.each(cases)("%s", async (_what, text, message) => {
    const before = await everything();
    const file = join(files, `spec-${Math.random().toString(36).slice(2)}.yaml`);
    await writeFile(file, text);
    const r = await daemon.ctl(["apply", "-f", file]);
    expect(r.exitCode).not.toBe(0);
    expect(r.stderr).toMatch(message);
    oneLine(r.stderr);
    expect(await everything()).toBe(before);
  });
});

describe("CLI arguments", () => {
  const cases: Array<[string, string[], RegExp]> = [
    ["tap add outside the network", ["tap", "add", "--network", "service", "--ip", "172.31.17.5"], /outside network/],
    ["tap add on the gateway IP", ["tap", "add", "--network", "service", "--ip", "172.31.16.1"], /gateway address/],
    ["tap add with a duplicate IP", ["tap", "add", "--network", "service", "--ip", "172.31.16.10"], /already used/],
    ["tap add with a malformed IP", ["tap", "add", "--network", "service", "--ip", "172.31.16.300"], /not an IPv4 address|outside/],
    ["tap add with a too-long name", ["tap", "add", "--network", "service", "--ip", "172.31.16.12", "--name", "abcdefghijklmnop"], /longer than 15/],
    ["tap add with a reserved name", ["tap", "add", "--network", "service", "--ip", "172.31.16.12", "--name", "vnet3"], /reserved prefix/],
    ["tap add with odd characters", ["tap", "add", "--network", "service", "--ip", "172.31.16.12", "--name", "a b"], /may contain only/],
    ["tap add to an unknown network", ["tap", "add", "--network", "nope", "--ip", "172.31.16.12"], /unknown network/],
    ["tap add with a bad MAC", ["tap", "add", "--network", "service", "--ip", "172.31.16.12", "--mac", "zz:00:00:00:00:00"], /not a unicast MAC/],
    ["tap add with a multicast MAC", ["tap", "add", "--network", "service", "--ip", "172.31.16.12", "--mac", "01:00:5e:00:00:01"], /not a unicast MAC/],
    ["tap add without --ip", ["tap", "add", "--network", "service"], /required option '--ip/],
    ["tap remove of an unknown IP", ["tap", "remove", "172.31.16.200"], /no tap endpoint/],
    ["netns add with a path as name", ["netns", "add", "../../etc", "--network", "service", "--ip", "172.31.16.40"], /netns '..\/..\/etc'/],
    ["network add with a bad gateway", ["network", "add", "x", "300.1.1.1/24"], /gateway '300.1.1.1\/24'/],
    ["network add with injection in the name", ["network", "add", "x;reboot", "172.31.40.1/24"], /must start with a lowercase letter/],
    ["network add overlapping", ["network", "add", "x", "172.31.16.129/25"], /overlaps/],
    ["network add of a config network", ["network", "add", "service", "172.31.30.1/24"], /comes from the config file/],
    ["network remove of a config network", ["network", "remove", "service"], /config file/],
    ["network remove of an unknown network", ["network", "remove", "zzz"], /unknown network/],
    ["iface add to an unknown domain", ["iface", "add", "nosuchvm", "--network", "service", "--ip", "172.31.16.7"], /unknown domain 'nosuchvm'/],
    ["iface add with an IP in use", ["iface", "add", "vm1", "--network", "service", "--ip", "172.31.16.5"], /already used by domain 'vm1'/],
    ["iface add to an unknown network", ["iface", "add", "vm1", "--network", "nope", "--ip", "172.31.16.7"], /unknown network 'nope'/],
    ["iface add with an IP outside the network", ["iface", "add", "vm1", "--network", "service", "--ip", "10.0.0.7"], /outside network/],
    ["iface add with a path as domain", ["iface", "add", "../vm1", "--network", "service", "--ip", "172.31.16.7"], /unknown domain '..\/vm1'/],
    ["iface remove of an interface that is not there", ["iface", "remove", "vm1", "--ip", "172.31.16.99"], /no routed interface/],
    ["network add with a value after --nat-outgoing", ["network", "add", "extra", "172.31.40.1/24", "--nat-outgoing", "yes"], /too many arguments|unexpected/],
    ["an unknown command", ["frobnicate"], /unknown command/],
    ["an unknown output format", ["-o", "xml", "status"], /xml/],
    ["apply of a missing file", ["apply", "-f", "/nonexistent/spec.yaml"], /cannot read: ENOENT/],
  ];
  it.each(cases)("%s", async (_what, args, message) => {
    const before = await everything();
    const r = await daemon.ctl(args);
    expect(r.exitCode).not.toBe(0);
    expect(r.stderr).toMatch(message);
    oneLine(r.stderr);
    expect(await everything()).toBe(before);
  });
});

describe("API request bodies", () => {
  const deep = "[".repeat(200_000) + "]".repeat(200_000);
  const cases: Array<[string, string, string, string, number, RegExp]> = [
    ["invalid JSON", "PUT", "/v1/spec", "{nope", 400, /not valid JSON/],
    ["a body over 4 MiB", "PUT", "/v1/spec", JSON.stringify({ pad: "x".repeat(5 * 1024 * 1024) }), 413, /larger than/],
    ["JSON nested 200,000 deep", "PUT", "/v1/spec", deep, 400, /not valid JSON|spec/],
    ["a spec that is a string", "PUT", "/v1/spec", '"hello"', 400, /spec: \(top level\)/],
    ["an endpoint with a number for ip", "POST", "/v1/endpoints", '{"kind":"tap","network":"service","ip":5}', 400, /ip: Expected string/],
    ["an endpoint smuggling __proto__", "POST", "/v1/endpoints", '{"kind":"tap","network":"service","ip":"172.31.16.12","__proto__":{"name":"x"}}', 400, /unknown key|__proto__/],
    ["a netns endpoint with a path", "POST", "/v1/endpoints", '{"kind":"netns","network":"service","ip":"172.31.16.40","netns":"/proc/1/ns/net"}', 400, /netns/],
    ["a network with injection in its name", "POST", "/v1/networks", '{"name":"a\\nb","gateway":"172.31.40.1/24"}', 400, /network 'a\\nb': name must start with a lowercase letter/],
    ["a network without a gateway", "POST", "/v1/networks", '{"name":"x"}', 400, /gateway: is required/],
    ["a network with natOutgoing \"yes\"", "POST", "/v1/networks", '{"name":"extra","gateway":"172.31.40.1/24","natOutgoing":"yes"}', 400, /natOutgoing: Expected boolean/],
    ["a spec with an unknown key beside natOutgoing", "PUT", "/v1/spec", '{"networks":{"extra":{"gateway":"172.31.40.1/24","natOutgoing":true,"nat":1}}}', 400, /unknown key\(s\) 'nat'/],
    ["a network removal by a path", "DELETE", "/v1/networks/..%2F..%2Fetc", "", 400, /unknown network '..\/..\/etc'/],
    ["an interface with a bad IP", "POST", "/v1/domains/vm1/interfaces", '{"network":"service","ip":"x"}', 400, /ip/],
    ["a hook call without XML", "POST", "/v1/hook?domain=vm1&op=prepare&subop=begin", "", 400, /not well-formed XML|root element/],
    ["a hook call without a domain", "POST", "/v1/hook?op=prepare&subop=begin", "<domain><name>vm1</name></domain>", 400, /hook: domain: Required/],
    ["a hook call with a sequence that is not one", "POST", "/v1/hook?domain=vm1&op=started&subop=begin&seq=12ab", "<domain><name>vm1</name></domain>", 400, /hook: seq: must be digits/],
    ["a hook call with an unknown argument", "POST", "/v1/hook?domain=vm1&op=started&subop=begin&x=1", "<domain><name>vm1</name></domain>", 400, /hook: .*unknown key\(s\) 'x'/],
    ["an unknown path", "GET", "/v1/nothing", "", 404, /no such API call/],
    ["an unknown method", "PATCH", "/v1/spec", "{}", 404, /no such API call/],
  ];
  it.each(cases)("%s", async (_what, method, path, body, status, message) => {
    const before = await everything();
    const r = await daemon.request(method, path, body);
    expect(r.status).toBe(status);
    expect((JSON.parse(r.body) as { error: string }).error).toMatch(message);
    expect(await everything()).toBe(before);
  });
});

describe("hook arguments and hook XML (vmroutectl hook, as libvirt calls it)", () => {
  const routed = (attrs: string) => `<domain type='qemu'><name>vm1</name><metadata><vmrouted:interfaces xmlns:vmrouted="https://vmrouted.dev/xmlns/interfaces/1"><vmrouted:interface ${attrs}/></vmrouted:interfaces></metadata></domain>`;
  const iface = (over: Record<string, string>) => routed(Object.entries({ network: "service", ip: "172.31.16.50", mac: "52:54:00:00:00:50", tap: "tap-ok50", ...over })
    .map(([k, v]) => `${k}="${v}"`).join(" "));
  const laughs = `<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;"><!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]><domain><name>&lol3;</name></domain>`;
  const cases: Array<[string, string[], string, RegExp]> = [
    ["garbage XML", ["vm1", "started", "begin", "-"], "<<<not xml", /not well-formed XML/],
    ["an entity declaration", ["vm1", "started", "begin", "-"], `<!DOCTYPE d [<!ENTITY a "aaaa">]><domain><name>&a;</name></domain>`, /not allowed/],
    ["a billion laughs", ["vm1", "prepare", "begin", "-"], laughs, /not allowed/],
    ["an external entity (file read)", ["vm1", "prepare", "begin", "-"], `<!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/shadow">]><domain><name>&x;</name></domain>`, /not allowed/],
    ["oversized XML", ["vm1", "started", "begin", "-"], `<domain><name>vm1</name><description>${"x".repeat(1100 * 1024)}</description></domain>`, /larger than/],
    ["no XML at all", ["vm1", "prepare", "begin", "-"], "", /not well-formed|root element/],
    ["a root that is not <domain>", ["vm1", "prepare", "begin", "-"], "<network><name>vm1</name></network>", /root element is not <domain>/],
    ["XML of another domain", ["vm1", "started", "begin", "-"], "<domain><name>other</name></domain>", /is for 'other', not 'vm1'/],
    ["an unknown operation", ["vm1", "frobnicate", "begin", "-"], "<domain><name>vm1</name></domain>", /unknown hook operation 'frobnicate'/],
    ["an overlong domain name", ["x".repeat(300), "prepare", "begin", "-"], "<domain/>", /hook: domain/],
    ["an overlong operation", ["vm1", "p".repeat(40), "begin", "-"], "<domain><name>vm1</name></domain>", /hook: op/],
    ["a missing sub-operation", ["vm1", "prepare"], "<domain><name>vm1</name></domain>", /missing required argument 'subop'/],
    ["shell injection in a tap name", ["vm1", "prepare", "begin", "-"], iface({ tap: "t$(reboot)" }), /tap name 't\$\(reboot\)' may contain only/],
    ["a tap name of someone else's device class", ["vm1", "prepare", "begin", "-"], iface({ tap: "vnet0" }), /reserved prefix 'vnet'/],
    ["a gateway device as tap", ["vm1", "prepare", "begin", "-"], iface({ tap: "virgw-service" }), /reserved prefix 'virgw-'/],
    ["an IP outside every network", ["vm1", "prepare", "begin", "-"], iface({ ip: "10.9.9.9" }), /outside network 'service'/],
    ["an IP that is not one", ["vm1", "prepare", "begin", "-"], iface({ ip: "172.31.16.999" }), /ip/],
    ["a broadcast MAC", ["vm1", "prepare", "begin", "-"], iface({ mac: "ff:ff:ff:ff:ff:ff" }), /not a unicast MAC/],
    ["an unknown network", ["vm1", "prepare", "begin", "-"], iface({ network: "../etc" }), /unknown network '..\/etc'/],
  ];
  it.each(cases)("%s", async (_what, args, xml, message) => {
    const before = await everything();
    const r = await daemon.ctl(["hook", ...args], xml);
    expect(r.exitCode).not.toBe(0);
    expect(r.stderr).toMatch(message);
    oneLine(r.stderr);
    expect(await everything()).toBe(before);
  });

  it("the installed shim never fails a domain that is not vmrouted's, nor a stop", async () => {
    const before = await everything();
    const shim = join(libvirt.hooksDir, "qemu.d", "vmrouted");
    const plain = await sh(shim, ["other", "started", "begin", "-"], { input: "<domain><name>other</name></domain>", reject: false });
    expect(plain.exitCode).toBe(0);
    const bad = await sh(shim, ["vm1", "frobnicate", "begin", "-"], { input: `<domain><name>vm1</name><metadata><x xmlns="https://vmrouted.dev/xmlns/interfaces/1"/></metadata></domain>`, reject: false });
    expect(bad.exitCode).toBe(0);
    const restore = await sh(shim, ["vm1", "restore", "begin", "-"], { input: "<domain><name>vm1</name></domain>", reject: false });
    expect(restore.stdout.trim()).toBe("<domain><name>vm1</name></domain>");
    expect(await everything()).toBe(before);
  });
});

describe("config file (vmrouted --config)", () => {
  const base = () => ({
    node: { address: "10.99.0.1", name: "test-host" }, api: { socket: join(files, "other.sock") }, stateDir: join(files, "state"),
    networks: { service: { gateway: "172.31.16.1/24" } }, libvirt: { enabled: false },
  });
  const yaml = (change: (c: Record<string, unknown>) => void) => { const c = base() as Record<string, unknown>; change(c); return stringify(c); };
  const cases: Array<[string, () => string, RegExp]> = [
    ["not YAML", () => "node: [unclosed\n", /invalid YAML/],
    ["an empty file", () => "", /node/],
    ["an unknown key", () => yaml((c) => { c.nodes = {}; }), /unknown key\(s\) 'nodes'/],
    ["a loopback node address", () => yaml((c) => { c.node = { address: "127.0.0.1" }; }), /node\.address: must not be a loopback address/],
    ["a malformed gateway", () => yaml((c) => { c.networks = { service: { gateway: "300.1.1.1/24" } }; }), /gateway '300\.1\.1\.1\/24'/],
    ["injection in a network name", () => yaml((c) => { c.networks = { "s;reboot": { gateway: "172.31.40.1/24" } }; }), /network 's;reboot': name must start with a lowercase letter/],
    ["overlapping networks", () => yaml((c) => { c.networks = { a: { gateway: "172.31.16.1/24" }, b: { gateway: "172.31.16.129/25" } }; }), /overlaps/],
    ["metrics on a public address", () => yaml((c) => { c.metrics = { listen: "0.0.0.0:9100" }; }), /must be a loopback address/],
    ["a negative resync", () => yaml((c) => { c.dataplane = { resyncSeconds: -1 }; }), /resyncSeconds/],
    ["natOutgoing that is not a boolean", () => yaml((c) => { c.networks = { service: { gateway: "172.31.16.1/24", natOutgoing: "yes" } }; }), /natOutgoing: Expected boolean/],
    ["an unknown key beside natOutgoing", () => yaml((c) => { c.networks = { service: { gateway: "172.31.16.1/24", natOutgoing: true, snat: "x" } }; }), /unknown key\(s\) 'snat'/],
    ["equal netdev and teardown groups", () => yaml((c) => { c.dataplane = { netdevGroup: 94, teardownGroup: 94 }; }), /teardownGroup must differ/],
    ["a YAML alias bomb", () => yamlBomb, /alias|resource exhaustion|unknown key/i],
    ["an oversized file", () => `# ${"x".repeat(5 * 1024 * 1024)}\n`, /larger than 4 MiB/],
    ["the socket of the running vmrouted (a second daemon)", () => yaml((c) => { c.api = { socket: daemon.socket }; }), /another vmrouted is already serving/],
    ["a socket path that is someone's file", () => yaml((c) => { c.api = { socket: join(files, "precious.txt") }; }), /exists and is not a socket/],
  ];
  it.each(cases)("%s", async (_what, text, message) => {
    await writeFile(join(files, "precious.txt"), "keep me\n");
    const before = await everything();
    const config = join(files, `config-${Math.random().toString(36).slice(2)}.yaml`);
    await writeFile(config, text());
    const r = await daemon.runToExit(config);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^vmrouted: /);
    expect(r.stderr).toMatch(message);
    oneLine(r.stderr);
    expect(await everything()).toBe(before);
    expect(await readFile(join(files, "precious.txt"), "utf8")).toBe("keep me\n");
    expect((await daemon.status()).endpoints.length).toBeGreaterThan(0); // the running daemon still answers
  });
  it("a missing config file", async () => {
    const r = await daemon.runToExit(join(files, "nope.yaml"));
    expect(r.code).toBe(1);
    expect(r.stderr.trim()).toMatch(/^vmrouted: config .*nope\.yaml: cannot read: ENOENT$/);
  });
});

describe("API access", () => {
  it("the API socket refuses a user other than root", async () => {
    // Make the socket's directory searchable by anyone, so that only the socket's own mode stands in the way.
    await chmod(daemon.dir, 0o755);
    const call = `require("http").request({ socketPath: process.argv[1], path: "/v1/status" }, (r) => console.log("HTTP " + r.statusCode))
      .on("error", (e) => { console.log(e.code); process.exitCode = 3; }).end()`;
    const nobody = await execa("setpriv", ["--reuid=65534", "--regid=65534", "--clear-groups", process.execPath, "-e", call, daemon.socket], { reject: false });
    expect(nobody.stdout.trim()).toBe("EACCES");
    expect(nobody.exitCode).toBe(3);
    const root = await execa(process.execPath, ["-e", call, daemon.socket]);
    expect(root.stdout.trim()).toBe("HTTP 200");
  });
});
