/**
 * Layer distribution against the real controller of the local cluster and real agents:
 * a private agent (its own state folder, node name, layer cache) whose controller address
 * is a TCP proxy owned by the test in front of the cluster's controller (127.0.0.1:17000),
 * with the cluster's node token. The proxy can cut the stream mid-layer; the test can also
 * replace a layer's blob in the controller's `layersDir` with wrong bytes or a truncated
 * copy (only layers of throwaway images it imported itself, restored in a finally).
 *
 * Shown here:
 * - a stream cut mid-layer is fetched again and the instance runs;
 * - a layer that arrives wrong every time (wrong bytes, truncated gzip, cut on every try):
 *   the create fails with a clear UNAVAILABLE naming the layer, and leaves nothing: no
 *   record, domain, overlay or folder, no layer in the cache and nothing half-unpacked in
 *   its tmp folder; a layer folder appears in the cache only once complete, and instances
 *   only ever mount complete layers; once the source is good again the layer is fetched
 *   anew and the instance runs;
 * - a cache with a tiny budget (`layerCacheBytes`) evicts unused layers only, never one an
 *   instance uses, least recently used first.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, watch, writeFileSync, type FSWatcher } from 'node:fs';
import { createHash } from 'node:crypto';
import { connect as netConnect, createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { credentials } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AgentServiceClient, ImageServiceClient, InstanceState, type Image, type InstanceSpec } from '@oarcloud/api';
import { bearer, callUnary, fromGrpcError } from '@oarcloud/common';
import {
  CONTROLLER_ADDRESS,
  freePort,
  grpcHealth,
  launchDaemon,
  localStateDir,
  needCommand,
  needPath,
  needRoot,
  prerequisites,
  tinyImage,
  waitFor,
  type BuiltImage,
  type DaemonProcess,
} from '@oarcloud/testkit';

const STATE = localStateDir();
const NODE_TOKEN = join(STATE, 'controller/node.token');
const ADMIN_TOKEN = join(STATE, 'controller/admin.token');
const BLOBS = join(STATE, 'controller/layers');
const p = prerequisites('layers', [
  needRoot,
  needCommand('virsh', '-c', 'lxc:///system', 'version'),
  needCommand('nsenter', '--version'),
  needPath('packages/agent/dist/main.js'),
  needPath(NODE_TOKEN),
  needPath(ADMIN_TOKEN),
  needPath(BLOBS),
  needPath(join(STATE, 'instances')),
]);

const hexOf = (digest: string): string => digest.slice('sha256:'.length);
const sha256File = (path: string): string => `sha256:${createHash('sha256').update(readFileSync(path)).digest('hex')}`;

// ------------------------------------------------------------------ the TCP proxy

interface Proxy {
  address: string;
  /** TCP connections accepted so far. */
  connections: number;
  /** Connections the proxy cut. */
  cuts: number;
  /**
   * The next `times` times the controller has sent `afterBytes` bytes (counted on any
   * connection from now on), that connection is destroyed on both sides.
   */
  arm(times: number, afterBytes: number): void;
  close(): Promise<void>;
}

