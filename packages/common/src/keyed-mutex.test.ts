import { describe, expect, it } from 'vitest';
import { KeyedMutex } from './keyed-mutex.js';

const tick = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('KeyedMutex', () => {
  it('runs one operation at a time per key, in order, and keys in parallel', async () => {
    const m = new KeyedMutex();
    const log: string[] = [];
    const op = (key: string, name: string, ms: number) =>
      m.run(key, async () => {
        log.push(`${name}+`);
        await tick(ms);
        log.push(`${name}-`);
        return name;
      });
    const all = Promise.all([op('a', 'a1', 30), op('a', 'a2', 1), op('b', 'b1', 5)]);
    expect(m.busy('a')).toBe(true);
    expect(m.busyPrefix('b')).toBe(true);
    expect(await all).toEqual(['a1', 'a2', 'b1']);
    expect(log.indexOf('a1-')).toBeLessThan(log.indexOf('a2+'));
    expect(log.indexOf('b1-')).toBeLessThan(log.indexOf('a1-'));
    expect(m.busy('a')).toBe(false);
    expect(m.busyPrefix('')).toBe(false);
  });

  it('a failed operation releases the key and its error reaches only its caller', async () => {
    const m = new KeyedMutex<number>();
    const failed = m.run(1, () => Promise.reject(new Error('boom')));
    const next = m.run(1, () => Promise.resolve('ok'));
    await expect(failed).rejects.toThrow('boom');
    expect(await next).toBe('ok');
    expect(m.busy(1)).toBe(false);
  });
});
