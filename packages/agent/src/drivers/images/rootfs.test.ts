import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { FailedPreconditionError, InvalidArgumentError, NotFoundError } from '@oarcloud/common';
import { FakeLayerStore } from './layers.js';
import { parseMountinfo } from './mountinfo.js';
import { FakeRootfs, injectPathParts, OverlayRootfs } from './rootfs.js';

const L1 = `sha256:${'1'.repeat(64)}`;
const L2 = `sha256:${'2'.repeat(64)}`;
const ID = 'i-0123456789ab';
const tmp = mkdtempSync(join(tmpdir(), 'oc-rootfs-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

describe('rootfs - paths', () => {
  it('rootfs - injected paths must be absolute and free of . and ..', () => {
    expect(injectPathParts('/root/.ssh/authorized_keys')).toEqual(['root', '.ssh', 'authorized_keys']);
    for (const bad of ['etc/hostname', '/../etc/passwd', '/etc/../../x', '/', '/a/./b', '/a\0b']) {
      expect(() => injectPathParts(bad), bad).toThrow(InvalidArgumentError);
    }
  });
  it('rootfs - mountinfo parsing decodes escapes and overlay options', () => {
    const [m] = parseMountinfo('77 42 0:50 / /var/lib/x\\040y/i-0123456789ab/rootfs rw,relatime shared:1 - overlay oarcloud rw,lowerdir=/l/b:/l/a,upperdir=/u,workdir=/w\n');
    expect(m!.mountPoint).toBe('/var/lib/x y/i-0123456789ab/rootfs');
    expect(m!.fsType).toBe('overlay');
    expect(m!.superOptions).toContain('lowerdir=/l/b:/l/a');
  });
});

describe('OverlayRootfs - without mounting', () => {
  const layers = new FakeLayerStore();
  const dir = join(tmp, 'instances');
  const mountinfo = join(tmp, 'mountinfo');
  writeFileSync(mountinfo, '');
  const r = new OverlayRootfs({ instancesDir: dir, layers, idmapBase: 0, mountinfoPath: mountinfo });

  it('rootfs - list only reports folders named like instance ids', async () => {
    expect(await r.list()).toEqual([]);
    mkdirSync(join(dir, ID), { recursive: true });
    mkdirSync(join(dir, 'node-1'), { recursive: true });
    mkdirSync(join(dir, 'i-XYZ'), { recursive: true });
    writeFileSync(join(dir, 'i-aaaaaaaaaaaa'), '');
    expect(await r.list()).toEqual([ID]);
  });
  it('rootfs - a missing layer is not found, and nothing is created', async () => {
    await expect(r.ensure('i-bbbbbbbbbbbb', [L1])).rejects.toBeInstanceOf(NotFoundError);
    expect(await r.list()).toEqual([ID]);
  });
  it('rootfs - bad ids and digests are invalid arguments', async () => {
    await expect(r.ensure('../etc', [L1])).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(r.ensure(ID, ['sha256:zz'])).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(r.ensure(ID, [])).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(r.remove('i-../../x')).rejects.toBeInstanceOf(InvalidArgumentError);
  });
  it('rootfs - inject needs a mounted root', async () => {
    await expect(r.inject(ID, [{ path: '/etc/hostname', content: 'x', mode: 0o644 }])).rejects.toBeInstanceOf(FailedPreconditionError);
  });
  it('rootfs - unmount of an unmounted instance is a no-op; remove deletes the folder', async () => {
    await r.unmount(ID);
    await r.remove(ID);
    await r.remove(ID);
    expect(await r.list()).toEqual([]);
  });
});

describe('FakeRootfs', () => {
  it('rootfs - ensure is idempotent and refuses other layers while mounted', async () => {
    const r = new FakeRootfs();
    const a = await r.ensure(ID, [L1, L2]);
    expect(await r.ensure(ID, [L1, L2])).toEqual(a);
    await expect(r.ensure(ID, [L2])).rejects.toBeInstanceOf(FailedPreconditionError);
    await r.unmount(ID);
    expect(await r.isMounted(ID)).toBe(false);
    expect(await r.list()).toEqual([ID]);
    await r.remove(ID);
    expect(await r.list()).toEqual([]);
  });
  it('rootfs - inject refuses symlinked components and traversal', async () => {
    const r = new FakeRootfs();
    await r.ensure(ID, [L1]);
    r.addSymlink(ID, '/root');
    await expect(r.inject(ID, [{ path: '/root/.ssh/authorized_keys', content: 'k', mode: 0o600 }])).rejects.toBeInstanceOf(FailedPreconditionError);
    await expect(r.inject(ID, [{ path: '/../x', content: 'k', mode: 0o600 }])).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(r.inject(ID, [{ path: '/etc/x', content: 'k', mode: 0o600, uid: 70000 }])).rejects.toBeInstanceOf(InvalidArgumentError);
    await r.inject(ID, [{ path: '/etc/hostname', content: 'h\n', mode: 0o644 }]);
    expect(r.instances.get(ID)!.files.get('/etc/hostname')!.content.toString()).toBe('h\n');
  });
  it('rootfs - checks layers with the store and takes injected errors', async () => {
    const layers = new FakeLayerStore();
    const r = new FakeRootfs('/fake', layers);
    await expect(r.ensure(ID, [L1])).rejects.toBeInstanceOf(NotFoundError);
    layers.add(L1);
    r.failNext('ensure', new Error('boom'));
    await expect(r.ensure(ID, [L1])).rejects.toThrow('boom');
    await r.ensure(ID, [L1]);
    expect(r.callsOf('ensure')).toHaveLength(3);
  });
});
