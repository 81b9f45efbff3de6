/**
 * What a running instance uses, read from the cgroup of its init process (the one libvirt
 * made for the domain, so every process of the instance is counted): CPU time and memory.
 * cgroup v1 (`cpuacct.usage`, `memory.usage_in_bytes`) or v2 (`cpu.stat` usage_usec,
 * `memory.current`), as /proc/<pid>/cgroup names them.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { FailedPreconditionError } from '@oarcloud/common';

export interface CgroupUsage {
  cpuSeconds: number;
  memoryBytes: number;
}

/**
 * Usage of the cgroups that `procCgroup` (the text of /proc/<pid>/cgroup) names, with the
 * hierarchies mounted under `root`. FailedPreconditionError when a figure cannot be found.
 */
export async function usageOfCgroups(procCgroup: string, root = '/sys/fs/cgroup'): Promise<CgroupUsage> {
  const entries = procCgroup
    .split('\n')
    .map((l) => l.split(':'))
    .filter((f) => f.length >= 3)
    .map((f) => ({ controllers: f[1]!.split(','), path: f.slice(2).join(':') }));
  const v1 = (ctrl: string) => entries.find((e) => e.controllers.includes(ctrl));
  const cpuacct = v1('cpuacct');
  const memory = v1('memory');
  if (cpuacct && memory) {
    // Co-mounted hierarchies (cpu,cpuacct) are mounted under the joined name, with links per name.
    const [usageNs, memBytes] = await Promise.all([
      readFile(join(root, 'cpuacct', cpuacct.path, 'cpuacct.usage'), 'utf8'),
      readFile(join(root, 'memory', memory.path, 'memory.usage_in_bytes'), 'utf8'),
    ]);
    return { cpuSeconds: Number(usageNs.trim()) / 1e9, memoryBytes: Number(memBytes.trim()) };
  }
  const unified = entries.find((e) => e.controllers.length === 1 && e.controllers[0] === '');
  if (!unified) throw new FailedPreconditionError('no cpuacct/memory cgroup (v1) or unified cgroup (v2) for the instance');
  const dir = join(root, unified.path);
  const [stat, current] = await Promise.all([readFile(join(dir, 'cpu.stat'), 'utf8'), readFile(join(dir, 'memory.current'), 'utf8')]);
  const usec = /^usage_usec (\d+)$/m.exec(stat);
  if (!usec) throw new FailedPreconditionError(`no usage_usec in ${join(dir, 'cpu.stat')}`);
  return { cpuSeconds: Number(usec[1]) / 1e6, memoryBytes: Number(current.trim()) };
}

/** Usage of the instance whose init is `pid` (see usageOfCgroups). */
export async function cgroupUsageOf(pid: number, root?: string): Promise<CgroupUsage> {
  if (!Number.isInteger(pid) || pid <= 1) throw new FailedPreconditionError(`no usage for pid ${pid}`);
  return usageOfCgroups(await readFile(`/proc/${pid}/cgroup`, 'utf8'), root);
}
