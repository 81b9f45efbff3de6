/**
 * A whole agent on fakes: the stateful fake of every host driver, wired as startAgent wires
 * the real ones. The scale simulator runs real agents (gRPC service, instance manager,
 * reconcile loop, NATS events and heartbeats) on these, many to a process.
 */
import type { AgentDrivers } from '../../agent.js';
import { MemoryRecordStore } from '../../instances/records.js';
import { FakeGatewayHost } from '../../network/gateway.js';
import { FakeLinks } from '../../network/links.js';
import { MemoryNetworkStateStore } from '../../network/node-networks.js';
import { FakeCgroups } from '../cgroups/index.js';
import { FakeLayerStore, FakeRootfs } from '../images/index.js';
import { FakeVSwitch } from '../ovs/index.js';
import { FakeRuntime } from './runtime.js';

export interface FakeDriverOptions {
  /** The host's cpu count; default 64. */
  cpus?: number;
  /** Its memory; default 256 GiB. */
  memoryMib?: number;
  /** Layers already in the node's cache (sha256:…), with their size. */
  layers?: ReadonlyArray<{ digest: string; bytes: number }>;
}

export function fakeDrivers(node: string, o: FakeDriverOptions = {}): AgentDrivers {
  const layers = new FakeLayerStore(`/fake/${node}/layers`);
  for (const l of o.layers ?? []) layers.layers.set(l.digest, { bytes: l.bytes });
  return {
    records: new MemoryRecordStore(),
    layers,
    rootfs: new FakeRootfs(`/fake/${node}/instances`, layers),
    cgroups: new FakeCgroups(`0-${(o.cpus ?? 64) - 1}`),
    runtime: new FakeRuntime(node),
    network: { sw: new FakeVSwitch(), links: new FakeLinks(), nat: new FakeGatewayHost(), store: new MemoryNetworkStateStore() },
    host: { cpus: o.cpus ?? 64, memoryMib: o.memoryMib ?? 256 * 1024 },
  };
}
