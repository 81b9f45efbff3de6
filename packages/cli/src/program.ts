/**
 * The `oarcloud` program: the command tree, and `runCli`, which turns whatever a command
 * throws into one line on stderr and an exit code from the one table (exit-codes.ts).
 */
import { Command, CommanderError } from 'commander';
import { DeadlineExceededError, isServiceError, UnavailableError } from '@oarcloud/common';
import { registerAdminCommands } from './commands/admin.js';
import { registerCompletionCommand } from './commands/completion.js';
import { registerConnectCommands } from './commands/connect.js';
import { registerLoginCommands } from './commands/login.js';
import { registerNetworkCommands } from './commands/networks.js';
import { registerUserCommands } from './commands/user.js';
import { registerVolumeCommands } from './commands/volumes.js';
import type { CliIo } from './config.js';
import { createCtx, type Ctx } from './context.js';
import { EXIT, EXIT_CODES_HELP, exitCodeOf } from './exit-codes.js';
import { registerHookCommand } from './hook.js';

export const CLI_VERSION = '0.1.0';

export interface CliRuntime {
  env: NodeJS.ProcessEnv;
  io: CliIo;
  write: { out(text: string): void; err(text: string): void };
  stdin: NodeJS.ReadableStream;
  self: { node: string; script: string };
}

const HELP_FOOTER = `
Configuration:
  controller  --controller, OARCLOUD_CONTROLLER, "controller:" in ~/.config/oarcloud/config.yaml
  tls         --ca, OARCLOUD_CA, "ca:" in config.yaml: the cluster CA; set, the controller is
              reached over TLS (point --controller at its tlsListen port)
  token       OARCLOUD_TOKEN, ~/.config/oarcloud/token (mode 0600, see \`oarcloud login\`);
              as root, the controller's admin.token when readable (OARCLOUD_ADMIN_TOKEN_FILE)
  colours     only on a terminal; NO_COLOR turns them off

Examples:
  oarcloud login --token-file ./my.token
  oarcloud reserve --nodes 2 --walltime 1h --image debian:12 --count 4 --wait
  oarcloud ps
  oarcloud ssh web-1 -- uname -a
  oarcloud release 1234

${EXIT_CODES_HELP}
`;

/** The command tree; `rt` is how commands reach the outside world. */
export function buildProgram(env: NodeJS.ProcessEnv = {}, rt?: Partial<CliRuntime>): { program: Command; ctx: Ctx } {
  const write = rt?.write ?? { out: (t: string) => void process.stdout.write(t), err: (t: string) => void process.stderr.write(t) };
  const program = new Command('oarcloud')
    .description('Containers (LXC instances) inside your OAR reservations.')
    .version(CLI_VERSION)
    .option('--controller <host:port>', 'controller address')
    .option('--ca <file>', "the cluster's CA certificate: talk to the controller over TLS (its tlsListen port)")
    .showHelpAfterError('(run with --help for usage)')
    .configureOutput({ writeOut: write.out, writeErr: write.err })
    .exitOverride()
    .addHelpText('after', HELP_FOOTER);
  const ctx = createCtx({
    program,
    env,
    io: rt?.io ?? { stdoutIsTTY: false, stderrIsTTY: false, uid: process.getuid?.() ?? -1 },
    write,
    self: rt?.self ?? { node: process.execPath, script: process.argv[1] ?? 'oarcloud' },
  });
  registerLoginCommands(program, ctx, rt?.stdin ?? process.stdin);
  registerUserCommands(program, ctx);
  registerVolumeCommands(program, ctx);
  registerNetworkCommands(program, ctx);
  registerConnectCommands(program, ctx);
  registerAdminCommands(program, ctx);
  registerCompletionCommand(program, ctx);
  registerHookCommand(program, env);
  return { program, ctx };
}

/** Runs one command line (`argv` without node and script); resolves to the exit code. */
export async function runCli(argv: readonly string[], rt: CliRuntime): Promise<number> {
  const { program, ctx } = buildProgram(rt.env, rt);
  try {
    await program.parseAsync([...argv], { from: 'user' });
    return typeof process.exitCode === 'number' ? process.exitCode : EXIT.ok;
  } catch (err) {
    if (err instanceof CommanderError) {
      // Commander has printed its message already.
      return ['commander.helpDisplayed', 'commander.version', 'commander.help'].includes(err.code) ? EXIT.ok : EXIT.usage;
    }
    if (!(err as { reported?: boolean }).reported) rt.write.err(`oarcloud: ${describe(err, ctx)}\n`);
    return exitCodeOf(err);
  } finally {
    ctx.close();
  }
}

/**
 * grpc-js's connection failure text without its wrapping: "No connection established. Last
 * error: Error: unable to verify the first certificate. Resolution note: " → "unable to
 * verify the first certificate".
 */
export function transportReason(msg: string): string {
  const m = /^No connection established\. Last error: (?:Error: )?(.*?)\.?(?: Resolution note:.*)?$/s.exec(msg.trim());
  return (m ? m[1]! : msg).trim() || msg;
}

function describe(err: unknown, ctx: Ctx): string {
  const msg = err instanceof Error ? err.message : String(err);
  const cause = err instanceof Error ? err.cause : undefined;
  // A status our server did not set (no oarcloud-error metadata) comes from the transport.
  const fromTransport = isServiceError(cause) && cause.metadata.get('oarcloud-error').length === 0;
  if (fromTransport && (err instanceof UnavailableError || err instanceof DeadlineExceededError)) {
    let address = '?';
    try {
      address = ctx.config().controller;
    } catch {
      // A config error is reported on its own.
    }
    return err instanceof UnavailableError ? `cannot reach the controller at ${address} (${transportReason(msg)})` : `the controller at ${address} did not answer in time (${transportReason(msg)})`;
  }
  return msg;
}
