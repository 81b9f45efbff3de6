/**
 * Exporting an instance's writable layer (its overlay upper dir) as a layer tar, to be
 * saved as an image layer by the controller.
 *
 * Consistency: a running instance is frozen (cgroup freezer) while its upper dir is
 * copied into a tar file on the agent's disk, then thawed; the file is streamed afterwards,
 * so the freeze lasts only the local copy. A stopped instance is copied as is.
 *
 * The tar is a POSIX (pax) tar with container ids (the idmap shift undone through tar's
 * owner/group maps; ids outside the map become 65534), overlay whiteouts (0/0 character
 * devices) and opaque directories (`trusted.overlay.opaque`) kept. Left out: what makes an
 * instance itself and is injected again into every new instance (hostname, hosts, root's
 * authorized_keys, network config) and SSH host keys (each instance makes its own).
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { lstat, mkdir, readdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { InternalError, type Logger } from '@oarcloud/common';
import { freezeCgroupOf } from '../drivers/cgroups/freezer.js';

/** Paths (relative to the root, tar syntax) never saved into an image. */
export const EXPORT_EXCLUDES = [
  './etc/hostname',
  './etc/hosts',
  './etc/oarcloud/net',
  './root/.ssh/authorized_keys',
  './etc/ssh/ssh_host_*',
  './etc/dropbear/dropbear_*_host_key',
];

export interface ExportOptions {
  upperDir: string;
  /** Folder for the temporary tar (on the agent's disk). */
  tmpDir: string;
  idmap?: { base: number; count: number };
  /** Freezes the instance; returns the thaw function. Absent: the instance is not running. */
  freeze?: () => Promise<() => Promise<void>>;
  log: Logger;
}

/**
 * Copies the upper dir into a tar file (frozen if running) and returns a stream of it;
 * the file is removed when the stream closes. Also returns the time the instance was frozen.
 */
export async function exportUpperDir(o: ExportOptions): Promise<{ stream: Readable; frozenMs: number; bytes: number }> {
  await mkdir(o.tmpDir, { recursive: true, mode: 0o700 });
  const tag = randomBytes(6).toString('hex');
  const tarPath = join(o.tmpDir, `export-${tag}.tar`);
  const ownerMap = join(o.tmpDir, `export-${tag}.uid`);
  const groupMap = join(o.tmpDir, `export-${tag}.gid`);
  const cleanup = (): Promise<void> => Promise.all([tarPath, ownerMap, groupMap].map((p) => rm(p, { force: true }))).then(() => undefined);
  let frozenMs = 0;
  try {
    const thaw = o.freeze ? await o.freeze() : undefined;
    const t0 = performance.now();
    try {
      // Ids are read while frozen: nothing can chown behind our back.
      const { uids, gids } = await idsUnder(o.upperDir);
      await writeFile(ownerMap, mapLines(uids, o.idmap));
      await writeFile(groupMap, mapLines(gids, o.idmap));
      await runTar([
        '-C',
        o.upperDir,
        '--format=posix',
        '--numeric-owner',
        '--xattrs',
        '--xattrs-include=trusted.overlay.opaque',
        `--owner-map=${ownerMap}`,
        `--group-map=${groupMap}`,
        ...EXPORT_EXCLUDES.map((e) => `--exclude=${e}`),
        '--sort=name',
        '-cf',
        tarPath,
        '.',
      ]);
    } finally {
      frozenMs = Math.round(performance.now() - t0);
      await thaw?.();
    }
    const bytes = (await lstat(tarPath)).size;
    const stream = createReadStream(tarPath, { highWaterMark: 1024 * 1024 });
    stream.on('close', () => void cleanup());
    o.log.info('layer exported', { bytes, frozenMs: o.freeze ? frozenMs : 0 });
    return { stream, frozenMs, bytes };
  } catch (err) {
    await cleanup();
    throw err;
  }
}

function mapLines(ids: Set<number>, idmap?: { base: number; count: number }): string {
  const lines: string[] = [];
  for (const id of ids) {
    let to = id;
    if (idmap && idmap.base > 0) to = id >= idmap.base && id < idmap.base + idmap.count ? id - idmap.base : 65534;
    lines.push(`+${id} +${to}`);
  }
  return lines.length > 0 ? `${lines.join('\n')}\n` : '';
}

async function idsUnder(root: string): Promise<{ uids: Set<number>; gids: Set<number> }> {
  const uids = new Set<number>();
  const gids = new Set<number>();
  const stack = [root];
  while (stack.length > 0) {
    const p = stack.pop()!;
    const st = await lstat(p);
    uids.add(st.uid);
    gids.add(st.gid);
    if (st.isDirectory()) for (const n of await readdir(p)) stack.push(join(p, n));
  }
  return { uids, gids };
}

function runTar(args: string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn('tar', args, { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (b: Buffer) => {
      if (stderr.length < 4000) stderr += b.toString();
    });
    child.on('error', reject);
    // Exit 1: "file changed as we read it" cannot happen on a frozen or stopped instance; treat as failure anyway.
    child.on('close', (code) => (code === 0 ? resolve() : reject(new InternalError(`tar of the writable layer failed (exit ${code}): ${stderr.trim().slice(0, 500)}`))));
  });
}

/** What exporting needs of the agent's parts. */
export interface ExportDeps {
  withInstance<T>(id: string, fn: (rec: { state: string; initPid: number }) => Promise<T>): Promise<T>;
}

/**
 * Exports the writable layer of an instance of this node, holding its lock during the copy
 * (no stop/start/destroy meanwhile) and freezing it if running.
 */
export function exportInstanceLayer(
  manager: ExportDeps,
  rootfs: { upperDir(id: string): string },
  o: { tmpDir: string; idmap?: { base: number; count: number }; log: Logger },
  instanceId: string,
): Promise<{ stream: Readable; frozenMs: number; bytes: number }> {
  return manager.withInstance(instanceId, (rec) =>
    exportUpperDir({
      upperDir: rootfs.upperDir(instanceId),
      tmpDir: o.tmpDir,
      idmap: o.idmap,
      freeze: rec.state === 'running' && rec.initPid > 1 ? () => freezeCgroupOf(rec.initPid) : undefined,
      log: o.log.child({ instanceId }),
    }),
  );
}
