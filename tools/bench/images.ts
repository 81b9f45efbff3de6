/**
 * Image benchmarks (issue: images). One run measures, on the real local cluster:
 * - images.cold_launch_ms (+ _debian): CreateInstance on an agent whose cache lacks the
 *   image: layers fetched from the controller (FetchLayer, gzip), verified, unpacked and
 *   shifted, overlay, domain → RUNNING; baseline: raw `tar -x` of the same layer tar +
 *   overlay mount + `virsh create` of the same domain;
 * - images.warm_launch_ms (+ _debian): the same with the layers cached; baseline: overlay
 *   mount + `virsh create`;
 * - images.save_ms: SaveInstance of a running tiny instance with 8 MiB written in it,
 *   through the controller (agent freezes, tars, streams; controller hashes, gzips,
 *   registers); baseline: `tar -c` of the same upper dir piped to `gzip -1`.
 * The agent is a bench agent of its own (empty cache) that fetches from the cluster's
 * controller with the node token; save goes through an OAR job of `alice` on node-1.
 */
import { execFile, execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync, rmSync, writeFileSync, existsSync, renameSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { credentials } from '@grpc/grpc-js';
import { ImageServiceClient, InstanceServiceClient, InstanceState, JobServiceClient, JobState, type InstanceSpec } from '@oarcloud/api';
import { bearer, callUnary, nullLogger } from '@oarcloud/common';
import { agentClient, AGENT_ADDRESSES, CONTROLLER_ADDRESS, localStateDir, oarsub, tinyImage, debianImage, userToken, waitFor, type BuiltImage } from '@oarcloud/testkit';
import { domainName, domainXml, HostCgroups, OverlayRootfs } from '../../packages/agent/src/index.js';
import type { BenchContext } from './agent.js';
import { benchIdPrefix, startBenchAgent } from './bench-agent.js';

const run = promisify(execFile);

export async function benchImages(ctx: BenchContext): Promise<void> {
  const state = localStateDir();
  const admin = bearer(readFileSync(join(state, 'controller/admin.token'), 'utf8').trim());
  const imagesApi = new ImageServiceClient(CONTROLLER_ADDRESS, credentials.createInsecure());
  // The images must be in the controller's store (infra/local/up.sh imports what is built).
  const known = new Set((await callUnary(imagesApi.listImages.bind(imagesApi), {}, { metadata: admin })).images.map((i) => i.name));
  const tiny = tinyImage();
  let debian: BuiltImage | undefined = debianImage();
  if (!known.has(tiny.name)) throw new Error(`${tiny.name} is not in the controller's image store: run infra/local/up.sh`);
  if (!known.has(debian.name)) {
    console.warn(`bench images: ${debian.name} not in the controller's store, debian figures skipped`);
    debian = undefined;
  }
  try {
    await launches(ctx, state, tiny, '');
    if (debian) await launches(ctx, state, debian, '_debian');
    await save(ctx, state);
  } finally {
    imagesApi.close();
  }
}

/** Cold and warm launches of one image on a fresh bench agent, with their raw baselines. */
async function launches(ctx: BenchContext, state: string, image: BuiltImage, suffix: string): Promise<void> {
  const n = ctx.quick ? 3 : suffix ? 5 : 10;
  const agent = await startBenchAgent({
    prefix: 'bench-images',
    jobBase: 980_000,
    config: { controllerAddress: CONTROLLER_ADDRESS, controllerTokenFile: join(state, 'controller/node.token') },
  });
  const { node, jobId, dir, instancesDir } = agent;
  const layerDir = (d: string) => join(dir, 'state', 'layers', 'sha256', d.slice(7));
  const dropCache = (): void => {
    for (const l of image.layers) {
      if (!existsSync(layerDir(l))) continue;
      const trash = join(dir, 'state', 'layers', 'tmp', `${l.slice(7)}.rm-bench`);
      renameSync(layerDir(l), trash);
      rmSync(trash, { recursive: true, force: true });
    }
  };
  const spec = (): InstanceSpec => agent.spec(image, { memoryMib: 256 });
  const create = (sp: InstanceSpec) => agent.create(sp, 300_000);
  const destroy = (id: string) => agent.destroy(id);

  // Raw baseline: tar -x of the same (uncompressed) layer tar, overlay, virsh create.
  const cgroups = await HostCgroups.create({ log: nullLogger });
  const rawNode = `${node}-raw`;
  const partition = await cgroups.ensureJobPartition(rawNode, jobId, '0-1');
  const rawLayer = join(dir, 'raw-layer');
  const rawInstancesDir = `${instancesDir}-raw`;
  const rootfs = new OverlayRootfs({ instancesDir: rawInstancesDir, layers: { path: () => rawLayer, has: async () => true }, idmapBase: 100_000, log: nullLogger });
  const virsh = (...args: string[]) => run('virsh', ['-c', 'lxc:///system', ...args]);
  const rawCreate = async (s: InstanceSpec): Promise<void> => {
    const { rootDir } = await rootfs.ensure(s.id, [image.layers[0]!]);
    const file = join(dir, `${s.id}.xml`);
    writeFileSync(file, domainXml({ instanceId: s.id, jobId, node: rawNode, rootDir, init: '/sbin/init', vcpus: 1, cpuset: '0-1', memoryMib: 256, cpuShares: 1024, partition, idmap: { start: 100_000, count: 65_536 }, interfaces: [] }));
    await virsh('create', file);
  };
  const rawDestroy = async (s: InstanceSpec): Promise<void> => {
    await virsh('destroy', domainName(s.id));
    await rootfs.remove(s.id);
  };

  const cold: number[] = [];
  const warm: number[] = [];
  const rawCold: number[] = [];
  const rawWarm: number[] = [];
  try {
    for (let i = 0; i < n; i++) {
      // Cold: nothing of the image on the node.
      dropCache();
      let s = spec();
      let t = performance.now();
      await create(s);
      cold.push(performance.now() - t);
      await destroy(s.id);
      // Warm: the layers are cached.
      s = spec();
      t = performance.now();
      await create(s);
      warm.push(performance.now() - t);
      await destroy(s.id);
      // Raw cold: unpack the tar, mount, virsh create.
      rmSync(rawLayer, { recursive: true, force: true });
      mkdirSync(rawLayer);
      s = spec();
      t = performance.now();
      await run('tar', ['-x', '--numeric-owner', '-p', '-C', rawLayer, '-f', image.layerTar]);
      await rawCreate(s);
      rawCold.push(performance.now() - t);
      await rawDestroy(s);
      // Raw warm: mount, virsh create.
      s = spec();
      t = performance.now();
      await rawCreate(s);
      rawWarm.push(performance.now() - t);
      await rawDestroy(s);
    }
    const r = ctx.results;
    const what = `${image.name}, ${Math.round(image.size / 1024 / 1024)} MiB layer`;
    r.time(`images.cold_launch_ms${suffix}`, ctx.meta, `first launch on a node with a cold cache (${what}): fetch from the controller + verify + unpack + RUNNING`, cold, {
      what: 'raw tar -x of the same layer tar + overlay + virsh create',
      xs: rawCold,
    });
    r.time(`images.warm_launch_ms${suffix}`, ctx.meta, `launch with the layers cached (${what}): CreateInstance → RUNNING`, warm, { what: 'overlay + virsh create', xs: rawWarm });
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

/** SaveInstance of a running instance (8 MiB written in it), through the cluster. */
async function save(ctx: BenchContext, state: string): Promise<void> {
  const n = ctx.quick ? 3 : 10;
  const c = credentials.createInsecure();
  const jobs = new JobServiceClient(CONTROLLER_ADDRESS, c);
  const inst = new InstanceServiceClient(CONTROLLER_ADDRESS, c);
  const images = new ImageServiceClient(CONTROLLER_ADDRESS, c);
  const agent = agentClient(AGENT_ADDRESSES['node-1']!, 'node-1');
  const md = { metadata: bearer(await userToken('alice')), timeoutMs: 120_000 };
  const jobId = oarsub('alice', ['-t', 'cloud', '-l', 'host=1/core=1,walltime=0:15:00', '-p', "network_address='node-1'", 'sleep 900']);
  const names: string[] = [];
  const ours: number[] = [];
  const raw: number[] = [];
  try {
    await waitFor(async () => (await callUnary(jobs.getJob.bind(jobs), { id: jobId }, md)).state === JobState.JOB_STATE_RUNNING, { timeoutMs: 60_000, intervalMs: 300, what: 'bench job running' });
    const res = await callUnary(inst.runInstances.bind(inst), { jobId, spec: { image: tinyImage().name, count: 1, vcpus: 1, memoryMib: 128, sshAuthorizedKeys: [], namePrefix: 'save' }, networks: [], idempotencyKey: '' }, md);
    const id = res.instances[0]!.spec!.id;
    await waitFor(async () => (await callUnary(inst.getInstance.bind(inst), { id }, md)).state === InstanceState.INSTANCE_STATE_RUNNING, { timeoutMs: 60_000, intervalMs: 200, what: 'bench instance running' });
    const pid = (await callUnary(agent.getInstance.bind(agent), { id }, { timeoutMs: 5000 })).initPid;
    execFileSync('nsenter', ['-t', String(pid), '-a', '--', '/bin/sh', '-c', 'mkdir -p /opt/data && dd if=/dev/urandom of=/opt/data/blob bs=1M count=8 2>/dev/null && echo hi > /root/hello']);
    const upper = join(state, 'instances', 'node-1', id, 'upper');
    for (let i = 0; i < n; i++) {
      const name = `benchsave:${process.pid}-${i}`;
      let t = performance.now();
      await callUnary(images.saveInstance.bind(images), { instanceId: id, name }, md);
      ours.push(performance.now() - t);
      names.push(name);
      t = performance.now();
      await run('bash', ['-c', `tar -C '${upper}' -cf - . | gzip -1 > /dev/null`]);
      raw.push(performance.now() - t);
    }
    ctx.results.time('images.save_ms', ctx.meta, 'SaveInstance of a running tiny instance with 8 MiB written (freeze, tar, stream, hash + gzip, register)', ours, {
      what: 'tar -c of the same upper dir | gzip -1',
      xs: raw,
    });
  } finally {
    for (const name of names) await callUnary(images.deleteImage.bind(images), { name }, md).catch(() => undefined);
    await callUnary(jobs.release.bind(jobs), { id: jobId }, md).catch(() => undefined);
    for (const x of [jobs, inst, images, agent]) x.close();
  }
}
