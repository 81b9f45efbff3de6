/**
 * A private nats-server (the Debian binary) on a random loopback port with JetStream in a
 * temporary folder, so the simulator never touches the local cluster's one. Stopped by pid.
 */
import { spawn } from 'node:child_process';
import { createWriteStream, mkdirSync } from 'node:fs';
import { connect as tcpConnect } from 'node:net';
import { join } from 'node:path';
import { freePort, waitFor } from '@oarcloud/testkit';

export interface NatsServer {
  url: string;
  pid: number;
  stop(): Promise<void>;
}

export async function startNatsServer(dir: string): Promise<NatsServer> {
  mkdirSync(join(dir, 'jetstream'), { recursive: true });
  const port = await freePort();
  const out = createWriteStream(join(dir, 'nats-server.log'));
  const child = spawn('nats-server', ['-a', '127.0.0.1', '-p', String(port), '-js', '-sd', join(dir, 'jetstream')], { stdio: ['ignore', 'pipe', 'pipe'] });
  child.stdout.pipe(out);
  child.stderr.pipe(out);
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const open = () =>
    new Promise<boolean>((resolve) => {
      const s = tcpConnect(port, '127.0.0.1', () => {
        s.destroy();
        resolve(true);
      });
      s.once('error', () => resolve(false));
    });
  await waitFor(async () => child.exitCode === null && (await open()), { timeoutMs: 10_000, intervalMs: 50, what: `nats-server on 127.0.0.1:${port}` });
  return {
    url: `nats://127.0.0.1:${port}`,
    pid: child.pid!,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) process.kill(child.pid!, 'SIGTERM');
      await Promise.race([exited, new Promise((r) => setTimeout(r, 5000))]);
      if (child.exitCode === null && child.signalCode === null) process.kill(child.pid!, 'SIGKILL');
      await exited;
    },
  };
}
