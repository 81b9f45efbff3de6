/**
 * Serialises async operations per key (one instance, one job, one network); different keys
 * run in parallel. `busy(key)` tells a reconcile loop to keep away from in-flight work.
 */
export class KeyedMutex<K = string> {
  private readonly tails = new Map<K, Promise<unknown>>();
  private readonly holders = new Map<K, number>();

  async run<T>(key: K, fn: () => Promise<T>): Promise<T> {
    const prev = this.tails.get(key) ?? Promise.resolve();
    this.holders.set(key, (this.holders.get(key) ?? 0) + 1);
    const next = prev.then(fn, fn);
    const tail = next.catch(() => undefined);
    this.tails.set(key, tail);
    try {
      return await next;
    } finally {
      const n = (this.holders.get(key) ?? 1) - 1;
      if (n === 0) this.holders.delete(key);
      else this.holders.set(key, n);
      if (this.tails.get(key) === tail) this.tails.delete(key);
    }
  }

  /** True while an operation on `key` runs or waits. */
  busy(key: K): boolean {
    return this.holders.has(key);
  }

  /** True while an operation runs or waits on a string key that starts with `prefix`. */
  busyPrefix(prefix: string): boolean {
    for (const k of this.holders.keys()) if (typeof k === 'string' && k.startsWith(prefix)) return true;
    return false;
  }
}
