import { execFileSync } from 'node:child_process';
import { chmodSync, chownSync, linkSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { afterAll, describe, expect, it } from 'vitest';
import { TarShift } from './tar-shift.js';
import { shiftOwnership } from './layers.js';

const isRoot = process.getuid?.() === 0;

async function shifted(tar: Buffer, base: number): Promise<{ out: Buffer; shift: TarShift }> {
  const shift = new TarShift(base);
  // Odd chunk sizes: headers and data cross chunk boundaries.
  const chunks: Buffer[] = [];
  for (let i = 0; i < tar.length; i += 777) chunks.push(tar.subarray(i, i + 777));
  const parts: Buffer[] = [];
  for await (const c of Readable.from(chunks).pipe(shift)) parts.push(c as Buffer);
  return { out: Buffer.concat(parts), shift };
}

const listing = (dir: string): string => execFileSync('find', [dir, '-printf', '%P %U %G %m %y\n'], { encoding: 'utf8' }).split('\n').sort().join('\n');

describe.skipIf(!isRoot)('images - tar owner shift while streaming', () => {
  const tmp = mkdtempSync(join(tmpdir(), 'oc-tarshift-'));
  afterAll(() => rmSync(tmp, { recursive: true, force: true }));
  const src = join(tmp, 'src');
  mkdirSync(join(src, 'etc', 'x'.repeat(120)), { recursive: true });
  writeFileSync(join(src, 'etc', 'x'.repeat(120), 'y'.repeat(150)), 'long names\n');
  writeFileSync(join(src, 'etc', 'shadow'), 'secret\n');
  chownSync(join(src, 'etc', 'shadow'), 0, 42);
  writeFileSync(join(src, 'su'), '#!/bin/sh\n');
  chmodSync(join(src, 'su'), 0o4755);
  writeFileSync(join(src, 'home-file'), 'user\n');
  chownSync(join(src, 'home-file'), 1000, 1000);
  linkSync(join(src, 'home-file'), join(src, 'hard'));
  execFileSync('ln', ['-s', '/etc/shadow', join(src, 'alias')]);
  writeFileSync(join(src, 'etc', '.wh.gone'), '');

  for (const format of ['gnu', 'posix']) {
    it(`shift - ${format} tar: same owners and modes as shifting the unpacked files, checksums valid, whiteouts seen`, async () => {
      const tar = execFileSync('tar', ['-C', src, `--format=${format}`, '--numeric-owner', '-cf', '-', '.'], { maxBuffer: 1 << 26 });
      const { out, shift } = await shifted(tar, 100_000);
      expect(out.length).toBe(tar.length);
      expect(shift.needsWalk).toBe(false);
      expect(shift.whiteouts).toBe(true);
      const a = join(tmp, `${format}-stream`);
      const b = join(tmp, `${format}-walk`);
      mkdirSync(a);
      mkdirSync(b);
      execFileSync('tar', ['-x', '-p', '--numeric-owner', '-C', a, '-f', '-'], { input: out });
      execFileSync('tar', ['-x', '-p', '--numeric-owner', '-C', b, '-f', '-'], { input: tar });
      await shiftOwnership(b, 100_000);
      expect(listing(a)).toBe(listing(b));
      expect(listing(a)).toContain('su 100000 100000 4755 f');
      expect(listing(a)).toContain('etc/shadow 100000 100042 644 f');
    });
  }

  it('shift - ids that do not fit are left for a walk', async () => {
    writeFileSync(join(tmp, 'big'), 'x');
    chownSync(join(tmp, 'big'), 2_000_000, 0);
    const tar = execFileSync('tar', ['-C', tmp, '--format=gnu', '--numeric-owner', '-cf', '-', 'big']);
    const { out, shift } = await shifted(tar, 100_000);
    expect(shift.needsWalk).toBe(true);
    expect(execFileSync('tar', ['-tvf', '-', '--numeric-owner'], { input: out, encoding: 'utf8' })).toMatch(/^-\S+ 2000000\/100000 /);
  });
});
