import { describe, expect, it } from 'vitest';
import { InternalError } from '@oarcloud/common';
import { runtimeContract } from '../runtime.contract.js';
import type { DomainEvent, DomainSpec } from '../runtime.js';
import { FakeHost, FakeRuntime } from './runtime.js';

const spec = (instanceId: string, node: string): DomainSpec => ({
  instanceId,
  jobId: 42,
  node,
  rootDir: `/var/lib/oarcloud/instances/${instanceId}/merged`,
  init: '/sbin/init',
  vcpus: 1,
  cpuset: '0',
  memoryMib: 64,
  interfaces: [],
});

const host = new FakeHost();
runtimeContract(
  'fake',
  async (node) => {
    const runtime = new FakeRuntime(node, host);
    return {
      runtime,
      limits: async (id) => {
        const d = runtime.domain(id);
        if (!d) throw new Error(`no domain ${id}`);
        return { ...d.limits };
      },
    };
  },
  spec,
);

describe('FakeRuntime', () => {
  it('fake runtime - records calls with their arguments', async () => {
    const rt = new FakeRuntime('n1');
    await rt.create(spec('i1', 'n1'));
    await rt.get('i1');
    await rt.destroy('i1');
    expect(rt.calls.map((c) => c.method)).toEqual(['create', 'get', 'destroy']);
    expect(rt.calls[2]!.args).toEqual(['i1']);
  });

  it('fake runtime - failNext fails only the next call of that method', async () => {
    const rt = new FakeRuntime('n1');
    const boom = new InternalError('boom');
    rt.failNext('create', boom);
    await expect(rt.create(spec('i1', 'n1'))).rejects.toBe(boom);
    expect(await rt.get('i1')).toBeUndefined();
    await expect(rt.create(spec('i1', 'n1'))).resolves.toMatchObject({ state: 'running' });
  });

  it('fake runtime - a domain dying on its own emits crashed', async () => {
    const host = new FakeHost();
    const rt = new FakeRuntime('n1', host);
    const seen: DomainEvent[] = [];
    rt.onEvent((e) => seen.push(e));
    await rt.create(spec('i1', 'n1'));
    host.kill('i1');
    await Promise.resolve();
    await Promise.resolve();
    expect(seen.map((e) => e.kind)).toEqual(['started', 'crashed']);
    expect(await rt.list()).toEqual([]);
  });

  it('fake runtime - a closed runtime refuses calls', async () => {
    const rt = new FakeRuntime('n1');
    await rt.close();
    await expect(rt.list()).rejects.toThrow(/closed/);
  });
});
