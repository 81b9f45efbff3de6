/**
 * Instance root filesystems: an overlay of the image's layers (read-only, shared) under a
 * private writable layer.
 *
 * On disk (`OverlayRootfs`): `<instancesDir>/<instanceId>/{upper,work,rootfs}`; `rootfs` is
 * the overlay mount point, given to libvirt as the container's root. The instances folder
 * must sit under a shared mount so the overlay, mounted in the agent's mount namespace,
 * also appears in libvirtd's (notes/HOST.md).
 *
 * The agent only ever touches folders whose name is an instance id (`i-<12 hex>`).
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { constants } from 'node:fs';
import { chown, lstat, mkdir, open, readdir, rename, rm, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import {
  FailedPreconditionError,
  InternalError,
  InvalidArgumentError,
  NotFoundError,
  nullLogger,
  type Logger,
} from '@oarcloud/common';
import { FakeRecorder } from './fake-recorder.js';
import { digestHex, isErrno, type LayerStore } from './layers.js';
import { readMountinfo, type MountEntry } from './mountinfo.js';

/** Names of instance folders; anything else in the instances folder is not ours. */
export const INSTANCE_DIR_RE = /^i-[0-9a-f]{12}$/;

/** A file written into an instance (ids are the container's; they get shifted). */
export interface InjectedFile {
  /** Absolute path inside the instance, without `.`/`..` components. */
  path: string;
  content: string | Buffer;
  mode: number;
  uid?: number;
  gid?: number;
}

export interface RootfsManager {
  /**
   * Makes the instance's folders and mounts its overlay: `layers` are digests, bottom layer
   * first (the image manifest's order). Idempotent: already mounted with the same layers →
   * no-op. Mounted with other layers → FailedPreconditionError (never swapped under a
   * running instance). A layer that is not present → NotFoundError. On failure, the folders
   * this call created are removed again. Calls for one instance must not run concurrently.
   */
  ensure(instanceId: string, layers: string[]): Promise<{ rootDir: string }>;
  /**
   * Writes files into the mounted root (copy-up into the private layer), atomically each
   * (temp file + rename). Ids are container ids in 0..65535 (default 0), shifted by the
   * idmap base. Missing parent dirs are made (owned by the container's root; mode 0755, or
   * 0700 when the file itself is private to its owner). No path component may be a
   * symlink or `..`: FailedPreconditionError / InvalidArgumentError, nothing written outside
   * the root. Not mounted → FailedPreconditionError. Run while the instance is not running.
   */
  inject(instanceId: string, files: InjectedFile[]): Promise<void>;
  /** Unmounts the overlay, keeping the folders (the private layer). Idempotent. */
  unmount(instanceId: string): Promise<void>;
  /** Unmounts and deletes the instance's folders (its private layer). Idempotent. */
  remove(instanceId: string): Promise<void>;
  /** Instance ids that have a folder (mounted or not), sorted. */
  list(): Promise<string[]>;
  /** Whether the instance's overlay is mounted (in this mount namespace). */
  isMounted(instanceId: string): Promise<boolean>;
  /** The instance's private writable layer (for saving it as a new layer). */
  upperDir(instanceId: string): string;
}

export function checkInstanceId(id: string): string {
  if (!INSTANCE_DIR_RE.test(id)) throw new InvalidArgumentError(`malformed instance id ${JSON.stringify(String(id).slice(0, 80))}`);
  return id;
}

/** Splits an injected path into safe components, or throws InvalidArgumentError. */
export function injectPathParts(path: string): string[] {
  if (typeof path !== 'string' || !path.startsWith('/') || path.includes('\0')) {
    throw new InvalidArgumentError(`injected path must be absolute: ${JSON.stringify(String(path).slice(0, 200))}`);
  }
  const parts = path.split('/').filter((p) => p !== '');
  if (parts.length === 0 || parts.some((p) => p === '.' || p === '..' || p.length > 255)) {
    throw new InvalidArgumentError(`bad injected path ${JSON.stringify(path.slice(0, 200))}`);
  }
  return parts;
}

