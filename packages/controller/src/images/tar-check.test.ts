import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { linkSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { InvalidArgumentError } from '@oarcloud/common';
import { TarCheck } from './tar-check.js';

/** Streams `data` through a TarCheck in chunks of `chunk` bytes; resolves to the bytes passed. */
async function check(data: Buffer, chunk = 7919): Promise<number> {
  let passed = 0;
  const parts: Buffer[] = [];
  for (let o = 0; o < data.length; o += chunk) parts.push(data.subarray(o, o + chunk));
  await pipeline(
    Readable.from(parts),
    new TarCheck(),
    new Writable({
      write(b: Buffer, _e, cb) {
        passed += b.length;
        cb();
      },
    }),
  );
  return passed;
}

describe('images - tar check of imported layers', () => {
  let dir: string;
  let src: string;
  const tar = (...args: string[]): Buffer => execFileSync('tar', ['-C', src, '--numeric-owner', ...args, '-cf', '-', '.'], { maxBuffer: 64 * 1024 * 1024 });

  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'oc-tarcheck-'));
    src = join(dir, 'src');
    mkdirSync(join(src, 'etc', 'a'.repeat(120), 'b'.repeat(120)), { recursive: true });
    writeFileSync(join(src, 'etc', 'hostname'), 'x\n');
    writeFileSync(join(src, 'etc', 'a'.repeat(120), 'b'.repeat(120), 'long-named-file'), randomBytes(3000));
    writeFileSync(join(src, 'big'), randomBytes(300_000));
    linkSync(join(src, 'big'), join(src, 'big-link'));
    symlinkSync('etc/hostname', join(src, 'sym'));
    // A sparse file: GNU tar -S stores only its data, with sparse headers.
    execFileSync('truncate', ['-s', '50M', join(src, 'sparse')]);
    execFileSync('dd', ['if=/dev/urandom', `of=${join(src, 'sparse')}`, 'bs=4096', 'count=1', 'seek=100', 'conv=notrunc'], { stdio: 'ignore' });
    for (let i = 0; i < 30; i++) execFileSync('dd', ['if=/dev/urandom', `of=${join(src, 'sparse')}`, 'bs=4096', 'count=1', `seek=${200 + i * 300}`, 'conv=notrunc'], { stdio: 'ignore' });
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('tar check - real archives pass whole, byte for byte: GNU (long names, sparse), pax, ustar, v7, concatenated', async () => {
    for (const args of [['--format=gnu'], ['--format=gnu', '-S'], ['--format=pax'], ['--format=pax', '-S'], ['--format=posix', '--xattrs']]) {
      const t = tar(...args);
      expect(await check(t), args.join(' ')).toBe(t.length);
    }
    // ustar and v7 cannot hold the 240-character folder name: without it.
    const short = join(dir, 'short');
    mkdirSync(short, { recursive: true });
    writeFileSync(join(short, 'f'), randomBytes(1000));
    for (const f of ['ustar', 'v7']) {
      const t = execFileSync('tar', ['-C', short, `--format=${f}`, '-cf', '-', '.']);
      expect(await check(t, 512), f).toBe(t.length);
    }
    const both = Buffer.concat([tar('--format=gnu'), tar('--format=pax')]);
    expect(await check(both, 100_000)).toBe(both.length);
  });

  it('tar check - what is not a whole tar is refused: random bytes, text, zeros only, cut inside a member or a header', async () => {
    const t = tar('--format=gnu');
    const cases: Array<[string, Buffer, RegExp]> = [
      ['random', randomBytes(8192), /^not a tar archive: bad header at byte 0$/],
      ['text', Buffer.from('these are not the droids\n'.repeat(100)), /^not a tar archive: bad header at byte 0$/],
      ['short text', Buffer.from('hello\n'), /^not a tar archive: it ends in the middle of a header \(truncated at byte 6\)$/],
      ['zeros', Buffer.alloc(10240), /^not a tar archive: no member in it$/],
      ['cut in a member', t.subarray(0, 512 * 200), /^not a tar archive: it ends in the middle of member "[^"]+" \(truncated at byte 102400\)$/],
      ['cut in a header', t.subarray(0, 512 * 200 + 100), /^not a tar archive: it ends in the middle of /],
      ['garbage after the end', Buffer.concat([t, randomBytes(1024)]), /^not a tar archive: bad header at byte \d+$/],
    ];
    for (const [what, data, message] of cases) {
      const err = await check(data).then(() => undefined, (e: Error) => e);
      expect(err, what).toBeInstanceOf(InvalidArgumentError);
      expect(err!.message, what).toMatch(message);
    }
  });
});
