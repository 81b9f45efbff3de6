import { execFileSync } from 'node:child_process';
import { chmodSync, linkSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync, createReadStream, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FailedPreconditionError, InvalidArgumentError } from '@oarcloud/common';
import { DirLayerStore, digestOf, FakeLayerStore, type LayerStore } from './layers.js';

const isRoot = process.getuid?.() === 0;
let tmp: string;
let tarPath: string;
let digest: string;

/** A small layer: a file, a setuid binary, a hard link, a symlink. */
function makeTar(dir: string, name: string, extra?: (root: string) => void): string {
  const root = join(dir, `${name}-src`);
  mkdirSync(join(root, 'etc'), { recursive: true });
  mkdirSync(join(root, 'bin'), { recursive: true });
  writeFileSync(join(root, 'etc', 'hostname'), 'layer\n');
  writeFileSync(join(root, 'bin', 'su'), '#!/bin/sh\n');
  chmodSync(join(root, 'bin', 'su'), 0o4755);
  linkSync(join(root, 'etc', 'hostname'), join(root, 'etc', 'hostname.link'));
  execFileSync('ln', ['-s', '/etc/hostname', join(root, 'etc', 'alias')]);
  extra?.(root);
  const out = join(dir, `${name}.tar`);
  execFileSync('tar', ['-C', root, '--sort=name', '--mtime=@0', '--owner=0', '--group=0', '--numeric-owner', '-cf', out, '.']);
  return out;
}

beforeAll(async () => {
  tmp = mkdtempSync(join(tmpdir(), 'oc-layers-'));
  tarPath = makeTar(tmp, 'base');
  digest = await digestOf(tarPath);
});
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

function contract(name: string, make: () => LayerStore): void {
  describe(`layer store contract - ${name}`, () => {
    it('layers - imports a tar by path, idempotently', async () => {
      const s = make();
      expect(await s.has(digest)).toBe(false);
      expect(await s.importLayer(digest, tarPath)).toEqual({ imported: true });
      expect(await s.has(digest)).toBe(true);
      expect(await s.importLayer(digest, tarPath)).toEqual({ imported: false });
      expect(await s.list()).toEqual([digest]);
      expect((await s.usage()).layers).toBe(1);
    });
    it('layers - imports from a stream', async () => {
      const s = make();
      await s.importLayer(digest, createReadStream(tarPath));
      expect(await s.has(digest)).toBe(true);
    });
    it('layers - a digest mismatch is rejected and nothing is kept', async () => {
      const s = make();
      const wrong = `sha256:${'0'.repeat(64)}`;
      await expect(s.importLayer(wrong, tarPath)).rejects.toBeInstanceOf(InvalidArgumentError);
      expect(await s.has(wrong)).toBe(false);
      expect(await s.list()).toEqual([]);
    });
    it('layers - malformed digests are invalid arguments', async () => {
      const s = make();
      await expect(s.importLayer('sha256:xyz', tarPath)).rejects.toBeInstanceOf(InvalidArgumentError);
      expect(() => s.path('../../etc')).toThrow(InvalidArgumentError);
      await expect(s.remove('md5:00')).rejects.toBeInstanceOf(InvalidArgumentError);
    });
    it('layers - remove is idempotent', async () => {
      const s = make();
      await s.importLayer(digest, tarPath);
      expect(await s.remove(digest)).toBe(true);
      expect(await s.remove(digest)).toBe(false);
      expect(await s.has(digest)).toBe(false);
    });
  });
}

let n = 0;
contract('fake', () => new FakeLayerStore());
contract('dir (no shift)', () => new DirLayerStore({ root: join(tmp, `store-${n++}`), idmapBase: 0 }));

