/**
 * Benchmark: create→running and destroy through LibvirtRuntime vs `virsh create/destroy`
 * of the same XML, plus the cost of a koffi `.async` libvirt call vs the same call made
 * synchronously. Needs root and a running libvirtd (local cluster).
 *
 *   npx tsx packages/agent/src/drivers/libvirt/bench.ts [rootfs-with-/sbin/init-script] [runs]
 *
 * Without a rootfs argument it builds a busybox one under the instances folder and
 * removes it afterwards.
 */
import { execFileSync } from 'node:child_process';
import { chmodSync, copyFileSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { nullLogger } from '@oarcloud/common';
import type { DomainSpec } from '../runtime.js';
import { domainXml } from './domain-xml.js';
import { nativeAsync, silenceLibvirtErrors } from './native.js';
import { LibvirtRuntime } from './runtime.js';

const URI = 'lxc:///system';

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

function busyboxRoot(dir: string): string {
  const root = join(dir, 'rootfs');
  for (const d of ['bin', 'sbin', 'proc', 'sys', 'dev', 'tmp', 'etc']) mkdirSync(join(root, d), { recursive: true });
  copyFileSync('/bin/busybox', join(root, 'bin/busybox'));
  for (const c of ['sh', 'sleep']) symlinkSync('busybox', join(root, 'bin', c));
  writeFileSync(join(root, 'sbin/init-script'), '#!/bin/sh\nexec sleep 1000000\n');
  chmodSync(join(root, 'sbin/init-script'), 0o755);
  return root;
}

async function main(): Promise<void> {
  const runs = Number(process.argv[3] ?? 10);
  const tmp = process.argv[2] ? undefined : mkdtempSync('/var/lib/oarcloud-local/instances/.bench-');
  const rootDir = process.argv[2] ?? busyboxRoot(tmp!);
  const node = `bench-${process.pid}`;
  const spec = (id: string): DomainSpec => ({ instanceId: id, jobId: 1, node, rootDir, init: '/sbin/init-script', vcpus: 1, cpuset: '0', memoryMib: 64, interfaces: [] });
  const rt = await LibvirtRuntime.open(URI, node, nullLogger);
  const virsh = (...args: string[]): string => execFileSync('virsh', ['-q', '-c', URI, ...args], { encoding: 'utf8' });
  const res: Record<string, number[]> = { 'runtime create': [], 'runtime destroy': [], 'virsh create': [], 'virsh destroy': [] };
  try {
    for (let i = 0; i < runs; i++) {
      const id = `bench-${process.pid}-${i}`;
      let t = performance.now();
      await rt.create(spec(id));
      res['runtime create']!.push(performance.now() - t);
      t = performance.now();
      await rt.destroy(id);
      res['runtime destroy']!.push(performance.now() - t);

      const vid = `benchv-${process.pid}-${i}`;
      const file = join(tmp ?? '/tmp', `${vid}.xml`);
      writeFileSync(file, domainXml(spec(vid)));
      t = performance.now();
      virsh('create', file);
      res['virsh create']!.push(performance.now() - t);
      t = performance.now();
      virsh('destroy', `oc-${vid}`);
      res['virsh destroy']!.push(performance.now() - t);
      rmSync(file, { force: true });
    }
    // FFI overhead: one cheap RPC, async (koffi pool thread) vs sync, on one connection.
    silenceLibvirtErrors();
    const conn = (await nativeAsync.connectOpen(URI))!;
    const n = 500;
    let t = performance.now();
    for (let i = 0; i < n; i++) await nativeAsync.connectGetLibVersion(conn);
    const asyncUs = ((performance.now() - t) / n) * 1000;
    const { nativeEventLoop } = await import('./native.js');
    t = performance.now();
    for (let i = 0; i < n; i++) nativeEventLoop.connectGetLibVersion(conn);
    const syncUs = ((performance.now() - t) / n) * 1000;
    await nativeAsync.connectClose(conn);
    for (const [k, v] of Object.entries(res)) console.log(`${k.padEnd(16)} median ${median(v).toFixed(1)} ms  (min ${Math.min(...v).toFixed(1)}, max ${Math.max(...v).toFixed(1)}, n=${v.length})`);
    console.log(`async RPC (virConnectGetLibVersion) ${asyncUs.toFixed(0)} µs/call; same call sync ${syncUs.toFixed(0)} µs/call`);
  } finally {
    for (const d of await rt.list()) await rt.destroy(d.instanceId);
    await rt.close();
    if (tmp) rmSync(tmp, { recursive: true, force: true });
  }
}

await main();
