/**
 * Agent benchmarks (issue: node agent). One run measures, on the real libvirtd:
 * - agent.create_to_running_ms: gRPC CreateInstance → RUNNING (overlay, identity, job
 *   partition, domain) vs raw `virsh create` of the same domain XML on an already mounted root;
 * - agent.create10_parallel_ms: 10 CreateInstance at once vs 10 parallel `virsh create`;
 * - agent.destroy_ms: DestroyInstance vs the same work done raw: SIGKILL of the container's
 *   init (its pid looked up beforehand, untimed), `virsh destroy`, `umount` of the overlay,
 *   removal of the instance folder. The agent SIGKILLs the init itself before libvirt's
 *   destroy (which alone sends SIGTERM and waits ~1.8 s for an init that ignores it), so a
 *   bare `virsh destroy` baseline would compare different work;
 * - agent.destroy10_parallel_ms: 10 DestroyInstance at once vs 10 of those raw sequences at once;
 * - agent.ssh_ready_ms: CreateInstance → sshd banner on port 22.
 */
import { execFile, execFileSync } from 'node:child_process';
import { rmSync, writeFileSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { InstanceSpec } from '@oarcloud/api';
import { nullLogger } from '@oarcloud/common';
import { tinyImage } from '@oarcloud/testkit';
import { DirLayerStore, domainName, domainXml, HostCgroups, OverlayRootfs } from '../../packages/agent/src/index.js';
import { initPidOf } from '../../packages/agent/src/drivers/libvirt/host.js';
import { benchIdPrefix, startBenchAgent } from './bench-agent.js';
import type { Meta, ResultsFile } from './results.js';

const run = promisify(execFile);

export interface BenchContext {
  results: ResultsFile;
  quick: boolean;
  meta: Meta;
}

export async function benchAgent(ctx: BenchContext): Promise<void> {
  const n = ctx.quick ? 5 : 20;
  const image = tinyImage();
  const agent = await startBenchAgent({ prefix: 'bench-agent', jobBase: 990_000 });
  const { node, jobId, dir, instancesDir } = agent;
  const layers = new DirLayerStore({ root: join(dir, 'state', 'layers'), idmapBase: 100_000, log: nullLogger });
  await layers.importLayer(image.layers[0]!, image.layerTar);
  const spec = (): InstanceSpec => agent.spec(image);
  const create = (s: InstanceSpec) => agent.create(s);
  const destroy = (id: string) => agent.destroy(id);

  // Raw baseline: the same domain XML on a root the baseline mounts itself, beforehand.
  const cgroups = await HostCgroups.create({ log: nullLogger });
  const rawInstancesDir = `${instancesDir}-raw`;
  const rootfs = new OverlayRootfs({ instancesDir: rawInstancesDir, layers, idmapBase: 100_000, log: nullLogger });
  // Its own partition and folder (another node name), so that the agent never sweeps them.
  const rawNode = `${node}-raw`;
  const partition = await cgroups.ensureJobPartition(rawNode, jobId, '0-1');
  /** A raw instance: its root mounted and its domain XML written (untimed), then started by virsh. */
  interface Raw {
    name: string;
    file: string;
    rootDir: string;
    folder: string;
    initPid: number;
  }
  const rawPrepare = async (s: InstanceSpec): Promise<Raw> => {
    const { rootDir } = await rootfs.ensure(s.id, s.image!.layers);
    const xml = domainXml({ instanceId: s.id, jobId, node: rawNode, rootDir, init: '/sbin/init', vcpus: 1, cpuset: '0-1', memoryMib: 128, cpuShares: 1024, cpuPeriodUs: 100_000, cpuQuotaUs: 100_000, partition, idmap: { start: 100_000, count: 65_536 }, interfaces: [] });
    const file = join(dir, `${s.id}.xml`);
    writeFileSync(file, xml);
    return { name: domainName(s.id), file, rootDir, folder: join(rawInstancesDir, s.id), initPid: 0 };
  };
  const virsh = (...args: string[]) => run('virsh', ['-c', 'lxc:///system', ...args]);
  /** The container's init, found as the agent finds it (domain id = libvirt_lxc pid → its child); untimed. */
  const rawInitPid = async (r: Raw): Promise<void> => {
    const { stdout } = await virsh('domid', r.name);
    r.initPid = await initPidOf(Number(stdout.trim()), r.name);
    if (r.initPid <= 1) throw new Error(`no init pid for ${r.name}`);
  };
  /** The raw equivalent of DestroyInstance: kill -9 of the init, virsh destroy, umount, rm -r. */
  const rawDestroy = async (r: Raw): Promise<void> => {
    try {
      process.kill(r.initPid, 'SIGKILL');
    } catch {
      // already gone
    }
    // After the SIGKILL libvirt may already have torn the domain down ("not running" / "not
    // found"): the agent accepts the same answers.
    await virsh('destroy', r.name).catch(() => undefined);
    await run('umount', [r.rootDir]).catch(() => run('umount', ['-l', r.rootDir]));
    await rm(r.folder, { recursive: true, force: true });
  };
  /** Untimed check that a raw destroy really removed everything (else its time would mean nothing). */
  const rawGone = async (rs: Raw[]): Promise<void> => {
    const { stdout } = await virsh('list', '--all', '--name');
    const left = rs.filter((r) => stdout.split('\n').includes(r.name));
    if (left.length > 0) throw new Error(`raw destroy left domains: ${left.map((r) => r.name).join(' ')}`);
    const mounted = await rootfs.list();
    if (rs.some((r) => mounted.includes(r.name.slice(3)))) throw new Error('raw destroy left instance folders');
  };

  const ours: number[] = [];
  const oursDestroy: number[] = [];
  const raw: number[] = [];
  const rawDestroy1: number[] = [];
  const ssh: number[] = [];
  try {
    for (let i = 0; i < n; i++) {
      // Interleave ours and raw so that drift of the machine hits both alike.
      const s = spec();
      let t = performance.now();
      await create(s);
      ours.push(performance.now() - t);
      t = performance.now();
      await destroy(s.id);
      oursDestroy.push(performance.now() - t);

      const r = await rawPrepare(spec());
      t = performance.now();
      await virsh('create', r.file);
      raw.push(performance.now() - t);
      await rawInitPid(r);
      t = performance.now();
      await rawDestroy(r);
      rawDestroy1.push(performance.now() - t);
      await rawGone([r]);
    }
    for (let i = 0; i < Math.ceil(n / 2); i++) {
      const s = spec();
      const t = performance.now();
      const inst = await create(s);
      for (;;) {
        const out = await run('nsenter', ['-t', String(inst.initPid), '-n', 'sh', '-c', 'timeout 1 nc -w 1 127.0.0.1 22 </dev/null | head -c 4'], { encoding: 'utf8' }).catch(() => ({ stdout: '' }));
        if (out.stdout.startsWith('SSH-')) break;
        await new Promise((res) => setTimeout(res, 20));
      }
      ssh.push(performance.now() - t);
      await destroy(s.id);
    }
    const par = ctx.quick ? 2 : 5;
    const ours10: number[] = [];
    const raw10: number[] = [];
    const oursDestroy10: number[] = [];
    const rawDestroy10: number[] = [];
    for (let i = 0; i < par; i++) {
      const specs = Array.from({ length: 10 }, spec);
      let t = performance.now();
      await Promise.all(specs.map(create));
      ours10.push(performance.now() - t);
      t = performance.now();
      await Promise.all(specs.map((s) => destroy(s.id)));
      oursDestroy10.push(performance.now() - t);
      const rs = await Promise.all(Array.from({ length: 10 }, spec).map(rawPrepare));
      t = performance.now();
      await Promise.all(rs.map((x) => virsh('create', x.file)));
      raw10.push(performance.now() - t);
      await Promise.all(rs.map(rawInitPid));
      t = performance.now();
      await Promise.all(rs.map(rawDestroy));
      rawDestroy10.push(performance.now() - t);
      await rawGone(rs);
    }
    const r = ctx.results;
    r.time('agent.create_to_running_ms', ctx.meta, 'one instance, agent gRPC CreateInstance → RUNNING (tiny image)', ours, { what: 'virsh create, same domain, root already mounted', xs: raw });
    r.time('agent.create10_parallel_ms', ctx.meta, '10 instances in parallel, all RUNNING', ours10, { what: '10 parallel virsh create', xs: raw10 });
    r.time(
      'agent.destroy_ms',
      ctx.meta,
      'destroy one: gRPC DestroyInstance → init SIGKILLed, libvirt domain gone, overlay unmounted, instance folder and record removed, job partition removed (last instance), DELETED published',
      oursDestroy,
      { what: 'kill -9 of the init (pid looked up beforehand, untimed) + virsh destroy + umount of the overlay + rm -r of the instance folder', xs: rawDestroy1 },
    );
    r.time(
      'agent.destroy10_parallel_ms',
      ctx.meta,
      '10 DestroyInstance in parallel, each as in agent.destroy_ms, until all are removed',
      oursDestroy10,
      { what: '10 parallel (kill -9 of the init + virsh destroy + umount + rm -r of the folder)', xs: rawDestroy10 },
    );
    r.time('agent.ssh_ready_ms', ctx.meta, 'CreateInstance → sshd banner on port 22 (tiny image, dropbear)', ssh);
  } finally {
    await agent.close();
    for (const d of execFileSync('virsh', ['-c', 'lxc:///system', 'list', '--name'], { encoding: 'utf8' }).split('\n')) {
      if (d.startsWith(`oc-${benchIdPrefix}`)) await virsh('destroy', d).catch(() => undefined);
    }
    for (const id of await rootfs.list()) await rootfs.remove(id).catch(() => undefined);
    await cgroups.removeJobPartition(rawNode, jobId).catch(() => undefined);
    rmSync(rawInstancesDir, { recursive: true, force: true });
  }
}
