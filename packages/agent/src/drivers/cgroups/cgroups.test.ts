import { mkdirSync, mkdtempSync, readFileSync, existsSync, rmSync, writeFileSync } from 'node:fs';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { FailedPreconditionError, InvalidArgumentError, NotFoundError } from '@oarcloud/common';
import { detectCgroupLayout, FakeCgroups, HostCgroups, jobPartitionName, parseJobPartitionName, type CgroupManager } from './cgroups.js';

const tmp = mkdtempSync(join(tmpdir(), 'oc-cgroups-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

function v1Mountinfo(base: string): string {
  const lines = [
    '27 1 254:0 / / rw,relatime - ext4 /dev/vda rw',
    `31 23 0:28 / ${base} rw,relatime - tmpfs tmpfs rw,mode=755`,
    `32 31 0:29 / ${base}/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct`,
    `34 31 0:31 / ${base}/cpuset rw,relatime - cgroup cgroup rw,cpuset`,
    `35 31 0:32 / ${base}/memory rw,relatime - cgroup cgroup rw,memory`,
    `40 31 0:37 / ${base}/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd`,
    `41 31 0:38 / ${base}/unified rw,relatime - cgroup2 cgroup2 rw`,
  ];
  return lines.join('\n') + '\n';
}
function v2Mountinfo(base: string): string {
  return `27 1 254:0 / / rw - ext4 /dev/vda rw\n31 23 0:28 / ${base} rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n`;
}

/** A temp dir that acts like cgroupfs on mkdir (control files appear) and rmdir (files go). */
function fakeFs(layout: 'v1' | 'v2') {
  return {
    async mkdir(p: string) {
      await mkdir(p);
      if (layout === 'v1') await writeFile(join(p, 'tasks'), '');
      else {
        await writeFile(join(p, 'cgroup.procs'), '');
        await writeFile(join(p, 'cgroup.subtree_control'), '');
        // Writes replace the file here (the kernel merges them): strip the '+' signs.
        await writeFile(join(p, 'cgroup.controllers'), (await readFile(join(dirname(p), 'cgroup.subtree_control'), 'utf8')).replace(/\+/g, ''));
      }
    },
    async rmdir(p: string) {
      await rm(p, { recursive: true });
    },
  };
}

function makeV1(name: string): { base: string; mgr: Promise<HostCgroups> } {
  const base = join(tmp, name);
  for (const c of ['cpu,cpuacct', 'cpuset', 'memory', 'systemd']) mkdirSync(join(base, c), { recursive: true });
  writeFileSync(join(base, 'cpuset', 'cpuset.cpus'), '0-3\n');
  writeFileSync(join(base, 'cpuset', 'cpuset.mems'), '0\n');
  return { base, mgr: HostCgroups.create({ mountinfo: v1Mountinfo(base), ops: fakeFs('v1') }) };
}
function makeV2(name: string): { base: string; mgr: Promise<HostCgroups> } {
  const base = join(tmp, name);
  mkdirSync(base, { recursive: true });
  writeFileSync(join(base, 'cpuset.cpus.effective'), '0-3\n');
  writeFileSync(join(base, 'cgroup.controllers'), 'cpuset cpu io memory hugetlb pids rdma misc\n');
  writeFileSync(join(base, 'cgroup.subtree_control'), 'io\n');
  return { base, mgr: HostCgroups.create({ mountinfo: v2Mountinfo(base), ops: fakeFs('v2') }) };
}

describe('cgroups - layout detection', () => {
  it('cgroups - the hybrid layout is v1, without name=systemd and the controller-less cgroup2', () => {
    const l = detectCgroupLayout(v1Mountinfo('/sys/fs/cgroup'));
    expect(l.layout).toBe('v1');
    expect([...l.hierarchies.keys()].sort()).toEqual(['cpu', 'cpuacct', 'cpuset', 'memory']);
    expect(l.hierarchies.get('cpuacct')).toBe('/sys/fs/cgroup/cpu,cpuacct');
  });
  it('cgroups - a lone cgroup2 mount is v2', () => {
    const l = detectCgroupLayout(v2Mountinfo('/sys/fs/cgroup'));
    expect(l.layout).toBe('v2');
    expect(l.hierarchies.get('cpuset')).toBe('/sys/fs/cgroup');
  });
  it('cgroups - no cgroupfs is a failed precondition', () => {
    expect(() => detectCgroupLayout('27 1 254:0 / / rw - ext4 /dev/vda rw\n')).toThrow(FailedPreconditionError);
  });
  it('cgroups - partition names round-trip and refuse bad input', () => {
    expect(jobPartitionName('node-1', 17)).toBe('oc-node-1-j17.job');
    expect(parseJobPartitionName('oc-node.example-j17.job')).toEqual({ node: 'node.example', jobId: 17 });
    expect(parseJobPartitionName('oar')).toBeUndefined();
    expect(() => jobPartitionName('../x', 1)).toThrow(InvalidArgumentError);
    expect(() => jobPartitionName('n', 0)).toThrow(InvalidArgumentError);
  });
});

function contract(name: string, make: () => Promise<CgroupManager>): void {
  describe(`cgroup manager contract - ${name}`, () => {
    it('cgroups - ensure is idempotent, listed, removed once', async () => {
      const m = await make();
      expect(await m.ensureJobPartition('node-1', 7, '1-2')).toBe('/machine/oc-node-1-j7.job');
      expect(await m.ensureJobPartition('node-1', 7, '1,2')).toBe('/machine/oc-node-1-j7.job');
      expect(await m.listJobPartitions()).toEqual([{ node: 'node-1', jobId: 7 }]);
      await m.removeJobPartition('node-1', 7);
      await m.removeJobPartition('node-1', 7);
      expect(await m.listJobPartitions()).toEqual([]);
    });
    it('cgroups - refuses cpus outside the machine and malformed cpusets', async () => {
      const m = await make();
      await expect(m.ensureJobPartition('node-1', 8, '2-9')).rejects.toBeInstanceOf(InvalidArgumentError);
      await expect(m.ensureJobPartition('node-1', 8, '')).rejects.toBeInstanceOf(InvalidArgumentError);
      await expect(m.ensureJobPartition('node-1', 8, 'a-b')).rejects.toBeInstanceOf(InvalidArgumentError);
      expect(await m.listJobPartitions()).toEqual([]);
    });
    it('cgroups - instance cgroups of an absent domain are not found', async () => {
      const m = await make();
      await expect(m.instanceCgroupFiles('/machine', 'oc-i-000000000000')).rejects.toBeInstanceOf(NotFoundError);
    });
  });
}

contract('fake', async () => new FakeCgroups('0-3'));
let k = 0;
contract('host v1 (temp cgroupfs)', () => makeV1(`c1-${k++}`).mgr);
contract('host v2 (temp cgroupfs)', () => makeV2(`c2-${k++}`).mgr);

describe('HostCgroups v1 on a temp cgroupfs', () => {
  it('cgroups - makes machine and the job dir in every controller with the job cpus and parent mems', async () => {
    const { base, mgr } = makeV1('v1-a');
    const m = await mgr;
    await m.ensureJobPartition('node-1', 17, '2-3');
    for (const c of ['cpu,cpuacct', 'cpuset', 'memory']) expect(existsSync(join(base, c, 'machine', 'oc-node-1-j17.job')), c).toBe(true);
    expect(existsSync(join(base, 'systemd', 'machine'))).toBe(false);
    const job = join(base, 'cpuset', 'machine', 'oc-node-1-j17.job');
    expect(readFileSync(join(job, 'cpuset.cpus'), 'utf8')).toBe('2-3');
    expect(readFileSync(join(job, 'cpuset.mems'), 'utf8')).toBe('0');
    expect(readFileSync(join(base, 'cpuset', 'machine', 'cpuset.cpus'), 'utf8')).toBe('0-3');
    await m.ensureJobPartition('node-1', 17, '1');
    expect(readFileSync(join(job, 'cpuset.cpus'), 'utf8')).toBe('1');
  });

  it('cgroups - remove refuses while tasks remain, then removes libvirt groups leaves-first', async () => {
    const { base, mgr } = makeV1('v1-b');
    const m = await mgr;
    const part = await m.ensureJobPartition('node-1', 18, '0');
    const lxc = join(base, 'memory', 'machine', 'oc-node-1-j18.job', 'lxc-4242-oc-i-0123456789ab.libvirt-lxc');
    mkdirSync(lxc);
    writeFileSync(join(lxc, 'tasks'), '4242\n4243\n');
    const files = await m.instanceCgroupFiles(part, 'oc-i-0123456789ab');
    expect(files.memory).toBe(lxc);
    await expect(m.removeJobPartition('node-1', 18)).rejects.toThrow(/4242 4243/);
    expect(existsSync(join(base, 'cpuset', 'machine', 'oc-node-1-j18.job'))).toBe(true);
    expect(await m.sweepEmptyLxcLeftovers('oc-i-0123456789ab')).toEqual([]);
    writeFileSync(join(lxc, 'tasks'), '');
    expect(await m.sweepEmptyLxcLeftovers('oc-i-0123456789ab')).toEqual([lxc]);
    mkdirSync(lxc);
    await m.removeJobPartition('node-1', 18);
    expect(existsSync(join(base, 'memory', 'machine', 'oc-node-1-j18.job'))).toBe(false);
    expect(existsSync(join(base, 'memory', 'machine'))).toBe(true);
  });

  it('cgroups - a foreign group inside a partition is never removed', async () => {
    const { base, mgr } = makeV1('v1-c');
    const m = await mgr;
    await m.ensureJobPartition('node-1', 19, '0');
    mkdirSync(join(base, 'cpuset', 'machine', 'oc-node-1-j19.job', 'someone-else'));
    await expect(m.removeJobPartition('node-1', 19)).rejects.toBeInstanceOf(FailedPreconditionError);
    expect(existsSync(join(base, 'cpuset', 'machine', 'oc-node-1-j19.job', 'someone-else'))).toBe(true);
  });

  it('cgroups - instanceCgroupFiles refuses partitions that are not ours', async () => {
    const m = await makeV1('v1-d').mgr;
    await expect(m.instanceCgroupFiles('/machine/../../etc', 'x')).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(m.instanceCgroupFiles('/oar/alice_1', 'x')).rejects.toBeInstanceOf(InvalidArgumentError);
  });
});

describe('HostCgroups v2 on a temp cgroupfs', () => {
  it('cgroups - enables the controllers along the path and sets the job cpus', async () => {
    const { base, mgr } = makeV2('v2-a');
    const m = await mgr;
    expect(m.layout).toBe('v2');
    await m.ensureJobPartition('node-1', 5, '1');
    expect(readFileSync(join(base, 'cgroup.subtree_control'), 'utf8')).toBe('+cpuset +cpu +memory +pids');
    expect(readFileSync(join(base, 'machine', 'cgroup.subtree_control'), 'utf8')).toBe('+cpuset +cpu +memory +pids');
    expect(readFileSync(join(base, 'machine', 'oc-node-1-j5.job', 'cpuset.cpus'), 'utf8')).toBe('1');
    writeFileSync(join(base, 'machine', 'oc-node-1-j5.job', 'cgroup.procs'), '99\n');
    await expect(m.removeJobPartition('node-1', 5)).rejects.toBeInstanceOf(FailedPreconditionError);
  });
});

describe('FakeCgroups', () => {
  it('cgroups - tasks block removal; errors can be injected', async () => {
    const f = new FakeCgroups('0-1');
    await f.ensureJobPartition('n', 1, '0');
    f.setTasks('n', 1, [10]);
    await expect(f.removeJobPartition('n', 1)).rejects.toBeInstanceOf(FailedPreconditionError);
    f.failNext('ensureJobPartition', new Error('boom'));
    await expect(f.ensureJobPartition('n', 2, '0')).rejects.toThrow('boom');
    expect(f.callsOf('ensureJobPartition')).toHaveLength(2);
  });
});
