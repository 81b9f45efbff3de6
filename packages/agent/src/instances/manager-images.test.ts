import { mkdirSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { InvalidArgumentError, memoryLogger, NotFoundError, UnavailableError } from '@oarcloud/common';
import { FakeCgroups } from '../drivers/cgroups/index.js';
import { FakeHost, FakeRuntime } from '../drivers/fake/runtime.js';
import { FakeLayerStore, FakeRootfs } from '../drivers/images/index.js';
import { InstanceManager } from './manager.js';
import type { InstanceRecord, InstanceSpec } from './model.js';
import { MemoryRecordStore } from './records.js';

const LAYER = `sha256:${'b'.repeat(64)}`;
const VOL = 'v-00000000000a';
const isRoot = process.getuid?.() === 0;

const spec = (over: Partial<InstanceSpec> = {}): InstanceSpec => ({
  id: 'i-0000000000aa',
  name: 'web-1',
  jobId: 21,
  owner: 'alice',
  image: { name: 'saved:v1', layers: [LAYER] },
  vcpus: 1,
  memoryMib: 64,
  cpuset: '0',
  sshAuthorizedKeys: [],
  hostname: 'web-1',
  networks: [],
  ...over,
});

describe('instance manager - image layers fetched on demand, volumes', () => {
  let tmp: string;
  let layers: FakeLayerStore;
  let runtime: FakeRuntime;
  let records: MemoryRecordStore;
  let events: InstanceRecord[];
  let ensured: string[][];
  let failFetch: Error | undefined;
  let manager: InstanceManager;
  beforeEach(() => {
    tmp = mkdtempSync(join(tmpdir(), 'oc-mgr-img-'));
    layers = new FakeLayerStore();
    runtime = new FakeRuntime('node-1', new FakeHost());
    records = new MemoryRecordStore();
    events = [];
    ensured = [];
    failFetch = undefined;
    manager = new InstanceManager({
      node: 'node-1',
      runtime,
      layers,
      rootfs: new FakeRootfs('/fake/instances', layers),
      cgroups: new FakeCgroups('0-3'),
      records,
      events: { instanceChanged: (r) => events.push(structuredClone(r)) },
      log: memoryLogger(),
      nodeCpus: 4,
      nodeMemoryMib: 4096,
      idmap: { base: 100000, count: 65536 },
      images: {
        ensure: async (ls) => {
          // The record exists while layers are fetched: the cache sees them in use.
          ensured.push(records.list().flatMap((r) => r.spec.image.layers));
          if (failFetch) throw failFetch;
          for (const l of ls) layers.add(l);
        },
      },
      volumesDir: join(tmp, 'volumes'),
    });
  });
  afterEach(() => rmSync(tmp, { recursive: true, force: true }));

  it('create - a layer missing on the node is fetched, with the instance recorded first', async () => {
    await expect(manager.create(spec())).resolves.toMatchObject({ state: 'running' });
    expect(ensured).toEqual([[LAYER]]);
    expect(await layers.has(LAYER)).toBe(true);
  });

  it('create - a failed fetch leaves nothing: no record, no domain, failed then deleted reported', async () => {
    failFetch = new UnavailableError('controller unreachable');
    await expect(manager.create(spec())).rejects.toBeInstanceOf(UnavailableError);
    expect(records.list()).toEqual([]);
    expect(await runtime.list()).toEqual([]);
    expect(events.map((e) => e.state)).toEqual(['creating', 'failed', 'deleted']);
  });

  it.skipIf(!isRoot)('volumes - bind-mounted at their path, handed to the container root, unknown ones NOT_FOUND, bad paths refused', async () => {
    mkdirSync(join(tmp, 'volumes', VOL), { recursive: true });
    await manager.create(spec({ volumes: [{ volumeId: VOL, path: '/data', readOnly: false }] }));
    expect(runtime.domain('i-0000000000aa')!.spec.mounts).toEqual([{ source: join(tmp, 'volumes', VOL), target: '/data', readOnly: false }]);
    expect(statSync(join(tmp, 'volumes', VOL)).uid).toBe(100000);
    await expect(manager.create(spec({ id: 'i-0000000000ab', name: 'web-2', volumes: [{ volumeId: 'v-00000000000b', path: '/data', readOnly: false }] }))).rejects.toBeInstanceOf(NotFoundError);
    expect(() => manager.validate(spec({ volumes: [{ volumeId: VOL, path: '/../etc', readOnly: false }] }))).toThrow(InvalidArgumentError);
    expect(() => manager.validate(spec({ volumes: [{ volumeId: '../../x', path: '/data', readOnly: false }] }))).toThrow(InvalidArgumentError);
  });
});
