/**
 * The layer store: image layers on this node, content-addressed by the sha256 of their tar.
 *
 * On disk (`DirLayerStore`): `<root>/sha256/<hex>/` is the unpacked root filesystem of one
 * layer, used read-only as an overlay lower dir by every instance of every image that has
 * it (ten instances of one image share one copy). A layer is unpacked under `<root>/tmp/`
 * and renamed into place only once complete and verified, so a half-unpacked layer is never
 * visible; `sweep()` removes what a crash left in `<root>/tmp/`.
 *
 * Unprivileged instances run in a user namespace whose root is host uid `idmapBase`: every
 * file's uid/gid is shifted by `idmapBase` at import, so the container sees its files owned
 * by the right ids. A store holds layers of ONE shift (recorded in `<root>/idmap-base`).
 */
import { createHash, randomBytes } from 'node:crypto';
import { spawn } from 'node:child_process';
import { createReadStream, type Stats } from 'node:fs';
import { chmod, lchown, lstat, mkdir, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { FailedPreconditionError, InternalError, InvalidArgumentError, nullLogger, type Logger } from '@oarcloud/common';
import { FakeRecorder } from './fake-recorder.js';
import { TarShift } from './tar-shift.js';

/** `sha256:<64 hex>`. */
export const LAYER_DIGEST_RE = /^sha256:([0-9a-f]{64})$/;

export interface LayerUsage {
  layers: number;
  /** Bytes of the unpacked layers (each inode counted once). */
  bytes: number;
}

export interface LayerStore {
  /**
   * Imports a layer tar (uncompressed) from a file path or a stream, verifying its sha256
   * while reading. Idempotent: a layer already present is kept and the source is not read
   * (a stream is destroyed). A digest mismatch throws InvalidArgumentError and keeps
   * nothing; a malformed digest too. Concurrent imports of one digest are safe (one wins).
   * Returns whether this call imported it.
   */
  importLayer(digest: string, source: string | Readable): Promise<{ imported: boolean }>;
  /** Whether the layer is present (complete). */
  has(digest: string): Promise<boolean>;
  /**
   * The layer's root filesystem directory (an overlay lower dir). Pure: does not check that
   * the layer is present. Throws InvalidArgumentError on a malformed digest.
   */
  path(digest: string): string;
  /**
   * Removes a layer. Idempotent: false when absent. The caller makes sure no instance uses
   * it (an overlay over a removed lower dir breaks). The layer disappears atomically first.
   */
  remove(digest: string): Promise<boolean>;
  /** Digests of the present layers, sorted. */
  list(): Promise<string[]>;
  usage(): Promise<LayerUsage>;
  /**
   * Removes leftovers of interrupted imports and removals (never an import in progress in
   * this process). Returns the removed entries' names.
   */
  sweep(): Promise<string[]>;
}

export function digestHex(digest: string): string {
  const m = LAYER_DIGEST_RE.exec(digest);
  if (!m) throw new InvalidArgumentError(`malformed layer digest ${JSON.stringify(String(digest).slice(0, 80))}`);
  return m[1]!;
}

export interface DirLayerStoreOptions {
  /** Store folder (created, mode 0700). */
  root: string;
  /** Added to every uid/gid at import (0: no shift). Default 100000. */
  idmapBase?: number;
  log?: Logger;
}

export class DirLayerStore implements LayerStore {
  private readonly root: string;
  private readonly idmapBase: number;
  private readonly log: Logger;
  private readonly inFlight = new Set<string>();
  private ready: Promise<void> | undefined;

  constructor(opts: DirLayerStoreOptions) {
    this.root = opts.root;
    this.idmapBase = opts.idmapBase ?? 100_000;
    this.log = opts.log ?? nullLogger;
    if (!Number.isInteger(this.idmapBase) || this.idmapBase < 0 || this.idmapBase > 2 ** 31) {
      throw new InvalidArgumentError(`bad idmap base ${this.idmapBase}`);
    }
  }

  path(digest: string): string {
    return join(this.root, 'sha256', digestHex(digest));
  }

  async has(digest: string): Promise<boolean> {
    try {
      return (await lstat(this.path(digest))).isDirectory();
    } catch (err) {
      if (isErrno(err, 'ENOENT')) return false;
      throw err;
    }
  }

  async importLayer(digest: string, source: string | Readable): Promise<{ imported: boolean }> {
    const hex = digestHex(digest);
    await this.init();
    if (await this.has(digest)) {
      if (typeof source !== 'string') source.destroy();
      return { imported: false };
    }
    const started = Date.now();
    const tmpName = `${hex}.${randomBytes(4).toString('hex')}`;
    const tmp = join(this.root, 'tmp', tmpName);
    this.inFlight.add(tmpName);
    try {
      await mkdir(tmp, { mode: 0o700 });
      // Owners are shifted in the tar headers as they stream (no second pass over the files).
      const shift = this.idmapBase !== 0 ? new TarShift(this.idmapBase) : undefined;
      const actual = await untar(typeof source === 'string' ? createReadStream(source) : source, tmp, shift);
      if (actual !== hex) throw new InvalidArgumentError(`layer digest mismatch: expected sha256:${hex}, got sha256:${actual}`);
      if (!shift || shift.whiteouts) await convertWhiteouts(tmp, this.log);
      if (shift?.needsWalk) await shiftOwnership(tmp, this.idmapBase);
      else if (shift) await shiftRootIfUnshifted(tmp, this.idmapBase);
      try {
        await rename(tmp, this.path(digest));
      } catch (err) {
        // Another import of the same digest won the race: theirs is as good as ours.
        if (isErrno(err, 'ENOTEMPTY') || isErrno(err, 'EEXIST')) return { imported: false };
        throw err;
      }
      this.log.info('layer imported', { digest, ms: Date.now() - started });
      return { imported: true };
    } finally {
      await rm(tmp, { recursive: true, force: true });
      this.inFlight.delete(tmpName);
    }
  }

  async remove(digest: string): Promise<boolean> {
    const hex = digestHex(digest);
    await this.init();
    const trash = join(this.root, 'tmp', `${hex}.rm-${randomBytes(4).toString('hex')}`);
    try {
      await rename(this.path(digest), trash);
    } catch (err) {
      if (isErrno(err, 'ENOENT')) return false;
      throw err;
    }
    await rm(trash, { recursive: true, force: true });
    this.log.info('layer removed', { digest });
    return true;
  }

  async list(): Promise<string[]> {
    await this.init();
    const names = await readdir(join(this.root, 'sha256'));
    return names.filter((n) => /^[0-9a-f]{64}$/.test(n)).sort().map((n) => `sha256:${n}`);
  }

  async usage(): Promise<LayerUsage> {
    const digests = await this.list();
    const seen = new Set<string>();
    let bytes = 0;
    for (const d of digests) {
      await walk(this.path(d), async (_p, st) => {
        const key = `${st.dev}:${st.ino}`;
        if (seen.has(key)) return;
        seen.add(key);
        bytes += st.blocks * 512;
      });
    }
    return { layers: digests.length, bytes };
  }

  async sweep(): Promise<string[]> {
    await this.init();
    const removed: string[] = [];
    for (const name of await readdir(join(this.root, 'tmp'))) {
      if (this.inFlight.has(name)) continue;
      await rm(join(this.root, 'tmp', name), { recursive: true, force: true });
      removed.push(name);
    }
    if (removed.length > 0) this.log.info('layer store leftovers removed', { count: removed.length });
    return removed;
  }

  /** Creates the folders; refuses a store made with another idmap base. */
  private init(): Promise<void> {
    this.ready ??= (async () => {
      await mkdir(join(this.root, 'sha256'), { recursive: true, mode: 0o700 });
      await mkdir(join(this.root, 'tmp'), { recursive: true, mode: 0o700 });
      const marker = join(this.root, 'idmap-base');
      let recorded: string | undefined;
      try {
        recorded = (await readFile(marker, 'utf8')).trim();
      } catch (err) {
        if (!isErrno(err, 'ENOENT')) throw err;
      }
      if (recorded === undefined) await writeFile(marker, `${this.idmapBase}\n`);
      else if (recorded !== String(this.idmapBase)) {
        throw new FailedPreconditionError(`layer store ${this.root} holds layers shifted by ${recorded}, not ${this.idmapBase}`);
      }
    })().catch((err: unknown) => {
      this.ready = undefined;
      throw err;
    });
    return this.ready;
  }
}

/** An archive without a `./` member leaves the root as made (host root): give it to the container's root. */
async function shiftRootIfUnshifted(dir: string, base: number): Promise<void> {
  const st = await lstat(dir);
  if (st.uid < base) await lchown(dir, st.uid + base, st.gid + base);
}

/**
 * Streams `source` into `tar -x` under `dir` while hashing it (the digest is of the bytes as
 * received; `shift`, if any, rewrites owners after hashing); returns the hex sha256.
 */
async function untar(source: Readable, dir: string, shift?: TarShift): Promise<string> {
  const hash = createHash('sha256');
  // Opaque directories of saved layers come as the overlay xattr itself (root may set trusted.*).
  // --ignore-zeros: read to the end of the input (tar would otherwise stop at the end-of-archive
  // blocks and close its stdin early, failing the write of the record padding that follows).
  const tar = spawn('tar', ['-x', '--numeric-owner', '-p', '--ignore-zeros', '--xattrs', '--xattrs-include=trusted.overlay.opaque', '-C', dir, '-f', '-'], {
    stdio: ['pipe', 'ignore', 'pipe'],
  });
  let stderr = '';
  tar.stderr.on('data', (b: Buffer) => {
    if (stderr.length < 4000) stderr += b.toString();
  });
  const exited = new Promise<number | null>((resolve, reject) => {
    tar.on('error', reject);
    tar.on('close', (code) => resolve(code));
  });
  const hasher = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      hash.update(chunk);
      cb(null, chunk);
    },
  });
  try {
    await (shift ? pipeline(source, hasher, shift, tar.stdin) : pipeline(source, hasher, tar.stdin));
  } catch (err) {
    tar.kill('SIGKILL');
    await exited.catch(() => undefined);
    // tar closing its input early means it rejected the archive: report tar's reason.
    if (isErrno(err, 'EPIPE')) throw new InvalidArgumentError(`layer is not a valid tar: ${stderr.trim().slice(0, 500)}`, { cause: err });
    throw err;
  }
  const code = await exited;
  if (code !== 0) throw new InvalidArgumentError(`layer is not a valid tar (tar exit ${code}): ${stderr.trim().slice(0, 500)}`);
  return hash.digest('hex');
}

