import { describe, expect, it } from 'vitest';
import { InvalidArgumentError } from '@oarcloud/common';
import { checkGatewaySpec, FakeGatewayHost, natChains, natScript, natTableName, parseNatRuleset, subnetOfAddress } from './gateway.js';

const NET = 'n-0123456789ab';
const DEV = 'ocg0123456789ab';

describe('agent gateway - rules and state', () => {
  it('gateway - subnetOfAddress gives the subnet of a gateway address and refuses the rest', () => {
    expect(subnetOfAddress('10.90.3.1/24')).toBe('10.90.3.0/24');
    expect(subnetOfAddress('172.31.8.9/29')).toBe('172.31.8.8/29');
    expect(subnetOfAddress('10.1.200.1/16')).toBe('10.1.0.0/16');
    for (const bad of ['10.90.3.1', '10.90.3.0/24', '10.90.3.255/24', '10.90.3.1/31', '10.90.3.1/4', '10.90.3.300/24', '1.2.3.4/24; x']) {
      expect(() => subnetOfAddress(bad), bad).toThrow(InvalidArgumentError);
    }
    expect(() => checkGatewaySpec({ networkId: NET, device: 'a-very-long-device', address: '10.90.3.1/24', mtu: 1446 })).toThrow(InvalidArgumentError);
    expect(() => checkGatewaySpec({ networkId: 'n-1', device: DEV, address: '10.90.3.1/24', mtu: 1446 })).toThrow(InvalidArgumentError);
  });

  it('gateway - the table forwards only the subnet out of the uplink and replies back, answers ping only, opens nothing; the guard only when asked', () => {
    const c = natChains({ device: DEV, uplink: 'br-ul', subnet: '10.90.3.0/24', guard: false });
    expect(c.forward!.rules).toEqual([
      `iifname "${DEV}" oifname "br-ul" ip saddr 10.90.3.0/24 accept`,
      `iifname "${DEV}" drop`,
      `oifname "${DEV}" iifname "br-ul" ct state established,related accept`,
      `oifname "${DEV}" drop`,
    ]);
    expect(c.input!.rules).toEqual([`iifname "${DEV}" ct state established,related accept`, `iifname "${DEV}" icmp type echo-request accept`, `iifname "${DEV}" drop`]);
    expect(c.output!.rules.at(-1)).toBe(`oifname "${DEV}" drop`);
    expect(c.postrouting).toMatchObject({ type: 'nat', hook: 'postrouting' });
    expect(c.postrouting!.rules[0]).toMatch(/^oifname "br-ul" ip saddr 10\.90\.3\.0\/24 masquerade comment "oarcloud-nat v1 dev=ocg0123456789ab uplink=br-ul subnet=10\.90\.3\.0\/24 guard=0"$/);
    const g = natChains({ device: DEV, uplink: 'br-ul', subnet: '10.90.3.0/24', guard: true });
    expect(g.forward!.rules.at(-1)).toBe('iifname "br-ul" ct status & snat != snat drop');
    const script = natScript(NET, { device: DEV, uplink: 'br-ul', subnet: '10.90.3.0/24', guard: true });
    // Created or replaced in one transaction; every base chain accepts by default (other traffic of the host is untouched).
    expect(script.split('\n').slice(0, 3)).toEqual([`table ip ${natTableName(NET)}`, `delete table ip ${natTableName(NET)}`, `table ip ${natTableName(NET)} {`]);
    expect(script.match(/policy accept;/g)).toHaveLength(4);
    expect(script).not.toMatch(/policy drop/);
  });

  it('gateway - parseNatRuleset reads our tables back (spec from the marker, rules per chain) and ignores the others', () => {
    const doc = {
      nftables: [
        { metainfo: { version: '1.0.6' } },
        { table: { family: 'ip', name: natTableName(NET), handle: 1 } },
        { table: { family: 'ip', name: 'filter', handle: 2 } },
        { table: { family: 'ip', name: `${natTableName('n-00000000000e')}`, handle: 3 } },
        { chain: { family: 'ip', table: natTableName(NET), name: 'forward' } },
        { rule: { family: 'ip', table: natTableName(NET), chain: 'forward', expr: [] } },
        { rule: { family: 'ip', table: natTableName(NET), chain: 'forward', expr: [] } },
        { rule: { family: 'ip', table: natTableName(NET), chain: 'postrouting', comment: `oarcloud-nat v1 dev=${DEV} uplink=eth0.100 subnet=10.90.3.0/24 guard=1`, expr: [] } },
        { rule: { family: 'ip', table: 'filter', chain: 'forward', comment: 'oarcloud-nat v1 dev=x uplink=y subnet=z guard=1', expr: [] } },
      ],
    };
    expect(parseNatRuleset(JSON.stringify(doc))).toEqual([
      { networkId: NET, device: DEV, uplink: 'eth0.100', subnet: '10.90.3.0/24', guard: true, rules: { forward: 2, postrouting: 1 } },
      // A table of ours someone emptied: still ours (by name), with no spec.
      { networkId: 'n-00000000000e', device: '', uplink: '', subnet: '', guard: false, rules: {} },
    ]);
    expect(parseNatRuleset('')).toEqual([]);
  });

  it('gateway - the fake keeps the guard rule of the real one: forwarding turned on with the first table, off with the last guarded one', async () => {
    const f = new FakeGatewayHost();
    await f.ensure({ networkId: NET, device: DEV, address: '10.90.3.1/24', mtu: 1446 });
    await f.ensure({ networkId: 'n-00000000000e', device: 'ocg00000000000e', address: '10.90.4.1/24', mtu: 1446 });
    expect((await f.list()).map((t) => t.guard)).toEqual([true, true]);
    expect((await f.ensure({ networkId: NET, device: DEV, address: '10.90.3.1/24', mtu: 1446 })).changed).toBe(false);
    await f.remove(NET);
    expect(f.uplinkForwarding).toBe(true);
    await f.remove('n-00000000000e');
    expect(f.uplinkForwarding).toBe(false);
    expect(await f.remove(NET)).toBe(false);
    // An uplink that forwarded before: no guard, and left on.
    const g = new FakeGatewayHost();
    g.uplinkForwarding = true;
    await g.ensure({ networkId: NET, device: DEV, address: '10.90.3.1/24', mtu: 1446 });
    expect((await g.list())[0]!.guard).toBe(false);
  });
});
