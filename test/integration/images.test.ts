/**
 * Images on the real machine: the tiny image builder, the layer store (digest checks, uid
 * shift), overlay roots shared by several instances, safe injection, propagation into
 * libvirtd's mount namespace, clean removal; and a real boot of the tiny image under
 * libvirt (unprivileged, in a job partition, reached over SSH).
 * The debian:12 image is built once (~40 s) and cached with the local cluster's state;
 * `OARCLOUD_SKIP_DEBIAN_IMAGE=1` skips it on a developer's machine (never in CI).
 */
import { execFileSync } from 'node:child_process';
import { existsSync, lstatSync, readlinkSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync, copyFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FailedPreconditionError, InvalidArgumentError } from '@oarcloud/common';
import { imageCacheDir, integrationRequired, localStateDir, needCommand, needPath, needRoot, prerequisites, waitFor } from '@oarcloud/testkit';
import { DirLayerStore, digestOf, OverlayRootfs } from '../../packages/agent/src/drivers/images/index.js';
import { HostCgroups } from '../../packages/agent/src/drivers/cgroups/index.js';

const REPO = join(import.meta.dirname, '..', '..');
const STATE = localStateDir();
const LIBVIRTD_PID = join(STATE, 'run', 'libvirtd.pid');
const SHARED_INSTANCES = join(STATE, 'instances');
const URI = 'lxc:///system';

const p = prerequisites('images', [
  needRoot,
  needCommand('tar', '--version'),
  needCommand('grep', '-qw', 'overlay', '/proc/filesystems'),
  needPath('/bin/busybox'),
  needPath('/usr/sbin/dropbear'),
  needPath(LIBVIRTD_PID),
  needPath(SHARED_INSTANCES),
]);

function sh(cmd: string, args: string[], timeoutMs = 60_000): string {
  return execFileSync(cmd, args, { encoding: 'utf8', timeout: timeoutMs, stdio: ['ignore', 'pipe', 'pipe'] });
}
function mounted(path: string): boolean {
  return readFileSync('/proc/self/mountinfo', 'utf8').split('\n').some((l) => l.split(' ')[4] === path);
}
function virshWorks(): boolean {
  try {
    execFileSync('virsh', ['-c', URI, 'version'], { stdio: 'ignore', timeout: 10_000 });
    return true;
  } catch {
    return false;
  }
}
/**
 * Whether the boot checks can run: libvirtd answers. When it does not, a developer's run
 * skips them with the reason; under OARCLOUD_REQUIRE_INTEGRATION=1 (CI) that is a failure,
 * as for every other prerequisite (testkit prereq.ts).
 */
function libvirtForBoot(): boolean {
  if (virshWorks()) return true;
  const reason = `images: \`virsh -c ${URI} version\` failed (is the local cluster up? npm run cluster:up)`;
  if (integrationRequired()) throw new Error(`${reason} (OARCLOUD_REQUIRE_INTEGRATION=1: not skipping)`);
  console.warn(`SKIP ${reason}`);
  return false;
}
function ms(t0: number): number {
  return Math.round(performance.now() - t0);
}