/**
 * Turns OCI whiteouts (`.wh.<name>`) into overlayfs ones (a 0/0 character device). Opaque
 * markers (`.wh..wh..opq`) would need a trusted.* xattr, which Node cannot set: refused.
 */
async function convertWhiteouts(dir: string, log: Logger): Promise<void> {
  const whiteouts: string[] = [];
  await walk(dir, async (p) => {
    const base = p.slice(p.lastIndexOf('/') + 1);
    if (base.startsWith('.wh.')) whiteouts.push(p);
  });
  for (const p of whiteouts) {
    const base = p.slice(p.lastIndexOf('/') + 1);
    if (base === '.wh..wh..opq') throw new InvalidArgumentError('layers with opaque directories (.wh..wh..opq) are not supported');
    const target = join(p, '..', base.slice(4));
    await rm(p, { recursive: true, force: true });
    await run('mknod', [target, 'c', '0', '0']);
    log.debug('whiteout converted', { path: target });
  }
}

/** Adds `base` to every uid/gid under `dir` (each inode once), keeping setuid/setgid bits. */
export async function shiftOwnership(dir: string, base: number): Promise<void> {
  const seen = new Set<string>();
  await walk(dir, async (p, st) => {
    if (st.nlink > 1) {
      const key = `${st.dev}:${st.ino}`;
      if (seen.has(key)) return;
      seen.add(key);
    }
    await lchown(p, st.uid + base, st.gid + base);
    // chown clears setuid/setgid: put the mode back (symlinks have no mode of their own).
    if (!st.isSymbolicLink() && (st.mode & 0o6000) !== 0) await chmod(p, st.mode & 0o7777);
  });
}


