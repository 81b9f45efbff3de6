/**
 * Instance console output kept on the host. libvirt's LXC driver ignores `<log file>`: its
 * only console is a host pty (`<console type='pty' tty='/dev/pts/N'>`) that libvirt_lxc
 * relays the instance's /dev/console to. The agent reads that pty (raw mode, non-blocking,
 * on Node's event loop) and appends what comes out to a bounded log per instance: two
 * halves, `<log>` and `<log>.1`, each at most `maxBytes / 2`, so the last `maxBytes / 2` to
 * `maxBytes` bytes are always kept. Output written while nobody reads (before the first
 * attach, while the agent restarts) waits in the pty's buffer and is read at the next attach.
 *
 * `sync` is called after every reconcile pass with the running instances: it attaches to new
 * consoles and lets go of the others; a console is let go of when its pty ends (the domain
 * stopped), so a restarted domain's new pty is attached at the next sync. Not safe to call
 * concurrently with itself (the agent's passes never overlap).
 */
import { closeSync, constants, fstatSync, openSync, readFileSync, renameSync, writeSync } from 'node:fs';
import { ReadStream } from 'node:tty';
import { errFields, type Logger } from '@oarcloud/common';

export interface ConsoleLogsOptions {
  /** The log file of an instance (its folder must exist while it runs). */
  logPath(instanceId: string): string;
  /** The host pty of a running instance's console, undefined if it is not running. */
  ptyOf(instanceId: string): Promise<string | undefined>;
  /** Bytes kept per instance (default 1 MiB). */
  maxBytes?: number;
  log: Logger;
}

interface Attached {
  pty: string;
  stream: ReadStream;
  fd: number;
  size: number;
  /** A '\r' that ended the last chunk (its '\n' may start the next one). */
  pendingCr: boolean;
}

const PTY_RE = /^\/dev\/pts\/\d+$/;

export class ConsoleLogs {
  private readonly attached = new Map<string, Attached>();
  private readonly half: number;
  private closed = false;

  constructor(private readonly o: ConsoleLogsOptions) {
    this.half = Math.max(1024, Math.floor((o.maxBytes ?? 1024 * 1024) / 2));
  }

  /** Attaches to the consoles of `running` instances not attached yet; detaches the others. */
  async sync(running: readonly string[]): Promise<void> {
    if (this.closed) return;
    const want = new Set(running);
    for (const id of [...this.attached.keys()]) if (!want.has(id)) this.detach(id);
    for (const id of want) {
      // An attached console stays until its pty ends (the domain stopped: a new start has a
      // new pty, attached at the next sync).
      if (this.attached.has(id)) continue;
      const pty = await this.o.ptyOf(id).catch((err: unknown) => {
        this.o.log.debug('console pty not known', { instanceId: id, ...errFields(err) });
        return undefined;
      });
      if (pty && !this.closed && !this.attached.has(id)) await this.attach(id, pty);
    }
  }

  /** The last `maxBytes` of an instance's console (empty if it never printed anything). */
  read(instanceId: string, maxBytes: number): Buffer {
    const path = this.o.logPath(instanceId);
    const parts = [`${path}.1`, path].map((p) => {
      try {
        return readFileSync(p);
      } catch {
        return Buffer.alloc(0);
      }
    });
    const all = Buffer.concat(parts);
    return all.subarray(Math.max(0, all.length - maxBytes));
  }

  /** Instances whose console is being read (for tests and diagnostics). */
  attachedIds(): string[] {
    return [...this.attached.keys()];
  }

  close(): void {
    this.closed = true;
    for (const id of [...this.attached.keys()]) this.detach(id);
  }

  private async attach(id: string, pty: string): Promise<void> {
    if (!PTY_RE.test(pty)) {
      this.o.log.warn('console is not a pty, not read', { instanceId: id, pty });
      return;
    }
    let ptyFd = -1;
    let logFd = -1;
    try {
      ptyFd = openSync(pty, constants.O_RDWR | constants.O_NOCTTY | constants.O_NONBLOCK);
      // The pty number may have been freed and taken by another instance between the look-up
      // and the open: ask again, so a console is never read into the wrong instance's log.
      if ((await this.o.ptyOf(id).catch(() => undefined)) !== pty || this.closed) {
        closeSync(ptyFd);
        return;
      }
      logFd = openSync(this.o.logPath(id), 'a', 0o600);
    } catch (err) {
      if (ptyFd >= 0) closeSync(ptyFd);
      this.o.log.warn('console not attached', { instanceId: id, pty, ...errFields(err) });
      return;
    }
    const stream = new ReadStream(ptyFd);
    // Raw: no echo of the output back into the instance, no line editing.
    stream.setRawMode(true);
    const a: Attached = { pty, stream, fd: logFd, size: fstatSync(logFd).size, pendingCr: false };
    this.attached.set(id, a);
    stream.on('data', (chunk: Buffer) => this.append(id, a, chunk));
    // EIO when the domain stops (libvirt_lxc closes the pty's other end).
    stream.on('error', () => this.detach(id, a));
    stream.on('end', () => this.detach(id, a));
    this.o.log.debug('console attached', { instanceId: id, pty });
  }

  private append(id: string, a: Attached, chunk: Buffer): void {
    if (this.attached.get(id) !== a) return;
    // The instance's tty turns '\n' into "\r\n": keep plain lines in the log.
    let text = (a.pendingCr ? '\r' : '') + chunk.toString('latin1');
    a.pendingCr = text.endsWith('\r');
    if (a.pendingCr) text = text.slice(0, -1);
    const data = Buffer.from(text.replace(/\r\n/g, '\n'), 'latin1');
    if (data.length === 0) return;
    try {
      if (a.size + data.length > this.half && a.size > 0) this.rotate(id, a);
      // One chunk larger than a half keeps only its end.
      const part = data.length > this.half ? data.subarray(data.length - this.half) : data;
      writeSync(a.fd, part);
      a.size += part.length;
    } catch (err) {
      this.o.log.warn('console log write failed', { instanceId: id, ...errFields(err) });
      this.detach(id, a);
    }
  }

  private rotate(id: string, a: Attached): void {
    const path = this.o.logPath(id);
    closeSync(a.fd);
    renameSync(path, `${path}.1`);
    a.fd = openSync(path, 'a', 0o600);
    a.size = 0;
  }

  private detach(id: string, only?: Attached): void {
    const a = this.attached.get(id);
    if (!a || (only && a !== only)) return;
    this.attached.delete(id);
    a.stream.destroy();
    try {
      closeSync(a.fd);
    } catch {
      // already closed
    }
  }
}
