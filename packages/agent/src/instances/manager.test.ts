import { describe, expect, it, beforeEach } from 'vitest';
import { AlreadyExistsError, InternalError, InvalidArgumentError, memoryLogger, NotFoundError, UnavailableError } from '@oarcloud/common';
import { FakeCgroups } from '../drivers/cgroups/index.js';
import { FakeRuntime, FakeHost } from '../drivers/fake/runtime.js';
import { FakeLayerStore, FakeRootfs } from '../drivers/images/index.js';
import { InstanceManager, type ManagerOptions } from './manager.js';
import type { NodeNetworks } from '../network/node-networks.js';
import type { InstanceRecord, InstanceSpec } from './model.js';
import { MemoryRecordStore } from './records.js';

const LAYER = `sha256:${'a'.repeat(64)}`;
const KEY = 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHk0ZTZmYzM2ZTNmNDQ0ZjQ1YjQ5ZjQ0 alice@front';

function spec(over: Partial<InstanceSpec> = {}): InstanceSpec {
  return {
    id: 'i-0123456789ab',
    name: 'web-1',
    jobId: 17,
    owner: 'alice',
    image: { name: 'tiny:latest', layers: [LAYER] },
    vcpus: 1,
    memoryMib: 128,
    cpuset: '0-1',
    sshAuthorizedKeys: [KEY],
    hostname: 'web-1',
    networks: [],
    ...over,
  };
}

function setup() {
  const host = new FakeHost();
  const runtime = new FakeRuntime('node-1', host);
  const layers = new FakeLayerStore();
  layers.layers.set(LAYER, { bytes: 1 });
  const rootfs = new FakeRootfs('/fake/instances', layers);
  const cgroups = new FakeCgroups('0-3');
  const records = new MemoryRecordStore();
  const events: InstanceRecord[] = [];
  const log = memoryLogger();
  const parts = { host, runtime, layers, rootfs, cgroups, records, events, log };
  return { ...parts, manager: new InstanceManager(managerOptions(parts)) };
}

interface Parts {
  runtime: FakeRuntime;
  layers: FakeLayerStore;
  rootfs: FakeRootfs;
  cgroups: FakeCgroups;
  records: MemoryRecordStore;
  events: InstanceRecord[];
  log: ReturnType<typeof memoryLogger>;
}

function managerOptions(t: Parts): ManagerOptions {
  return {
    node: 'node-1',
    runtime: t.runtime,
    layers: t.layers,
    rootfs: t.rootfs,
    cgroups: t.cgroups,
    records: t.records,
    events: { instanceChanged: (r) => t.events.push(structuredClone(r)) },
    log: t.log,
    nodeCpus: 4,
    nodeMemoryMib: 4096,
    idmap: { base: 100000, count: 65536 },
  };
}

