/**
 * The node's image cache: makes sure the layers of an image are in the layer store before
 * an instance uses them, fetching what is missing from the controller, and keeps the
 * store within its size budget.
 *
 * - Missing layers are fetched by gRPC stream (ImageService.FetchLayer, gzip), decompressed
 *   and handed to the layer store, which verifies the sha256 while unpacking and renames
 *   the layer into place only once complete: a half-unpacked layer is never used.
 * - Concurrent requests for one layer on this node share one fetch (single flight).
 * - A corrupt or truncated layer (bad gzip, wrong sha256, stream cut) is rejected and
 *   fetched again (up to `attempts` times); then UNAVAILABLE naming the layer and the reason.
 * - Eviction: after every `ensure` (an instance being created, whether or not it fetched),
 *   when the store is over `budgetBytes`, layers no instance record refers to are removed,
 *   least recently used first; a layer in use is never removed.
 */
import { stat, utimes } from 'node:fs/promises';
import { Readable } from 'node:stream';
import { createGunzip } from 'node:zlib';
import { DeadlineExceededError, errFields, InvalidArgumentError, NotFoundError, UnavailableError, type Logger } from '@oarcloud/common';
import type { LayerStore } from '../drivers/images/layers.js';

/** Opens the compressed stream of a layer at the controller (the gRPC call). */
export interface LayerSource {
  /**
   * A stream of the gzip blob; `total()` is the size the controller announced (known once
   * data arrived). Stream errors are OarcloudErrors (NotFoundError: unknown layer).
   */
  fetch(digest: string): { stream: Readable; total(): number };
}

export interface ImageCacheOptions {
  layers: LayerStore;
  /** Absent: nothing is fetched (a missing layer is NOT_FOUND). */
  source?: LayerSource;
  /** Digests in use (every instance record's layers, whatever its state). */
  inUse: () => Iterable<string>;
  budgetBytes: number;
  log: Logger;
  attempts?: number;
}

export interface FetchReport {
  fetched: string[];
  present: string[];
  bytes: number;
  ms: number;
}

export class ImageCache {
  private readonly flights = new Map<string, Promise<number>>();
  /** Unpacked size of each layer (measured once). */
  private readonly sizes = new Map<string, number>();
  private evicting: Promise<string[]> | undefined;

  constructor(private readonly o: ImageCacheOptions) {}

  /**
   * Makes every layer present, fetching missing ones (in parallel, each once per node).
   * NotFoundError when a layer is missing and cannot be fetched.
   */
  async ensure(layers: readonly string[]): Promise<FetchReport> {
    const t0 = performance.now();
    const report: FetchReport = { fetched: [], present: [], bytes: 0, ms: 0 };
    await Promise.all(
      layers.map(async (d) => {
        if (await this.o.layers.has(d)) {
          report.present.push(d);
          await this.touch(d);
          return;
        }
        report.bytes += await this.fetchOnce(d);
        report.fetched.push(d);
      }),
    );
    report.ms = Math.round(performance.now() - t0);
    if (report.fetched.length > 0) this.o.log.info('layers fetched', { layers: report.fetched.length, bytes: report.bytes, ms: report.ms });
    // Not only after a fetch: layers an instance stopped using must go even when the next
    // instances find everything cached (else the cache stays over budget for good).
    void this.evict().catch((err: unknown) => this.o.log.warn('layer eviction failed', errFields(err)));
    return report;
  }

  /** Single flight: concurrent callers for one digest share one fetch. Returns bytes received. */
  private fetchOnce(digest: string): Promise<number> {
    let p = this.flights.get(digest);
    if (!p) {
      p = this.fetch(digest).finally(() => this.flights.delete(digest));
      this.flights.set(digest, p);
    }
    return p;
  }

