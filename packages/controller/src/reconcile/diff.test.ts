import { describe, expect, it } from 'vitest';
import type { ActualInstance, InstanceRecord, JobRecord } from '../domain.js';
import { diff } from './diff.js';

const job = (id: number, over: Partial<JobRecord> = {}): JobRecord => ({
  id, owner: 'alice', state: 'running', oarState: 'Running', hosts: [], specId: '', walltimeS: 60, startedAtMs: 0, endedAtMs: 0, lastLogId: 0, specApplied: false, error: '', releasedAtMs: 0, ...over,
});
const want = (id: string, jobId: number, over: Partial<InstanceRecord> = {}): InstanceRecord => ({
  id, jobId, owner: 'alice', name: id, node: 'n1', vcpus: 1, memoryMib: 64, image: 'x:1', sshKeys: [], desired: 'running', reported: 'running', reason: '', createdAtMs: 0, updatedAtMs: 0, ...over,
});
const have = (id: string, jobId: number, over: Partial<ActualInstance> = {}): ActualInstance => ({ id, jobId, name: id, node: 'n1', state: 'running', reason: '', ...over });

describe('reconcile - diff', () => {
  it('releases a job OAR ended or does not know, once per node', () => {
    const p = diff({ desired: [], jobs: new Map(), actual: new Map([['n1', [have('a', 5), have('b', 5), have('c', 6)]]]), oarStates: new Map([[5, 'Terminated']]) });
    expect(p.releaseJobs).toEqual([{ node: 'n1', jobId: 5 }, { node: 'n1', jobId: 6 }]);
    expect(p.destroy).toEqual([]);
  });

  it('creates what a live job misses, destroys what it should not have, on reachable nodes only', () => {
    const p = diff({
      desired: [want('a', 1), want('b', 1, { node: 'n2' }), want('d', 1, { desired: 'deleted' })],
      jobs: new Map([[1, job(1)]]),
      actual: new Map([['n1', [have('x', 1), have('d', 1)]]]),
      oarStates: new Map([[1, 'Running']]),
    });
    expect(p.create).toEqual(['a']);
    expect(p.destroy).toEqual([{ node: 'n1', id: 'x' }, { node: 'n1', id: 'd' }]);
    expect(p.releaseJobs).toEqual([]);
  });

  it('an instance of a job we ended is released even if OAR still says Running (epilogue window)', () => {
    const p = diff({ desired: [], jobs: new Map([[1, job(1, { state: 'ended', releasedAtMs: 1 })]]), actual: new Map([['n1', [have('a', 1)]]]), oarStates: new Map([[1, 'Running']]) });
    expect(p.releaseJobs).toEqual([{ node: 'n1', jobId: 1 }]);
  });

  it('reports state changes, stops and starts toward the desired state, marks vanished deleted instances', () => {
    const p = diff({
      desired: [want('a', 1, { desired: 'stopped' }), want('b', 1, { reported: 'running' }), want('c', 1, { desired: 'deleted', reported: 'running' })],
      jobs: new Map([[1, job(1)]]),
      actual: new Map([['n1', [have('a', 1), have('b', 1, { state: 'stopped' })]]]),
      oarStates: new Map([[1, 'Running']]),
    });
    expect(p.stop).toEqual([{ node: 'n1', id: 'a' }]);
    expect(p.start).toEqual([{ node: 'n1', id: 'b' }]);
    expect(p.report).toEqual([{ id: 'b', state: 'stopped', reason: '' }, { id: 'c', state: 'deleted', reason: '' }]);
  });

  it('syncs jobs whose OAR state moved or whose teardown is unfinished, never creates for a pending job', () => {
    const p = diff({
      desired: [want('a', 2, { reported: 'unknown' })],
      jobs: new Map([[1, job(1)], [2, job(2, { state: 'pending', oarState: 'Waiting' })], [3, job(3, { state: 'ended' })]]),
      actual: new Map([['n1', []]]),
      oarStates: new Map([[1, 'Terminated'], [2, 'Waiting'], [3, 'Error']]),
    });
    expect(p.syncJobs).toEqual([1, 3]);
    expect(p.create).toEqual([]);
  });
});
