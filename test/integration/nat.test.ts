/**
 * The host side of NAT gateways (NftGatewayHost) against the real kernel: nftables,
 * conntrack, per-device forwarding. Everything lives in network namespaces of this test
 * (a "gateway node", an "outside" host on its uplink, and one instance per network on a
 * veth whose node end stands for the gateway's OVS internal port), so neither the host nor
 * the local cluster is touched.
 */
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { needCommand, needRoot, prerequisites, waitFor } from '@oarcloud/testkit';
import { NftGatewayHost, natTableName } from '../../packages/agent/src/network/gateway.js';

const p = prerequisites('nat', [needRoot, needCommand('nft', '--version'), needCommand('ip', '-V'), needCommand('nc', '-h'), needCommand('ping', '-V')]);

const tag = String(process.pid % 100000);
const NS = { gw: `oc-it-natgw-${tag}`, out: `oc-it-natout-${tag}`, i1: `oc-it-nati1-${tag}`, i2: `oc-it-nati2-${tag}` };
const NET1 = 'n-0000000000a1';
const NET2 = 'n-0000000000a2';
const DEV1 = 'ocg0000000000a1';
const DEV2 = 'ocg0000000000a2';
const UPLINK_IP = '198.51.100.1';
const OUT_IP = '198.51.100.2';

const sh = (ns: string, script: string, timeoutMs = 15_000) => spawnSync('ip', ['netns', 'exec', ns, 'sh', '-c', script], { encoding: 'utf8', timeout: timeoutMs });
const must = (ns: string, script: string): string => {
  const r = sh(ns, script);
  if (r.status !== 0) throw new Error(`${ns}: ${script}: ${r.stderr}`);
  return r.stdout;
};
const pingOk = (ns: string, ip: string): boolean => sh(ns, `ping -c 2 -i 0.2 -W 1 ${ip}`).status === 0;
const tcpOk = (ns: string, ip: string, port: number): boolean => sh(ns, `nc -z -w 2 ${ip} ${port}`).status === 0;
const sysctl = (ns: string, key: string): string => must(ns, `cat /proc/sys/${key}`).trim();
const tables = (ns: string): string => must(ns, 'nft list tables');