function checkFile(f: InjectedFile): void {
  injectPathParts(f.path);
  if (!Number.isInteger(f.mode) || f.mode < 0 || f.mode > 0o7777) throw new InvalidArgumentError(`bad mode for ${f.path}`);
  for (const id of [f.uid ?? 0, f.gid ?? 0]) {
    if (!Number.isInteger(id) || id < 0 || id > 65535) throw new InvalidArgumentError(`bad owner id ${id} for ${f.path}`);
  }
}

export interface OverlayRootfsOptions {
  instancesDir: string;
  /** Where the layers' lower dirs are. */
  layers: Pick<LayerStore, 'path' | 'has'>;
  /** Host uid/gid of the container's root (0: privileged instances). Default 100000. */
  idmapBase?: number;
  log?: Logger;
  /** For tests: where to read mounts from. */
  mountinfoPath?: string;
}

export class OverlayRootfs implements RootfsManager {
  private readonly dir: string;
  private readonly base: number;
  private readonly log: Logger;
  private readonly mountinfoPath: string;

  constructor(private readonly opts: OverlayRootfsOptions) {
    this.dir = opts.instancesDir;
    this.base = opts.idmapBase ?? 100_000;
    this.log = opts.log ?? nullLogger;
    this.mountinfoPath = opts.mountinfoPath ?? '/proc/self/mountinfo';
  }

  upperDir(instanceId: string): string {
    return join(this.dir, checkInstanceId(instanceId), 'upper');
  }

  private rootDir(instanceId: string): string {
    return join(this.dir, instanceId, 'rootfs');
  }

  async ensure(instanceId: string, layers: string[]): Promise<{ rootDir: string }> {
    checkInstanceId(instanceId);
    if (!Array.isArray(layers) || layers.length === 0) throw new InvalidArgumentError('an instance needs at least one layer');
    for (const l of layers) digestHex(l);
    // Top layer first in lowerdir.
    const lowers = [...layers].reverse().map((l) => this.opts.layers.path(l));
    const rootDir = this.rootDir(instanceId);
    const current = await this.mountAt(rootDir);
    if (current) {
      if (sameLowers(current, lowers)) return { rootDir };
      throw new FailedPreconditionError(`instance ${instanceId} is already mounted with other layers`);
    }
    for (const l of layers) if (!(await this.opts.layers.has(l))) throw new NotFoundError(`layer ${l} is not present`);

    const started = Date.now();
    const instDir = join(this.dir, instanceId);
    const created = !(await exists(instDir));
    try {
      await mkdir(this.dir, { recursive: true });
      await mkdir(instDir, { recursive: true, mode: 0o711 });
      const upper = join(instDir, 'upper');
      const work = join(instDir, 'work');
      for (const d of [upper, work]) {
        if (!(await exists(d))) {
          await mkdir(d, { mode: 0o755 });
          // The merged root takes the upper dir's owner: the container's root.
          await chown(d, this.base, this.base);
        }
      }
      await mkdir(rootDir, { recursive: true, mode: 0o755 });
      const options = `lowerdir=${lowers.join(':')},upperdir=${upper},workdir=${work}`;
      // The kernel takes at most one page of mount options.
      if (options.length > 4000) throw new InvalidArgumentError(`too many layers to mount (${layers.length})`);
      await run('mount', ['-t', 'overlay', 'oarcloud', '-o', options, rootDir]);
    } catch (err) {
      if (created) await rm(instDir, { recursive: true, force: true }).catch(() => undefined);
      throw err;
    }
    this.log.info('rootfs mounted', { instanceId, layers: layers.length, ms: Date.now() - started });
    return { rootDir };
  }

  async inject(instanceId: string, files: InjectedFile[]): Promise<void> {
    checkInstanceId(instanceId);
    for (const f of files) checkFile(f);
    const rootDir = this.rootDir(instanceId);
    if (!(await this.mountAt(rootDir))) throw new FailedPreconditionError(`rootfs of ${instanceId} is not mounted`);
    for (const f of files) await this.writeOne(rootDir, f);
  }

