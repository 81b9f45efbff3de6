/**
 * Job partitions on the real cgroupfs of this machine: made in every controller with the
 * job's cpus, idempotent, cpus outside the machine refused, removal refused while a task is
 * inside (nothing killed), nothing left afterwards.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FailedPreconditionError, InvalidArgumentError, formatCpuset } from '@oarcloud/common';
import { needRoot, prerequisites } from '@oarcloud/testkit';
import { detectCgroupLayout, HostCgroups } from '../../packages/agent/src/drivers/cgroups/index.js';

const p = prerequisites('cgroups', [
  needRoot,
  () => {
    try {
      detectCgroupLayout(readFileSync('/proc/self/mountinfo', 'utf8'));
      return undefined;
    } catch (err) {
      return String(err);
    }
  },
]);

describe.skipIf(!p.ok)('cgroups - job partitions on the real host', () => {
  const node = 'itest';
  const jobId = 910000000 + (process.pid % 1000000);
  const name = `oc-${node}-j${jobId}.job`;
  let cg: HostCgroups;
  let dirs: string[];
  let cpus: number[];
  const children: ChildProcess[] = [];

  beforeAll(async () => {
    cg = await HostCgroups.create();
    cpus = await cg.machineCpus();
    const layout = detectCgroupLayout(readFileSync('/proc/self/mountinfo', 'utf8'));
    dirs = [...new Set(layout.hierarchies.values())].map((d) => join(d, 'machine', name));
  });

  afterAll(async () => {
    for (const c of children) c.kill('SIGKILL');
    await new Promise((r) => setTimeout(r, 100));
    await cg?.removeJobPartition(node, jobId).catch((err: unknown) => console.error('cleanup', err));
  });

  it('cgroups - ensure makes the partition in every controller with the job cpus, idempotently', async () => {
    const want = formatCpuset([cpus.at(-1)!]);
    const t0 = performance.now();
    expect(await cg.ensureJobPartition(node, jobId, want)).toBe(`/machine/${name}`);
    const ms = Math.round(performance.now() - t0);
    expect(await cg.ensureJobPartition(node, jobId, want)).toBe(`/machine/${name}`);
    for (const d of dirs) expect(existsSync(d), d).toBe(true);
    if (cg.layout === 'v1') {
      expect(existsSync(`/sys/fs/cgroup/systemd/machine/${name}`)).toBe(false);
      const cpusetDir = dirs.find((d) => d.includes('/cpuset/'))!;
      expect(readFileSync(join(cpusetDir, 'cpuset.cpus'), 'utf8').trim()).toBe(want);
      expect(readFileSync(join(cpusetDir, 'cpuset.mems'), 'utf8').trim()).toBe(readFileSync(join(cpusetDir, '..', 'cpuset.mems'), 'utf8').trim());
    }
    expect(await cg.listJobPartitions()).toContainEqual({ node, jobId });
    // New cpus for an existing partition are applied.
    await cg.ensureJobPartition(node, jobId, formatCpuset(cpus));
    const cpusetDir = dirs.find((d) => d.includes('cpuset') || cg.layout === 'v2')!;
    expect(readFileSync(join(cpusetDir, 'cpuset.cpus'), 'utf8').trim()).toBe(formatCpuset(cpus));
    console.info('cgroups timings (ms):', JSON.stringify({ ensureJobPartitionMs: ms }));
  });

  it('cgroups - cpus outside the machine are refused and change nothing', async () => {
    await expect(cg.ensureJobPartition(node, jobId + 1, String(Math.max(...cpus) + 1))).rejects.toBeInstanceOf(InvalidArgumentError);
    expect((await cg.listJobPartitions()).some((r) => r.jobId === jobId + 1)).toBe(false);
  });

  it('cgroups - a task inside blocks removal and is not killed; then removal leaves nothing', async () => {
    const child = spawn('sleep', ['60'], { stdio: 'ignore' });
    children.push(child);
    const cpusetDir = dirs.find((d) => d.includes('/cpuset/')) ?? dirs[0]!;
    writeFileSync(join(cpusetDir, cg.layout === 'v1' ? 'tasks' : 'cgroup.procs'), String(child.pid));
    await expect(cg.removeJobPartition(node, jobId)).rejects.toBeInstanceOf(FailedPreconditionError);
    await expect(cg.removeJobPartition(node, jobId)).rejects.toThrow(String(child.pid));
    expect(child.exitCode).toBeNull();
    for (const d of dirs) expect(existsSync(d), d).toBe(true);
    child.kill('SIGKILL');
    await new Promise((r) => child.once('exit', r));
    await cg.removeJobPartition(node, jobId);
    await cg.removeJobPartition(node, jobId);
    for (const d of dirs) expect(existsSync(d), d).toBe(false);
    expect((await cg.listJobPartitions()).some((r) => r.jobId === jobId)).toBe(false);
  });
});
