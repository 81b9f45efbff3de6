import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { gunzipSync } from 'node:zlib';
import { createHash } from 'node:crypto';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { AlreadyExistsError, FailedPreconditionError, InvalidArgumentError, NotFoundError, nullLogger, PermissionDeniedError } from '@oarcloud/common';
import type { Caller, InstanceRecord } from '../domain.js';
import { SqliteStore } from '../store/sqlite.js';
import { LayerBlobs } from './blobs.js';
import { ImageStore } from './catalog.js';
import { parseImageName } from './names.js';
import { Volumes } from './volumes.js';

const alice: Caller = { name: 'alice', role: 'user' };
const bob: Caller = { name: 'bob', role: 'user' };
const root: Caller = { name: 'root', role: 'admin' };

/** A small real tar (GNU tar), as an image builder makes one. */
function tarOf(dir: string, files: Record<string, string>): Buffer {
  const src = mkdtempSync(join(dir, 'src-'));
  for (const [p, c] of Object.entries(files)) {
    mkdirSync(join(src, p, '..'), { recursive: true });
    writeFileSync(join(src, p), c);
  }
  return execFileSync('tar', ['-C', src, '--sort=name', '--mtime=@0', '--numeric-owner', '--owner=0', '--group=0', '-cf', '-', '.']);
}

const sha = (b: Buffer): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;

