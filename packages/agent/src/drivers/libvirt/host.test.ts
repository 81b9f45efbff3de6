import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { cgroupDirsOf, initPidOf, removeEmptyCgroups } from './host.js';

let dir = '';
afterEach(() => rmSync(dir, { recursive: true, force: true }));

describe('libvirt host helpers', () => {
  it('libvirt host - removes only the empty cgroup dirs of exactly that domain', async () => {
    dir = mkdtempSync(join(tmpdir(), 'cg-'));
    const mine = [join(dir, 'memory/machine/lxc-12-oc-i-1.libvirt-lxc'), join(dir, 'cpu/machine/oc-n-j1.job/lxc-13-oc-i-1.libvirt-lxc')];
    const others = [join(dir, 'memory/machine/lxc-14-oc-i-10.libvirt-lxc'), join(dir, 'memory/machine/lxc-15-oc-i-2.libvirt-lxc'), join(dir, 'memory/oar/lxc-16-oc-i-1.libvirt-lxc')];
    for (const d of [...mine, ...others]) mkdirSync(d, { recursive: true });
    const busy = join(dir, 'pids/machine/lxc-17-oc-i-1.libvirt-lxc');
    mkdirSync(busy, { recursive: true });
    writeFileSync(join(busy, 'tasks'), '1\n');
    expect((await cgroupDirsOf('oc-i-1', dir)).sort()).toEqual([...mine, busy].sort());
    expect((await removeEmptyCgroups('oc-i-1', dir)).sort()).toEqual(mine.sort());
    for (const d of others) expect(existsSync(d)).toBe(true);
    expect(existsSync(busy)).toBe(true);
  });

  it('libvirt host - init pid is the only child of the libvirt_lxc controller of that domain', async () => {
    dir = mkdtempSync(join(tmpdir(), 'proc-'));
    mkdirSync(join(dir, '100/task/100'), { recursive: true });
    mkdirSync(join(dir, '100/task/101'), { recursive: true });
    writeFileSync(join(dir, '100/cmdline'), ['/usr/lib/libvirt/libvirt_lxc', '--name', 'oc-i-1', '--console', '21', ''].join('\0'));
    writeFileSync(join(dir, '100/task/100/children'), '');
    writeFileSync(join(dir, '100/task/101/children'), '4242 ');
    expect(await initPidOf(100, 'oc-i-1', dir)).toBe(4242);
    // A reused pid (another domain, or not a controller at all) gives 0.
    expect(await initPidOf(100, 'oc-i-2', dir)).toBe(0);
    expect(await initPidOf(999, 'oc-i-1', dir)).toBe(0);
    expect(await initPidOf(-1, 'oc-i-1', dir)).toBe(0);
  });

  it('libvirt host - a child in the controller’s own PID namespace (a helper) is never taken for the init', async () => {
    dir = mkdtempSync(join(tmpdir(), 'proc-'));
    mkdirSync(join(dir, '100/task/100'), { recursive: true });
    writeFileSync(join(dir, '100/cmdline'), ['/usr/lib/libvirt/libvirt_lxc', '--name', 'oc-i-1', ''].join('\0'));
    const ns = (pid: number, target: string) => {
      mkdirSync(join(dir, `${pid}/ns`), { recursive: true });
      symlinkSync(target, join(dir, `${pid}/ns/pid`));
    };
    ns(100, 'pid:[4026531836]');
    ns(300, 'pid:[4026531836]');
    ns(4242, 'pid:[4026532999]');
    writeFileSync(join(dir, '100/task/100/children'), '300 4242');
    expect(await initPidOf(100, 'oc-i-1', dir)).toBe(4242);
    // Only the helper, or a child already gone (its namespace unreadable): no init yet.
    writeFileSync(join(dir, '100/task/100/children'), '300 777');
    expect(await initPidOf(100, 'oc-i-1', dir)).toBe(0);
  });
});
