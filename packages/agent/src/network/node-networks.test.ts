import { beforeEach, describe, expect, it } from 'vitest';
import { FailedPreconditionError, InvalidArgumentError, memoryLogger } from '@oarcloud/common';
import { FakeCgroups } from '../drivers/cgroups/index.js';
import { FakeHost, FakeRuntime } from '../drivers/fake/runtime.js';
import { FakeLayerStore, FakeRootfs } from '../drivers/images/index.js';
import { FakeVSwitch } from '../drivers/ovs/fake.js';
import { gatewayPortName, tunnelName } from '../drivers/ovs/vswitch.js';
import { InstanceManager } from '../instances/manager.js';
import type { InstanceSpec, NetworkAttachment } from '../instances/model.js';
import { MemoryRecordStore } from '../instances/records.js';
import { FakeGatewayHost } from './gateway.js';
import { FakeLinks, hostIfName } from './links.js';
import { MemoryNetworkStateStore, NodeNetworks } from './node-networks.js';
import { planNetworks } from './plan.js';

const LAYER = `sha256:${'a'.repeat(64)}`;
const NET = 'n-00000000000a';
const NET2 = 'n-00000000000b';
const ME = '192.168.240.11';
const PEER = '192.168.240.12';

const att = (over: Partial<NetworkAttachment> = {}): NetworkAttachment => ({
  networkId: NET,
  vni: 5000,
  interface: 'eth0',
  mac: '02:0c:0a:5a:00:02',
  address: '10.90.0.2/24',
  gateway: '10.90.0.1',
  mtu: 1446,
  ...over,
});

function spec(id: string, networks: NetworkAttachment[], over: Partial<InstanceSpec> = {}): InstanceSpec {
  return {
    id,
    name: `w${id.slice(-4)}`,
    jobId: 17,
    owner: 'alice',
    image: { name: 'tiny:latest', layers: [LAYER] },
    vcpus: 1,
    memoryMib: 64,
    cpuset: '0-1',
    sshAuthorizedKeys: [],
    hostname: `w${id.slice(-4)}`,
    networks,
    ...over,
  };
}

function setup(underlayIp = ME) {
  const host = new FakeHost();
  const runtime = new FakeRuntime('node-1', host);
  const layers = new FakeLayerStore();
  layers.layers.set(LAYER, { bytes: 1 });
  const rootfs = new FakeRootfs('/fake/instances', layers);
  const sw = new FakeVSwitch();
  const links = new FakeLinks();
  const store = new MemoryNetworkStateStore();
  const log = memoryLogger();
  const nat = new FakeGatewayHost();
  const network = new NodeNetworks({ sw, links, nat, store, underlayIp, log });
  const records = new MemoryRecordStore();
  const manager = new InstanceManager({
    node: 'node-1',
    runtime,
    layers,
    rootfs,
    cgroups: new FakeCgroups('0-3'),
    records,
    events: { instanceChanged: () => {} },
    log,
    network,
    nodeCpus: 4,
    nodeMemoryMib: 4096,
  });
  return { runtime, sw, links, nat, store, network, manager, records };
}