  private async fetch(digest: string): Promise<number> {
    // A flight that ended between the caller's check and now already brought it.
    if (await this.o.layers.has(digest)) return 0;
    const source = this.o.source;
    if (!source) throw new NotFoundError(`layer ${digest} is not on this node and no controller is configured to fetch it from`);
    const attempts = this.o.attempts ?? 3;
    for (let i = 1; ; i++) {
      const t0 = performance.now();
      let received = 0;
      try {
        const { total, stream } = source.fetch(digest);
        let sourceError: unknown;
        let gzipError: Error | undefined;
        const gunzip = createGunzip();
        // The store attaches to `gunzip` only after its own checks: errors are kept until then.
        gunzip.on('error', (err) => {
          if (err !== sourceError) gzipError ??= err;
        });
        stream.on('data', (b: Buffer) => (received += b.length));
        stream.on('error', (err) => {
          sourceError = err;
          gunzip.destroy(err);
        });
        stream.pipe(gunzip);
        try {
          await this.o.layers.importLayer(digest, gunzip);
        } catch (err) {
          // Bytes that are not the gzip they should be are a corrupt layer (retried), not a bug.
          if (!sourceError && gzipError) throw new InvalidArgumentError(`layer ${digest} arrived corrupt (${gzipError.message})`, { cause: gzipError });
          throw sourceError ?? err;
        }
        if (received !== total() && !(await this.o.layers.has(digest))) throw new InvalidArgumentError(`layer ${digest} truncated: ${received} of ${total()} bytes`);
        this.o.log.debug('layer fetched', { digest, bytes: received, ms: Math.round(performance.now() - t0) });
        return received;
      } catch (err) {
        // Unknown at the controller: no retry helps.
        if (err instanceof NotFoundError) throw err;
        this.o.log.warn('layer fetch failed', { digest, attempt: i, received, ...errFields(err) });
        if (i >= attempts) {
          // Corrupt data or a broken link: name the layer and say it was retried.
          if (err instanceof InvalidArgumentError || err instanceof UnavailableError || err instanceof DeadlineExceededError) {
            throw new UnavailableError(`layer ${digest} could not be fetched intact after ${attempts} attempts: ${err.message}`, { cause: err });
          }
          throw err;
        }
        await new Promise((r) => setTimeout(r, 200 * i));
      }
    }
  }

  /** Marks a layer as just used (its folder's mtime), for LRU eviction. */
  private async touch(digest: string): Promise<void> {
    const now = new Date();
    await utimes(this.o.layers.path(digest), now, now).catch(() => undefined);
  }

  private async sizeOf(digest: string): Promise<number> {
    let s = this.sizes.get(digest);
    if (s === undefined) {
      s = await duBytes(this.o.layers.path(digest));
      this.sizes.set(digest, s);
    }
    return s;
  }

  /** Total bytes of the cached layers (each measured once). */
  async usage(): Promise<{ layers: number; bytes: number }> {
    const list = await this.o.layers.list();
    let bytes = 0;
    for (const d of list) bytes += await this.sizeOf(d);
    return { layers: list.length, bytes };
  }

  /**
   * Removes unused layers, least recently used first, until the cache fits its budget.
   * Never a layer that an instance record refers to, nor one being fetched. Returns the
   * removed digests.
   */
  evict(): Promise<string[]> {
    this.evicting ??= this.evictNow().finally(() => (this.evicting = undefined));
    return this.evicting;
  }

  private async evictNow(): Promise<string[]> {
    if (this.o.budgetBytes <= 0) return [];
    const list = await this.o.layers.list();
    let total = 0;
    const entries: Array<{ digest: string; bytes: number; usedAt: number }> = [];
    for (const d of list) {
      const bytes = await this.sizeOf(d);
      total += bytes;
      const usedAt = (await stat(this.o.layers.path(d)).catch(() => undefined))?.mtimeMs ?? 0;
      entries.push({ digest: d, bytes, usedAt });
    }
    if (total <= this.o.budgetBytes) return [];
    const removed: string[] = [];
    entries.sort((a, b) => a.usedAt - b.usedAt);
    for (const e of entries) {
      if (total <= this.o.budgetBytes) break;
      // Read in use at the last moment: an instance created meanwhile keeps its layers.
      const inUse = new Set(this.o.inUse());
      if (inUse.has(e.digest) || this.flights.has(e.digest)) continue;
      if (await this.o.layers.remove(e.digest)) {
        total -= e.bytes;
        this.sizes.delete(e.digest);
        removed.push(e.digest);
      }
    }
    // Over budget with every layer in use is normal while instances run: not worth an info line each create.
    this.o.log[removed.length > 0 ? 'info' : 'debug']('layer cache evicted', { removed: removed.length, bytes: total, budget: this.o.budgetBytes });
    return removed;
  }
}

async function duBytes(path: string): Promise<number> {
  const { spawn } = await import('node:child_process');
  return new Promise((resolve) => {
    const child = spawn('du', ['-sb', path], { stdio: ['ignore', 'pipe', 'ignore'] });
    let out = '';
    child.stdout.on('data', (b: Buffer) => (out += b.toString()));
    child.on('close', () => resolve(Number(out.split('\t')[0]) || 0));
    child.on('error', () => resolve(0));
  });
}
