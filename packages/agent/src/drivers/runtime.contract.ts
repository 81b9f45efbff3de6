/**
 * The ContainerRuntime contract as one vitest suite, run against the fake (unit) and
 * against real libvirtd (integration), so both keep the documented behaviour of
 * runtime.ts. Test helper: imported by test files only.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { AlreadyExistsError, InvalidArgumentError, NotFoundError } from '@oarcloud/common';
import type { ContainerRuntime, DomainEvent, DomainSpec } from './runtime.js';

export interface RuntimeHarness {
  runtime: ContainerRuntime;
  /**
   * The limits the host actually applies to the instance's domain (cgroup files for libvirt:
   * memory.limit_in_bytes, cpu.shares, cpu.cfs_period_us, cpu.cfs_quota_us; quota -1 = none).
   */
  limits(instanceId: string): Promise<{ memoryMib: number; cpuShares: number; cpuPeriodUs: number; cpuQuotaUs: number }>;
}

/**
 * `makeRuntime(node)` is called for two different nodes; both runtimes must share one
 * backend (one libvirtd / one FakeHost). `makeSpec(instanceId, node)` returns a valid spec
 * (the instance ids it gets are unique per run).
 */
export function runtimeContract(name: string, makeRuntime: (node: string) => Promise<RuntimeHarness>, makeSpec: (instanceId: string, node: string) => DomainSpec): void {
  describe(`${name} - ContainerRuntime contract`, () => {
    const nodeA = `ct-a-${process.pid}`;
    const nodeB = `ct-b-${process.pid}`;
    let a: RuntimeHarness;
    let b: RuntimeHarness;
    const created = new Set<string>();
    let seq = 0;
    const newId = (): string => {
      const id = `ct${process.pid}-${Date.now().toString(36)}-${seq++}`;
      created.add(id);
      return id;
    };

    beforeAll(async () => {
      a = await makeRuntime(nodeA);
      b = await makeRuntime(nodeB);
    });
    afterEach(async () => {
      for (const id of created) {
        await a.runtime.destroy(id).catch(() => undefined);
        await b.runtime.destroy(id).catch(() => undefined);
      }
      created.clear();
    });
    afterAll(async () => {
      await a?.runtime.close();
      await b?.runtime.close();
    });

    const waitEvent = async (seen: DomainEvent[], pred: (e: DomainEvent) => boolean, ms = 5000): Promise<DomainEvent> => {
      const deadline = Date.now() + ms;
      for (;;) {
        const hit = seen.find(pred);
        if (hit) return hit;
        if (Date.now() > deadline) throw new Error(`no matching event in ${ms} ms; seen ${JSON.stringify(seen)}`);
        await new Promise((r) => setTimeout(r, 20));
      }
    };

    it('runtime - create starts a running domain listed with its metadata', async () => {
      const id = newId();
      const spec = makeSpec(id, nodeA);
      const st = await a.runtime.create(spec);
      expect(st).toMatchObject({ instanceId: id, jobId: spec.jobId, node: nodeA, state: 'running' });
      expect(st.name).toBe(`oc-${id}`);
      expect(await a.runtime.get(id)).toMatchObject({ instanceId: id, jobId: spec.jobId, node: nodeA, state: 'running' });
      const listed = (await a.runtime.list()).find((d) => d.instanceId === id);
      expect(listed).toMatchObject({ name: `oc-${id}`, jobId: spec.jobId, node: nodeA, state: 'running' });
    });

    it('runtime - create of an existing instance fails with AlreadyExistsError and keeps it', async () => {
      const id = newId();
      await a.runtime.create(makeSpec(id, nodeA));
      await expect(a.runtime.create(makeSpec(id, nodeA))).rejects.toBeInstanceOf(AlreadyExistsError);
      expect((await a.runtime.get(id))?.state).toBe('running');
    });

    it('runtime - destroy removes the domain; a second destroy returns false', async () => {
      const id = newId();
      await a.runtime.create(makeSpec(id, nodeA));
      expect(await a.runtime.destroy(id)).toBe(true);
      expect(await a.runtime.get(id)).toBeUndefined();
      expect((await a.runtime.list()).some((d) => d.instanceId === id)).toBe(false);
      expect(await a.runtime.destroy(id)).toBe(false);
    });

    it('runtime - get of an unknown instance is undefined', async () => {
      expect(await a.runtime.get(`unknown-${process.pid}`)).toBeUndefined();
    });

    it("runtime - a node never sees or touches another node's domains", async () => {
      const idA = newId();
      const idB = newId();
      await a.runtime.create(makeSpec(idA, nodeA));
      await b.runtime.create(makeSpec(idB, nodeB));
      const listA = await a.runtime.list();
      const listB = await b.runtime.list();
      expect(listA.map((d) => d.instanceId)).toContain(idA);
      expect(listA.every((d) => d.node === nodeA)).toBe(true);
      expect(listB.map((d) => d.instanceId)).toContain(idB);
      expect(listB.every((d) => d.node === nodeB)).toBe(true);
      expect(await a.runtime.get(idB)).toBeUndefined();
      expect(await a.runtime.destroy(idB)).toBe(false);
      await expect(a.runtime.setLimits(idB, { cpuShares: 100 })).rejects.toBeInstanceOf(NotFoundError);
      expect((await b.runtime.get(idB))?.state).toBe('running');
    });

    it('runtime - events report start and stop of this node only', async () => {
      const seenA: DomainEvent[] = [];
      const seenB: DomainEvent[] = [];
      const offA = a.runtime.onEvent((e) => seenA.push(e));
      const offB = b.runtime.onEvent((e) => seenB.push(e));
      try {
        // Give event sources that need it (a worker thread, a first relist) time to start.
        await new Promise((r) => setTimeout(r, 300));
        const id = newId();
        await a.runtime.create(makeSpec(id, nodeA));
        await waitEvent(seenA, (e) => e.instanceId === id && e.kind === 'started');
        await a.runtime.destroy(id);
        const stop = await waitEvent(seenA, (e) => e.instanceId === id && e.kind === 'stopped');
        expect(stop.name).toBe(`oc-${id}`);
        await new Promise((r) => setTimeout(r, 200));
        expect(seenB.some((e) => e.instanceId === id)).toBe(false);
      } finally {
        offA();
        offB();
      }
    });

    it('runtime - setLimits changes the applied memory and CPU shares', async () => {
      const id = newId();
      await a.runtime.create({ ...makeSpec(id, nodeA), memoryMib: 64, cpuShares: 512 });
      expect(await a.limits(id)).toMatchObject({ memoryMib: 64, cpuShares: 512 });
      await a.runtime.setLimits(id, { memoryMib: 96, cpuShares: 300 });
      expect(await a.limits(id)).toMatchObject({ memoryMib: 96, cpuShares: 300 });
      await a.runtime.setLimits(id, { cpuShares: 700 });
      expect(await a.limits(id)).toMatchObject({ memoryMib: 96, cpuShares: 700 });
      await expect(a.runtime.setLimits(`unknown-${process.pid}`, { memoryMib: 64 })).rejects.toBeInstanceOf(NotFoundError);
      await expect(a.runtime.setLimits(id, { memoryMib: 0 })).rejects.toBeInstanceOf(InvalidArgumentError);
    });

    it('runtime - a CFS quota given at create is applied, and changes live', async () => {
      const id = newId();
      const none = newId();
      await a.runtime.create(makeSpec(none, nodeA));
      expect(await a.limits(none)).toMatchObject({ cpuQuotaUs: -1 });
      await a.runtime.create({ ...makeSpec(id, nodeA), cpuPeriodUs: 100_000, cpuQuotaUs: 50_000 });
      expect(await a.limits(id)).toMatchObject({ cpuPeriodUs: 100_000, cpuQuotaUs: 50_000 });
      await a.runtime.setLimits(id, { cpuQuotaUs: 150_000 });
      expect(await a.limits(id)).toMatchObject({ cpuPeriodUs: 100_000, cpuQuotaUs: 150_000 });
      await a.runtime.setLimits(id, { cpuPeriodUs: 200_000, cpuQuotaUs: 100_000 });
      expect(await a.limits(id)).toMatchObject({ cpuPeriodUs: 200_000, cpuQuotaUs: 100_000 });
      await a.runtime.setLimits(id, { cpuQuotaUs: -1 });
      expect(await a.limits(id)).toMatchObject({ cpuQuotaUs: -1 });
      for (const bad of [{ cpuQuotaUs: 10 }, { cpuPeriodUs: 10 }, { cpuPeriodUs: 2_000_000 }, { cpuQuotaUs: -2 }]) {
        await expect(a.runtime.setLimits(id, bad), JSON.stringify(bad)).rejects.toBeInstanceOf(InvalidArgumentError);
      }
      await expect(a.runtime.create({ ...makeSpec(newId(), nodeA), cpuQuotaUs: 50_000 })).rejects.toBeInstanceOf(InvalidArgumentError);
    });

    it('runtime - a bad spec fails with InvalidArgumentError and creates nothing', async () => {
      const before = (await a.runtime.list()).length;
      const id = newId();
      const good = makeSpec(id, nodeA);
      const bad: Array<Partial<DomainSpec>> = [
        { instanceId: `x/../${id}` },
        { instanceId: `${id}<x>` },
        { rootDir: 'relative/root' },
        { rootDir: '/var/../etc' },
        { init: 'sbin/init' },
        { memoryMib: 0 },
        { vcpus: 0 },
        { cpuset: '1-' },
        { node: nodeB },
        { interfaces: [{ hostName: 'this-name-is-far-too-long', guestName: 'eth0', mac: '52:54:00:00:00:01', bridge: 'br-int' }] },
        { interfaces: [{ hostName: 'vh0', guestName: 'eth0', mac: '01:00:5e:00:00:01', bridge: 'br-int' }] },
        { interfaces: [{ hostName: 'vh0', guestName: 'eth0', mac: '52:54:00:00:00:01', bridge: "br'int" }] },
      ];
      for (const patch of bad) {
        await expect(a.runtime.create({ ...good, ...patch }), JSON.stringify(patch)).rejects.toBeInstanceOf(InvalidArgumentError);
      }
      expect(await a.runtime.get(id)).toBeUndefined();
      expect((await a.runtime.list()).length).toBe(before);
    });

    it('runtime - version is a string', async () => {
      expect(typeof (await a.runtime.version())).toBe('string');
    });
  });
}
