import { describe, expect, it } from 'vitest';
import { hostsOf } from './facts.js';

describe('oar facts', () => {
  it('hostsOf - one entry per host in first-seen order, cpusets merged, cores counted as OAR resources', () => {
    const rows = [
      { network_address: 'node-2', cpuset: '3' },
      { network_address: 'node-1', cpuset: '0' },
      { network_address: 'node-2', cpuset: '2' },
      { network_address: 'node-1', cpuset: '0,32' },
      // Emulated hosts: two cores on one cpu.
      { network_address: 'node-1', cpuset: '1' },
      { network_address: 'node-1', cpuset: '1' },
    ];
    expect(hostsOf(rows)).toEqual([
      { node: 'node-2', cpuset: '2-3', cores: 2 },
      { node: 'node-1', cpuset: '0-1,32', cores: 4 },
    ]);
    expect(hostsOf([])).toEqual([]);
  });
});
