/**
 * `oarcloud proxy <instance> <port>`: stdin/stdout ↔ InstanceService.Connect, so
 * `ssh -o ProxyCommand='oarcloud proxy %h 22' root@<instance>` works with no route to the
 * instance networks. `oarcloud ssh` runs the system ssh with that ProxyCommand.
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { constants, tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ConnectFrame } from '@oarcloud/api';
import { FailedPreconditionError, fromGrpcError, InternalError } from '@oarcloud/common';
import type { Command } from 'commander';
import type { Ctx } from '../context.js';
import { exitCodeOf } from '../exit-codes.js';
import { defaultSshKeyFiles, parseInstanceRef, parsePort } from '../parse.js';
import { instanceView } from '../views.js';

/** Relays bytes between `input`/`output` and a port of an instance; resolves when the remote side closes. */
export async function proxy(ctx: Ctx, ref: string, port: number, input: NodeJS.ReadableStream, output: NodeJS.WritableStream): Promise<void> {
  const api = ctx.api();
  // Resolve the name first: a clear NOT_FOUND, and Connect always gets an id.
  const inst = instanceView(await api.call(api.instances, api.instances.getInstance, { id: ref }));
  if (inst.state !== 'running') throw new FailedPreconditionError(`instance ${inst.name} (${inst.id}) is ${inst.state}, not running`);
  const call = api.instances.connect(api.metadata);
  await new Promise<void>((resolve, reject) => {
    let done = false;
    const finish = (err?: unknown): void => {
      if (done) return;
      done = true;
      input.removeListener('data', onInput);
      input.pause();
      if (err) reject(err);
      else resolve();
    };
    const onInput = (chunk: Buffer): void => {
      if (!call.write({ frame: { $case: 'data', value: chunk } } satisfies ConnectFrame)) {
        input.pause();
        call.once('drain', () => input.resume());
      }
    };
    call.on('data', (f: ConnectFrame) => {
      if (f.frame?.$case !== 'data') return;
      if (!output.write(f.frame.value)) {
        call.pause();
        output.once('drain', () => call.resume());
      }
    });
    call.on('end', () => finish());
    call.on('error', (err) => finish(fromGrpcError(err)));
    call.write({ frame: { $case: 'open', value: { instanceId: inst.id, port } } } satisfies ConnectFrame);
    input.on('data', onInput);
    input.on('end', () => call.end());
    input.resume();
  });
}

const shq = (s: string): string => (/^[\w@%+=:,./-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`);

export function registerConnectCommands(program: Command, ctx: Ctx): void {
  program
    .command('proxy')
    .description('Relay stdin/stdout to a TCP port of an instance (for ssh ProxyCommand)')
    .argument('<instance>', 'instance id or name')
    .argument('<port>', 'TCP port inside the instance')
    .addHelpText('after', "\nExamples:\n  ssh -o ProxyCommand='oarcloud proxy %h 22' root@web-1\n  # ~/.ssh/config:\n  Host i-* web-*\n    User root\n    ProxyCommand oarcloud proxy %h 22")
    .action(async (ref: string, portArg: string) => {
      const port = parsePort(portArg);
      try {
        await proxy(ctx, parseInstanceRef(ref), port, process.stdin, process.stdout);
      } catch (err) {
        // `oarcloud ssh` learns why through this file (ssh itself only says 255).
        const report = ctx.config().proxyReportFile;
        if (report) writeFileSync(report, String(exitCodeOf(err)));
        throw err;
      }
    });

  program
    .command('ssh')
    .description('Log in to an instance (or run a command in it) with the system ssh, through the controller')
    .argument('<instance>', 'instance id or name')
    .argument('[command...]', 'command to run instead of a shell (after --)')
    .option('-i, --identity <file>', 'private key (default: the ~/.ssh/id_* whose .pub reserve/run inject)')
    .option('-l, --user <name>', 'user in the instance', 'root')
    .option('-o, --ssh-option <opt>', 'extra ssh -o option (repeatable)', (v: string, p: string[] = []) => [...p, v])
    .addHelpText('after', '\nThe exit code is the remote command\'s (255: ssh could not connect).\n\nExamples:\n  oarcloud ssh web-1\n  oarcloud ssh web-1 -- hostname\n  oarcloud ssh i-0123456789ab -- tar czf - /data > data.tgz')
    .action(async (ref: string, command: string[], o: { identity?: string; user: string; sshOption?: string[] }) => {
      const api = ctx.api();
      const inst = instanceView(await api.call(api.instances, api.instances.getInstance, { id: parseInstanceRef(ref) }));
      if (inst.state !== 'running') throw new FailedPreconditionError(`instance ${inst.name} (${inst.id}) is ${inst.state}, not running${inst.state === 'stopped' ? ` (oarcloud start ${inst.name})` : ''}`);
      const cfg = ctx.config();
      mkdirSync(cfg.configDir, { recursive: true, mode: 0o700 });
      const reportDir = join(tmpdir(), `oarcloud-ssh-${process.pid}-${Date.now()}`);
      mkdirSync(reportDir, { mode: 0o700 });
      const report = join(reportDir, 'proxy');
      const proxyCmd = [ctx.self.node, ctx.self.script, '--controller', cfg.controller, 'proxy', '%h', '22'].map(shq).join(' ');
      const args = [
        '-o', `ProxyCommand=${proxyCmd}`,
        // Instance ids are never reused: pin host keys per id, in our own known_hosts.
        '-o', `HostKeyAlias=${inst.id}`,
        '-o', `UserKnownHostsFile=${join(cfg.configDir, 'known_hosts')}`,
        '-o', 'StrictHostKeyChecking=accept-new',
        '-o', 'LogLevel=ERROR',
        // The keys `reserve`/`run` injected by default (ssh itself looks in the passwd home, not $HOME).
        ...(o.identity ? [o.identity] : defaultSshKeyFiles(cfg.home).map((f) => f.replace(/\.pub$/, '')).filter((f) => existsSync(f))).flatMap((f) => ['-i', f]),
        ...(o.sshOption ?? []).flatMap((x) => ['-o', x]),
        '-l', o.user,
        inst.id,
        ...(command.length ? ['--', ...command] : []),
      ];
      const code = await new Promise<number>((resolve, reject) => {
        const child = spawn('ssh', args, { stdio: 'inherit', env: ctx.childEnv({ OARCLOUD_PROXY_REPORT: report }) });
        child.on('error', (err) => reject(new InternalError(`cannot run ssh: ${err.message}`, { cause: err })));
        child.on('exit', (c, sig) => resolve(c ?? 128 + (sig ? (constants.signals[sig] ?? 0) : 0)));
      });
      let proxyCode: number | undefined;
      try {
        proxyCode = Number(readFileSync(report, 'utf8'));
      } catch {
        // The proxy did not fail.
      }
      rmSync(reportDir, { recursive: true, force: true });
      // ssh's own failure (255) caused by the relay: exit with the relay's reason.
      process.exitCode = code === 255 && proxyCode ? proxyCode : code;
    });
}
