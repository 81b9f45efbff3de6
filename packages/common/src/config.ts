/**
 * Configuration: one YAML file, then environment overrides, validated once by a zod schema.
 * Nothing else in the code base reads `process.env`.
 *
 * Environment overrides: `<PREFIX>_<KEY>` where KEY is the top-level key in upper snake
 * case (`OARCLOUD_AGENT_NODE_NAME` sets `nodeName`). Values are parsed as YAML scalars, so
 * numbers and booleans work; nested keys are set in the file.
 */
import { readFileSync } from 'node:fs';
import { parse as parseYaml } from 'yaml';
import type { z } from 'zod';
import { InvalidArgumentError } from './errors.js';

export interface LoadConfigOptions {
  /** Path of the YAML file; absent: environment and defaults only. */
  file?: string;
  /** Prefix of the environment variables, e.g. `OARCLOUD_AGENT`. */
  envPrefix: string;
  env?: NodeJS.ProcessEnv;
}

export function camelToUpperSnake(key: string): string {
  return key.replace(/([a-z0-9])([A-Z])/g, '$1_$2').toUpperCase();
}

export function loadConfig<S extends z.ZodObject<z.ZodRawShape>>(schema: S, opts: LoadConfigOptions): z.infer<S> {
  const env = opts.env ?? process.env;
  let raw: Record<string, unknown> = {};
  if (opts.file) {
    let text: string;
    try {
      text = readFileSync(opts.file, 'utf8');
    } catch (cause) {
      throw new InvalidArgumentError(`cannot read config file ${opts.file}`, { cause });
    }
    const parsed: unknown = parseYaml(text);
    if (parsed !== null && parsed !== undefined) {
      if (typeof parsed !== 'object' || Array.isArray(parsed)) {
        throw new InvalidArgumentError(`config file ${opts.file}: expected a mapping at the top level`);
      }
      raw = parsed as Record<string, unknown>;
    }
  }
  for (const key of Object.keys(schema.shape)) {
    const value = env[`${opts.envPrefix}_${camelToUpperSnake(key)}`];
    if (value !== undefined) raw[key] = parseYaml(value);
  }
  const result = schema.safeParse(raw);
  if (!result.success) {
    const problems = result.error.issues.map((i) => `${i.path.join('.') || '(top)'}: ${i.message}`).join('; ');
    throw new InvalidArgumentError(`invalid configuration${opts.file ? ` in ${opts.file}` : ''}: ${problems}`);
  }
  return result.data;
}

/** `host:port` as zod checks it. */
export const HOST_PORT_RE = /^[\w.-]+:\d{1,5}$|^\[[0-9a-fA-F:]+\]:\d{1,5}$/;

/** `--config <file>` (or `--config=<file>`) from a daemon's command line. */
export function configPathFromArgv(argv: readonly string[]): string | undefined {
  const i = argv.indexOf('--config');
  if (i >= 0) return argv[i + 1];
  return argv.find((a) => a.startsWith('--config='))?.slice('--config='.length);
}
