/**
 * The controller's layer blobs: `<dir>/<hex>.tar.gz`, the gzip of a layer tar whose
 * sha256 (of the uncompressed tar) is `<hex>`. A blob is written beside (`.tmp-…`) while
 * its digest is computed and renamed into place only when complete, so a half-written blob
 * is never served; `sweep()` removes leftovers of a crash.
 */
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream, type ReadStream } from 'node:fs';
import { mkdir, readdir, rename, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { Transform, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGzip } from 'node:zlib';
import { InvalidArgumentError, NotFoundError } from '@oarcloud/common';
import { TarCheck } from './tar-check.js';

export const DIGEST_RE = /^sha256:([0-9a-f]{64})$/;

export function checkDigest(digest: string): string {
  const m = DIGEST_RE.exec(typeof digest === 'string' ? digest : '');
  if (!m) throw new InvalidArgumentError(`malformed layer digest ${JSON.stringify(String(digest).slice(0, 80))}`);
  return m[1]!;
}

export interface StoredBlob {
  digest: string;
  /** Bytes of the uncompressed tar. */
  size: number;
  /** Bytes of the blob on disk. */
  storedSize: number;
}

export class LayerBlobs {
  private ready: Promise<void> | undefined;

  /** `level`: gzip level (1 = fastest; layers are compressed once, fetched many times). */
  constructor(
    readonly dir: string,
    private readonly level = 1,
  ) {}

  private init(): Promise<void> {
    this.ready ??= mkdir(this.dir, { recursive: true, mode: 0o700 }).then(() => undefined);
    return this.ready;
  }

  path(digest: string): string {
    return join(this.dir, `${checkDigest(digest)}.tar.gz`);
  }

  /**
   * Stores an uncompressed layer tar from `source`, computing its digest. What is not a
   * whole tar archive (tar-check.ts): InvalidArgumentError, nothing kept. When `expect` is
   * given and differs: InvalidArgumentError, nothing kept. A blob already present is kept.
   * `maxBytes` bounds the uncompressed size (InvalidArgumentError beyond).
   */
  async put(source: Readable, opts: { expect?: string; maxBytes?: number } = {}): Promise<StoredBlob> {
    await this.init();
    const hash = createHash('sha256');
    let size = 0;
    const max = opts.maxBytes ?? Number.MAX_SAFE_INTEGER;
    const counter = new Transform({
      transform(chunk: Buffer, _enc, cb) {
        size += chunk.length;
        if (size > max) return cb(new InvalidArgumentError(`layer larger than ${max} bytes`));
        hash.update(chunk);
        cb(null, chunk);
      },
    });
    const tmp = join(this.dir, `.tmp-${randomBytes(6).toString('hex')}`);
    try {
      // Checked as it streams: what is not a whole tar is refused here, not on every node.
      await pipeline(source, counter, new TarCheck(), createGzip({ level: this.level }), createWriteStream(tmp, { mode: 0o600 }));
      if (size === 0 || size % 512 !== 0) throw new InvalidArgumentError(`not a tar archive (${size} bytes)`);
      const digest = `sha256:${hash.digest('hex')}`;
      if (opts.expect && opts.expect !== digest) throw new InvalidArgumentError(`layer digest mismatch: expected ${opts.expect}, got ${digest}`);
      const final = this.path(digest);
      await rename(tmp, final);
      return { digest, size, storedSize: (await stat(final)).size };
    } finally {
      await rm(tmp, { force: true });
    }
  }

  /** The stored size, or NotFoundError. */
  async storedSize(digest: string): Promise<number> {
    try {
      return (await stat(this.path(digest))).size;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new NotFoundError(`layer ${digest} is not stored on the controller`);
      throw err;
    }
  }

  async has(digest: string): Promise<boolean> {
    return this.storedSize(digest).then(
      () => true,
      (err: unknown) => (err instanceof NotFoundError ? false : Promise.reject(err)),
    );
  }

  /** A stream of the compressed blob from `offset`. */
  open(digest: string, offset = 0): ReadStream {
    return createReadStream(this.path(digest), { start: offset, highWaterMark: 256 * 1024 });
  }

  /** Idempotent. */
  async remove(digest: string): Promise<void> {
    await rm(this.path(digest), { force: true });
  }

  /** Removes what an interrupted put left (never a put in progress: call at start only). */
  async sweep(): Promise<number> {
    await this.init();
    const left = (await readdir(this.dir)).filter((n) => n.startsWith('.tmp-'));
    for (const n of left) await rm(join(this.dir, n), { force: true });
    return left.length;
  }
}
