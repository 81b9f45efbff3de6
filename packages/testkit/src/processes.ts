/**
 * Launching the real daemons (built `dist/main.js`) as child processes for tests, with a
 * config file in a temporary folder, on free ports; killed by pid, never by name.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream, mkdirSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { ChannelCredentials } from '@grpc/grpc-js';
import { grpcHealth } from './grpc.js';
import { waitFor } from './wait.js';

const repoRoot = fileURLToPath(new URL('../../..', import.meta.url));

/** A free TCP port on 127.0.0.1. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

export interface DaemonProcess {
  address: string;
  configFile: string;
  logFile: string;
  child: ChildProcess;
  /** SIGKILL, and wait for the exit. */
  kill(): Promise<void>;
  /** SIGTERM, and wait for the exit. */
  stop(): Promise<void>;
}

/**
 * Writes `config` as YAML (JSON is YAML) and starts `packages/<pkg>/dist/main.js`.
 * `healthCredentials`: how to reach it for the readiness check (a daemon under mutual TLS).
 */
export async function launchDaemon(
  pkg: 'agent' | 'controller',
  dir: string,
  config: Record<string, unknown>,
  opts: { healthCredentials?: ChannelCredentials } = {},
): Promise<DaemonProcess> {
  mkdirSync(dir, { recursive: true });
  const configFile = join(dir, `${pkg}.yaml`);
  writeFileSync(configFile, JSON.stringify(config, null, 2));
  const logFile = join(dir, `${pkg}.log`);
  const out = createWriteStream(logFile, { flags: 'a' });
  const child = spawn(process.execPath, [join(repoRoot, 'packages', pkg, 'dist/main.js'), '--config', configFile], { stdio: ['ignore', 'pipe', 'pipe'] });
  child.stdout!.pipe(out);
  child.stderr!.pipe(out);
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const address = String(config.listen);
  await waitFor(async () => child.exitCode === null && (await grpcHealth(address, '', 1000, opts.healthCredentials)) === 'SERVING', {
    timeoutMs: 30_000,
    intervalMs: 100,
    what: `${pkg} at ${address} to serve (log: ${logFile})`,
  });
  const signal = async (sig: NodeJS.Signals): Promise<void> => {
    if (child.exitCode === null && child.signalCode === null) child.kill(sig);
    await exited;
  };
  return { address, configFile, logFile, child, kill: () => signal('SIGKILL'), stop: () => signal('SIGTERM') };
}