describe('DirLayerStore', () => {
  it('layers - unpacks into <root>/sha256/<hex> and leaves no temp dir behind on mismatch', async () => {
    const root = join(tmp, 'store-dir');
    const s = new DirLayerStore({ root, idmapBase: 0 });
    await expect(s.importLayer(`sha256:${'1'.repeat(64)}`, tarPath)).rejects.toBeInstanceOf(InvalidArgumentError);
    expect(readdirSync(join(root, 'tmp'))).toEqual([]);
    await s.importLayer(digest, tarPath);
    expect(s.path(digest)).toBe(join(root, 'sha256', digest.slice(7)));
    expect(readFileSync(join(s.path(digest), 'etc', 'hostname'), 'utf8')).toBe('layer\n');
    expect(lstatSync(join(s.path(digest), 'etc', 'alias')).isSymbolicLink()).toBe(true);
  });

  it('layers - a file that is not a tar is an invalid argument', async () => {
    const bad = join(tmp, 'bad.tar');
    writeFileSync(bad, 'not a tar at all '.repeat(100));
    const s = new DirLayerStore({ root: join(tmp, 'store-bad'), idmapBase: 0 });
    await expect(s.importLayer(await digestOf(bad), bad)).rejects.toBeInstanceOf(InvalidArgumentError);
    expect(await s.list()).toEqual([]);
  });

  it('layers - sweep removes leftovers of a crash', async () => {
    const root = join(tmp, 'store-sweep');
    const s = new DirLayerStore({ root, idmapBase: 0 });
    await s.list();
    mkdirSync(join(root, 'tmp', `${'a'.repeat(64)}.dead`, 'etc'), { recursive: true });
    expect(await s.sweep()).toEqual([`${'a'.repeat(64)}.dead`]);
    expect(readdirSync(join(root, 'tmp'))).toEqual([]);
  });

  it('layers - refuses a store made with another idmap base', async () => {
    const root = join(tmp, 'store-base');
    await new DirLayerStore({ root, idmapBase: 0 }).list();
    await expect(new DirLayerStore({ root, idmapBase: 100000 }).list()).rejects.toBeInstanceOf(FailedPreconditionError);
  });

  it.skipIf(!isRoot)('layers - shifts ownership by the idmap base, once per inode, keeping setuid', async () => {
    const s = new DirLayerStore({ root: join(tmp, 'store-shift'), idmapBase: 100000 });
    await s.importLayer(digest, tarPath);
    const p = s.path(digest);
    expect(lstatSync(p).uid).toBe(100000);
    expect(lstatSync(join(p, 'etc', 'hostname')).uid).toBe(100000);
    expect(lstatSync(join(p, 'etc', 'hostname.link')).gid).toBe(100000);
    expect(lstatSync(join(p, 'etc', 'alias')).uid).toBe(100000);
    const su = lstatSync(join(p, 'bin', 'su'));
    expect(su.uid).toBe(100000);
    expect(su.mode & 0o7777).toBe(0o4755);
  });

  it.skipIf(!isRoot)('layers - OCI whiteouts become overlay whiteouts', async () => {
    const t = makeTar(tmp, 'wh', (root) => writeFileSync(join(root, 'etc', '.wh.motd'), ''));
    const s = new DirLayerStore({ root: join(tmp, 'store-wh'), idmapBase: 0 });
    const d = await digestOf(t);
    await s.importLayer(d, t);
    const st = lstatSync(join(s.path(d), 'etc', 'motd'));
    expect(st.isCharacterDevice()).toBe(true);
    expect(st.rdev).toBe(0);
    expect(existsSync(join(s.path(d), 'etc', '.wh.motd'))).toBe(false);
  });
});

describe('FakeLayerStore', () => {
  it('layers - records calls and takes injected errors', async () => {
    const s = new FakeLayerStore();
    s.failNext('importLayer', new Error('boom'));
    await expect(s.importLayer(digest, tarPath)).rejects.toThrow('boom');
    await s.importLayer(digest, tarPath);
    expect(s.callsOf('importLayer')).toHaveLength(2);
  });
});
