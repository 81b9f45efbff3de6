/**
 * The VSwitch contract as one vitest suite, run against the fake (unit) and against a
 * real ovsdb-server/ovs-vswitchd (integration). Test helper: imported by test files only.
 */
import { describe, expect, it } from 'vitest';
import { InvalidArgumentError } from '@oarcloud/common';
import { gatewayPortName, NotManagedError, tunnelName, type VSwitch } from './vswitch.js';

export interface SwitchHarness {
  sw: VSwitch;
  /** Creates a port that is not ours (plain `add-port`), to check we never touch it. */
  addForeignPort(name: string): Promise<void>;
}

export function vswitchContract(name: string, make: () => Promise<SwitchHarness>): void {
  describe(`${name} - VSwitch contract`, () => {
    const net = 'n-0123456789ab';
    const net2 = 'n-0123456789ac';
    const inst = 'i-0123456789ab';

    it('vswitch - ensureBridge, ensurePort and ensureTunnel are idempotent and list only our objects', async () => {
      const { sw, addForeignPort } = await make();
      await sw.ensureBridge();
      await sw.ensureBridge();
      await addForeignPort('foreign0');
      await sw.ensurePort({ name: 'ocp0', instanceId: inst, networkId: net, tag: 5 });
      await sw.ensurePort({ name: 'ocp0', instanceId: inst, networkId: net, tag: 5 });
      const t1 = await sw.ensureTunnel({ networkId: net, vni: 4100, remoteIp: '192.168.240.12', tag: 5 });
      const t2 = await sw.ensureTunnel({ networkId: net, vni: 4100, remoteIp: '192.168.240.12', tag: 5 });
      expect(t1).toBe(t2);
      expect(t1).toBe(tunnelName(4100, '192.168.240.12'));
      expect(t1.length).toBeLessThanOrEqual(15);
      const s = await sw.list();
      expect(s.ports).toEqual([{ name: 'ocp0', instanceId: inst, networkId: net, tag: 5 }]);
      expect(s.tunnels).toEqual([{ name: t1, networkId: net, vni: 4100, remoteIp: '192.168.240.12', tag: 5 }]);
    });

    it('vswitch - ensurePort updates the tag; tunnels of two networks to one remote coexist', async () => {
      const { sw } = await make();
      await sw.ensureBridge();
      await sw.ensurePort({ name: 'ocp1', instanceId: inst, networkId: net, tag: 7 });
      await sw.ensurePort({ name: 'ocp1', instanceId: inst, networkId: net, tag: 8 });
      const a = await sw.ensureTunnel({ networkId: net, vni: 4200, remoteIp: '192.168.240.13', tag: 8 });
      const b = await sw.ensureTunnel({ networkId: net2, vni: 4201, remoteIp: '192.168.240.13', tag: 9 });
      expect(a).not.toBe(b);
      const s = await sw.list();
      expect(s.ports.find((p) => p.name === 'ocp1')?.tag).toBe(8);
      expect(s.tunnels.filter((t) => t.remoteIp === '192.168.240.13').map((t) => t.vni).sort()).toEqual([4200, 4201]);
    });

    it('vswitch - remove is idempotent and never touches a port that is not ours', async () => {
      const { sw, addForeignPort } = await make();
      await sw.ensureBridge();
      await addForeignPort('foreign1');
      await sw.ensurePort({ name: 'ocp2', instanceId: inst, networkId: net, tag: 3 });
      const t = await sw.ensureTunnel({ networkId: net, vni: 4300, remoteIp: '192.168.240.14', tag: 3 });
      expect(await sw.removePort('ocp2')).toBe(true);
      expect(await sw.removePort('ocp2')).toBe(false);
      expect(await sw.removeTunnel(t)).toBe(true);
      expect(await sw.removeTunnel(t)).toBe(false);
      await expect(sw.removePort('foreign1')).rejects.toBeInstanceOf(NotManagedError);
      await expect(sw.ensurePort({ name: 'foreign1', instanceId: inst, networkId: net, tag: 3 })).rejects.toBeInstanceOf(NotManagedError);
      const s = await sw.list();
      expect(s.ports.some((p) => p.name === 'ocp2')).toBe(false);
      expect(s.tunnels.some((x) => x.name === t)).toBe(false);
    });

    it('vswitch - a gateway port is an internal port of ours on the network VLAN: idempotent, retagged in place, removed like any port', async () => {
      const { sw, addForeignPort } = await make();
      await sw.ensureBridge();
      const g = await sw.ensureGatewayPort({ networkId: net, tag: 6, mtu: 1446 });
      expect(g).toBe(gatewayPortName(net));
      expect(g).toHaveLength(15);
      expect(await sw.ensureGatewayPort({ networkId: net, tag: 6, mtu: 1446 })).toBe(g);
      await sw.ensurePort({ name: 'ocp4', instanceId: inst, networkId: net, tag: 6 });
      let s = await sw.list();
      expect(s.gateways).toEqual([{ name: g, networkId: net, tag: 6, mtu: 1446 }]);
      expect(s.ports.map((p) => p.name)).toEqual(['ocp4']); // a gateway is not an instance port
      await sw.ensureGatewayPort({ networkId: net, tag: 7, mtu: 1400 });
      s = await sw.list();
      expect(s.gateways).toEqual([{ name: g, networkId: net, tag: 7, mtu: 1400 }]);
      expect(await sw.removePort(g)).toBe(true);
      expect(await sw.removePort(g)).toBe(false);
      expect((await sw.list()).gateways).toEqual([]);
      // The gateway name of another network, taken by a port that is not ours: never touched.
      await addForeignPort(gatewayPortName(net2));
      await expect(sw.ensureGatewayPort({ networkId: net2, tag: 8, mtu: 1446 })).rejects.toBeInstanceOf(NotManagedError);
      await expect(sw.ensureGatewayPort({ networkId: net, tag: 0, mtu: 1446 })).rejects.toBeInstanceOf(InvalidArgumentError);
      await expect(sw.ensureGatewayPort({ networkId: net, tag: 8, mtu: 100 })).rejects.toBeInstanceOf(InvalidArgumentError);
      await expect(sw.ensureGatewayPort({ networkId: 'n-x; rm', tag: 8, mtu: 1446 })).rejects.toBeInstanceOf(InvalidArgumentError);
      expect((await sw.list()).gateways).toEqual([]);
    });

    it('vswitch - bad input is INVALID_ARGUMENT and changes nothing', async () => {
      const { sw } = await make();
      await sw.ensureBridge();
      const before = await sw.list();
      await expect(sw.ensurePort({ name: 'way-too-long-port-name', instanceId: inst, networkId: net, tag: 3 })).rejects.toBeInstanceOf(InvalidArgumentError);
      await expect(sw.ensurePort({ name: 'ocp3', instanceId: inst, networkId: net, tag: 4095 })).rejects.toBeInstanceOf(InvalidArgumentError);
      await expect(sw.ensureTunnel({ networkId: net, vni: 0, remoteIp: '192.168.240.14', tag: 3 })).rejects.toBeInstanceOf(InvalidArgumentError);
      await expect(sw.ensureTunnel({ networkId: net, vni: 4400, remoteIp: '192.168.240.300', tag: 3 })).rejects.toBeInstanceOf(InvalidArgumentError);
      await expect(sw.ensureTunnel({ networkId: net, vni: 4400, remoteIp: '1.2.3.4; rm -rf /', tag: 3 })).rejects.toBeInstanceOf(InvalidArgumentError);
      expect(await sw.list()).toEqual(before);
    });
  });
}
