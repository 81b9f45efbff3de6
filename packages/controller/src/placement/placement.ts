/**
 * Placement of instances on the hosts of a job. Pure: no I/O, no clock, no randomness.
 */
import { InvalidArgumentError, ResourceExhaustedError } from '@oarcloud/common';

export interface PlacementHost {
  node: string;
  /** The job's cores on this host. */
  cores: number;
}

export interface PlacedInstance {
  node: string;
  vcpus: number;
}

export interface PlacementRequest {
  count: number;
  vcpus: number;
}

/**
 * Chooses a host for each of `req.count` new instances of `req.vcpus` vCPUs, given the
 * job's hosts and the instances the job already has there. Each instance goes to the host
 * with the most free cores (ties: the one that got fewest of this request, then the
 * job's host order), which spreads them round-robin and never puts more vCPUs on a host
 * than the job's cores there. This greedy choice places as many instances as any choice
 * would (every host takes floor(free / vcpus) of them).
 *
 * Returns the node of each new instance, in order. Throws ResourceExhaustedError when
 * they do not all fit (nothing is placed), InvalidArgumentError on a bad request.
 */
export function placeInstances(hosts: readonly PlacementHost[], existing: readonly PlacedInstance[], req: PlacementRequest): string[] {
  if (!Number.isInteger(req.count) || req.count < 1) throw new InvalidArgumentError('count must be at least 1');
  if (!Number.isInteger(req.vcpus) || req.vcpus < 1) throw new InvalidArgumentError('vcpus must be at least 1');
  const free = new Map<string, number>();
  const order = new Map<string, number>();
  hosts.forEach((h, i) => {
    free.set(h.node, (free.get(h.node) ?? 0) + h.cores);
    if (!order.has(h.node)) order.set(h.node, i);
  });
  for (const e of existing) {
    if (free.has(e.node)) free.set(e.node, free.get(e.node)! - e.vcpus);
  }
  const initial = new Map(free);
  const given = new Map<string, number>();
  const out: string[] = [];
  for (let k = 0; k < req.count; k++) {
    let best: string | undefined;
    for (const [node, f] of free) {
      if (f < req.vcpus) continue;
      if (best === undefined) {
        best = node;
        continue;
      }
      const bf = free.get(best)!;
      const better =
        f > bf ||
        (f === bf && (given.get(node) ?? 0) < (given.get(best) ?? 0)) ||
        (f === bf && (given.get(node) ?? 0) === (given.get(best) ?? 0) && order.get(node)! < order.get(best)!);
      if (better) best = node;
    }
    if (best === undefined) {
      const summary = [...initial].map(([n, f]) => `${n}: ${Math.max(0, f)}`).join(', ') || 'no hosts';
      throw new ResourceExhaustedError(
        `${req.count} instance(s) of ${req.vcpus} vCPU(s) do not fit in the job (free cores per host: ${summary}; ${out.length} would fit)`,
      );
    }
    out.push(best);
    free.set(best, free.get(best)! - req.vcpus);
    given.set(best, (given.get(best) ?? 0) + 1);
  }
  return out;
}
