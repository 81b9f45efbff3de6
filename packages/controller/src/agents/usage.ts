/**
 * The last known use of each running instance, from its node's heartbeats: CPU time and
 * memory as the agent read them from the instance's cgroup, and the CPU rate between the
 * node's last two heartbeats that listed it. In memory only: after a restart the next
 * heartbeats refill it.
 */
import type { InstanceUsage } from './agents.js';

export class UsageBook {
  private readonly byInstance = new Map<string, InstanceUsage & { node: string }>();
  private readonly byNode = new Map<string, Set<string>>();

  /** A heartbeat of `node` at `atMs`: its instances' figures replace the node's previous ones. */
  record(node: string, atMs: number, metrics: ReadonlyArray<{ instanceId: string; cpuSeconds: number; memoryBytes: number }>): void {
    const seen = new Set<string>();
    for (const m of metrics) {
      seen.add(m.instanceId);
      const prev = this.byInstance.get(m.instanceId);
      const dtS = prev ? (atMs - prev.atMs) / 1000 : 0;
      if (prev && dtS <= 0) continue; // an older or repeated heartbeat
      const dCpu = prev ? m.cpuSeconds - prev.cpuSeconds : -1;
      // No previous sample, or a counter that went back (the instance started again): no rate yet.
      const cpuPercent = prev && dCpu >= 0 && prev.node === node ? (dCpu / dtS) * 100 : 0;
      this.byInstance.set(m.instanceId, { node, atMs, cpuSeconds: m.cpuSeconds, memoryBytes: m.memoryBytes, cpuPercent: Math.round(cpuPercent * 10) / 10 });
    }
    for (const id of this.byNode.get(node) ?? []) if (!seen.has(id) && this.byInstance.get(id)?.node === node) this.byInstance.delete(id);
    this.byNode.set(node, seen);
  }

  get(instanceId: string): InstanceUsage | undefined {
    const u = this.byInstance.get(instanceId);
    return u && { cpuSeconds: u.cpuSeconds, cpuPercent: u.cpuPercent, memoryBytes: u.memoryBytes, atMs: u.atMs };
  }

  get size(): number {
    return this.byInstance.size;
  }
}