describe('agent networks - instance ports and tunnels through the manager', () => {
  let t: ReturnType<typeof setup>;
  beforeEach(() => {
    t = setup();
  });

  it('network - create plugs an unplugged veth per attachment: moved/up with the MTU, port with the network tag, offload off', async () => {
    const rec = await t.manager.create(spec('i-00000000aa01', [att(), att({ networkId: NET2, vni: 5001, interface: 'eth1', address: '10.90.1.2/24', mac: '02:0c:0a:5a:01:02' })]));
    const dom = t.runtime.domain('i-00000000aa01')!;
    expect(dom.spec.interfaces).toEqual([
      { hostName: 'oc00000000aa010', guestName: 'eth0', mac: '02:0c:0a:5a:00:02', mtu: 1446 },
      { hostName: 'oc00000000aa011', guestName: 'eth1', mac: '02:0c:0a:5a:01:02', mtu: 1446 },
    ]);
    expect(dom.spec.interfaces.every((i) => i.bridge === undefined)).toBe(true);
    expect([...t.sw.ports.values()].map((p) => [p.name, p.networkId, p.tag])).toEqual([
      ['oc00000000aa010', NET, 1],
      ['oc00000000aa011', NET2, 2],
    ]);
    expect(t.links.prepared.get('oc00000000aa010')).toBe(1446);
    expect(t.links.calls).toContain(`offload ${rec.initPid} eth0`);
    expect(t.store.nets[NET]).toEqual({ vni: 5000, tag: 1, peers: [] });
  });

  it('network - tags are per node, lowest free, kept across a restart (persisted) and reused once a network is gone', async () => {
    await t.manager.create(spec('i-00000000aa01', [att()]));
    await t.manager.create(spec('i-00000000aa02', [att({ networkId: NET2, vni: 5001, address: '10.90.1.2/24' })]));
    expect(t.network.networks()[NET2]!.tag).toBe(2);
    const again = new NodeNetworks({ sw: t.sw, links: t.links, store: t.store, underlayIp: ME, log: memoryLogger() });
    expect(again.networks()).toEqual(t.network.networks());
    await t.manager.destroy('i-00000000aa01');
    await t.network.releaseNetwork(NET);
    await t.manager.create(spec('i-00000000aa03', [att({ networkId: 'n-00000000000c', vni: 5002, address: '10.90.2.2/24' })]));
    expect(t.network.networks()['n-00000000000c']!.tag).toBe(1);
  });

  it('network - tunnels exist while the node has an instance on the network, one per peer, never to itself', async () => {
    await t.network.ensureNetwork(NET, 5000, [ME, PEER]);
    expect(t.sw.tunnels.size).toBe(0); // no local instance yet
    await t.manager.create(spec('i-00000000aa01', [att()]));
    expect([...t.sw.tunnels.values()]).toEqual([{ name: tunnelName(5000, PEER), networkId: NET, vni: 5000, remoteIp: PEER, tag: 1 }]);
    await t.manager.create(spec('i-00000000aa02', [att({ address: '10.90.0.3/24', mac: '02:0c:0a:5a:00:03' })]));
    expect(await t.network.ensureNetwork(NET, 5000, [PEER, '192.168.240.13'])).toEqual({ vlan: 1, tunnels: 2, gateway: false });
    expect(t.sw.tunnels.size).toBe(2);
    await t.network.ensureNetwork(NET, 5000, ['192.168.240.13']);
    expect([...t.sw.tunnels.values()].map((x) => x.remoteIp)).toEqual(['192.168.240.13']);
    await t.manager.destroy('i-00000000aa01');
    expect(t.sw.tunnels.size).toBe(1); // one instance left
    await t.manager.stop('i-00000000aa02');
    expect(t.sw.tunnels.size).toBe(0);
    expect(t.sw.ports.size).toBe(0);
    await t.manager.start('i-00000000aa02');
    expect(t.sw.tunnels.size).toBe(1);
    expect(t.sw.ports.size).toBe(1);
    await t.manager.releaseJob(17);
    expect(t.sw.tunnels.size + t.sw.ports.size).toBe(0);
  });

  it('network - a node without underlay address keeps single-host networks and creates no tunnel', async () => {
    const u = setup('');
    await u.manager.create(spec('i-00000000aa01', [att()]));
    await u.network.ensureNetwork(NET, 5000, [PEER]);
    expect(u.sw.tunnels.size).toBe(0);
    expect(u.sw.ports.size).toBe(1);
  });

  it('network - a failure while plugging rolls the whole create back: no domain, no port, no record', async () => {
    t.sw.failNext('ensurePort', new FailedPreconditionError('ovs says no'));
    await expect(t.manager.create(spec('i-00000000aa01', [att()]))).rejects.toBeInstanceOf(FailedPreconditionError);
    expect(t.runtime.domain('i-00000000aa01')).toBeUndefined();
    expect(t.sw.ports.size).toBe(0);
    expect(t.records.list()).toEqual([]);
    t.links.failPrepare = new FailedPreconditionError('no such link');
    await expect(t.manager.create(spec('i-00000000aa01', [att()]))).rejects.toBeInstanceOf(FailedPreconditionError);
    expect(t.sw.ports.size).toBe(0);
    expect(t.links.calls).toContain(`remove ${hostIfName('i-00000000aa01', 0)}`);
  });

  it('network - bad attachments are INVALID_ARGUMENT and change nothing', async () => {
    for (const bad of [
      att({ networkId: 'net-1' }),
      att({ vni: 0 }),
      att({ mac: '01:00:00:00:00:01' }),
      att({ address: '10.90.0.2' }),
      att({ mtu: 100 }),
      att({ interface: 'a-very-long-interface-name' }),
    ]) {
      await expect(t.manager.create(spec('i-00000000aa01', [bad]))).rejects.toBeInstanceOf(InvalidArgumentError);
    }
    await expect(t.manager.create(spec('i-00000000aa01', [att(), att()]))).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(t.network.ensureNetwork(NET, 5000, ['not-an-ip'])).rejects.toBeInstanceOf(InvalidArgumentError);
    expect(t.runtime.calls).toEqual([]);
    expect(t.sw.ports.size).toBe(0);
  });

  it('network - reconcile removes stale ports and tunnels of ours only after two passes, and restores missing tunnels', async () => {
    await t.manager.create(spec('i-00000000aa01', [att()]));
    await t.network.ensureNetwork(NET, 5000, [PEER]);
    const tunnel = tunnelName(5000, PEER);
    // Drift: the tunnel vanished, a stale port and a stale tunnel of ours appeared, and a foreign port exists.
    t.sw.tunnels.delete(tunnel);
    t.sw.ports.set('ocdeadbeef0000', { name: 'ocdeadbeef0000', instanceId: 'i-0000deadbeef', networkId: NET, tag: 1 });
    t.sw.tunnels.set('vxstale', { name: 'vxstale', networkId: 'n-0000000000ff', vni: 9, remoteIp: PEER, tag: 9 });
    t.sw.foreign.add('eth9');
    const first = await t.network.reconcile(() => false);
    expect(first.removed).toEqual([]);
    expect(t.sw.tunnels.has(tunnel)).toBe(true); // additions at once
    expect(t.sw.ports.has('ocdeadbeef0000')).toBe(true);
    const second = await t.network.reconcile(() => false);
    expect(second.removed.sort()).toEqual(['ocdeadbeef0000', 'vxstale']);
    expect([...t.sw.ports.keys()]).toEqual(['oc00000000aa010']);
    expect([...t.sw.tunnels.keys()]).toEqual([tunnel]);
    expect(t.sw.calls.filter((c) => c.arg === 'eth9')).toEqual([]);
  });

  it('network - reconcile through the manager also runs after a crash rolled a half-made create back', async () => {
    await t.manager.create(spec('i-00000000aa01', [att()]));
    // Crash in the middle of a create: record still "creating", port plugged.
    const rec = t.records.get('i-00000000aa01')!;
    t.records.put({ ...rec, state: 'creating' });
    const r1 = await t.manager.reconcile();
    expect(r1.rolledBack).toEqual(['i-00000000aa01']);
    expect(t.sw.ports.size).toBe(0);
  });
});

