import { request, type OutgoingHttpHeaders } from "node:http";

// Talks to the daemon's API over its unix socket.

export class ApiError extends Error {}
/** The daemon could not be reached at all (as opposed to answering with an error). */
export class UnreachableError extends ApiError {}

/** A body sent as it is (the domain XML of a hook call), not as JSON. */
export class RawBody {
  constructor(readonly contentType: string, readonly text: string) {}
}

/**
 * One request over the API socket: the status and body text as the daemon sent
 * them, whatever they are (the tests assert raw answers through this too).
 */
export function exchange(
  socketPath: string, method: string, path: string,
  options: { headers?: OutgoingHttpHeaders; payload?: string; timeoutMs?: number } = {},
): Promise<{ status: number; text: string }> {
  return new Promise((resolve, reject) => {
    const req = request({ socketPath, method, path, headers: options.headers ?? {} }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString("utf8") }));
      // vmrouted gone in the middle of its answer: Node's response emits neither
      // "end" nor "error" then, only "close" (and the CLI would exit without a word).
      res.on("close", () => {
        if (!res.complete) reject(new UnreachableError(`vmrouted at ${socketPath} closed the connection before its answer was complete (did it stop?)`));
      });
    });
    // A stopped (SIGSTOP) or wedged daemon accepts the connection and never answers.
    const { timeoutMs } = options;
    if (timeoutMs !== undefined) req.setTimeout(timeoutMs, () => req.destroy(Object.assign(new Error(`no answer within ${timeoutMs} ms`), { code: "ETIMEDOUT" })));
    req.on("error", (e: NodeJS.ErrnoException) => reject(e.code === "EACCES"
      ? new ApiError(`permission denied on ${socketPath}: the vmrouted API is for root only`)
      : new UnreachableError(`cannot reach vmrouted at ${socketPath}: ${e.code ?? e.message} (is the daemon running?)`)));
    req.end(options.payload);
  });
}

/** A JSON API call: the parsed answer, or the daemon's error line as an ApiError. */
export async function call<T = unknown>(socketPath: string, method: string, path: string, body?: unknown, timeoutMs?: number): Promise<T> {
  const raw = body instanceof RawBody;
  const payload = body === undefined ? undefined : raw ? body.text : JSON.stringify(body);
  const headers = payload !== undefined
    ? { "content-type": raw ? body.contentType : "application/json", "content-length": Buffer.byteLength(payload) } : {};
  const res = await exchange(socketPath, method, path, { headers, payload, timeoutMs });
  let parsed: unknown;
  try {
    parsed = JSON.parse(res.text);
  } catch {
    throw new ApiError(`unexpected answer from vmrouted (HTTP ${res.status})`);
  }
  if (res.status >= 400) throw new ApiError((parsed as { error?: string }).error ?? `HTTP ${res.status}`);
  return parsed as T;
}
