import { readFile } from "node:fs/promises";
import { parseDocument } from "yaml";
import { resolveNetworks } from "../model/resolve.js";
import { describeZodError } from "../model/spec.js";
import { InputError } from "../model/errors.js";
import { configSchema, type Config } from "./schema.js";

/** Parses YAML (or JSON, a subset) refusing aliases-bombs and duplicate keys; one error line on failure. */
export function parseYaml(text: string, what: string): unknown {
  if (text.length > 4 * 1024 * 1024) throw new InputError(`${what}: larger than 4 MiB`);
  const doc = parseDocument(text, { uniqueKeys: true, prettyErrors: false });
  const first = doc.errors[0];
  if (first) {
    const line = text.slice(0, first.pos[0]).split("\n").length;
    throw new InputError(`${what}: invalid YAML${line ? ` at line ${line}` : ""}: ${first.message.split("\n")[0]}`);
  }
  try {
    return doc.toJS({ maxAliasCount: 100 });
  } catch (e) {
    throw new InputError(`${what}: ${(e as Error).message.split("\n")[0]}`);
  }
}

export function parseConfig(text: string, what = "config"): Config {
  const raw = parseYaml(text, what);
  const parsed = configSchema.safeParse(raw ?? {});
  if (!parsed.success) throw new InputError(describeZodError(parsed.error, what));
  const networks = resolveNetworks(parsed.data.networks, {});
  if (!networks.ok) throw new InputError(`${what}: networks: ${networks.error}`);
  return parsed.data;
}

export async function loadConfig(path: string): Promise<Config> {
  let text: string;
  try {
    text = await readFile(path, "utf8");
  } catch (e) {
    throw new InputError(`config ${path}: cannot read: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  return parseConfig(text, `config ${path}`);
}
