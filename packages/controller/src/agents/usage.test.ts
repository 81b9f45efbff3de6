import { describe, expect, it } from 'vitest';
import { UsageBook } from './usage.js';

describe('usage book', () => {
  it('usage - the CPU rate comes from two heartbeats; the first one gives figures without a rate', () => {
    const b = new UsageBook();
    b.record('node-1', 10_000, [{ instanceId: 'i-a', cpuSeconds: 4, memoryBytes: 1000 }]);
    expect(b.get('i-a')).toEqual({ cpuSeconds: 4, cpuPercent: 0, memoryBytes: 1000, atMs: 10_000 });
    b.record('node-1', 12_000, [{ instanceId: 'i-a', cpuSeconds: 5, memoryBytes: 2000 }]);
    expect(b.get('i-a')).toEqual({ cpuSeconds: 5, cpuPercent: 50, memoryBytes: 2000, atMs: 12_000 });
    // Two cores busy for 1 s: 200 %.
    b.record('node-1', 13_000, [{ instanceId: 'i-a', cpuSeconds: 7, memoryBytes: 2000 }]);
    expect(b.get('i-a')?.cpuPercent).toBe(200);
  });

  it('usage - an older or repeated heartbeat changes nothing; a counter that went back gives no rate', () => {
    const b = new UsageBook();
    b.record('node-1', 10_000, [{ instanceId: 'i-a', cpuSeconds: 4, memoryBytes: 1000 }]);
    b.record('node-1', 12_000, [{ instanceId: 'i-a', cpuSeconds: 6, memoryBytes: 1000 }]);
    b.record('node-1', 11_000, [{ instanceId: 'i-a', cpuSeconds: 1, memoryBytes: 9 }]);
    b.record('node-1', 12_000, [{ instanceId: 'i-a', cpuSeconds: 1, memoryBytes: 9 }]);
    expect(b.get('i-a')).toMatchObject({ cpuSeconds: 6, cpuPercent: 100, atMs: 12_000 });
    b.record('node-1', 14_000, [{ instanceId: 'i-a', cpuSeconds: 0.5, memoryBytes: 10 }]);
    expect(b.get('i-a')).toMatchObject({ cpuSeconds: 0.5, cpuPercent: 0, memoryBytes: 10 });
  });

  it('usage - an instance its node no longer lists is forgotten; other nodes are untouched', () => {
    const b = new UsageBook();
    b.record('node-1', 1000, [{ instanceId: 'i-a', cpuSeconds: 1, memoryBytes: 1 }, { instanceId: 'i-b', cpuSeconds: 1, memoryBytes: 1 }]);
    b.record('node-2', 1000, [{ instanceId: 'i-c', cpuSeconds: 1, memoryBytes: 1 }]);
    b.record('node-1', 2000, [{ instanceId: 'i-b', cpuSeconds: 2, memoryBytes: 1 }]);
    expect(b.get('i-a')).toBeUndefined();
    expect(b.get('i-b')?.cpuPercent).toBe(100);
    expect(b.get('i-c')).toBeDefined();
    b.record('node-2', 3000, []);
    expect(b.size).toBe(1);
  });
});
