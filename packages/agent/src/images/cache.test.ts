import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { gzipSync } from 'node:zlib';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { NotFoundError, nullLogger, UnavailableError } from '@oarcloud/common';
import { DirLayerStore } from '../drivers/images/layers.js';
import { ImageCache, type LayerSource } from './cache.js';

function tarOf(dir: string, files: Record<string, string>): Buffer {
  const src = mkdtempSync(join(dir, 'src-'));
  for (const [p, c] of Object.entries(files)) {
    mkdirSync(join(src, p, '..'), { recursive: true });
    writeFileSync(join(src, p), c);
  }
  return execFileSync('tar', ['-C', src, '--sort=name', '--mtime=@0', '--numeric-owner', '--owner=0', '--group=0', '-cf', '-', '.']);
}
const sha = (b: Buffer): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;

/** A controller that serves gzip blobs, counts fetches, and can corrupt or cut the next ones. */
class FakeSource implements LayerSource {
  fetches = new Map<string, number>();
  corruptNext = 0;
  truncateNext = 0;
  constructor(private readonly blobs: Map<string, Buffer>) {}
  fetch(digest: string): { stream: Readable; total(): number } {
    this.fetches.set(digest, (this.fetches.get(digest) ?? 0) + 1);
    const blob = this.blobs.get(digest);
    if (!blob) {
      const s = new Readable({ read() {} });
      setImmediate(() => s.destroy(new NotFoundError(`no layer ${digest}`)));
      return { stream: s, total: () => -1 };
    }
    let data = blob;
    if (this.corruptNext > 0) {
      this.corruptNext--;
      data = gzipSync(Buffer.concat([Buffer.from('garbage!'), blob]));
    } else if (this.truncateNext > 0) {
      this.truncateNext--;
      data = blob.subarray(0, Math.floor(blob.length / 2));
    }
    // Slow enough that concurrent callers overlap.
    const chunks = [data.subarray(0, 10), data.subarray(10)];
    return { stream: Readable.from((async function* () { for (const c of chunks) { await new Promise((r) => setTimeout(r, 20)); yield c; } })()), total: () => blob.length };
  }
}

describe('images - agent image cache (fetch, verify, single flight, eviction)', () => {
  let tmp: string;
  let layers: DirLayerStore;
  let a: Buffer;
  let b: Buffer;
  let source: FakeSource;
  const inUse = new Set<string>();
  const cache = (budgetBytes = 0): ImageCache => new ImageCache({ layers, source, inUse: () => inUse, budgetBytes, log: nullLogger });
  beforeEach(() => {
    tmp = mkdtempSync(join(tmpdir(), 'oc-cache-'));
    layers = new DirLayerStore({ root: join(tmp, 'store'), idmapBase: 0 });
    a = tarOf(tmp, { 'etc/a': 'a'.repeat(5000) });
    b = tarOf(tmp, { 'etc/b': 'b'.repeat(9000) });
    source = new FakeSource(new Map([[sha(a), gzipSync(a)], [sha(b), gzipSync(b)]]));
    inUse.clear();
  });
  afterEach(() => rmSync(tmp, { recursive: true, force: true }));

  it('fetch - missing layers come from the controller once per node, however many ask at once', async () => {
    const c = cache();
    const reports = await Promise.all(Array.from({ length: 8 }, () => c.ensure([sha(a), sha(b)])));
    expect(source.fetches.get(sha(a))).toBe(1);
    expect(source.fetches.get(sha(b))).toBe(1);
    expect(await layers.list()).toEqual([sha(a), sha(b)].sort());
    expect(reports.some((r) => r.fetched.length === 2)).toBe(true);
    const again = await c.ensure([sha(a)]);
    expect(again).toMatchObject({ fetched: [], present: [sha(a)] });
    expect(source.fetches.get(sha(a))).toBe(1);
  });

  it('fetch - a corrupt or truncated layer is rejected and fetched again; never half present', async () => {
    const c = cache();
    source.corruptNext = 1;
    source.truncateNext = 1;
    await c.ensure([sha(a)]);
    expect(source.fetches.get(sha(a))).toBe(3);
    expect(await layers.has(sha(a))).toBe(true);
    source.corruptNext = 5;
    await expect(c.ensure([sha(b)])).rejects.toThrow(UnavailableError);
    expect(await layers.has(sha(b))).toBe(false);
    expect(await layers.sweep()).toEqual([]);
  });

  it('fetch - a layer the controller does not know is NOT_FOUND, not retried', async () => {
    const unknown = `sha256:${'1'.repeat(64)}`;
    await expect(cache().ensure([unknown])).rejects.toThrow(NotFoundError);
    expect(source.fetches.get(unknown)).toBe(1);
  });

  it('eviction - beyond the budget, unused layers go (least recently used first), used ones never', async () => {
    const c = cache(1);
    await c.ensure([sha(a)]);
    inUse.add(sha(a));
    await c.ensure([sha(b)]);
    const removed = await c.evict();
    expect(removed).toEqual([sha(b)]);
    expect(await layers.list()).toEqual([sha(a)]);
    inUse.clear();
    expect(await c.evict()).toEqual([sha(a)]);
  });

  it('eviction - an ensure that fetches nothing still evicts what no instance uses any more', async () => {
    const c = cache(1);
    inUse.add(sha(a));
    inUse.add(sha(b));
    await c.ensure([sha(a), sha(b)]);
    await c.evict();
    expect(await layers.list()).toEqual([sha(a), sha(b)].sort());
    inUse.delete(sha(a));
    const report = await c.ensure([sha(b)]);
    expect(report.fetched).toEqual([]);
    // The pass ensure started on its own (no evict() here: that would start one itself).
    for (let i = 0; i < 100 && (await layers.list()).length > 1; i++) await new Promise((r) => setTimeout(r, 20));
    expect(await layers.list()).toEqual([sha(b)]);
  });

  it('fetch - bytes that are not gzip are a corrupt layer: retried, then UNAVAILABLE naming the layer', async () => {
    const bad: LayerSource = { fetch: () => ({ stream: Readable.from([Buffer.from('this is not gzip at all')]), total: () => 23 }) };
    const c = new ImageCache({ layers, source: bad, inUse: () => [], budgetBytes: 0, log: nullLogger, attempts: 2 });
    const err = await c.ensure([sha(a)]).then(() => undefined, (e: Error) => e);
    expect(err).toBeInstanceOf(UnavailableError);
    expect(err!.message).toMatch(new RegExp(`^layer ${sha(a)} could not be fetched intact after 2 attempts: layer ${sha(a)} arrived corrupt \\(incorrect header check\\)$`));
    expect(await layers.list()).toEqual([]);
    expect(await layers.sweep()).toEqual([]);
  });
});
