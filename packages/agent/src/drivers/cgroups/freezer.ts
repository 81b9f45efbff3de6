/**
 * Freezing a container for a consistent copy of its files: the cgroup freezer of its init
 * process (what libvirt's virDomainSuspend does for LXC), cgroup v1 (`freezer.state`) or
 * v2 (`cgroup.freeze`). Every task of the container stops until thawed; its files stop
 * changing.
 */
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { FailedPreconditionError, InternalError } from '@oarcloud/common';

export interface FreezeOptions {
  /** Where the cgroup hierarchies are mounted (default /sys/fs/cgroup). */
  root?: string;
  /** How long to wait for the freeze to complete (default 5 s). */
  timeoutMs?: number;
}

/** Freezes the cgroup of `pid`; resolves to the function that thaws it (idempotent). */
export async function freezeCgroupOf(pid: number, opts: FreezeOptions = {}): Promise<() => Promise<void>> {
  if (!Number.isInteger(pid) || pid <= 1) throw new FailedPreconditionError(`cannot freeze pid ${pid}`);
  const root = opts.root ?? '/sys/fs/cgroup';
  const lines = (await readFile(`/proc/${pid}/cgroup`, 'utf8')).split('\n');
  const v1 = lines.map((l) => l.split(':')).find((f) => f.length >= 3 && f[1]!.split(',').includes('freezer'));
  const deadline = Date.now() + (opts.timeoutMs ?? 5000);
  if (v1) {
    const state = join(root, 'freezer', v1.slice(2).join(':'), 'freezer.state');
    await writeFile(state, 'FROZEN');
    while ((await readFile(state, 'utf8')).trim() !== 'FROZEN') {
      if (Date.now() > deadline) {
        await writeFile(state, 'THAWED');
        throw new InternalError(`the cgroup of pid ${pid} did not freeze in time`);
      }
      await new Promise((r) => setTimeout(r, 10));
    }
    let thawed = false;
    return async () => {
      if (thawed) return;
      thawed = true;
      await writeFile(state, 'THAWED');
    };
  }
  const v2 = lines.find((l) => l.startsWith('0::'));
  if (!v2) throw new FailedPreconditionError(`no freezer cgroup for pid ${pid}`);
  const dir = join(root, v2.slice(3));
  await writeFile(join(dir, 'cgroup.freeze'), '1');
  while (!/^frozen 1$/m.test(await readFile(join(dir, 'cgroup.events'), 'utf8'))) {
    if (Date.now() > deadline) {
      await writeFile(join(dir, 'cgroup.freeze'), '0');
      throw new InternalError(`the cgroup of pid ${pid} did not freeze in time`);
    }
    await new Promise((r) => setTimeout(r, 10));
  }
  let thawed = false;
  return async () => {
    if (thawed) return;
    thawed = true;
    await writeFile(join(dir, 'cgroup.freeze'), '0');
  };
}