describe.skipIf(!p.ok)('nat integration - NftGatewayHost in private network namespaces', () => {
  const ledger = join(mkdtempSync(join(tmpdir(), 'oc-nat-')), 'nat-forwarding.json');
  const host = new NftGatewayHost({ netns: NS.gw, uplink: '', underlayIp: UPLINK_IP, stateFile: ledger });
  const listeners: Array<ReturnType<typeof spawn>> = [];

  beforeAll(() => {
    for (const ns of Object.values(NS)) {
      spawnSync('ip', ['netns', 'del', ns]);
      spawnSync('ip', ['netns', 'add', ns]);
      must(ns, 'ip link set lo up');
    }
    // Uplink: gw:up0 <-> out:eth0. The gateway node's address is the "underlay" one.
    spawnSync('ip', ['link', 'add', `ocitu${tag}`, 'type', 'veth', 'peer', 'name', `ocitv${tag}`]);
    spawnSync('ip', ['link', 'set', `ocitu${tag}`, 'netns', NS.gw, 'name', 'up0']);
    spawnSync('ip', ['link', 'set', `ocitv${tag}`, 'netns', NS.out, 'name', 'eth0']);
    must(NS.gw, `ip addr add ${UPLINK_IP}/24 dev up0 && ip link set up0 up`);
    must(NS.out, `ip addr add ${OUT_IP}/24 dev eth0 && ip link set eth0 up`);
    // Networks: the node end of each instance's link stands for the gateway port.
    for (const [ns, dev, net] of [
      [NS.i1, DEV1, '10.201.1'],
      [NS.i2, DEV2, '10.201.2'],
    ] as const) {
      spawnSync('ip', ['link', 'add', `ocitg${tag}`, 'type', 'veth', 'peer', 'name', `ociti${tag}`]);
      spawnSync('ip', ['link', 'set', `ocitg${tag}`, 'netns', NS.gw, 'name', dev]);
      spawnSync('ip', ['link', 'set', `ociti${tag}`, 'netns', ns, 'name', 'eth0']);
      must(ns, `ip addr add ${net}.2/24 dev eth0 && ip link set eth0 up && ip route add default via ${net}.1`);
    }
  });

  afterAll(() => {
    for (const l of listeners) l.kill('SIGKILL');
    for (const ns of Object.values(NS)) spawnSync('ip', ['netns', 'del', ns]);
  });

  /** A TCP listener in `ns` on `port`; resolves the peer address nc reports. */
  function listen(ns: string, port: number): { peer: () => string | undefined } {
    let err = '';
    const l = spawn('ip', ['netns', 'exec', ns, 'nc', '-n', '-v', '-l', '-p', String(port)], { stdio: ['ignore', 'ignore', 'pipe'] });
    l.stderr!.on('data', (b: Buffer) => (err += b.toString()));
    listeners.push(l);
    return { peer: () => /Connection received on (\S+)/.exec(err)?.[1] };
  }

  it('nat - the subnet reaches the uplink side masqueraded behind the node address; the gateway answers ping; guarded forwarding is on', async () => {
    expect(sysctl(NS.gw, 'net/ipv4/conf/up0/forwarding')).toBe('0');
    const r1 = await host.ensure({ networkId: NET1, device: DEV1, address: '10.201.1.1/24', mtu: 1446 });
    expect(r1).toEqual({ changed: true, uplink: 'up0' });
    expect(await host.ensure({ networkId: NET1, device: DEV1, address: '10.201.1.1/24', mtu: 1446 })).toEqual({ changed: false, uplink: 'up0' });
    await host.ensure({ networkId: NET2, device: DEV2, address: '10.201.2.1/24', mtu: 1446 });
    expect(sysctl(NS.gw, 'net/ipv4/conf/up0/forwarding')).toBe('1');
    expect(sysctl(NS.gw, `net/ipv4/conf/${DEV1}/forwarding`)).toBe('1');
    expect(sysctl(NS.gw, 'net/ipv4/conf/all/forwarding')).toBe('0'); // per device only
    expect(sysctl(NS.gw, `net/ipv6/conf/${DEV1}/disable_ipv6`)).toBe('1');
    expect(sysctl(NS.gw, `net/ipv4/conf/${DEV1}/arp_ignore`)).toBe('1');
    expect((await host.list()).map((t) => [t.networkId, t.uplink, t.subnet, t.guard])).toEqual([
      [NET1, 'up0', '10.201.1.0/24', true],
      [NET2, 'up0', '10.201.2.0/24', true],
    ]);
    expect(pingOk(NS.i1, '10.201.1.1')).toBe(true);
    expect(pingOk(NS.i1, OUT_IP)).toBe(true);
    const l = listen(NS.out, 7001);
    await waitFor(() => sh(NS.out, 'ss -ltn | grep -q ":7001 "').status === 0, { timeoutMs: 5000, intervalMs: 100, what: 'listener' });
    expect(sh(NS.i1, `echo hello | nc -N -w 3 ${OUT_IP} 7001`).status).toBe(0);
    expect(await waitFor(() => l.peer(), { timeoutMs: 5000, intervalMs: 100, what: 'peer' })).toBe(UPLINK_IP);
  });

  it('nat - nothing else is forwarded: not between networks, not from the uplink in, not to the node, not from the node', () => {
    expect(pingOk(NS.i1, '10.201.2.2')).toBe(false);
    expect(pingOk(NS.i2, '10.201.1.2')).toBe(false);
    listen(NS.i2, 7002);
    listen(NS.i1, 7003);
    listen(NS.gw, 7004);
    expect(tcpOk(NS.i1, '10.201.2.2', 7002)).toBe(false);
    // From the outside, routed at the node: new flows are dropped.
    must(NS.out, `ip route add 10.201.0.0/16 via ${UPLINK_IP}`);
    expect(pingOk(NS.out, '10.201.1.2')).toBe(false);
    expect(tcpOk(NS.out, '10.201.1.2', 7003)).toBe(false);
    // The node's own services, through the gateway address or any other address of it.
    expect(tcpOk(NS.i1, '10.201.1.1', 7004)).toBe(false);
    expect(tcpOk(NS.i1, UPLINK_IP, 7004)).toBe(false);
    // The node opens nothing towards a network.
    expect(tcpOk(NS.gw, '10.201.1.2', 7003)).toBe(false);
    // Sanity: the listeners are there (from inside their own namespace).
    expect(tcpOk(NS.i1, '127.0.0.1', 7003)).toBe(true);
  });

  it('nat - an edited table is repaired by ensure; remove takes the table and, with the last guard, the uplink forwarding', async () => {
    must(NS.gw, `nft flush chain ip ${natTableName(NET1)} forward`);
    expect((await host.ensure({ networkId: NET1, device: DEV1, address: '10.201.1.1/24', mtu: 1446 })).changed).toBe(true);
    expect((await host.list()).find((t) => t.networkId === NET1)!.rules.forward).toBe(5);
    expect(await host.remove(NET1)).toBe(true);
    expect(await host.remove(NET1)).toBe(false);
    expect(sysctl(NS.gw, 'net/ipv4/conf/up0/forwarding')).toBe('1'); // NET2 still guarded
    expect(pingOk(NS.i1, OUT_IP)).toBe(false);
    expect(pingOk(NS.i2, OUT_IP)).toBe(true);
    expect(await host.remove(NET2)).toBe(true);
    expect(sysctl(NS.gw, 'net/ipv4/conf/up0/forwarding')).toBe('0');
    expect(tables(NS.gw)).not.toMatch(/oarcloud-nat-/);
  });

  it('nat - a flushed ruleset does not make the agent forget it turned the uplink on: tables come back guarded, and settle turns it off', async () => {
    await host.ensure({ networkId: NET1, device: DEV1, address: '10.201.1.1/24', mtu: 1446 });
    expect(JSON.parse(readFileSync(ledger, 'utf8'))).toEqual({ uplinks: ['up0'] });
    must(NS.gw, 'nft flush ruleset');
    expect(sysctl(NS.gw, 'net/ipv4/conf/up0/forwarding')).toBe('1');
    await host.ensure({ networkId: NET1, device: DEV1, address: '10.201.1.1/24', mtu: 1446 });
    expect((await host.list())[0]!.guard).toBe(true);
    must(NS.gw, 'nft flush ruleset');
    expect(await host.settle()).toEqual(['up0']);
    expect(sysctl(NS.gw, 'net/ipv4/conf/up0/forwarding')).toBe('0');
    expect(await host.settle()).toEqual([]);
    expect(JSON.parse(readFileSync(ledger, 'utf8'))).toEqual({ uplinks: [] });
  });

  it('nat - an uplink that forwarded already is left as it was, with no guard', async () => {
    must(NS.gw, 'echo 1 > /proc/sys/net/ipv4/conf/up0/forwarding');
    await host.ensure({ networkId: NET1, device: DEV1, address: '10.201.1.1/24', mtu: 1446 });
    expect((await host.list())[0]!.guard).toBe(false);
    expect(pingOk(NS.i1, OUT_IP)).toBe(true);
    await host.remove(NET1);
    expect(sysctl(NS.gw, 'net/ipv4/conf/up0/forwarding')).toBe('1');
    must(NS.gw, 'echo 0 > /proc/sys/net/ipv4/conf/up0/forwarding');
    await expect(host.ensure({ networkId: NET1, device: 'ocgabsent', address: '10.201.1.1/24', mtu: 1446 })).rejects.toHaveProperty('name', 'FailedPreconditionError');
    expect(tables(NS.gw)).not.toMatch(/oarcloud-nat-/);
  }, 30_000);
});
