import { InputError } from "../model/errors.js";

/** The largest domain XML a hook call takes (libvirt's own are a few KiB). */
export const MAX_HOOK_XML = 1024 * 1024;

export async function readStdin(limit: number): Promise<string> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of process.stdin) {
    size += (chunk as Buffer).length;
    if (size > limit) throw new InputError(`hook: domain XML on stdin is larger than ${limit} bytes`);
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks).toString("utf8");
}
