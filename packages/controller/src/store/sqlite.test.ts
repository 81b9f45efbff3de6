import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { AlreadyExistsError, NotFoundError } from '@oarcloud/common';
import type { InstanceRecord, JobRecord } from '../domain.js';
import { MIGRATIONS, SqliteStore } from './sqlite.js';

const job = (id: number, over: Partial<JobRecord> = {}): JobRecord => ({
  id,
  owner: 'alice',
  state: 'pending',
  oarState: 'Waiting',
  hosts: [],
  specId: '',
  walltimeS: 60,
  startedAtMs: 0,
  endedAtMs: 0,
  lastLogId: 0,
  specApplied: false,
  error: '',
  releasedAtMs: 0,
  ...over,
});

const inst = (id: string, jobId: number, over: Partial<InstanceRecord> = {}): InstanceRecord => ({
  id,
  jobId,
  owner: 'alice',
  name: `n-${id.slice(-3)}`,
  node: 'node-1',
  vcpus: 1,
  memoryMib: 128,
  image: 'debian:12',
  sshKeys: ['ssh-ed25519 AAAA k'],
  desired: 'running',
  reported: 'unknown',
  reason: '',
  createdAtMs: 1,
  updatedAtMs: 1,
  ...over,
});

describe('store - sqlite', () => {
  let dir: string | undefined;
  afterEach(() => {
    if (dir) rmSync(dir, { recursive: true, force: true });
    dir = undefined;
  });

  it('migrates a new file to the latest version and keeps data across reopen', () => {
    dir = mkdtempSync(join(tmpdir(), 'oc-store-'));
    const path = join(dir, 'sub', 'state.db');
    const s1 = new SqliteStore(path);
    expect(s1.schemaVersion).toBe(MIGRATIONS.length);
    s1.putJob(job(7, { hosts: [{ node: 'node-1', cpuset: '0-1', cores: 2 }] }));
    s1.setCursor(42);
    s1.close();
    const s2 = new SqliteStore(path);
    expect(s2.schemaVersion).toBe(MIGRATIONS.length);
    expect(s2.getJob(7)?.hosts).toEqual([{ node: 'node-1', cpuset: '0-1', cores: 2 }]);
    expect(s2.getCursor()).toBe(42);
    s2.close();
  });

  it('users and tokens: add, look up by hash, replace revokes, remove', () => {
    const s = new SqliteStore(':memory:');
    expect(s.hasAdmin()).toBe(false);
    s.addUser('root', 'admin', 'h0', 1);
    s.addUser('alice', 'user', 'h1', 2);
    expect(() => s.addUser('alice', 'user', 'h9', 3)).toThrow(AlreadyExistsError);
    expect(s.hasAdmin()).toBe(true);
    expect(s.userByTokenHash('h1')?.name).toBe('alice');
    s.replaceToken('alice', 'h2', 4);
    expect(s.userByTokenHash('h1')).toBeUndefined();
    expect(s.userByTokenHash('h2')?.role).toBe('user');
    expect(() => s.replaceToken('nobody', 'h3', 5)).toThrow(NotFoundError);
    expect(s.removeUser('alice')).toBe(true);
    expect(s.userByTokenHash('h2')).toBeUndefined();
    expect(s.listUsers().map((u) => u.name)).toEqual(['root']);
  });

  it('jobs: put, update, list by owner and liveness', () => {
    const s = new SqliteStore(':memory:');
    s.putJob(job(1));
    s.putJob(job(2, { owner: 'bob', state: 'running' }));
    s.putJob(job(3, { state: 'ended' }));
    expect(s.listJobs({ owner: 'alice' }).map((j) => j.id)).toEqual([3, 1]);
    expect(s.listJobs({ notEnded: true }).map((j) => j.id)).toEqual([2, 1]);
    expect(s.updateJob(1, { specApplied: true, error: 'x' })).toMatchObject({ id: 1, specApplied: true, error: 'x' });
    expect(() => s.updateJob(99, {})).toThrow(NotFoundError);
  });

  it('instances: all-or-nothing insert, unique live names per job, desired/reported updates', () => {
    const s = new SqliteStore(':memory:');
    s.putJob(job(1));
    s.addInstances([inst('i-000000000001', 1, { name: 'a-1' })]);
    expect(() => s.addInstances([inst('i-000000000002', 1, { name: 'a-2' }), inst('i-000000000003', 1, { name: 'a-1' })])).toThrow(AlreadyExistsError);
    expect(s.listInstances({ jobId: 1 }).map((i) => i.id)).toEqual(['i-000000000001']);
    expect(s.setReported('i-000000000001', 'running', '', 5)).toBe(1);
    expect(s.setReported('i-000000000001', 'running', '', 6)).toBeUndefined();
    expect(s.setReported('i-00000000dead', 'running', '', 6)).toBeUndefined();
    expect(s.deleteJobInstances(1, 7)).toBe(1);
    // A deleted name may be reused.
    s.addInstances([inst('i-000000000004', 1, { name: 'a-1' })]);
    s.setReported('i-000000000001', 'deleted', '', 8);
    expect(s.listInstances({ jobId: 1, liveOnly: true }).map((i) => i.id)).toEqual(['i-000000000004']);
    expect(() => s.setDesired('i-00000000dead', 'stopped', 1)).toThrow(NotFoundError);
    expect(() => s.addInstances([inst('i-000000000005', 99)])).toThrow(/FOREIGN KEY/);
  });

  it('networkNodes: the nodes of a network\'s live attached instances, each once, sorted', () => {
    const s = new SqliteStore(':memory:');
    s.putJob(job(1));
    s.addNetwork({ id: 'n-000000000001', jobId: 1, owner: 'alice', name: 'default', subnet: '10.90.0.0/24', gateway: '10.90.0.1', vni: 7, mtu: 1446, nat: false, isDefault: true, createdAtMs: 1 });
    s.addInstances([
      inst('i-000000000001', 1, { name: 'a-1', node: 'node-2' }),
      inst('i-000000000002', 1, { name: 'a-2', node: 'node-1' }),
      inst('i-000000000003', 1, { name: 'a-3', node: 'node-2' }),
      inst('i-000000000004', 1, { name: 'a-4', node: 'node-3' }),
      inst('i-000000000005', 1, { name: 'a-5', node: 'node-4' }),
    ]);
    s.addAttachments(['1', '2', '3', '4'].map((k) => ({ instanceId: `i-00000000000${k}`, networkId: 'n-000000000001', index: 0, address: `10.90.0.${Number(k) + 1}`, mac: `02:0c:0a:5a:00:0${k}` })));
    s.setDesired('i-000000000004', 'deleted', 2);
    expect(s.networkNodes('n-000000000001')).toEqual(['node-1', 'node-2']);
    expect(s.networkNodes('n-00000000dead')).toEqual([]);
  });

  it('group commit: reported states are read back at once, committed on the next turn, and a failed transaction in the same turn undoes only its own writes', async () => {
    dir = mkdtempSync(join(tmpdir(), 'oc-store-'));
    const path = join(dir, 'state.db');
    const s = new SqliteStore(path);
    s.putJob(job(1));
    s.addInstances([inst('i-000000000001', 1, { name: 'a-1' })]);
    expect(s.setReported('i-000000000001', 'running', '', 5)).toBe(1);
    expect(s.getInstance('i-000000000001')?.reported).toBe('running');
    // Same turn: an all-or-nothing insert fails halfway; the report before it stays.
    expect(() => s.addInstances([inst('i-000000000002', 1, { name: 'a-2' }), inst('i-000000000003', 1, { name: 'a-1' })])).toThrow(AlreadyExistsError);
    s.setCursor(42);
    await new Promise((r) => setImmediate(r));
    const other = new SqliteStore(path);
    expect(other.getInstance('i-000000000001')?.reported).toBe('running');
    expect(other.getInstance('i-000000000002')).toBeUndefined();
    expect(other.getCursor()).toBe(42);
    other.close();
    s.close();
  });

  it('cached rows: frozen, fresh after every write, never a row a rollback undid', () => {
    const s = new SqliteStore(':memory:');
    s.putJob(job(1));
    const j = s.getJob(1)!;
    expect(Object.isFrozen(j) && Object.isFrozen(j.hosts)).toBe(true);
    expect(() => {
      (j as { state: string }).state = 'running';
    }).toThrow(TypeError);
    s.updateJob(1, { state: 'running', hosts: [{ node: 'node-1', cpuset: '0', cores: 1 }] });
    expect(s.getJob(1)?.state).toBe('running');
    expect(() =>
      s.transaction(() => {
        s.updateJob(1, { state: 'ended' });
        expect(s.getJob(1)?.state).toBe('ended');
        throw new Error('abort');
      }),
    ).toThrow('abort');
    expect(s.getJob(1)?.state).toBe('running');
    s.addNetwork({ id: 'n-000000000001', jobId: 1, owner: 'alice', name: 'default', subnet: '10.90.0.0/24', gateway: '10.90.0.1', vni: 7, mtu: 1446, nat: false, isDefault: true, createdAtMs: 1 });
    expect(s.getNetwork('n-000000000001')?.vni).toBe(7);
    s.deleteNetwork('n-000000000001');
    expect(s.getNetwork('n-000000000001')).toBeUndefined();
  });

  it('cursor only moves forward; idempotency keys keep the first result', () => {
    const s = new SqliteStore(':memory:');
    expect(s.getCursor()).toBeUndefined();
    s.setCursor(10);
    s.setCursor(5);
    expect(s.getCursor()).toBe(10);
    s.putIdempotent('alice', 'k', '{"a":1}', 1);
    s.putIdempotent('alice', 'k', '{"a":2}', 2);
    expect(s.getIdempotent('alice', 'k')).toBe('{"a":1}');
    expect(s.getIdempotent('bob', 'k')).toBeUndefined();
  });
});
