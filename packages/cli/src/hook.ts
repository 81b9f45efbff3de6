/**
 * `oarcloud hook <kind> <jobid> [user] [nodefile]`: the OAR hook entry points
 * (infra/oar/hooks/* call it through run-hook). Whatever happens it exits 0 and prints one
 * line: a failing server hook stops every OAR queue, a failing node hook marks the node
 * Suspected (notes/OAR.md).
 *   server-prologue, server-epilogue, epilogue: HookService.JobEvent, bounded (~2 s).
 *   prologue: JobEvent, then WaitJobReady bounded by --wait, so the job's command starts
 *   with its instances running.
 */
import { readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { credentials, type ChannelCredentials } from '@grpc/grpc-js';
import { HookKind, HookServiceClient } from '@oarcloud/api';
import { bearer, callUnary, controllerChannelCredentials, grpcCodeName, isServiceError, tlsChannelOptions } from '@oarcloud/common';
import type { Command } from 'commander';

export const HOOK_KINDS = {
  'server-prologue': HookKind.HOOK_KIND_SERVER_PROLOGUE,
  'server-epilogue': HookKind.HOOK_KIND_SERVER_EPILOGUE,
  prologue: HookKind.HOOK_KIND_PROLOGUE,
  epilogue: HookKind.HOOK_KIND_EPILOGUE,
} as const;
export type HookKindName = keyof typeof HOOK_KINDS;

export const DEFAULT_CONTROLLER = '127.0.0.1:17000';
export const DEFAULT_HOOK_TOKEN_FILE = '/var/lib/oarcloud/controller/hook.token';
export const DEFAULT_WAIT_S = 30;
/** Budget of JobEvent: server hooks must return within ~2 s whatever happens. */
export const JOB_EVENT_TIMEOUT_MS = 1500;

export interface HookConfig {
  controller: string;
  /** The cluster CA (PEM file): set, the controller is reached over TLS. */
  ca?: string;
  tokenFile: string;
  waitMs: number;
}

/**
 * The hook's settings: options first, then the environment (`OARCLOUD_CONTROLLER`,
 * `OARCLOUD_CA`, `OARCLOUD_HOOK_TOKEN_FILE`, `OARCLOUD_HOOK_WAIT` in seconds), then defaults. The one
 * place the hook reads its environment.
 */
export function hookConfig(opts: { controller?: string; ca?: string; tokenFile?: string; wait?: string }, env: NodeJS.ProcessEnv): HookConfig {
  const waitS = Number(opts.wait ?? env.OARCLOUD_HOOK_WAIT ?? DEFAULT_WAIT_S);
  return {
    controller: opts.controller || env.OARCLOUD_CONTROLLER || DEFAULT_CONTROLLER,
    ca: opts.ca || env.OARCLOUD_CA || undefined,
    tokenFile: opts.tokenFile || env.OARCLOUD_HOOK_TOKEN_FILE || DEFAULT_HOOK_TOKEN_FILE,
    waitMs: Number.isFinite(waitS) && waitS >= 0 ? Math.min(waitS, 60) * 1000 : DEFAULT_WAIT_S * 1000,
  };
}

function why(err: unknown): string {
  const cause = err instanceof Error ? err.cause : undefined;
  if (isServiceError(cause)) return `${grpcCodeName(cause.code)}: ${cause.details}`;
  return err instanceof Error ? `${err.name}: ${err.message}` : String(err);
}

/** Runs one hook; never throws. Returns the line it reports. */
export async function runHook(kind: string, args: string[], cfg: HookConfig): Promise<string> {
  const t0 = performance.now();
  const ms = (): number => Math.round(performance.now() - t0);
  const jobArg = args[0] ?? '';
  const head = `oarcloud hook ${kind} job=${jobArg}`;
  const hookKind = (HOOK_KINDS as Record<string, HookKind>)[kind];
  const jobId = Number(jobArg);
  if (hookKind === undefined) return `${head}: unknown hook kind (expected ${Object.keys(HOOK_KINDS).join(', ')})`;
  if (!Number.isSafeInteger(jobId) || jobId <= 0) return `${head}: the job id must be a positive integer`;
  let token: string;
  try {
    token = readFileSync(cfg.tokenFile, 'utf8').trim();
  } catch (err) {
    return `${head}: cannot read the hook token ${cfg.tokenFile} (${why(err)}); nothing done in ${ms()} ms`;
  }
  let creds: ChannelCredentials;
  try {
    creds = cfg.ca ? controllerChannelCredentials(readFileSync(cfg.ca)) : credentials.createInsecure();
  } catch (err) {
    return `${head}: cannot read the CA certificate ${cfg.ca} (${why(err)}); nothing done in ${ms()} ms`;
  }
  const client = new HookServiceClient(cfg.controller, creds, cfg.ca ? tlsChannelOptions(cfg.controller) : {});
  try {
    const md = bearer(token);
    const node = kind === 'prologue' || kind === 'epilogue' ? hostname() : '';
    try {
      await callUnary(client.jobEvent.bind(client), { kind: hookKind, jobId, node }, { timeoutMs: JOB_EVENT_TIMEOUT_MS, metadata: md });
    } catch (err) {
      return `${head}: controller ${cfg.controller} did not take the event (${why(err)}) in ${ms()} ms`;
    }
    if (kind !== 'prologue' || cfg.waitMs === 0) return `${head}: event sent in ${ms()} ms`;
    try {
      const r = await callUnary(client.waitJobReady.bind(client), { jobId, timeoutMs: cfg.waitMs }, { timeoutMs: cfg.waitMs + 3000, metadata: md });
      return `${head}: ${r.ready ? 'ready' : 'NOT ready'} ${r.running}/${r.expected} instances running in ${ms()} ms`;
    } catch (err) {
      return `${head}: waiting for the instances failed (${why(err)}) in ${ms()} ms`;
    }
  } finally {
    client.close();
  }
}

/** Registers `oarcloud hook` on the program. */
export function registerHookCommand(program: Command, env: NodeJS.ProcessEnv): void {
  program
    .command('hook')
    .description('OAR hook entry point (server-prologue|server-epilogue|prologue|epilogue <jobid> [user] [nodefile]); always exits 0')
    .argument('<kind>', 'server-prologue, server-epilogue, prologue or epilogue')
    .argument('[args...]', 'job id, then (node hooks) user and node file')
    .option('--controller <host:port>', `controller address (env OARCLOUD_CONTROLLER, default ${DEFAULT_CONTROLLER})`)
    .option('--ca <file>', 'the cluster CA: reach the controller over TLS (env OARCLOUD_CA)')
    .option('--token-file <path>', `hook token file (env OARCLOUD_HOOK_TOKEN_FILE, default ${DEFAULT_HOOK_TOKEN_FILE})`)
    .option('--wait <seconds>', `prologue: how long to wait for the instances (env OARCLOUD_HOOK_WAIT, default ${DEFAULT_WAIT_S}, max 60)`)
    .allowUnknownOption()
    .allowExcessArguments()
    .action(async (kind: string, args: string[], opts: { controller?: string; ca?: string; tokenFile?: string; wait?: string }) => {
      let line: string;
      try {
        // --controller and --ca are also the program's own options: commander hands them to it.
        const global = program.opts<{ controller?: string; ca?: string }>();
        line = await runHook(kind, args, hookConfig({ ...opts, controller: opts.controller ?? global.controller, ca: opts.ca ?? global.ca }, env));
      } catch (err) {
        line = `oarcloud hook ${kind}: unexpected error (${why(err)})`;
      }
      process.stdout.write(`${line}\n`);
      process.exitCode = 0;
    });
}
