/**
 * A byte stream to a TCP port inside an instance, without any route to the instance's
 * network: a helper process enters the instance's network namespace (`nsenter -n`) and
 * connects to the port on the instance's loopback (`nc -N`: half-close on stdin EOF).
 */
import { spawn } from 'node:child_process';
import type { Readable, Writable } from 'node:stream';
import { FailedPreconditionError, InvalidArgumentError } from '@oarcloud/common';

export interface PortStream {
  /** Bytes from the instance's port. */
  output: Readable;
  /** Bytes to the instance's port; `end()` half-closes. */
  input: Writable;
  /** Resolves when the connection is gone. */
  closed: Promise<void>;
  kill(): void;
}

export function openInstancePort(initPid: number, port: number): PortStream {
  if (!Number.isInteger(port) || port < 1 || port > 65535) throw new InvalidArgumentError(`port must be 1-65535, got ${port}`);
  if (!Number.isInteger(initPid) || initPid <= 1) throw new FailedPreconditionError('instance is not running');
  const child = spawn('nsenter', ['-t', String(initPid), '-n', '--', 'nc', '-N', '127.0.0.1', String(port)], {
    stdio: ['pipe', 'pipe', 'ignore'],
  });
  const closed = new Promise<void>((resolve) => child.once('close', () => resolve()));
  // A write after the process is gone must not crash the agent.
  child.stdin.on('error', () => {});
  return { output: child.stdout, input: child.stdin, closed, kill: () => child.kill('SIGKILL') };
}