  private async writeOne(rootDir: string, f: InjectedFile): Promise<void> {
    const parts = injectPathParts(f.path);
    const name = parts.pop()!;
    const dirMode = (f.mode & 0o077) === 0 ? 0o700 : 0o755;
    let dir = rootDir;
    // Walk down without following symlinks; create what is missing as the container's root.
    for (const part of parts) {
      dir = join(dir, part);
      let st;
      try {
        st = await lstat(dir);
      } catch (err) {
        if (!isErrno(err, 'ENOENT')) throw err;
        await mkdir(dir, { mode: dirMode });
        await chown(dir, this.base, this.base);
        continue;
      }
      if (st.isSymbolicLink()) throw new FailedPreconditionError(`cannot write ${f.path}: ${dir.slice(rootDir.length)} is a symlink`);
      if (!st.isDirectory()) throw new FailedPreconditionError(`cannot write ${f.path}: ${dir.slice(rootDir.length)} is not a directory`);
    }
    const target = join(dir, name);
    try {
      if ((await lstat(target)).isDirectory()) throw new FailedPreconditionError(`cannot write ${f.path}: it is a directory`);
    } catch (err) {
      if (!isErrno(err, 'ENOENT')) throw err;
    }
    const tmp = join(dir, `.${name.slice(0, 200)}.oarcloud-${randomBytes(4).toString('hex')}`);
    // O_NOFOLLOW|O_EXCL: never write through a symlink, never reuse an existing file.
    const fh = await open(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600);
    try {
      await fh.writeFile(f.content);
      await fh.chown((f.uid ?? 0) + this.base, (f.gid ?? 0) + this.base);
      await fh.chmod(f.mode);
      await fh.close();
      // rename replaces a symlink at `target` itself, never what it points to.
      await rename(tmp, target);
    } catch (err) {
      await fh.close().catch(() => undefined);
      await unlink(tmp).catch(() => undefined);
      throw err;
    }
  }

  async unmount(instanceId: string): Promise<void> {
    checkInstanceId(instanceId);
    const rootDir = this.rootDir(instanceId);
    // A mount point may be stacked (mounted twice): unmount until nothing is left.
    for (let i = 0; i < 8 && (await this.mountAt(rootDir)); i++) {
      try {
        await run('umount', [rootDir]);
      } catch (err) {
        this.log.warn('rootfs busy, lazy unmount', { instanceId, err: err instanceof Error ? err.message : String(err) });
        await run('umount', ['-l', rootDir]);
      }
    }
    if (await this.mountAt(rootDir)) throw new InternalError(`rootfs of ${instanceId} is still mounted`);
  }

  async remove(instanceId: string): Promise<void> {
    checkInstanceId(instanceId);
    await this.unmount(instanceId);
    const instDir = join(this.dir, instanceId);
    // Never recurse into a mount (the layers must survive whatever happens).
    const mounts = await readMountinfo(this.mountinfoPath);
    if (mounts.some((m) => m.mountPoint === instDir || m.mountPoint.startsWith(`${instDir}/`))) {
      throw new FailedPreconditionError(`something is still mounted under ${instDir}`);
    }
    if (!(await exists(instDir))) return;
    await rm(instDir, { recursive: true, force: true });
    this.log.info('rootfs removed', { instanceId });
  }

  async list(): Promise<string[]> {
    let names: string[];
    try {
      names = await readdir(this.dir);
    } catch (err) {
      if (isErrno(err, 'ENOENT')) return [];
      throw err;
    }
    const out: string[] = [];
    for (const n of names) {
      if (!INSTANCE_DIR_RE.test(n)) continue;
      const st = await lstat(join(this.dir, n)).catch(() => undefined);
      if (st?.isDirectory()) out.push(n);
    }
    return out.sort();
  }

  async isMounted(instanceId: string): Promise<boolean> {
    checkInstanceId(instanceId);
    return (await this.mountAt(this.rootDir(instanceId))) !== undefined;
  }

  /** The overlay mounted at `path` (the last one, if stacked), or undefined. */
  private async mountAt(path: string): Promise<MountEntry | undefined> {
    const mounts = await readMountinfo(this.mountinfoPath);
    return mounts.filter((m) => m.mountPoint === path).at(-1);
  }
}

function sameLowers(m: MountEntry, lowers: string[]): boolean {
  const opt = m.superOptions.find((o) => o.startsWith('lowerdir='));
  return m.fsType === 'overlay' && opt === `lowerdir=${lowers.join(':')}`;
}

async function exists(p: string): Promise<boolean> {
  try {
    await lstat(p);
    return true;
  } catch (err) {
    if (isErrno(err, 'ENOENT')) return false;
    throw err;
  }
}