describe('instance manager - create', () => {
  let t: ReturnType<typeof setup>;
  beforeEach(() => {
    t = setup();
  });

  it('creates a running instance inside the job partition with its identity injected', async () => {
    const rec = await t.manager.create(spec());
    expect(rec.state).toBe('running');
    expect(rec.initPid).toBeGreaterThan(0);
    const dom = t.runtime.domain('i-0123456789ab')!;
    expect(dom.spec.partition).toBe('/machine/oc-node-1-j17.job');
    expect(dom.spec.cpuset).toBe('0-1');
    expect(dom.spec.idmap).toEqual({ start: 100000, count: 65536 });
    // 1 vcpu on a 2-cpu job cpuset: at most one core's worth of CPU time (CFS quota).
    expect(dom.limits).toMatchObject({ cpuShares: 1024, cpuPeriodUs: 100000, cpuQuotaUs: 100000 });
    const files = t.rootfs.instances.get('i-0123456789ab')!.files;
    expect(files.get('/etc/hostname')?.content.toString()).toBe('web-1\n');
    expect(files.get('/root/.ssh/authorized_keys')).toMatchObject({ content: Buffer.from(`${KEY}\n`), mode: 0o600 });
    expect(t.events.map((e) => e.state)).toEqual(['creating', 'running']);
  });

  it('instance manager - the CFS quota is vcpus cores worth of CPU time, whatever the cpuset', async () => {
    await t.manager.create(spec({ id: 'i-00000000000a', name: 'a', vcpus: 3, cpuset: '0-3' }));
    expect(t.runtime.domain('i-00000000000a')!.limits).toMatchObject({ cpuShares: 3072, cpuPeriodUs: 100000, cpuQuotaUs: 300000 });
  });

  it('is idempotent for the same spec and refuses another spec under the same id', async () => {
    await t.manager.create(spec());
    await expect(t.manager.create(spec())).resolves.toMatchObject({ state: 'running' });
    expect(t.runtime.calls.filter((c) => c.method === 'create')).toHaveLength(1);
    await expect(t.manager.create(spec({ memoryMib: 256 }))).rejects.toBeInstanceOf(AlreadyExistsError);
    await expect(t.manager.create(spec({ id: 'i-0123456789ac' }))).rejects.toThrow(/already has an instance named web-1/);
  });

  it.each([
    ['a malformed id', { id: '../../etc' }],
    ['cpus outside the node', { cpuset: '2-7' }],
    ['more vcpus than the job cpus', { vcpus: 3 }],
    ['negative memory', { memoryMib: -5 }],
    ['a huge memory', { memoryMib: 1e9 }],
    ['a bad name', { name: 'Web_1' }],
    ['a bad layer digest', { image: { name: 'tiny:latest', layers: ['sha256:xyz'] } }],
    ['a bad SSH key', { sshAuthorizedKeys: ['not a key\nssh-rsa AAAA'] }],
    ['zero vcpus', { vcpus: 0 }],
  ])('refuses %s with INVALID_ARGUMENT and changes nothing', async (_what, over) => {
    await expect(t.manager.create(spec(over as Partial<InstanceSpec>))).rejects.toBeInstanceOf(InvalidArgumentError);
    expect(t.records.list()).toHaveLength(0);
    expect(t.runtime.calls.filter((c) => c.method === 'create')).toHaveLength(0);
    expect(t.events).toHaveLength(0);
  });

  it('refuses an image whose layer is not on the node with NOT_FOUND', async () => {
    await expect(t.manager.create(spec({ image: { name: 'x:1', layers: [`sha256:${'b'.repeat(64)}`] } }))).rejects.toBeInstanceOf(NotFoundError);
    expect(t.records.list()).toHaveLength(0);
  });

  it('rolls back every step when the domain fails to start', async () => {
    t.runtime.failNext('create', new InternalError('libvirt said no'));
    await expect(t.manager.create(spec())).rejects.toThrow('libvirt said no');
    expect(t.records.list()).toHaveLength(0);
    expect(t.rootfs.instances.size).toBe(0);
    expect(await t.cgroups.listJobPartitions()).toEqual([]);
    expect(t.events.map((e) => e.state)).toEqual(['creating', 'failed', 'deleted']);
  });

  it('rolls back when the overlay cannot be mounted', async () => {
    t.rootfs.failNext('ensure', new InternalError('mount failed'));
    await expect(t.manager.create(spec())).rejects.toThrow('mount failed');
    expect(t.records.list()).toHaveLength(0);
    expect(t.runtime.calls.filter((c) => c.method === 'create')).toHaveLength(0);
  });
});

describe('instance manager - network step', () => {
  it('instance manager - RUNNING is published only once the network is plugged; a failed plug rolls everything back', async () => {
    const t = setup();
    const calls: string[] = [];
    let failPlug: Error | undefined = new UnavailableError('ovsdb unreachable');
    // Only what the manager uses of NodeNetworks; the real one has its own tests.
    const network = {
      records: () => [] as InstanceRecord[],
      plug: async (s: InstanceSpec) => {
        calls.push(`plug ${s.id} running=${t.records.get(s.id)?.state === 'running'}`);
        if (failPlug) throw failPlug;
      },
      unplug: async (s: InstanceSpec) => void calls.push(`unplug ${s.id}`),
      reconcile: async () => ({ removed: [], errors: [] }),
    };
    const manager = new InstanceManager({ ...managerOptions(t), network: network as unknown as NodeNetworks });
    const withNet = spec({ networks: [{ networkId: 'n-00000000000a', vni: 5000, interface: 'eth0', mac: '02:0c:0a:5a:00:02', address: '10.90.0.2/24', gateway: '', mtu: 1446 }] });
    await expect(manager.create(withNet)).rejects.toBeInstanceOf(UnavailableError);
    expect(calls).toEqual(['plug i-0123456789ab running=false', 'unplug i-0123456789ab']);
    expect(t.events.map((e) => e.state)).toEqual(['creating', 'failed', 'deleted']);
    expect(t.runtime.domain('i-0123456789ab')).toBeUndefined();
    expect(t.records.list()).toHaveLength(0);
    expect(t.rootfs.instances.size).toBe(0);
    expect(await t.cgroups.listJobPartitions()).toEqual([]);
    failPlug = undefined;
    t.events.length = 0;
    await expect(manager.create(withNet)).resolves.toMatchObject({ state: 'running' });
    expect(t.events.map((e) => e.state)).toEqual(['creating', 'running']);
  });
});