async function startProxy(target: string): Promise<Proxy> {
  const [host, port] = [target.split(':')[0]!, Number(target.split(':')[1])];
  const open = new Set<Socket>();
  let armed = 0;
  let after = 0;
  let seen = 0;
  const proxy: Proxy = {
    address: '',
    connections: 0,
    cuts: 0,
    arm(times, afterBytes) {
      armed = times;
      after = afterBytes;
      seen = 0;
    },
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of open) s.destroy();
        server.close(() => resolve());
      }),
  };
  const server: Server = createServer((client) => {
    proxy.connections++;
    const upstream = netConnect(port, host);
    open.add(client);
    open.add(upstream);
    const drop = (): void => {
      client.destroy();
      upstream.destroy();
      open.delete(client);
      open.delete(upstream);
    };
    client.on('error', drop);
    upstream.on('error', drop);
    client.on('close', drop);
    upstream.on('close', drop);
    client.pipe(upstream);
    upstream.on('data', (b: Buffer) => {
      if (armed > 0) {
        seen += b.length;
        if (seen >= after) {
          armed--;
          seen = 0;
          proxy.cuts++;
          drop();
          return;
        }
      }
      if (!client.write(b)) {
        upstream.pause();
        client.once('drain', () => upstream.resume());
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  const a = server.address();
  proxy.address = `127.0.0.1:${typeof a === 'object' && a ? a.port : 0}`;
  return proxy;
}

// --------------------------------------------------------------- a private agent

interface PrivateAgent {
  node: string;
  jobId: number;
  dir: string;
  daemon: DaemonProcess;
  client: AgentServiceClient;
  layersRoot: string;
  instancesDir: string;
  ids: string[];
}

async function startPrivateAgent(tag: string, jobId: number, controllerAddress: string, extra: Record<string, unknown> = {}): Promise<PrivateAgent> {
  const node = `it-${tag}-${process.pid}`;
  const dir = mkdtempSync(join(STATE, `it-${tag}-`));
  const instancesDir = join(STATE, 'instances', node);
  mkdirSync(instancesDir, { recursive: true });
  const daemon = await launchDaemon('agent', dir, {
    nodeName: node,
    listen: `127.0.0.1:${await freePort()}`,
    metricsListen: `127.0.0.1:${await freePort()}`,
    natsUrl: 'nats://127.0.0.1:14222',
    libvirtUri: 'lxc:///system',
    stateDir: join(dir, 'state'),
    instancesDir,
    datapath: 'netdev',
    controllerAddress,
    controllerTokenFile: NODE_TOKEN,
    reconcileMs: 1000,
    heartbeatMs: 1000,
    logLevel: 'debug',
    ...extra,
  });
  return { node, jobId, dir, daemon, client: new AgentServiceClient(daemon.address, credentials.createInsecure()), layersRoot: join(dir, 'state', 'layers'), instancesDir, ids: [] };
}

let seq = 0;
function spec(a: PrivateAgent, image: { name: string; layers: string[] }): InstanceSpec {
  const id = `i-${(Date.now() % 1e6).toString(16).padStart(6, '0')}${(++seq).toString(16).padStart(6, '0')}`;
  a.ids.push(id);
  return { id, name: `l-${id.slice(2)}`, jobId: a.jobId, owner: 'alice', image: { name: image.name, layers: [...image.layers] }, vcpus: 1, memoryMib: 64, cpuset: '0', sshAuthorizedKeys: [], hostname: `l-${id.slice(2)}`, networks: [] };
}

const create = (a: PrivateAgent, s: InstanceSpec) => callUnary(a.client.createInstance.bind(a.client), { spec: s }, { timeoutMs: 120_000 });
const destroy = (a: PrivateAgent, id: string) => callUnary(a.client.destroyInstance.bind(a.client), { id }, { timeoutMs: 60_000 });
const list = async (a: PrivateAgent) => (await callUnary(a.client.listInstances.bind(a.client), { jobId: 0 })).instances;

/** Cached layers of the agent (sha256/ entries) and what is in its tmp/ folder. */
const cached = (a: PrivateAgent): string[] => (existsSync(join(a.layersRoot, 'sha256')) ? readdirSync(join(a.layersRoot, 'sha256')).sort() : []);
const tmpLeft = (a: PrivateAgent): string[] => (existsSync(join(a.layersRoot, 'tmp')) ? readdirSync(join(a.layersRoot, 'tmp')) : []);

/** The agent's log records with this message. */
function logged(a: PrivateAgent, msg: string): Array<Record<string, unknown>> {
  return readFileSync(a.daemon.logFile, 'utf8')
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as Record<string, unknown>)
    .filter((r) => r.msg === msg);
}

/** Host objects of an agent's node: domains, overlay mounts, instance folders, job cgroups. */
function hostObjects(a: PrivateAgent): { domains: string[]; mounts: string[]; dirs: string[]; cgroups: string[] } {
  const domains = execFileSync('virsh', ['-c', 'lxc:///system', 'list', '--all', '--name'], { encoding: 'utf8' })
    .split('\n')
    .filter((n) => a.ids.some((id) => n === `oc-${id}`));
  const mounts = readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .filter((l) => l.includes(a.instancesDir));
  const dirs = existsSync(a.instancesDir) ? readdirSync(a.instancesDir).filter((d) => d.startsWith('i-')) : [];
  const cgroups = ['cpu', 'cpuset', 'memory', 'pids', 'freezer'].map((c) => `/sys/fs/cgroup/${c}/machine/oc-${a.node}-j${a.jobId}.job`).filter((d) => existsSync(d));
  return { domains, mounts, dirs, cgroups };
}

/** Lower dirs of the overlay mounted for instance `id` (its root filesystem). */
function lowerDirs(a: PrivateAgent, id: string): string[] {
  const line = readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .find((l) => l.includes(`${a.instancesDir}/${id}/`) && l.includes(' overlay '));
  return /lowerdir=([^,\s]+)/.exec(line ?? '')?.[1]?.split(':') ?? [];
}

/** A shell command inside the instance whose init is `pid`. */
const inInstance = (pid: number, script: string): string => execFileSync('nsenter', ['-t', String(pid), '-a', '--', '/bin/sh', '-c', script], { encoding: 'utf8', timeout: 20_000 });

/** Best effort: everything of a private agent gone, whatever state the test left it in. */
async function teardown(a: PrivateAgent | undefined): Promise<void> {
  if (!a) return;
  await callUnary(a.client.releaseJob.bind(a.client), { jobId: a.jobId }, { timeoutMs: 120_000 }).catch(() => undefined);
  a.client.close();
  await a.daemon.stop();
  for (const id of a.ids) spawnSync('virsh', ['-c', 'lxc:///system', 'destroy', `oc-${id}`], { stdio: 'ignore' });
  for (const m of readFileSync('/proc/self/mountinfo', 'utf8').split('\n').map((l) => l.split(' ')[4] ?? '').filter((m) => m.startsWith(`${a.instancesDir}/`)).reverse()) {
    execFileSync('umount', ['-l', m], { stdio: 'ignore' });
  }
  rmSync(a.instancesDir, { recursive: true, force: true });
  execFileSync('bash', ['-c', `for d in /sys/fs/cgroup/*/machine/oc-${a.node}-j*.job; do [ -d "$d" ] && find "$d" -depth -type d -exec rmdir {} \\; ; done; true`]);
  rmSync(a.dir, { recursive: true, force: true });
}

// ------------------------------------------------------ throwaway controller images

/** tiny's layer with one more file: a layer of its own (its own digest and blob). */
function variantTar(base: BuiltImage, dir: string, marker: string): string {
  const out = join(dir, `${marker}.tar`);
  copyFileSync(base.layerTar, out);
  const extra = join(dir, `${marker}.d`);
  mkdirSync(extra);
  writeFileSync(join(extra, 'oarcloud-test-marker'), `${marker}\n`);
  execFileSync('tar', ['--append', '-f', out, '-C', extra, '--numeric-owner', '--owner=0', '--group=0', '--mtime=@0', './oarcloud-test-marker']);
  return out;
}

function importImage(images: ImageServiceClient, name: string, file: string): Promise<Image> {
  return new Promise((resolve, reject) => {
    const call = images.importImage(bearer(readFileSync(ADMIN_TOKEN, 'utf8').trim()), { deadline: Date.now() + 120_000 }, (err, img) => (err ? reject(fromGrpcError(err)) : resolve(img)));
    call.write({ part: { $case: 'header', value: { name, public: false } } });
    const data = readFileSync(file);
    for (let o = 0; o < data.length; o += 1 << 20) call.write({ part: { $case: 'data', value: data.subarray(o, o + (1 << 20)) } });
    call.end();
  });
}

/** Swaps a controller blob for other bytes; returns the undo (put back the original, atomically). */
function replaceBlob(digest: string, bytes: Buffer, scratch: string): () => void {
  const blob = join(BLOBS, `${hexOf(digest)}.tar.gz`);
  const backup = join(scratch, `${hexOf(digest)}.orig`);
  if (!existsSync(backup)) copyFileSync(blob, backup);
  const tmp = `${blob}.it-${process.pid}`;
  writeFileSync(tmp, bytes, { mode: 0o600 });
  renameSync(tmp, blob);
  return () => {
    copyFileSync(backup, tmp);
    renameSync(tmp, blob);
  };
}

describe.skipIf(!p.ok)('layers - fetching from the real controller through a faulty link, and the cache budget', () => {
  const tag = Math.random().toString(16).slice(2, 8);
  const images = new ImageServiceClient(CONTROLLER_ADDRESS, credentials.createInsecure());
  let scratch = '';
  let tiny: BuiltImage;
  let imgB: Image;
  let imgC: Image;
  let proxy: Proxy;
  const restores: Array<() => void> = [];

  beforeAll(async () => {
    expect(await grpcHealth(CONTROLLER_ADDRESS)).toBe('SERVING');
    tiny = tinyImage();
    const onController = await callUnary(images.getImage.bind(images), { name: 'tiny:latest' }, { metadata: bearer(readFileSync(ADMIN_TOKEN, 'utf8').trim()) });
    expect(onController.layers).toEqual(tiny.layers);
    scratch = mkdtempSync(join(STATE, 'it-layers-scratch-'));
    const tarB = variantTar(tiny, scratch, `b-${tag}`);
    const tarC = variantTar(tiny, scratch, `c-${tag}`);
    imgB = await importImage(images, `it-layers-b-${tag}:1`, tarB);
    imgC = await importImage(images, `it-layers-c-${tag}:1`, tarC);
    expect(imgB.layers).toEqual([sha256File(tarB)]);
    expect(imgC.layers).toEqual([sha256File(tarC)]);
    expect(existsSync(join(BLOBS, `${hexOf(imgC.layers[0]!)}.tar.gz`))).toBe(true);
    proxy = await startProxy(CONTROLLER_ADDRESS);
  });

  afterAll(async () => {
    for (const r of restores.splice(0)) r();
    await proxy?.close();
    const admin = { metadata: bearer(readFileSync(ADMIN_TOKEN, 'utf8').trim()) };
    for (const img of [imgB, imgC]) if (img) await callUnary(images.deleteImage.bind(images), { name: img.name }, admin).catch(() => undefined);
    images.close();
    if (scratch) rmSync(scratch, { recursive: true, force: true });
  });

  describe('a faulty source', () => {
    let a: PrivateAgent;
    let watcher: FSWatcher;
    /** Every name that ever appeared in the agent's sha256/ folder. */
    const appeared: string[] = [];

    beforeAll(async () => {
      a = await startPrivateAgent('fetch', 910_000 + (process.pid % 10_000), proxy.address);
      // The store makes sha256/ at its first use: make it now, to watch it from the start.
      mkdirSync(join(a.layersRoot, 'sha256'), { recursive: true, mode: 0o700 });
      watcher = watch(join(a.layersRoot, 'sha256'), (_ev, name) => name && appeared.push(name));
    });

    afterAll(async () => {
      watcher?.close();
      await teardown(a);
    });

    it('layers - a stream cut in the middle of a layer is fetched again, and the instance runs on the complete layer', async () => {
      const layer = imgB.layers[0]!;
      expect(cached(a)).toEqual([]);
      const before = proxy.connections;
      proxy.arm(1, 1024 * 1024);
      const s = spec(a, imgB);
      const inst = await create(a, s);
      expect(inst.state).toBe(InstanceState.INSTANCE_STATE_RUNNING);
      expect(proxy.cuts).toBe(1);
      expect(proxy.connections).toBeGreaterThan(before);
      const failed = await waitFor(() => logged(a, 'layer fetch failed').filter((r) => r.digest === layer).at(0) && logged(a, 'layer fetch failed').filter((r) => r.digest === layer), { timeoutMs: 5000, what: 'the failed try logged' });
      expect(failed).toHaveLength(1);
      expect(failed[0]).toMatchObject({ attempt: 1 });
      expect(failed[0]!.received as number).toBeGreaterThan(0);
      // The layer went into the cache once, complete; nothing half-unpacked is left.
      expect(cached(a)).toEqual([hexOf(layer)]);
      expect(appeared.filter((n) => n === hexOf(layer)).length).toBeGreaterThanOrEqual(1);
      expect(tmpLeft(a)).toEqual([]);
      expect(lowerDirs(a, s.id)).toEqual([join(a.layersRoot, 'sha256', hexOf(layer))]);
      expect(inInstance(inst.initPid, 'cat /oarcloud-test-marker; test -x /sbin/init && echo init-ok')).toBe(`b-${tag}\ninit-ok\n`);
      await destroy(a, s.id);
    });

    it('layers - wrong bytes, a truncated blob or a stream cut on every try: the create fails cleanly, nothing half-unpacked is kept; once good again the layer is fetched anew and runs', async () => {
      const layer = imgC.layers[0]!;
      const hex = hexOf(layer);
      const blob = join(BLOBS, `${hex}.tar.gz`);
      const good = readFileSync(blob);
      const cases: Array<{ what: string; arm: () => () => void; reason: RegExp }> = [
        // A valid gzip of another tar: it unpacks, but its sha256 is not the layer's.
        { what: 'wrong bytes', arm: () => replaceBlob(layer, gzipSync(readFileSync(tiny.layerTar), { level: 1 }), scratch), reason: /digest mismatch/ },
        { what: 'truncated blob', arm: () => replaceBlob(layer, good.subarray(0, Math.floor(good.length / 2)), scratch), reason: /unexpected end of file|truncated/ },
        {
          what: 'cut every time',
          arm: () => {
            proxy.arm(1000, 512 * 1024);
            return () => proxy.arm(0, 0);
          },
          reason: /./,
        },
      ];
      for (const c of cases) {
        const undo = c.arm();
        restores.push(undo);
        const logBefore = logged(a, 'layer fetch failed').length;
        const s = spec(a, imgC);
        const err = await create(a, s).then(
          () => undefined,
          (e: Error) => e,
        );
        undo();
        restores.splice(restores.indexOf(undo), 1);
        expect(err, c.what).toBeDefined();
        console.log(`layers: ${c.what}: ${err!.name}: ${err!.message}`);
        expect(err!.name, `${c.what}: ${err!.message}`).toBe('UnavailableError');
        expect(err!.message, c.what).toMatch(new RegExp(`layer ${layer} could not be fetched`));
        expect(err!.message, c.what).toMatch(c.reason);
        // Three tries (the agent's log is written asynchronously), each refused before anything reached the cache.
        await waitFor(() => logged(a, 'layer fetch failed').length - logBefore >= 3 || undefined, { timeoutMs: 5000, what: `${c.what}: 3 failed tries logged` });
        expect(logged(a, 'layer fetch failed').length - logBefore, c.what).toBe(3);
        expect(cached(a), c.what).toEqual([hexOf(imgB.layers[0]!)]);
        expect(appeared.includes(hex), c.what).toBe(false);
        expect(tmpLeft(a), c.what).toEqual([]);
        // Nothing of the instance either.
        expect(await list(a), c.what).toEqual([]);
        expect(hostObjects(a), c.what).toEqual({ domains: [], mounts: [], dirs: [], cgroups: [] });
      }
      expect(readFileSync(blob).equals(good)).toBe(true);

      // The source is good again: a new create fetches the layer anew.
      const s = spec(a, imgC);
      const inst = await create(a, s);
      expect(inst.state).toBe(InstanceState.INSTANCE_STATE_RUNNING);
      expect(cached(a)).toEqual([hexOf(imgB.layers[0]!), hex].sort());
      expect(tmpLeft(a)).toEqual([]);
      expect(lowerDirs(a, s.id)).toEqual([join(a.layersRoot, 'sha256', hex)]);
      expect(inInstance(inst.initPid, 'cat /oarcloud-test-marker')).toBe(`c-${tag}\n`);
      await destroy(a, s.id);
    });
  });

  describe('a cache budget of one byte', () => {
    let a: PrivateAgent;

    beforeAll(async () => {
      a = await startPrivateAgent('evict', 920_000 + (process.pid % 10_000), CONTROLLER_ADDRESS, { layerCacheBytes: 1 });
    });

    afterAll(async () => {
      await teardown(a);
    });

    /** Waits for the n-th eviction pass of the agent to be logged; returns it. */
    const evictionPass = (n: number) => waitFor(() => logged(a, 'layer cache evicted')[n - 1], { timeoutMs: 15_000, intervalMs: 100, what: `eviction pass ${n}` });

    it('layers - unused layers are evicted, least recently used first; a layer an instance uses never is', async () => {
      const A = tiny.layers[0]!;
      const B = imgB.layers[0]!;
      const image = { name: 'tiny:latest', layers: tiny.layers };

      // A alone, in use: over budget, nothing may go.
      const a1 = await create(a, spec(a, image));
      expect((await evictionPass(1)).removed).toBe(0);
      expect(cached(a)).toEqual([hexOf(A)]);

      // B beside it: both in use, both kept.
      const b1 = await create(a, spec(a, imgB));
      expect((await evictionPass(2)).removed).toBe(0);
      expect(cached(a)).toEqual([hexOf(A), hexOf(B)].sort());

      // A's instance gone; launching B again (cached, nothing to fetch) evicts A, keeps B.
      await destroy(a, a1.spec!.id);
      const b2 = await create(a, spec(a, imgB));
      expect((await evictionPass(3)).removed).toBe(1);
      expect(cached(a)).toEqual([hexOf(B)]);
      expect(logged(a, 'layer removed').map((r) => r.digest)).toEqual([A]);
      // Instances over B still read it.
      expect(inInstance(b1.initPid, 'cat /oarcloud-test-marker')).toBe(`b-${tag}\n`);
      expect(inInstance(b2.initPid, 'cat /oarcloud-test-marker')).toBe(`b-${tag}\n`);

      // One of B's instances gone: B is still used by the other, and stays.
      await destroy(a, b1.spec!.id);
      const a2 = await create(a, spec(a, image));
      await waitFor(() => logged(a, 'layer cache evicted').length >= 4 || undefined, { timeoutMs: 15_000, what: 'eviction pass 4' });
      expect(cached(a)).toEqual([hexOf(A), hexOf(B)].sort());
      expect(logged(a, 'layer fetch failed')).toEqual([]);

      // B unused at last: the next launch evicts it, and A (in use) stays.
      await destroy(a, b2.spec!.id);
      const a3 = await create(a, spec(a, image));
      await waitFor(() => (cached(a).length === 1 ? true : undefined), { timeoutMs: 15_000, what: 'B evicted' });
      expect(cached(a)).toEqual([hexOf(A)]);
      expect(logged(a, 'layer removed').map((r) => r.digest)).toEqual([A, B]);
      for (const i of [a2, a3]) expect(inInstance(i.initPid, 'test -x /sbin/init && echo ok')).toBe('ok\n');
      expect(tmpLeft(a)).toEqual([]);
    });
  });
});
