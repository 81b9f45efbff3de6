import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { FailedPreconditionError } from '@oarcloud/common';
import { cgroupUsageOf, usageOfCgroups } from './usage.js';

describe('cgroup usage', () => {
  const root = mkdtempSync(join(tmpdir(), 'oc-usage-'));
  afterAll(() => rmSync(root, { recursive: true, force: true }));
  const put = (path: string, content: string) => {
    mkdirSync(join(root, path, '..'), { recursive: true });
    writeFileSync(join(root, path), content);
  };
  const lxc = '/machine/oc-node-1-j7.job/lxc-123-oc-i-0123456789ab.libvirt-lxc';

  it('usage - v1 (hybrid layout): cpuacct.usage in ns and memory.usage_in_bytes of the named groups', async () => {
    put(`cpuacct${lxc}/cpuacct.usage`, '2500000000\n');
    put(`memory${lxc}/memory.usage_in_bytes`, '7340032\n');
    const proc = [`12:memory:${lxc}`, `5:cpu:${lxc}`, `4:cpuacct:${lxc}`, '1:name=systemd:/', `0::${lxc}`, ''].join('\n');
    expect(await usageOfCgroups(proc, root)).toEqual({ cpuSeconds: 2.5, memoryBytes: 7340032 });
  });

  it('usage - v2: usage_usec of cpu.stat and memory.current of the unified group', async () => {
    const g = '/machine.slice/machine-lxc-oc-i-0123456789ab.scope';
    put(`${g}/cpu.stat`, 'usage_usec 1250000\nuser_usec 1000000\nsystem_usec 250000\n');
    put(`${g}/memory.current`, '1048576\n');
    expect(await usageOfCgroups(`0::${g}\n`, root)).toEqual({ cpuSeconds: 1.25, memoryBytes: 1048576 });
  });

  it('usage - no usable group, or no such pid, is FAILED_PRECONDITION', async () => {
    await expect(usageOfCgroups('3:pids:/x\n', root)).rejects.toThrow(FailedPreconditionError);
    await expect(cgroupUsageOf(1)).rejects.toThrow(FailedPreconditionError);
    await expect(cgroupUsageOf(0)).rejects.toThrow(FailedPreconditionError);
  });
});