describe.skipIf(!p.ok)('images - tiny image, layers and overlays on the real host', () => {
  const tag = `${process.pid}-${Date.now().toString(36)}`;
  const tmp = mkdtempSync(join(tmpdir(), 'oc-images-it-'));
  const cacheDir = imageCacheDir();
  const storeRoot = join(tmp, 'layers');
  // Under the shared instances mount, so mounts reach libvirtd (notes/HOST.md).
  const instancesDir = join(SHARED_INSTANCES, `itest-${tag}`);
  const secretDir = `/etc/host-secret-dir-${tag}`;
  const timings: Record<string, number> = {};
  let store: DirLayerStore;
  let rootfs: OverlayRootfs;
  let tiny: { digest: string; tar: string };
  let hostile: { digest: string; tar: string };
  const A = 'i-a00000000001';
  const B = 'i-b00000000002';

  beforeAll(async () => {
    let t0 = performance.now();
    rmSync(join(tmp, 'tiny-fresh'), { recursive: true, force: true });
    sh(join(REPO, 'tools/images/build-tiny.sh'), [join(tmp, 'tiny-fresh')]);
    timings.tinyBuildMs = ms(t0);
    t0 = performance.now();
    sh(join(REPO, 'tools/images/build-tiny.sh'), [join(tmp, 'tiny-fresh')]);
    timings.tinyCachedMs = ms(t0);
    const manifest = JSON.parse(readFileSync(join(tmp, 'tiny-fresh', 'image.json'), 'utf8')) as { name: string; layers: string[]; size: number };
    expect(manifest.name).toBe('tiny:latest');
    tiny = { digest: manifest.layers[0]!, tar: join(tmp, 'tiny-fresh', 'layer.tar') };
    expect(await digestOf(tiny.tar)).toBe(tiny.digest);
    expect(manifest.size).toBe(statSync(tiny.tar).size);

    // A hostile layer: /root is a symlink out of the instance.
    const h = join(tmp, 'hostile');
    mkdirSync(h);
    execFileSync('ln', ['-s', secretDir, join(h, 'root')]);
    hostile = { tar: join(tmp, 'hostile.tar'), digest: '' };
    sh('tar', ['-C', h, '--sort=name', '--mtime=@0', '--owner=0', '--group=0', '--numeric-owner', '-cf', hostile.tar, '.']);
    hostile.digest = await digestOf(hostile.tar);
    mkdirSync(secretDir, { mode: 0o700 });

    store = new DirLayerStore({ root: storeRoot, idmapBase: 100000 });
    rootfs = new OverlayRootfs({ instancesDir, layers: store, idmapBase: 100000 });
  });

  afterAll(async () => {
    for (const id of [A, B, 'i-c00000000003', 'i-d00000000004', 'i-e00000000005']) {
      try {
        execFileSync('virsh', ['-c', URI, 'destroy', `oc-${id}`], { stdio: 'ignore', timeout: 30_000 });
      } catch {
        // not running
      }
      await rootfs?.remove(id).catch((err: unknown) => console.error('cleanup', id, err));
    }
    rmSync(instancesDir, { recursive: true, force: true });
    rmSync(secretDir, { recursive: true, force: true });
    rmSync(tmp, { recursive: true, force: true });
    console.info('images timings (ms):', JSON.stringify(timings));
  });

  it('images - the tiny image has init, dropbear with its libraries, and no host keys', () => {
    const list = sh('tar', ['-tvf', tiny.tar]);
    expect(list).toMatch(/\.\/sbin\/init -> \/bin\/busybox/);
    expect(list).toMatch(/\.\/usr\/sbin\/dropbear\n/);
    expect(list).toMatch(/\.\/lib64\/ld-linux-x86-64\.so\.2/);
    expect(list).toMatch(/\.\/etc\/oarcloud\/rc/);
    expect(list).toMatch(/drwx------ 0\/0 .* \.\/root\/\.ssh\//);
    expect(list).toMatch(/drwxrwxrwt 0\/0 .* \.\/tmp\//);
    expect(list).not.toMatch(/host_key/);
    expect(timings.tinyCachedMs).toBeLessThan(timings.tinyBuildMs! + 1000);
  });

  it('layers - a wrong digest or a corrupted tar is rejected and nothing is kept', async () => {
    await expect(store.importLayer(`sha256:${'f'.repeat(64)}`, tiny.tar)).rejects.toBeInstanceOf(InvalidArgumentError);
    const bad = join(tmp, 'corrupt.tar');
    copyFileSync(tiny.tar, bad);
    const buf = readFileSync(bad);
    buf[buf.length >> 1] ^= 0xff;
    writeFileSync(bad, buf);
    await expect(store.importLayer(tiny.digest, bad)).rejects.toBeInstanceOf(InvalidArgumentError);
    expect(await store.has(tiny.digest)).toBe(false);
    expect(await store.list()).toEqual([]);
    expect(readdirSync(join(storeRoot, 'tmp'))).toEqual([]);
  });

  it('layers - imports the tiny layer with ownership shifted by the idmap base', async () => {
    const t0 = performance.now();
    expect(await store.importLayer(tiny.digest, tiny.tar)).toEqual({ imported: true });
    timings.tinyImportMs = ms(t0);
    await store.importLayer(hostile.digest, hostile.tar);
    const dir = store.path(tiny.digest);
    expect(lstatSync(join(dir, 'bin', 'busybox')).uid).toBe(100000);
    expect(lstatSync(join(dir, 'root')).uid).toBe(100000);
    expect(lstatSync(join(dir, 'root')).mode & 0o777).toBe(0o700);
    expect(lstatSync(join(dir, 'tmp')).mode & 0o7777).toBe(0o1777);
    expect((await store.usage()).layers).toBe(2);
  });

  it('rootfs - two instances share one layer copy; writes land in their upper dir only', async () => {
    let t0 = performance.now();
    const a = await rootfs.ensure(A, [tiny.digest]);
    timings.overlayEnsureMs = ms(t0);
    const b = await rootfs.ensure(B, [tiny.digest]);
    expect(await rootfs.ensure(A, [tiny.digest])).toEqual(a); // idempotent
    expect(readFileSync('/proc/self/mountinfo', 'utf8').split('\n').filter((l) => l.split(' ')[4] === a.rootDir)).toHaveLength(1);
    await expect(rootfs.ensure(A, [tiny.digest, hostile.digest])).rejects.toBeInstanceOf(FailedPreconditionError);

    const inLayer = statSync(join(store.path(tiny.digest), 'bin', 'busybox')).ino;
    expect(statSync(join(a.rootDir, 'bin', 'busybox')).ino).toBe(inLayer);
    expect(statSync(join(b.rootDir, 'bin', 'busybox')).ino).toBe(inLayer);
    expect(statSync(a.rootDir).uid).toBe(100000);

    writeFileSync(join(a.rootDir, 'etc', 'written-by-a'), 'a\n');
    expect(existsSync(join(rootfs.upperDir(A), 'etc', 'written-by-a'))).toBe(true);
    expect(existsSync(join(store.path(tiny.digest), 'etc', 'written-by-a'))).toBe(false);
    expect(existsSync(join(b.rootDir, 'etc', 'written-by-a'))).toBe(false);
    expect(await rootfs.list()).toEqual([A, B]);

    t0 = performance.now();
    await rootfs.remove(B);
    timings.overlayRemoveMs = ms(t0);
  });

  it('rootfs - inject writes shifted files through the mount, and never outside it', async () => {
    await rootfs.inject(A, [
      { path: '/etc/hostname', content: 'alpha\n', mode: 0o644 },
      { path: '/root/.ssh/authorized_keys', content: 'ssh-ed25519 AAAA test\n', mode: 0o600 },
      { path: '/etc/oarcloud/net', content: 'eth0 10.9.0.2/24 10.9.0.1 1446\n', mode: 0o644 },
      { path: '/home/user/.ssh/authorized_keys', content: 'k\n', mode: 0o600, uid: 1000, gid: 1000 },
    ]);
    const root = join(instancesDir, A, 'rootfs');
    expect(readFileSync(join(root, 'etc', 'hostname'), 'utf8')).toBe('alpha\n');
    const keys = lstatSync(join(root, 'root', '.ssh', 'authorized_keys'));
    expect([keys.uid, keys.gid, keys.mode & 0o7777]).toEqual([100000, 100000, 0o600]);
    const newDir = lstatSync(join(root, 'home', 'user', '.ssh'));
    expect([newDir.uid, newDir.mode & 0o7777]).toEqual([100000, 0o700]);
    expect(lstatSync(join(root, 'home', 'user', '.ssh', 'authorized_keys')).uid).toBe(101000);
    expect(existsSync(join(rootfs.upperDir(A), 'etc', 'hostname'))).toBe(true);

    await expect(rootfs.inject(A, [{ path: '/../../../etc/evil', content: 'x', mode: 0o644 }])).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(rootfs.inject(A, [{ path: 'etc/relative', content: 'x', mode: 0o644 }])).rejects.toBeInstanceOf(InvalidArgumentError);

    // The hostile image: /root -> the host's secret dir.
    const C = 'i-c00000000003';
    await rootfs.ensure(C, [tiny.digest, hostile.digest]);
    expect(lstatSync(join(instancesDir, C, 'rootfs', 'root')).isSymbolicLink()).toBe(true);
    await expect(rootfs.inject(C, [{ path: '/root/.ssh/authorized_keys', content: 'x', mode: 0o600 }])).rejects.toBeInstanceOf(FailedPreconditionError);
    // A symlink as the final component is replaced, not followed.
    await rootfs.inject(C, [{ path: '/root', content: 'not a link\n', mode: 0o644 }]);
    expect(lstatSync(join(instancesDir, C, 'rootfs', 'root')).isFile()).toBe(true);
    expect(readdirSync(secretDir)).toEqual([]);
    await rootfs.remove(C);
  });

  it('rootfs - the mount is visible in libvirtd’s namespace, and its removal too', async () => {
    const pid = readFileSync(LIBVIRTD_PID, 'utf8').trim();
    const root = join(instancesDir, A, 'rootfs');
    expect(sh('nsenter', ['-t', pid, '-m', 'ls', join(root, 'etc')])).toMatch(/hostname/);
    await rootfs.unmount(A);
    await rootfs.unmount(A);
    expect(mounted(root)).toBe(false);
    expect(sh('nsenter', ['-t', pid, '-m', 'ls', '-A', root]).trim()).toBe('');
    // The private layer survives an unmount; a new mount sees it again.
    await rootfs.ensure(A, [tiny.digest]);
    expect(readFileSync(join(root, 'etc', 'hostname'), 'utf8')).toBe('alpha\n');
    await rootfs.remove(A);
    await rootfs.remove(A);
    expect(mounted(root)).toBe(false);
    expect(existsSync(join(instancesDir, A))).toBe(false);
    expect(await rootfs.list()).toEqual([]);
  });

  /** Boots an instance of `layers` under libvirt (unprivileged, in a job partition) and runs `cmd` over SSH. */
  async function bootAndSsh(D: string, layers: string[], hostname: string, cmd: string): Promise<{ out: string; ms: number }> {
    const name = `oc-${D}`;
    const key = join(tmp, `id_${D}`);
    sh('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', key]);
    const cg = await HostCgroups.create();
    const cpu = (await cg.machineCpus()).at(-1)!;
    const jobId = 900000000 + (process.pid % 1000000);
    const partition = await cg.ensureJobPartition('itest', jobId, String(cpu));
    try {
      const { rootDir } = await rootfs.ensure(D, layers);
      await rootfs.inject(D, [
        { path: '/etc/hostname', content: `${hostname}\n`, mode: 0o644 },
        { path: '/root/.ssh/authorized_keys', content: readFileSync(`${key}.pub`), mode: 0o600 },
      ]);
      const xml = join(tmp, `${D}.xml`);
      writeFileSync(
        xml,
        `<domain type='lxc'><name>${name}</name><memory unit='MiB'>128</memory><vcpu cpuset='${cpu}'>1</vcpu>
         <resource><partition>${partition}</partition></resource>
         <os><type>exe</type><init>/sbin/init</init></os><features><privnet/></features>
         <idmap><uid start='0' target='100000' count='65536'/><gid start='0' target='100000' count='65536'/></idmap>
         <devices><filesystem type='mount'><source dir='${rootDir}'/><target dir='/'/></filesystem><console type='pty'/></devices></domain>`,
      );
      const t0 = performance.now();
      sh('virsh', ['-c', URI, 'create', xml]);
      const dirs = await cg.instanceCgroupFiles(partition, name);
      expect(readFileSync(join(dirs.cpuset!, 'cpuset.cpus'), 'utf8').trim()).toBe(String(cpu));
      const tasksFile = join(dirs.cpuset!, cg.layout === 'v1' ? 'tasks' : 'cgroup.procs');
      // A process inside the instance (libvirt_lxc shares the cgroup but not the netns).
      const hostNet = readlinkSync('/proc/self/ns/net');
      const pid = await waitFor(
        () => readFileSync(tasksFile, 'utf8').split('\n').filter(Boolean).find((t) => readlinkSync(`/proc/${t}/ns/net`) !== hostNet),
        { timeoutMs: 10_000, what: 'a process of the instance' },
      );
      const out = await waitFor(
        () => {
          try {
            return sh('nsenter', ['-t', pid, '-n', 'ssh', '-i', key, '-o', 'BatchMode=yes', '-o', 'StrictHostKeyChecking=no', '-o', 'UserKnownHostsFile=/dev/null', '-o', 'ConnectTimeout=3', 'root@127.0.0.1', cmd], 15_000);
          } catch {
            return undefined;
          }
        },
        { timeoutMs: 30_000, intervalMs: 200, what: 'sshd in the instance' },
      );
      return { out, ms: ms(t0) };
    } finally {
      try {
        execFileSync('virsh', ['-c', URI, 'destroy', name], { stdio: 'ignore', timeout: 30_000 });
      } catch {
        // not running
      }
      await cg.sweepEmptyLxcLeftovers(name);
      await waitFor(async () => (await cg.removeJobPartition('itest', jobId).then(() => true).catch(() => false)) || undefined, { timeoutMs: 10_000, what: 'partition removal' });
    }
  }

  it('images - the tiny image boots unprivileged under libvirt in a job partition and answers SSH', async (ctx) => {
    if (!libvirtForBoot()) ctx.skip();
    const D = 'i-d00000000004';
    try {
      const { out, ms: bootMs } = await bootAndSsh(D, [tiny.digest], 'tiny-test', 'hostname; id -u; ls /etc/dropbear');
      timings.bootToSshMs = bootMs;
      expect(out).toMatch(/^tiny-test\n0\n/);
      expect(out).toMatch(/dropbear_ed25519_host_key/);
      // Host keys were made in the instance's own layer, never in the image.
      expect(existsSync(join(store.path(tiny.digest), 'etc', 'dropbear', 'dropbear_ed25519_host_key'))).toBe(false);
      expect(existsSync(join(rootfs.upperDir(D), 'etc', 'dropbear', 'dropbear_ed25519_host_key'))).toBe(true);
    } finally {
      await rootfs.remove(D);
    }
  });

  it.skipIf(process.env.OARCLOUD_SKIP_DEBIAN_IMAGE === '1' && !integrationRequired())('images - the debian:12 image builds, imports and mounts', async () => {
    const out = join(cacheDir, 'debian');
    let t0 = performance.now();
    sh(join(REPO, 'tools/images/build-debian.sh'), [out], 600_000);
    timings.debianBuildMs = ms(t0);
    const manifest = JSON.parse(readFileSync(join(out, 'image.json'), 'utf8')) as { name: string; layers: string[] };
    expect(manifest.name).toBe('debian:12');
    t0 = performance.now();
    await store.importLayer(manifest.layers[0]!, join(out, 'layer.tar'));
    timings.debianImportMs = ms(t0);
    const { rootDir } = await rootfs.ensure(A, manifest.layers);
    expect(existsSync(join(rootDir, 'usr', 'sbin', 'sshd'))).toBe(true);
    expect(readdirSync(join(rootDir, 'etc', 'ssh')).filter((f) => f.startsWith('ssh_host_'))).toEqual([]);
    expect(lstatSync(join(rootDir, 'sbin', 'oarcloud-init')).uid).toBe(100000);
    await rootfs.unmount(A);
    if (libvirtForBoot()) {
      const { out, ms: bootMs } = await bootAndSsh('i-e00000000005', manifest.layers, 'deb-test', 'hostname; id -u; ls /etc/ssh');
      timings.debianBootToSshMs = bootMs;
      expect(out).toMatch(/^deb-test\n0\n/);
      expect(out).toMatch(/ssh_host_ed25519_key/);
      await rootfs.remove('i-e00000000005');
    }
    await rootfs.remove(A);
    await store.remove(manifest.layers[0]!);
  }, 600_000);
});