/** Depth-first walk (the root included) without following symlinks. */
async function walk(root: string, visit: (path: string, st: Stats) => Promise<void>): Promise<void> {
  const stack = [root];
  while (stack.length > 0) {
    const p = stack.pop()!;
    const st = await lstat(p);
    await visit(p, st);
    if (st.isDirectory()) for (const name of await readdir(p)) stack.push(join(p, name));
  }
}

function run(cmd: string, args: string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
    child.on('error', reject);
    child.on('close', (code) => (code === 0 ? resolve() : reject(new InternalError(`${cmd} failed (exit ${code}): ${stderr.trim()}`))));
  });
}

export function isErrno(err: unknown, code: string): boolean {
  return typeof err === 'object' && err !== null && (err as NodeJS.ErrnoException).code === code;
}

/**
 * In-memory layer store for tests: keeps digests and sizes in a map, verifies digests like
 * the real one, records calls, takes injected errors (`failNext`).
 */
export class FakeLayerStore extends FakeRecorder implements LayerStore {
  readonly layers = new Map<string, { bytes: number }>();

  constructor(private readonly root = '/fake/layers') {
    super();
  }

  path(digest: string): string {
    return join(this.root, 'sha256', digestHex(digest));
  }

  async has(digest: string): Promise<boolean> {
    this.record('has', digest);
    return this.layers.has(digest);
  }