describe('instance manager - lifecycle', () => {
  it('stops, starts and destroys; destroy is idempotent and releases the job partition', async () => {
    const t = setup();
    await t.manager.create(spec());
    expect((await t.manager.stop('i-0123456789ab')).state).toBe('stopped');
    expect(t.runtime.domain('i-0123456789ab')).toBeUndefined();
    expect((await t.manager.start('i-0123456789ab')).state).toBe('running');
    // A restart does not inject the identity again.
    expect(t.rootfs.callsOf('inject')).toHaveLength(1);
    expect(await t.manager.destroy('i-0123456789ab')).toBe(true);
    expect(await t.manager.destroy('i-0123456789ab')).toBe(false);
    expect(t.rootfs.instances.size).toBe(0);
    expect(await t.cgroups.listJobPartitions()).toEqual([]);
    expect(t.events.at(-1)?.state).toBe('deleted');
  });

  it('releases a whole job, leaving other jobs alone', async () => {
    const t = setup();
    await t.manager.create(spec());
    await t.manager.create(spec({ id: 'i-00000000000b', name: 'web-2', hostname: 'web-2' }));
    await t.manager.create(spec({ id: 'i-00000000000c', name: 'other', hostname: 'other', jobId: 18 }));
    expect((await t.manager.releaseJob(17)).sort()).toEqual(['i-00000000000b', 'i-0123456789ab']);
    expect(t.manager.list().map((r) => r.spec.id)).toEqual(['i-00000000000c']);
    expect(await t.cgroups.listJobPartitions()).toEqual([{ node: 'node-1', jobId: 18 }]);
  });

  it('serialises operations on one instance', async () => {
    const t = setup();
    const [a, b] = await Promise.all([t.manager.create(spec()), t.manager.create(spec())]);
    expect(a.spec.id).toBe(b.spec.id);
    expect(t.runtime.calls.filter((c) => c.method === 'create')).toHaveLength(1);
  });
});

describe('instance manager - reconcile', () => {
  it('removes orphan domains, roots and partitions that no record explains', async () => {
    const t = setup();
    await t.manager.create(spec());
    t.records.map.clear();
    const report = await t.manager.reconcile();
    expect(report.orphanDomains).toEqual(['i-0123456789ab']);
    expect(report.orphanRootfs).toEqual(['i-0123456789ab']);
    expect(report.orphanPartitions).toEqual(['job 17']);
    expect(await t.runtime.list()).toEqual([]);
    expect(await t.rootfs.list()).toEqual([]);
  });

  it('never touches another node’s domains', async () => {
    const t = setup();
    const other = new FakeRuntime('node-2', t.host);
    await other.create({ instanceId: 'i-00000000beef', jobId: 5, node: 'node-2', rootDir: '/x', init: '/sbin/init', vcpus: 1, cpuset: '0', memoryMib: 64, interfaces: [] });
    await t.manager.reconcile();
    expect(await other.list()).toHaveLength(1);
  });

  it('marks an instance whose init died as stopped, and adopts a running domain after a restart', async () => {
    const t = setup();
    await t.manager.create(spec());
    t.host.kill('i-0123456789ab');
    const r1 = await t.manager.reconcile();
    expect(r1.stateChanges).toEqual([{ id: 'i-0123456789ab', from: 'running', to: 'stopped' }]);
    expect(t.manager.get('i-0123456789ab').reason).toBe('instance exited');
    // A new manager over the same records and host (agent restart) re-attaches.
    await t.manager.start('i-0123456789ab');
    const again = new InstanceManager({
      node: 'node-1', runtime: new FakeRuntime('node-1', t.host), layers: t.layers, rootfs: t.rootfs, cgroups: t.cgroups,
      records: t.records, events: { instanceChanged: () => {} }, log: t.log, nodeCpus: 4, nodeMemoryMib: 4096,
    });
    const r2 = await again.reconcile();
    expect(r2.adopted).toEqual(['i-0123456789ab']);
    expect(r2.orphanDomains).toEqual([]);
  });

  it('rolls back a create that a crash interrupted', async () => {
    const t = setup();
    await t.manager.create(spec());
    const rec = t.records.get('i-0123456789ab')!;
    t.records.put({ ...rec, state: 'creating' });
    const report = await t.manager.reconcile();
    expect(report.rolledBack).toEqual(['i-0123456789ab']);
    expect(t.records.list()).toEqual([]);
    expect(await t.runtime.list()).toEqual([]);
  });

  it('goes on after a failing step and reports it', async () => {
    const t = setup();
    await t.manager.create(spec());
    await t.manager.create(spec({ id: 'i-00000000000b', name: 'web-2', hostname: 'web-2' }));
    t.records.map.clear();
    t.runtime.failNext('destroy', new InternalError('stuck'));
    const report = await t.manager.reconcile();
    expect(report.errors).toHaveLength(1);
    expect(report.orphanDomains).toHaveLength(1);
    const second = await t.manager.reconcile();
    expect(second.orphanDomains).toHaveLength(1);
    expect(await t.runtime.list()).toEqual([]);
  });
});