describe('images - controller image store and volumes', () => {
  let tmp: string;
  let store: SqliteStore;
  let images: ImageStore;
  let volumes: Volumes;
  beforeEach(() => {
    tmp = mkdtempSync(join(tmpdir(), 'oc-images-'));
    store = new SqliteStore(':memory:');
    store.addUser('root', 'admin', 'h-root', 1);
    images = new ImageStore({ store, blobs: new LayerBlobs(join(tmp, 'layers')), log: nullLogger, now: () => 1000 });
    volumes = new Volumes({ store, dir: join(tmp, 'volumes'), log: nullLogger, now: () => 1000 });
  });
  afterEach(() => {
    store.close();
    rmSync(tmp, { recursive: true, force: true });
  });

  it('names - name:tag is canonical, bad names are INVALID_ARGUMENT', () => {
    expect(parseImageName('tiny')).toBe('tiny:latest');
    expect(parseImageName('debian:12')).toBe('debian:12');
    for (const bad of ['../x', 'a:b:c', '', 'A:1', 'x/../y', 'a b', 'x:..', '.x:1']) expect(() => parseImageName(bad), bad).toThrow(InvalidArgumentError);
  });

  it('images - import stores a verified gzip blob; visibility: public + own private, others NOT_FOUND, admins see all', async () => {
    const tar = tarOf(tmp, { 'etc/hostname': 'x\n' });
    const pub = await images.importImage(root, { name: 'base:1', public: true }, Readable.from([tar]));
    expect(pub.layers).toEqual([sha(tar)]);
    expect(pub.sizeBytes).toBe(tar.length);
    const blob = readFileSync(join(tmp, 'layers', `${sha(tar).slice(7)}.tar.gz`));
    expect(gunzipSync(blob).equals(tar)).toBe(true);
    await images.importImage(alice, { name: 'mine', public: false }, Readable.from([tarOf(tmp, { a: '1' })]));
    expect(images.list(alice).map((i) => i.name)).toEqual(['base:1', 'mine:latest']);
    expect(images.list(bob).map((i) => i.name)).toEqual(['base:1']);
    expect(images.list(root).map((i) => i.name)).toEqual(['base:1', 'mine:latest']);
    expect(() => images.get(bob, 'mine')).toThrow(NotFoundError);
    expect(images.resolve('mine', 'bob')).toBeUndefined();
    expect(images.resolve('mine', 'alice')?.name).toBe('mine:latest');
    await expect(images.importImage(root, { name: 'base:1', public: true }, Readable.from([tar]))).rejects.toThrow(AlreadyExistsError);
    await expect(images.importImage(root, { name: 'junk:1', public: true }, Readable.from([Buffer.from('not a tar')]))).rejects.toThrow(InvalidArgumentError);
    expect(store.getImage('junk:1')).toBeUndefined();
    const { total, stream } = await images.open(sha(tar), 0);
    const chunks: Buffer[] = [];
    for await (const c of stream) chunks.push(c as Buffer);
    expect(Buffer.concat(chunks).length).toBe(total);
    await expect(images.open(`sha256:${'0'.repeat(64)}`, 0)).rejects.toThrow(NotFoundError);
  });

  it('images - save stacks a private layer on the parent; delete refuses images in use or parents; layers are collected', async () => {
    const base = await images.importImage(root, { name: 'base:1', public: true }, Readable.from([tarOf(tmp, { 'etc/os': 'b' })]));
    store.putJob({ id: 7, owner: 'alice', state: 'running', oarState: 'Running', hosts: [], specId: '', walltimeS: 60, startedAtMs: 0, endedAtMs: 0, lastLogId: 0, specApplied: true, error: '', releasedAtMs: 0 });
    const inst: InstanceRecord = { id: 'i-000000000001', jobId: 7, owner: 'alice', name: 'a-1', node: 'n1', vcpus: 1, memoryMib: 64, image: 'base:1', sshKeys: [], desired: 'running', reported: 'running', reason: '', createdAtMs: 1, updatedAtMs: 1 };
    store.addInstances([inst]);
    const layer = tarOf(tmp, { 'root/hello': 'world' });
    const saved = await images.save(alice, inst, 'web:v1', () => Readable.from([layer]));
    expect(saved).toMatchObject({ name: 'web:v1', owner: 'alice', public: false, parent: 'base:1', layers: [...base.layers, sha(layer)] });
    await expect(images.save(alice, inst, 'web:v1', () => Readable.from([layer]))).rejects.toThrow(AlreadyExistsError);
    await expect(images.save(alice, inst, 'a:b:c', () => Readable.from([layer]))).rejects.toThrow(InvalidArgumentError);
    await expect(images.delete(root, 'base:1')).rejects.toThrow(FailedPreconditionError);
    await expect(images.delete(bob, 'web:v1')).rejects.toThrow(NotFoundError);
    await expect(images.delete(bob, 'base:1')).rejects.toThrow(PermissionDeniedError);
    store.setDesired(inst.id, 'deleted', 2);
    store.setReported(inst.id, 'deleted', '', 2);
    await expect(images.delete(root, 'base:1')).rejects.toThrow(/parent of web:v1/);
    await images.delete(alice, 'web:v1');
    expect(store.getLayer(sha(layer))).toBeUndefined();
    expect(store.getLayer(base.layers[0]!)).toBeDefined();
    await images.delete(root, 'base:1');
    expect(store.listImages()).toEqual([]);
  });

  it('volumes - owner only (others NOT_FOUND), names checked, delete refused while mounted', async () => {
    const v = await volumes.create(alice, 'data');
    await expect(volumes.create(alice, 'data')).rejects.toThrow(AlreadyExistsError);
    await expect(volumes.create(alice, '../x')).rejects.toThrow(InvalidArgumentError);
    expect(() => volumes.get(bob, v.id)).toThrow(NotFoundError);
    expect(() => volumes.resolveMounts('bob', [{ volumeId: 'data', path: '/data', readOnly: false }])).toThrow(NotFoundError);
    expect(() => volumes.resolveMounts('alice', [{ volumeId: 'data', path: '/../etc', readOnly: false }])).toThrow(InvalidArgumentError);
    expect(volumes.resolveMounts('alice', [{ volumeId: 'data', path: '/data/', readOnly: false }])).toEqual([{ volumeId: v.id, path: '/data', readOnly: false }]);
    store.putJob({ id: 8, owner: 'alice', state: 'running', oarState: 'Running', hosts: [], specId: '', walltimeS: 60, startedAtMs: 0, endedAtMs: 0, lastLogId: 0, specApplied: true, error: '', releasedAtMs: 0 });
    store.addInstances([{ id: 'i-000000000002', jobId: 8, owner: 'alice', name: 'a-1', node: 'n1', vcpus: 1, memoryMib: 64, image: 'x', sshKeys: [], volumes: [{ volumeId: v.id, path: '/data', readOnly: false }], desired: 'running', reported: 'running', reason: '', createdAtMs: 1, updatedAtMs: 1 }]);
    await expect(volumes.delete(alice, 'data')).rejects.toThrow(FailedPreconditionError);
    store.deleteJobInstances(8, 2);
    await volumes.delete(alice, 'data');
    expect(volumes.list(alice, false)).toEqual([]);
  });
});
