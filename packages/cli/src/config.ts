/**
 * The client configuration of `oarcloud`: the one place the command reads its environment
 * and its config file. Precedence, highest first:
 *   controller:  --controller, OARCLOUD_CONTROLLER, `controller:` in config.yaml, default;
 *   ca:          --ca, OARCLOUD_CA, `ca:` in config.yaml: the cluster CA (PEM); given, the
 *                controller is reached over TLS (its `tlsListen`), else in clear;
 *   token:       OARCLOUD_TOKEN, the token file (`<config dir>/token`, must be 0600),
 *                then, for root only, the controller's admin token file if readable.
 * The config dir is `$XDG_CONFIG_HOME/oarcloud` or `~/.config/oarcloud`.
 */
import { readFileSync, statSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { credentials, type ChannelCredentials } from '@grpc/grpc-js';
import { controllerChannelCredentials, HOST_PORT_RE, InvalidArgumentError, UnauthenticatedError } from '@oarcloud/common';
import { DEFAULT_CONTROLLER } from './hook.js';

/** Where a root controller keeps its first admin token (`<dirname(dbPath)>/admin.token`). */
export const DEFAULT_ADMIN_TOKEN_FILE = '/var/lib/oarcloud/controller/admin.token';

const FileSchema = z
  .object({
    /** Controller address, `host:port`. */
    controller: z.string().regex(HOST_PORT_RE, 'must be host:port').optional(),
    /** The cluster CA certificate: TLS to the controller. */
    ca: z.string().min(1).optional(),
    /** Admin token file root falls back to (default the controller's default). */
    adminTokenFile: z.string().min(1).optional(),
  })
  .strict();

export interface CliConfig {
  controller: string;
  /** The cluster CA (PEM file): set, the controller is dialled over TLS. */
  ca?: string;
  /** `~/.config/oarcloud` (or under $XDG_CONFIG_HOME). */
  configDir: string;
  configFile: string;
  tokenFile: string;
  adminTokenFile: string;
  /** A token given in the environment (OARCLOUD_TOKEN), which wins over files. */
  envToken?: string;
  home: string;
  isRoot: boolean;
  /** Colours on stdout: a TTY and no NO_COLOR. */
  color: boolean;
  stderrIsTTY: boolean;
  /** Where `oarcloud proxy` reports why it failed, for `oarcloud ssh` (internal). */
  proxyReportFile?: string;
}

export interface CliIo {
  stdoutIsTTY: boolean;
  stderrIsTTY: boolean;
  uid: number;
}

export function loadCliConfig(opts: { controller?: string; ca?: string }, env: NodeJS.ProcessEnv, io: CliIo): CliConfig {
  const home = env.HOME || homedir();
  const configDir = join(env.XDG_CONFIG_HOME || join(home, '.config'), 'oarcloud');
  const configFile = join(configDir, 'config.yaml');
  let file: z.infer<typeof FileSchema> = {};
  let text: string | undefined;
  try {
    text = readFileSync(configFile, 'utf8');
  } catch {
    // No config file: defaults.
  }
  if (text !== undefined) {
    const parsed = FileSchema.safeParse(parseYaml(text) ?? {});
    if (!parsed.success) {
      throw new InvalidArgumentError(`${configFile}: ${parsed.error.issues.map((i) => `${i.path.join('.') || '(top)'}: ${i.message}`).join('; ')}`);
    }
    file = parsed.data;
  }
  const controller = opts.controller || env.OARCLOUD_CONTROLLER || file.controller || DEFAULT_CONTROLLER;
  if (!HOST_PORT_RE.test(controller)) throw new InvalidArgumentError(`controller address must be host:port, got ${JSON.stringify(controller)}`);
  return {
    controller,
    ca: opts.ca || env.OARCLOUD_CA || file.ca || undefined,
    configDir,
    configFile,
    tokenFile: join(configDir, 'token'),
    adminTokenFile: env.OARCLOUD_ADMIN_TOKEN_FILE || file.adminTokenFile || DEFAULT_ADMIN_TOKEN_FILE,
    envToken: env.OARCLOUD_TOKEN?.trim() || undefined,
    home,
    isRoot: io.uid === 0,
    color: io.stdoutIsTTY && env.NO_COLOR === undefined && env.TERM !== 'dumb',
    stderrIsTTY: io.stderrIsTTY,
    proxyReportFile: env.OARCLOUD_PROXY_REPORT || undefined,
  };
}

/** The channel credentials for the controller: TLS checked against the cluster CA when one is configured. */
export function controllerCredentials(ca: string | undefined): ChannelCredentials {
  if (!ca) return credentials.createInsecure();
  let pem: Buffer;
  try {
    pem = readFileSync(ca);
  } catch (err) {
    throw new InvalidArgumentError(`cannot read the CA certificate ${ca}`, { cause: err });
  }
  return controllerChannelCredentials(pem);
}

/** Where the token comes from, for messages. */
export interface ResolvedToken {
  token: string;
  source: string;
}

/**
 * The caller's token. A token file readable or writable by group or others is refused:
 * anybody who can read it can act as its owner.
 */
export function resolveToken(cfg: CliConfig): ResolvedToken {
  if (cfg.envToken) return { token: cfg.envToken, source: 'OARCLOUD_TOKEN' };
  const own = readTokenFile(cfg.tokenFile, true);
  if (own) return { token: own, source: cfg.tokenFile };
  if (cfg.isRoot) {
    const admin = readTokenFile(cfg.adminTokenFile, false);
    if (admin) return { token: admin, source: cfg.adminTokenFile };
  }
  throw new UnauthenticatedError(
    `no token: ask an admin for one, then run \`oarcloud login --token-file FILE\` (it is kept in ${cfg.tokenFile})${cfg.isRoot ? `; as root the controller's ${cfg.adminTokenFile} is used when readable (OARCLOUD_ADMIN_TOKEN_FILE)` : ''}`,
  );
}

function readTokenFile(path: string, checkMode: boolean): string | undefined {
  let mode: number;
  try {
    mode = statSync(path).mode;
  } catch {
    return undefined;
  }
  if (checkMode && (mode & 0o077) !== 0) {
    throw new UnauthenticatedError(
      `refusing to use ${path}: it is accessible by other users (mode ${(mode & 0o777).toString(8).padStart(4, '0')}); run \`chmod 600 ${path}\` and ask an admin for a new token if others could have read it`,
    );
  }
  try {
    return readFileSync(path, 'utf8').trim() || undefined;
  } catch {
    return undefined;
  }
}
