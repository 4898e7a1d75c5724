import { describe, expect, it } from "vitest";
import { resolvConfs } from "../../src/dataplane/resolv-conf.js";
import { desired, netns, tap } from "../helpers/fixtures.js";

describe("a task namespace's resolv.conf (dataplane/resolv-conf.ts)", () => {
  it("only for netns endpoints that ask, from their network's dns and domain, marked as vmrouted's", () => {
    const state = desired([{ kind: "netns", network: "service", ip: "172.31.16.20", netns: "task", resolvConf: true }, netns("172.31.16.21", "quiet"), tap("172.31.16.10")], {},
      { gateway: "172.31.16.1/24", dns: ["10.1.0.53", "10.1.0.54"], domain: "lab.internal" });
    const files = resolvConfs(state);
    expect([...files.keys()]).toEqual(["task"]);
    expect(files.get("task")!.split("\n")).toEqual([
      expect.stringMatching(/^# vmrouted: netns:172\.31\.16\.20 /), "search lab.internal", "nameserver 10.1.0.53", "nameserver 10.1.0.54", "",
    ]);
  });

  it("a network without dns or domain: no file (the namespace keeps the host's resolver; an empty file would take it away)", () => {
    expect(resolvConfs(desired([{ kind: "netns", network: "service", ip: "172.31.16.20", netns: "task", resolvConf: true }])).size).toBe(0);
  });
});
