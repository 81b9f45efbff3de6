/** Cgroup driver: job partitions for libvirt (real: HostCgroups; fake: FakeCgroups). */
export * from './cgroups.js';
export * from './usage.js';