describe('agent networks - plan', () => {
  it('plan - retags a port whose tag drifted and leaves busy instances alone', () => {
    const plan = planNetworks({
      wantedPorts: [{ name: 'p1', instanceId: 'i-000000000001', networkId: NET }],
      activeNetworks: new Set([NET]),
      networks: { [NET]: { vni: 7, tag: 3, peers: [PEER] } },
      actual: {
        ports: [
          { name: 'p1', instanceId: 'i-000000000001', networkId: NET, tag: 4 },
          { name: 'p2', instanceId: 'i-000000000002', networkId: NET, tag: 3 },
        ],
        tunnels: [],
        gateways: [],
      },
      natTables: [],
      underlayIp: ME,
      busy: (id) => id === 'i-000000000002',
    });
    expect(plan.retagPorts).toEqual([{ name: 'p1', instanceId: 'i-000000000001', networkId: NET, tag: 3 }]);
    expect(plan.removePorts).toEqual([]);
    expect(plan.addTunnels).toEqual([{ networkId: NET, vni: 7, remoteIp: PEER, tag: 3 }]);
    expect(plan.removeGateways).toEqual([]);
  });

  it('plan - gateways this node hosts are ensured; gateway ports and NAT tables of any other network are stale', () => {
    const plan = planNetworks({
      wantedPorts: [],
      activeNetworks: new Set([NET]),
      networks: { [NET]: { vni: 7, tag: 3, peers: [], gateway: { address: '10.90.0.1/24', mtu: 1446 } }, [NET2]: { vni: 8, tag: 4, peers: [] } },
      actual: {
        ports: [],
        tunnels: [],
        gateways: [
          { name: gatewayPortName(NET), networkId: NET, tag: 3, mtu: 1446 },
          { name: gatewayPortName(NET2), networkId: NET2, tag: 4, mtu: 1446 },
        ],
      },
      natTables: [NET, NET2, 'n-0000000000ff'],
      underlayIp: ME,
      busy: () => false,
    });
    expect(plan.ensureGateways).toEqual([{ networkId: NET, tag: 3, mtu: 1446 }]);
    expect(plan.removeGateways).toEqual([gatewayPortName(NET2)]);
    expect(plan.removeNat).toEqual([NET2, 'n-0000000000ff']);
  });
});

