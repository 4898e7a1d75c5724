import { mkdtemp, rm } from "node:fs/promises";
import { createServer, type Server } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { ApiError, call, UnreachableError } from "../../src/cli/client.js";

// The CLI's API client against a server on a real unix socket that answers
// whole, with an error, or dies in the middle of its answer.

let server: Server | undefined;
let dir: string | undefined;

async function serve(handler: Parameters<typeof createServer>[1]): Promise<string> {
  dir = await mkdtemp(join(tmpdir(), "vmrouted-client-"));
  const socket = join(dir, "api.sock");
  server = createServer(handler);
  await new Promise<void>((resolve) => server!.listen(socket, resolve));
  return socket;
}

afterEach(async () => {
  server?.closeAllConnections();
  await new Promise((resolve) => (server ? server.close(resolve) : resolve(undefined)));
  if (dir) await rm(dir, { recursive: true, force: true });
  server = dir = undefined;
});

describe("the API client", () => {
  it("returns the parsed answer", async () => {
    const socket = await serve((_req, res) => res.end(JSON.stringify({ ok: true })));
    await expect(call(socket, "GET", "/v1/status")).resolves.toEqual({ ok: true });
  });

  it("turns a 4xx answer into its error line", async () => {
    const socket = await serve((_req, res) => { res.statusCode = 400; res.end(JSON.stringify({ error: "endpoint x: bad ip" })); });
    await expect(call(socket, "PUT", "/v1/spec", {})).rejects.toThrow(new ApiError("endpoint x: bad ip"));
  });

  it("fails with one line when the daemon goes away in the middle of its answer (Node signals only close then)", async () => {
    const socket = await serve((_req, res) => {
      res.writeHead(200, { "content-length": "100000" });
      res.write("{\"endpoints\": [");
      setTimeout(() => res.socket?.destroy(), 50);
    });
    const answer = call(socket, "GET", "/v1/spec");
    await expect(answer).rejects.toBeInstanceOf(UnreachableError);
    await expect(answer).rejects.toThrow(/closed the connection before its answer was complete/);
  });
});
