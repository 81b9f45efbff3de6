import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { InvalidArgumentError, ResourceExhaustedError } from '@oarcloud/common';
import { placeInstances, type PlacedInstance, type PlacementHost } from './placement.js';

const h = (node: string, cores: number): PlacementHost => ({ node, cores });
const count = (nodes: string[]) => nodes.reduce<Record<string, number>>((m, n) => ({ ...m, [n]: (m[n] ?? 0) + 1 }), {});

describe('placement - table', () => {
  it.each([
    { name: 'one host, one instance', hosts: [h('a', 2)], existing: [], req: { count: 1, vcpus: 1 }, want: ['a'] },
    { name: 'spreads round-robin over equal hosts', hosts: [h('a', 2), h('b', 2)], existing: [], req: { count: 4, vcpus: 1 }, want: ['a', 'b', 'a', 'b'] },
    { name: 'most free cores first', hosts: [h('a', 1), h('b', 3)], existing: [], req: { count: 2, vcpus: 1 }, want: ['b', 'b'] },
    { name: 'counts existing instances', hosts: [h('a', 2), h('b', 2)], existing: [{ node: 'a', vcpus: 2 }], req: { count: 2, vcpus: 1 }, want: ['b', 'b'] },
    { name: 'multi-vCPU instances take whole hosts', hosts: [h('a', 2), h('b', 2)], existing: [], req: { count: 2, vcpus: 2 }, want: ['a', 'b'] },
    { name: 'ignores existing instances on foreign nodes', hosts: [h('a', 1)], existing: [{ node: 'z', vcpus: 8 }], req: { count: 1, vcpus: 1 }, want: ['a'] },
    { name: 'skips a host too small for the instance', hosts: [h('a', 1), h('b', 4)], existing: [], req: { count: 2, vcpus: 2 }, want: ['b', 'b'] },
  ])('$name', ({ hosts, existing, req, want }) => {
    expect(placeInstances(hosts, existing as PlacedInstance[], req)).toEqual(want);
  });

  it.each([
    { name: 'more vCPUs than any host has', hosts: [h('a', 2), h('b', 2)], req: { count: 1, vcpus: 3 } },
    { name: 'more instances than cores', hosts: [h('a', 1), h('b', 1)], req: { count: 3, vcpus: 1 } },
    { name: 'fragmented cores', hosts: [h('a', 3), h('b', 3)], req: { count: 3, vcpus: 2 } },
    { name: 'no hosts', hosts: [], req: { count: 1, vcpus: 1 } },
  ])('refuses what does not fit: $name', ({ hosts, req }) => {
    expect(() => placeInstances(hosts, [], req)).toThrow(ResourceExhaustedError);
  });

  it('says what is free when it refuses', () => {
    expect(() => placeInstances([h('node-1', 1)], [], { count: 2, vcpus: 1 })).toThrow(/free cores per host: node-1: 1/);
  });

  it.each([{ count: 0, vcpus: 1 }, { count: 1, vcpus: 0 }, { count: 1.5, vcpus: 1 }])('refuses a bad request %j', (req) => {
    expect(() => placeInstances([h('a', 4)], [], req)).toThrow(InvalidArgumentError);
  });
});

describe('placement - properties', () => {
  const hostsArb = fc.uniqueArray(fc.record({ node: fc.constantFrom('a', 'b', 'c', 'd', 'e', 'f'), cores: fc.integer({ min: 0, max: 16 }) }), {
    selector: (x) => x.node,
    minLength: 0,
    maxLength: 6,
  });
  const reqArb = fc.record({ count: fc.integer({ min: 1, max: 40 }), vcpus: fc.integer({ min: 1, max: 8 }) });

  it('places everything iff the sum of floor(free / vcpus) covers the count, never over a host, spread evenly', () => {
    fc.assert(
      fc.property(hostsArb, reqArb, (hosts, req) => {
        const capacity = hosts.reduce((s, x) => s + Math.floor(x.cores / req.vcpus), 0);
        let out: string[];
        try {
          out = placeInstances(hosts, [], req);
        } catch (err) {
          expect(err).toBeInstanceOf(ResourceExhaustedError);
          expect(capacity).toBeLessThan(req.count);
          return;
        }
        expect(capacity).toBeGreaterThanOrEqual(req.count);
        expect(out).toHaveLength(req.count);
        const per = count(out);
        for (const x of hosts) expect((per[x.node] ?? 0) * req.vcpus).toBeLessThanOrEqual(x.cores);
      }),
    );
  });

  it('respects existing instances: total vCPUs per host never exceed its cores', () => {
    fc.assert(
      fc.property(hostsArb, reqArb, fc.array(fc.record({ node: fc.constantFrom('a', 'b', 'c'), vcpus: fc.integer({ min: 1, max: 4 }) }), { maxLength: 6 }), (hosts, req, existing) => {
        let out: string[] = [];
        try {
          out = placeInstances(hosts, existing, req);
        } catch (err) {
          expect(err).toBeInstanceOf(ResourceExhaustedError);
          return;
        }
        for (const x of hosts) {
          const before = existing.filter((e) => e.node === x.node).reduce((s, e) => s + e.vcpus, 0);
          const added = out.filter((n) => n === x.node).length * req.vcpus;
          if (added > 0) expect(before + added).toBeLessThanOrEqual(x.cores);
        }
      }),
    );
  });

  it('spreads evenly: on hosts with equal cores, instance counts differ by at most one', () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 6 }), fc.integer({ min: 1, max: 8 }), fc.integer({ min: 1, max: 4 }), fc.integer({ min: 1, max: 48 }), (n, cores, vcpus, want) => {
        const hosts = Array.from({ length: n }, (_, i) => h(`h${i}`, cores));
        fc.pre(n * Math.floor(cores / vcpus) >= want);
        const per = count(placeInstances(hosts, [], { count: want, vcpus }));
        const counts = hosts.map((x) => per[x.node] ?? 0);
        expect(Math.max(...counts) - Math.min(...counts)).toBeLessThanOrEqual(1);
      }),
    );
  });

  it('is deterministic', () => {
    fc.assert(fc.property(hostsArb, reqArb, (hosts, req) => {
      const run = () => { try { return placeInstances(hosts, [], req); } catch { return 'x'; } };
      expect(run()).toEqual(run());
    }));
  });
});
