/**
 * What every command gets: output streams, the configuration (loaded once, on first use,
 * with the global options), and the controller API with the caller's token.
 */
import type { Command } from 'commander';
import { Api } from './api.js';
import { controllerCredentials, loadCliConfig, resolveToken, type CliConfig, type CliIo } from './config.js';
import type { Out } from './output.js';

export interface Ctx {
  out: Out;
  config(): CliConfig;
  api(): Api;
  /** Path of the running CLI entry point (for ProxyCommand). */
  self: { node: string; script: string };
  /** The environment for a child process, with `extra` added. */
  childEnv(extra: Record<string, string>): NodeJS.ProcessEnv;
  close(): void;
}

export interface CtxInit {
  program: Command;
  env: NodeJS.ProcessEnv;
  io: CliIo;
  write: { out(text: string): void; err(text: string): void };
  self: { node: string; script: string };
}

export function createCtx(init: CtxInit): Ctx {
  let cfg: CliConfig | undefined;
  let api: Api | undefined;
  const config = (): CliConfig => (cfg ??= loadCliConfig(init.program.opts<{ controller?: string; ca?: string }>(), init.env, init.io));
  const out: Out = {
    out: init.write.out,
    err: init.write.err,
    get color() {
      return config().color;
    },
    stderrIsTTY: init.io.stderrIsTTY,
  };
  return {
    out,
    config,
    api: () => (api ??= new Api(config().controller, resolveToken(config()).token, undefined, controllerCredentials(config().ca))),
    self: init.self,
    childEnv: (extra) => ({ ...init.env, ...extra }),
    close: () => api?.close(),
  };
}
