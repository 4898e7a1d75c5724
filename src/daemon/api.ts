import { chmod, lstat, mkdir, rm } from "node:fs/promises";
import { connect } from "node:net";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { dirname } from "node:path";
import type { Logger } from "pino";
import { InputError } from "../model/errors.js";

// The local HTTP API on a unix socket (mode 0600: root only). Bodies are JSON,
// at most 4 MiB; every error is one line in {"error": "..."}.

/** A handler result sent as is (the Prometheus text format), not as JSON. */
export class TextBody {
  constructor(readonly contentType: string, readonly text: string) {}
}

export type Handler = (body: unknown, params: URLSearchParams, match: string[]) => Promise<unknown>;
export interface Route {
  method: string;
  path: RegExp;
  handler: Handler;
  /** The body is handed over as text, not parsed as JSON (the hook shim posts the domain XML as it is). */
  raw?: boolean;
}

const MAX_BODY = 4 * 1024 * 1024;

class HttpError extends Error {
  constructor(readonly status: number, message: string) {
    super(message);
  }
}

async function readBody(req: IncomingMessage, raw: boolean): Promise<unknown> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > MAX_BODY) throw new HttpError(413, `request body larger than ${MAX_BODY} bytes`);
    chunks.push(chunk as Buffer);
  }
  const text = Buffer.concat(chunks).toString("utf8");
  if (raw) return text;
  if (text.trim() === "") return undefined;
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new HttpError(400, `request body is not valid JSON: ${(e as Error).message}`);
  }
}

function send(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(text) });
  res.end(text);
}

/**
 * Before vmrouted changes anything: the socket path must be free, or a socket
 * nobody answers on (left by a killed run). Another vmrouted answering there
 * means two daemons on one host; a file that is not a socket is not ours to remove.
 */
export async function checkSocketPath(socketPath: string): Promise<void> {
  const info = await lstat(socketPath).catch(() => undefined);
  if (!info) return;
  if (!info.isSocket()) throw new InputError(`api.socket ${socketPath} exists and is not a socket; not replacing it`);
  const answered = await new Promise<boolean>((resolve) => {
    const probe = connect(socketPath).once("connect", () => { probe.destroy(); resolve(true); }).once("error", () => resolve(false));
  });
  if (answered) throw new InputError(`another vmrouted is already serving ${socketPath}; not starting a second one`);
}

/**
 * The API from the daemon's first moment: until the first pass has run,
 * `GET /v1/status` answers what `starting()` says and every other call waits
 * for `ready` (a hook's `prepare` then gets its tap from the first pass,
 * instead of finding the socket dead and racing it with the Node fallback).
 */
export class ApiRouter {
  private routes: Route[] | undefined;
  private readonly waiting: Promise<void>;
  private open!: () => void;

  constructor(private readonly starting: () => unknown) {
    this.waiting = new Promise((r) => (this.open = r));
  }

  ready(routes: Route[]): void {
    this.routes = routes;
    this.open();
  }

  async route(method: string, path: string): Promise<Route | undefined> {
    if (!this.routes) {
      if (method === "GET" && path === "/v1/status") return { method, path: /^/, handler: async () => this.starting() };
      await this.waiting;
    }
    return this.routes!.find((r) => r.method === method && r.path.test(path));
  }
}

export async function startApi(socketPath: string, router: ApiRouter, log: Logger): Promise<Server> {
  await mkdir(dirname(socketPath), { recursive: true, mode: 0o755 });
  await rm(socketPath, { force: true });
  const server = createServer(async (req, res) => {
    const url = new URL(req.url ?? "/", "http://vmrouted");
    try {
      const route = await router.route(req.method ?? "", url.pathname);
      if (!route) throw new HttpError(404, `no such API call: ${req.method} ${url.pathname}`);
      const match = (route.path.exec(url.pathname) ?? []).slice(1).map(decodeURIComponent);
      const body = await readBody(req, route.raw === true);
      const result = await route.handler(body, url.searchParams, match);
      if (result instanceof TextBody) res.writeHead(200, { "content-type": result.contentType }).end(result.text);
      else send(res, 200, result);
    } catch (e) {
      const status = e instanceof HttpError ? e.status : e instanceof InputError ? 400 : 500;
      const message = (e as Error).message.split("\n")[0] ?? "error";
      if (status === 500) log.error({ err: e, path: url.pathname }, "API call failed");
      send(res, status, { error: message });
    }
  });
  // Restrict the socket before anyone can connect: umask for the bind, chmod after.
  const oldMask = process.umask(0o177);
  try {
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(socketPath, () => resolve());
    });
  } finally {
    process.umask(oldMask);
  }
  await chmod(socketPath, 0o600);
  return server;
}