describe('agent networks - NAT gateways', () => {
  let t: ReturnType<typeof setup>;
  beforeEach(() => {
    t = setup();
  });
  const GW = { address: '10.90.0.1/24', mtu: 1446 };

  it('gateway - EnsureNetwork with a gateway makes the internal port on the network tag and the NAT of its subnet; the node joins the mesh with no instance', async () => {
    const r = await t.network.ensureNetwork(NET, 5000, [PEER], { gateway: GW, jobId: 17 });
    expect(r).toEqual({ vlan: 1, tunnels: 1, gateway: true });
    expect([...t.sw.gateways.values()]).toEqual([{ name: gatewayPortName(NET), networkId: NET, tag: 1, mtu: 1446 }]);
    expect(t.nat.tables.get(NET)).toMatchObject({ device: gatewayPortName(NET), subnet: '10.90.0.0/24', address: '10.90.0.1/24', mtu: 1446, guard: true });
    expect([...t.sw.tunnels.values()].map((x) => x.remoteIp)).toEqual([PEER]);
    expect(t.store.nets[NET]).toEqual({ vni: 5000, tag: 1, peers: [PEER], gateway: GW, jobId: 17 });
    expect(t.sw.ports.size).toBe(0);
  });

  it('gateway - EnsureNetwork again changes nothing; without the gateway it goes (port and table), tunnels with it when no instance is left', async () => {
    await t.network.ensureNetwork(NET, 5000, [PEER], { gateway: GW, jobId: 17 });
    const calls = t.sw.calls.length;
    await t.network.ensureNetwork(NET, 5000, [PEER], { gateway: GW, jobId: 17 });
    expect(t.sw.calls.slice(calls).map((c) => c.method)).not.toContain('ensureGatewayPort');
    expect(t.sw.calls.slice(calls).map((c) => c.method)).not.toContain('ensureTunnel');
    const r = await t.network.ensureNetwork(NET, 5000, [PEER], { jobId: 17 });
    expect(r).toEqual({ vlan: 0, tunnels: 0, gateway: false });
    expect(t.sw.gateways.size + t.sw.tunnels.size + t.nat.tables.size).toBe(0);
    expect(t.nat.uplinkForwarding).toBe(false); // the last guard took the forwarding it turned on with it
  });

  it('gateway - a failed NAT setup rolls back: no gateway port, no table, and the error reaches the caller', async () => {
    t.nat.failNext('ensure', new FailedPreconditionError('no uplink for NAT'));
    await expect(t.network.ensureNetwork(NET, 5000, [], { gateway: GW })).rejects.toBeInstanceOf(FailedPreconditionError);
    expect(t.sw.gateways.size).toBe(0);
    expect(t.nat.tables.size).toBe(0);
    // The next EnsureNetwork (the controller's reconcile) makes it.
    expect((await t.network.ensureNetwork(NET, 5000, [], { gateway: GW })).gateway).toBe(true);
    expect(t.sw.gateways.size).toBe(1);
  });

  it('gateway - ReleaseNetwork removes it; ReleaseJob removes the gateways of that job only', async () => {
    await t.network.ensureNetwork(NET, 5000, [PEER], { gateway: GW, jobId: 17 });
    await t.network.ensureNetwork(NET2, 5001, [PEER], { gateway: { address: '10.90.1.1/24', mtu: 1446 }, jobId: 18 });
    expect(t.sw.gateways.size).toBe(2);
    await t.manager.releaseJob(17); // no instance of job 17 here: the manager destroys nothing
    expect(await t.network.releaseJob(17)).toEqual([NET]);
    expect([...t.sw.gateways.values()].map((g) => g.networkId)).toEqual([NET2]);
    expect([...t.nat.tables.keys()]).toEqual([NET2]);
    expect(t.network.networks()[NET]).toBeUndefined();
    expect(t.nat.uplinkForwarding).toBe(true);
    await t.network.releaseNetwork(NET2);
    await t.network.releaseNetwork(NET2);
    expect(t.sw.gateways.size + t.sw.tunnels.size + t.nat.tables.size).toBe(0);
    expect(t.nat.uplinkForwarding).toBe(false);
    expect(t.network.networks()).toEqual({});
  });

  it('gateway - an instance on the gateway node shares the tag with the gateway; its destroy keeps the gateway and its tunnels', async () => {
    await t.network.ensureNetwork(NET, 5000, [PEER], { gateway: GW, jobId: 17 });
    await t.manager.create(spec('i-00000000aa01', [att()]));
    expect([...t.sw.ports.values()][0]!.tag).toBe([...t.sw.gateways.values()][0]!.tag);
    await t.manager.destroy('i-00000000aa01');
    expect(t.sw.gateways.size).toBe(1);
    expect(t.sw.tunnels.size).toBe(1);
  });

  it('gateway - reconcile restores a missing port or table at once, and removes stale gateways of ours after two passes, nothing else', async () => {
    await t.network.ensureNetwork(NET, 5000, [], { gateway: GW, jobId: 17 });
    const name = gatewayPortName(NET);
    t.sw.gateways.delete(name);
    t.nat.tables.delete(NET);
    // Stale: a gateway port and a table of a network this node does not host; a foreign port with a gateway-like name.
    const staleNet = 'n-0000000000ee';
    t.sw.gateways.set(gatewayPortName(staleNet), { name: gatewayPortName(staleNet), networkId: staleNet, tag: 9, mtu: 1446 });
    t.nat.tables.set(staleNet, { networkId: staleNet, device: gatewayPortName(staleNet), uplink: 'eth0', subnet: '10.90.9.0/24', guard: true, address: '10.90.9.1/24', mtu: 1446, rules: {} });
    t.sw.foreign.add('ocg0000000000dd');
    const first = await t.network.reconcile(() => false);
    expect(first.errors).toEqual([]);
    expect(t.sw.gateways.has(name)).toBe(true);
    expect(t.nat.tables.has(NET)).toBe(true);
    expect(t.sw.gateways.has(gatewayPortName(staleNet))).toBe(true);
    const second = await t.network.reconcile(() => false);
    expect(second.removed.sort()).toEqual([gatewayPortName(staleNet), `nat:${staleNet}`].sort());
    expect([...t.sw.gateways.keys()]).toEqual([name]);
    expect([...t.nat.tables.keys()]).toEqual([NET]);
    expect(t.sw.calls.filter((c) => c.arg === 'ocg0000000000dd')).toEqual([]);
    // The hosted gateway's network is remembered (not forgotten for lack of instances).
    expect(t.network.networks()[NET]?.gateway).toEqual(GW);
    expect(t.nat.uplinkForwarding).toBe(true);
  });

  it('gateway - reconcile settles the uplink: forwarding the agent turned on goes off once no table of ours is left (a flushed ruleset, a lost release)', async () => {
    await t.network.ensureNetwork(NET, 5000, [], { gateway: GW, jobId: 17 });
    expect(t.nat.uplinkForwarding).toBe(true);
    // The table vanished and the network was forgotten without a release reaching the NAT side.
    t.nat.tables.clear();
    const st = t.store.load();
    delete st[NET];
    const again = new NodeNetworks({ sw: t.sw, links: t.links, nat: t.nat, store: { load: () => st, save: () => {} }, underlayIp: ME, log: memoryLogger() });
    await again.reconcile(() => false);
    expect(t.nat.uplinkForwarding).toBe(false);
    expect(t.nat.calls).toContain('settle');
  });

  it('gateway - bad gateway input is INVALID_ARGUMENT and changes nothing; an agent without NAT support says FAILED_PRECONDITION', async () => {
    for (const gateway of [{ address: '10.90.0.1', mtu: 1446 }, { address: '10.90.0.0/24', mtu: 1446 }, { address: '10.90.0.1/31', mtu: 1446 }, { address: '10.90.0.1/24', mtu: 10 }]) {
      await expect(t.network.ensureNetwork(NET, 5000, [], { gateway })).rejects.toBeInstanceOf(InvalidArgumentError);
    }
    expect(t.network.networks()).toEqual({});
    expect(t.sw.gateways.size + t.nat.tables.size).toBe(0);
    const bare = new NodeNetworks({ sw: new FakeVSwitch(), links: new FakeLinks(), store: new MemoryNetworkStateStore(), underlayIp: ME, log: memoryLogger() });
    await expect(bare.ensureNetwork(NET, 5000, [], { gateway: GW })).rejects.toBeInstanceOf(FailedPreconditionError);
    expect(bare.networks()).toEqual({});
  });
});
