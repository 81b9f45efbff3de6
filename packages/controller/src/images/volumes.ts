/**
 * Volumes: a user's directory `<volumesDir>/<id>` that outlives jobs, mounted into their
 * instances. The folder must be on storage every node sees at the same path (NFS or the
 * like on a real cluster; on the one-machine local cluster, a folder of the state dir).
 * The controller creates and removes the folder; agents mount it (and give it to the
 * container's root the first time). Another user's volume is NOT_FOUND.
 */
import { execFile } from 'node:child_process';
import { mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { AlreadyExistsError, checkId, FailedPreconditionError, InvalidArgumentError, isId, newId, NotFoundError, type Logger } from '@oarcloud/common';
import type { Caller, VolumeMount, VolumeRecord } from '../domain.js';
import type { Store } from '../store/store.js';
import { checkMountPath, parseVolumeName } from './names.js';

export interface VolumeInfo extends VolumeRecord {
  usedBy: string[];
  sizeBytes: number;
}

export class Volumes {
  constructor(
    private readonly o: { store: Store; dir: string; log: Logger; now: () => number },
  ) {}

  private path(id: string): string {
    return join(this.o.dir, checkId(id, 'v', 'volume id'));
  }

  /** Live instances that mount the volume. */
  usedBy(id: string): string[] {
    return this.o.store
      .listInstances({ liveOnly: true })
      .filter((i) => i.desired !== 'deleted' && (i.volumes ?? []).some((v) => v.volumeId === id))
      .map((i) => i.id);
  }

  async create(caller: Caller, rawName: string): Promise<VolumeRecord> {
    const name = parseVolumeName(rawName);
    if (this.o.store.listVolumes({ owner: caller.name }).some((v) => v.name === name)) throw new AlreadyExistsError(`volume ${name} already exists`);
    const v: VolumeRecord = { id: newId('v'), owner: caller.name, name, createdAtMs: this.o.now() };
    await mkdir(this.o.dir, { recursive: true, mode: 0o711 });
    // Root-owned until an agent mounts it the first time and hands it to the container's root.
    await mkdir(this.path(v.id), { mode: 0o755 });
    try {
      this.o.store.addVolume(v);
    } catch (err) {
      await rm(this.path(v.id), { recursive: true, force: true });
      throw err;
    }
    this.o.log.info('volume created', { volumeId: v.id, owner: v.owner, name });
    return v;
  }

  /** By id or by name among the caller's volumes; others' are NOT_FOUND (admins see all by id). */
  get(caller: Caller, idOrName: string): VolumeRecord {
    if (!idOrName) throw new InvalidArgumentError('volume id or name is required');
    let v: VolumeRecord | undefined;
    if (isId(idOrName, 'v')) v = this.o.store.getVolume(idOrName);
    else v = this.o.store.listVolumes({ owner: caller.name }).find((x) => x.name === idOrName);
    if (!v || (v.owner !== caller.name && caller.role !== 'admin')) throw new NotFoundError(`no volume ${idOrName}`);
    return v;
  }

  list(caller: Caller, allUsers: boolean): VolumeRecord[] {
    return this.o.store.listVolumes(allUsers && caller.role === 'admin' ? {} : { owner: caller.name });
  }

  async info(v: VolumeRecord): Promise<VolumeInfo> {
    return { ...v, usedBy: this.usedBy(v.id), sizeBytes: await duBytes(this.path(v.id)) };
  }

  /** Deletes the volume and its data; FAILED_PRECONDITION while a live instance mounts it. */
  async delete(caller: Caller, idOrName: string): Promise<void> {
    const v = this.get(caller, idOrName);
    this.o.store.transaction(() => {
      const users = this.usedBy(v.id);
      if (users.length > 0) throw new FailedPreconditionError(`volume ${v.name} is mounted by ${users.join(', ')}`);
      this.o.store.deleteVolume(v.id);
    });
    await rm(this.path(v.id), { recursive: true, force: true });
    this.o.log.info('volume deleted', { volumeId: v.id, owner: v.owner, by: caller.name });
  }

  /**
   * The mounts of a launch request, with names resolved to ids among `owner`'s volumes
   * (another user's volume: NOT_FOUND). Paths are checked; one volume per path.
   */
  resolveMounts(owner: string, mounts: readonly VolumeMount[] | undefined): VolumeMount[] {
    const list = mounts ?? [];
    if (list.length > 16) throw new InvalidArgumentError('at most 16 volumes per instance');
    const out: VolumeMount[] = [];
    for (const m of list) {
      const path = checkMountPath(m.path);
      const v = this.get({ name: owner, role: 'user' }, m.volumeId);
      if (out.some((o) => o.path === path)) throw new InvalidArgumentError(`two volumes on ${path}`);
      out.push({ volumeId: v.id, path, readOnly: !!m.readOnly });
    }
    return out;
  }
}

function duBytes(path: string): Promise<number> {
  return new Promise((resolve) => {
    execFile('du', ['-sb', path], { timeout: 5000 }, (err, stdout) => resolve(err ? 0 : Number(stdout.split('\t')[0]) || 0));
  });
}