  async importLayer(digest: string, source: string | Readable): Promise<{ imported: boolean }> {
    this.record('importLayer', digest);
    const hex = digestHex(digest);
    this.maybeFail('importLayer');
    if (this.layers.has(digest)) {
      if (typeof source !== 'string') source.destroy();
      return { imported: false };
    }
    const hash = createHash('sha256');
    let bytes = 0;
    for await (const chunk of typeof source === 'string' ? createReadStream(source) : source) {
      hash.update(chunk as Buffer);
      bytes += (chunk as Buffer).length;
    }
    const actual = hash.digest('hex');
    if (actual !== hex) throw new InvalidArgumentError(`layer digest mismatch: expected sha256:${hex}, got sha256:${actual}`);
    this.layers.set(digest, { bytes });
    return { imported: true };
  }

  async remove(digest: string): Promise<boolean> {
    this.record('remove', digest);
    digestHex(digest);
    this.maybeFail('remove');
    return this.layers.delete(digest);
  }

  async list(): Promise<string[]> {
    this.record('list');
    return [...this.layers.keys()].sort();
  }

  async usage(): Promise<LayerUsage> {
    this.record('usage');
    let bytes = 0;
    for (const l of this.layers.values()) bytes += l.bytes;
    return { layers: this.layers.size, bytes };
  }

  async sweep(): Promise<string[]> {
    this.record('sweep');
    return [];
  }

  /** Test helper: makes a layer present without a tar. */
  add(digest: string, bytes = 0): void {
    digestHex(digest);
    this.layers.set(digest, { bytes });
  }
}

/** The sha256 digest (`sha256:<hex>`) of a buffer or file, as the store computes it. */
export async function digestOf(source: Buffer | string): Promise<string> {
  const hash = createHash('sha256');
  if (Buffer.isBuffer(source)) hash.update(source);
  else for await (const chunk of Readable.from(createReadStream(source))) hash.update(chunk as Buffer);
  return `sha256:${hash.digest('hex')}`;
}