function run(cmd: string, args: string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
    child.on('error', reject);
    child.on('close', (code) => (code === 0 ? resolve() : reject(new InternalError(`${cmd} ${args.join(' ')} failed (exit ${code}): ${stderr.trim()}`))));
  });
}

interface FakeInstance {
  layers: string[];
  mounted: boolean;
  files: Map<string, { content: Buffer; mode: number; uid: number; gid: number }>;
  /** Paths (inside the instance) that are symlinks, as a hostile image would have. */
  symlinks: Set<string>;
}

/**
 * In-memory rootfs manager for tests: same contracts and validation as OverlayRootfs,
 * state in maps, calls recorded, errors injectable with `failNext`.
 */
export class FakeRootfs extends FakeRecorder implements RootfsManager {
  readonly instances = new Map<string, FakeInstance>();

  constructor(
    private readonly instancesDir = '/fake/instances',
    private readonly layerStore?: Pick<LayerStore, 'has'>,
  ) {
    super();
  }

  upperDir(instanceId: string): string {
    return join(this.instancesDir, checkInstanceId(instanceId), 'upper');
  }

  async ensure(instanceId: string, layers: string[]): Promise<{ rootDir: string }> {
    this.record('ensure', instanceId, layers);
    checkInstanceId(instanceId);
    if (!Array.isArray(layers) || layers.length === 0) throw new InvalidArgumentError('an instance needs at least one layer');
    for (const l of layers) digestHex(l);
    const rootDir = join(this.instancesDir, instanceId, 'rootfs');
    const cur = this.instances.get(instanceId);
    if (cur?.mounted) {
      if (cur.layers.join() === layers.join()) return { rootDir };
      throw new FailedPreconditionError(`instance ${instanceId} is already mounted with other layers`);
    }
    if (this.layerStore) for (const l of layers) if (!(await this.layerStore.has(l))) throw new NotFoundError(`layer ${l} is not present`);
    this.maybeFail('ensure');
    if (cur) {
      cur.mounted = true;
      cur.layers = [...layers];
    } else this.instances.set(instanceId, { layers: [...layers], mounted: true, files: new Map(), symlinks: new Set() });
    return { rootDir };
  }

  async inject(instanceId: string, files: InjectedFile[]): Promise<void> {
    this.record('inject', instanceId, files.map((f) => f.path));
    checkInstanceId(instanceId);
    for (const f of files) checkFile(f);
    const inst = this.instances.get(instanceId);
    if (!inst?.mounted) throw new FailedPreconditionError(`rootfs of ${instanceId} is not mounted`);
    this.maybeFail('inject');
    for (const f of files) {
      const parts = injectPathParts(f.path);
      for (let i = 1; i <= parts.length; i++) {
        const p = `/${parts.slice(0, i).join('/')}`;
        if (i < parts.length && inst.symlinks.has(p)) throw new FailedPreconditionError(`cannot write ${f.path}: ${p} is a symlink`);
      }
      inst.files.set(`/${parts.join('/')}`, { content: Buffer.from(f.content), mode: f.mode, uid: f.uid ?? 0, gid: f.gid ?? 0 });
    }
  }

  async unmount(instanceId: string): Promise<void> {
    this.record('unmount', instanceId);
    checkInstanceId(instanceId);
    this.maybeFail('unmount');
    const inst = this.instances.get(instanceId);
    if (inst) inst.mounted = false;
  }

  async remove(instanceId: string): Promise<void> {
    this.record('remove', instanceId);
    checkInstanceId(instanceId);
    this.maybeFail('remove');
    this.instances.delete(instanceId);
  }

  async list(): Promise<string[]> {
    this.record('list');
    return [...this.instances.keys()].sort();
  }

  async isMounted(instanceId: string): Promise<boolean> {
    checkInstanceId(instanceId);
    return this.instances.get(instanceId)?.mounted ?? false;
  }

  /** Test helper: the image of this instance has a symlink at `path`. */
  addSymlink(instanceId: string, path: string): void {
    const inst = this.instances.get(instanceId);
    if (!inst) throw new NotFoundError(`no instance ${instanceId}`);
    inst.symlinks.add(path);
  }
}
